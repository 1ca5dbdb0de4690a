"""A coarse picture of each training speaker's face: what E's pretraining regresses besides the
speaker (and, optionally, what G's faces are pulled to).

Speaker classification alone lets E tell its training speakers apart by whatever is easiest to
hear (vocal-tract length, vowel habits), not by what a face shows. With
`train.face_target_weight` > 0, E's pretraining also predicts, from the unit embedding, its
speaker's mean training face pooled to a few pixels (`train.face_target_pool` pixels a side per
cell: 16 gives 4 x 4 x 3 = 48 values). The voice qualities that follow the face (in corpus "b",
the speaking rate and pitch range that follow complexion) then become directions of E's
embedding that carry over to speakers it never heard, which is what G draws from.

Targets are per-identity means over every training face, block-averaged, then centred over the
identities that have faces and divided by their overall standard deviation (one scalar): a loss
of 1 is what predicting the average face gives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from v2f_jax.input_pipeline.constants import IMAGE_SIZE

if TYPE_CHECKING:
    from v2f_jax.input_pipeline import manifest as manifest_lib


def target_dim(pool: int) -> int:
    """Values per identity for cells of `pool` x `pool` pixels: `(64 / pool)^2 * 3`."""
    return (IMAGE_SIZE // pool) ** 2 * 3


def pooled_sums(
    batches: Iterable[tuple[np.ndarray, np.ndarray]], num_ids: int, pool: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-identity sums of block-averaged faces, and face counts.

    Args:
      batches: `(faces uint8 [n, 64, 64, 3], labels int [n])` pairs; labels in `[0, num_ids)`.
      pool: cell side in pixels; divides 64.

    Returns:
      `(sums float64 [num_ids, target_dim(pool)] in pixel units 0..255, counts int64 [num_ids])`.
    """
    cells = IMAGE_SIZE // pool
    sums = np.zeros((num_ids, target_dim(pool)), np.float64)
    counts = np.zeros(num_ids, np.int64)
    for faces, labels in batches:
        labels = np.asarray(labels, np.int64)
        if not labels.size:
            continue
        if labels.min() < 0 or labels.max() >= num_ids:
            raise ValueError(
                f"face labels must be in [0, {num_ids}), got {labels.min()}..{labels.max()}"
            )
        small = np.asarray(faces, np.float64).reshape(-1, cells, pool, cells, pool, 3).mean((2, 4))
        np.add.at(sums, labels, small.reshape(len(labels), -1))
        counts += np.bincount(labels, minlength=num_ids)
    return sums, counts


@dataclasses.dataclass(frozen=True)
class FaceTargets:
    """Each training identity's face target and how a face maps into the targets' space.

    Attributes:
      values: float32 `[K, P]`, the standardised pooled mean faces; rows of zeros where absent.
      present: bool `[K]`, the identity has at least one training face.
      centre: float32 `[P]`, pixel units (0..255): the mean over present identities.
      scale: the standard deviation (pixel units) the centred means are divided by.
      pool: cell side in pixels.
    """

    values: np.ndarray
    present: np.ndarray
    centre: np.ndarray
    scale: float
    pool: int

    def of_faces(self, faces):
        """Faces float `[B, 64, 64, 3]` in [-1, 1] (G's output; jax or numpy) in the targets'
        space: `[B, P]`, so that a face equal to its identity's mean face meets its target."""
        b = faces.shape[0]
        cells = IMAGE_SIZE // self.pool
        pixels = (faces + 1.0) * 127.5
        small = pixels.reshape(b, cells, self.pool, cells, self.pool, 3).mean((2, 4))
        return (small.reshape(b, -1) - self.centre) / self.scale


def standardise(sums: np.ndarray, counts: np.ndarray, pool: int) -> FaceTargets:
    """Targets from `pooled_sums`. An identity without faces has a row of zeros and `present`
    False (the loss skips it).

    Raises:
      ValueError: no identity has a face.
    """
    present = counts > 0
    if not present.any():
        raise ValueError("no training identity has a face to take a face target from")
    means = np.zeros_like(sums)
    means[present] = sums[present] / counts[present, None]
    centre = means[present].mean(0)
    scale = float(np.std(means[present] - centre)) or 1.0
    values = np.where(present[:, None], (means - centre) / scale, 0.0)
    return FaceTargets(values.astype(np.float32), present, centre.astype(np.float32), scale, pool)


def from_records(records: manifest_lib.Records, pool: int) -> FaceTargets:
    """`standardise(pooled_sums(...))` of the records' TRAIN faces, all shards: every host
    reads them all (one pass, before training), so every host holds the same targets as one
    process would, to the bit, with no collective."""
    from v2f_jax.input_pipeline import reader  # imports TensorFlow

    batches = ((b["image"], b["label"]) for b in reader.face_batches(records, "train"))
    return standardise(*pooled_sums(batches, records.num_train_ids, pool), pool)
