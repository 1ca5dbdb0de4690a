"""G's coarse face as a linear reading of the voice (`model.coarse_cell` > 0).

With a few hundred training speakers, a generator network can map each training voice to its
speaker's face and draw little better than a lookup for a new voice; a linear map from E's
embedding to the face cannot memorise them and carries what E hears (gender, vocal tract,
accent) over to new speakers. So, before the GAN trains, a ridge regression is fitted from each
training identity's mean unit embedding (E's, over up to `PER_IDENTITY` whole utterances) to
its mean training face averaged over `model.coarse_cell`-pixel cells, in G's face units
([-1, 1]); G's face then takes its coarse part from that map and its detail from the network
(`models.with_coarse_face`). The map is part of G's parameters (`coarse/kernel`,
`coarse/bias`), so checkpoints, exports and `v2f generate` carry it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import ml_collections
import numpy as np

from v2f_jax import models
from v2f_jax.training import face_targets

if TYPE_CHECKING:
    from v2f_jax.input_pipeline import manifest as manifest_lib

PyTree = Any
logger = logging.getLogger("v2f.train")

# Whole utterances per training identity that E embeds for the fit: enough for a stable mean,
# bounded on corpora with hundreds of clips per speaker.
PER_IDENTITY = 16
# Ridge penalty on the standardised embedding: small against the identity count, it only keeps
# the fit defined when there are fewer identities than embedding dimensions.
RIDGE = 0.1


def ridge_map(x: np.ndarray, y: np.ndarray, penalty: float = RIDGE):
    """The ridge regression of `y [N, P]` on `x [N, D]` (each column of `x` standardised, the
    mean of `y` unpenalised), as a map of raw `x`: `(kernel [D, P], bias [P])`, float64, with
    `x @ kernel + bias` the fitted `y`."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mu, sd = x.mean(0), x.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    xs, y_mean = (x - mu) / sd, y.mean(0)
    w = np.linalg.solve(xs.T @ xs + penalty * np.eye(x.shape[1]), xs.T @ (y - y_mean))
    kernel = w / sd[:, None]
    return kernel, y_mean - mu @ kernel


def identity_embeddings(
    config: ml_collections.ConfigDict,
    embedder: PyTree,
    records: manifest_lib.Records,
    per_identity: int = PER_IDENTITY,
) -> tuple[np.ndarray, np.ndarray]:
    """Each training identity's mean unit embedding over its first `per_identity` whole
    utterances (in shard order): `(float64 [K, D] unit rows, bool [K] has a voice)`."""
    from v2f_jax.inference import generate  # E's inference path
    from v2f_jax.input_pipeline import reader  # imports TensorFlow

    k = records.num_train_ids
    counts = np.zeros(k, np.int64)
    mels, labels = [], []
    for mel, label, _ in reader.make_eval_voices(records, "train"):
        if counts[label] < per_identity:
            counts[label] += 1
            mels.append(mel)
            labels.append(label)
        if counts.min() >= per_identity:
            break  # every identity has its share: the rest of the shards need not be read
    sums = np.zeros((k, int(config.model.embed_dim)), np.float64)
    if mels:
        emb = generate.embed_voices(config, embedder, mels)
        np.add.at(sums, np.asarray(labels), models.unit(np.asarray(emb, np.float64)))
    return models.unit(sums), counts > 0


def identity_faces(records: manifest_lib.Records, cell: int) -> tuple[np.ndarray, np.ndarray]:
    """Each training identity's mean face over `cell`-pixel cells in G's units ([-1, 1]), row-major
    over cells then RGB: `(float64 [K, (64 / cell)^2 * 3], bool [K] has a face)`."""
    from v2f_jax.input_pipeline import reader  # imports TensorFlow

    batches = ((b["image"], b["label"]) for b in reader.face_batches(records, "train"))
    sums, counts = face_targets.pooled_sums(batches, records.num_train_ids, cell)
    means = sums / np.maximum(counts, 1)[:, None]
    return means / 127.5 - 1.0, counts > 0


def fit(
    config: ml_collections.ConfigDict, embedder: PyTree, records: manifest_lib.Records
) -> tuple[np.ndarray, np.ndarray]:
    """G's coarse map for `config.model.coarse_cell` from E (`{"params", "batch_stats"}`) and the
    records' training split: `(coarse_kernel float32 [D, P], coarse_bias float32 [P])`.

    Raises:
      ValueError: fewer than two training identities with both a voice and a face.
    """
    start = time.perf_counter()
    emb, has_voice = identity_embeddings(config, embedder, records)
    faces, has_face = identity_faces(records, int(config.model.coarse_cell))
    both = has_voice & has_face
    if both.sum() < 2:
        raise ValueError(
            f"model.coarse_cell fits G's coarse face to the training identities with a voice and a "
            f"face; {records.root} has {int(both.sum())}"
        )
    kernel, bias = ridge_map(emb[both], faces[both])
    fitted = emb[both] @ kernel + bias
    spread = np.sum((faces[both] - faces[both].mean(0)) ** 2)
    logger.info(
        "coarse face: a linear map from %d identities' voices, R^2 %.2f of their mean faces over "
        "%d-pixel cells (%.1f s)",
        int(both.sum()),
        1.0 - np.sum((faces[both] - fitted) ** 2) / max(spread, 1e-12),
        int(config.model.coarse_cell),
        time.perf_counter() - start,
    )
    return kernel.astype(np.float32), bias.astype(np.float32)


def with_fitted_map(generator: PyTree, kernel: np.ndarray, bias: np.ndarray) -> PyTree:
    """G's parameters with the coarse map set (a new dict; the rest shared)."""
    if "coarse" not in generator:
        raise ValueError("this G has no coarse map: model.coarse_cell is 0")
    want = np.shape(generator["coarse"]["kernel"]), np.shape(generator["coarse"]["bias"])
    if (kernel.shape, bias.shape) != want:
        raise ValueError(f"coarse map of shapes {kernel.shape}, {bias.shape}; G wants {want}")
    return generator | {"coarse": {"kernel": kernel, "bias": bias}}
