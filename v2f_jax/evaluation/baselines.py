"""Trivial baselines that `v2f eval` scores beside the model, with the same scorer and metrics.

`nearest_identity`: no generator at all. A voice's feature is its mean log-mel over frames (a
64-vector); each training identity's is the mean of its training utterances' features. Every
dimension is standardised by the mean and standard deviation over the training identities'
features, and the voice takes the training identity of highest cosine similarity. Its "generated
face" is that identity's mean face (the pixel mean of its training faces). A model that does not
beat this has learnt no more about faces from voices than a lookup of the most similar-sounding
person seen in training. Pure numpy.
"""

from __future__ import annotations

import numpy as np

from v2f_jax import models

NEAREST_IDENTITY = "nearest_identity"
DEFINITIONS = {
    NEAREST_IDENTITY: (
        "each voice's mean log-mel, standardised per dimension over the training identities' "
        "means, matched by cosine to the nearest training identity; its face is that identity's "
        "mean training face"
    ),
}


def identity_means(
    values: np.ndarray, labels: np.ndarray, num_ids: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-identity means of `values` `[N, ...]` (any dtype: uint8 faces are summed in float64
    without a float copy of them all) with integer `labels` `[N]` in `[0, num_ids)`.

    Returns:
      `(means float64 [num_ids, ...], present bool [num_ids])`; an identity without values has a
      row of zeros and `present` False.
    """
    values, labels = np.asarray(values), np.asarray(labels, np.int64)
    means = np.zeros((num_ids,) + values.shape[1:], np.float64)
    counts = np.bincount(labels, minlength=num_ids)[:num_ids]
    if labels.size:
        order = np.argsort(labels, kind="stable")
        ids, starts = np.unique(labels[order], return_index=True)
        sums = np.add.reduceat(values[order], starts, axis=0, dtype=np.float64)
        means[ids] = sums / counts[ids].reshape((-1,) + (1,) * (values.ndim - 1))
    return means, counts > 0


def nearest_identity(
    eval_voice_means: np.ndarray, train_voice_means_by_id: np.ndarray
) -> np.ndarray:
    """Index of the nearest training identity of each voice (see the module docstring).

    Args:
      eval_voice_means: `[V, 64]` mean log-mel of each voice.
      train_voice_means_by_id: `[K, 64]` each training identity's mean of its utterances' means.

    Returns:
      int `[V]` in `[0, K)` (the first one on a tie).
    """
    train = np.asarray(train_voice_means_by_id, np.float64)
    if train.shape[0] == 0:
        raise ValueError("the nearest-identity baseline needs at least one training identity")
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 0, std, 1.0)  # a constant dimension tells identities nothing apart
    query = models.unit((np.asarray(eval_voice_means, np.float64) - mean) / std)
    keys = models.unit((train - mean) / std)
    return np.argmax(query @ keys.T, axis=1)


def nearest_identity_faces(
    eval_voice_means: np.ndarray,
    train_voice_means_by_id: np.ndarray,
    train_face_means_by_id: np.ndarray,
) -> np.ndarray:
    """The baseline's faces: each voice's nearest training identity's mean face.

    Args:
      eval_voice_means: `[V, 64]`; train_voice_means_by_id: `[K, 64]` (as `nearest_identity`).
      train_face_means_by_id: `[K, 64, 64, 3]` each identity's mean face (any dtype and range:
        returned as given; `v2f eval` passes float in [-1, 1]).

    Returns:
      `[V, 64, 64, 3]`, rows of `train_face_means_by_id`.
    """
    return np.asarray(train_face_means_by_id)[
        nearest_identity(eval_voice_means, train_voice_means_by_id)
    ]
