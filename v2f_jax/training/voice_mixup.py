"""Mixup of voice embeddings for G (`train.voice_mixup`).

G sees each training speaker's voices and learns a face per speaker; a new speaker's embedding
falls between them. With mixup, each voice of the batch is blended with another voice of the
global batch, `unit(lam * e_i + (1 - lam) * e_j)` with `lam ~ Beta(alpha, alpha)`, and C's identity
loss on G's face asks for the same blend of the two speakers (`lam` x cross-entropy to i's label
+ `1 - lam` x to j's), so G learns to draw between its speakers as well as at them. With G's
mean-face term on (`train.face_target_weight`), the blend's face is drawn toward the same blend
of the two speakers' mean faces (`train_step._face_target_loss`), asking G's map from voice to
face to run straight between its training speakers, as a linear reading of E's embedding does.
Off in every config: on the demo's corpora neither form gained beyond a run's noise (RESULTS.md,
section 6).

The partners and weights are drawn for the global batch and each device takes its rows, so any
number of devices trains as one.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from v2f_jax import models

# Folded into the step's key: the embedding noise keeps the key it had without mixup.
_KEY_SALT = 0x6D6978


@dataclasses.dataclass(frozen=True)
class Pairs:
    """This device's rows of the global batch's pairing.

    partner_rows: `[B_local]` int32, the row of the global batch each voice is blended with.
    partner_ids: `[B_local]` int32, that voice's identity label.
    lam: `[B_local]` float32 in [0, 1], the weight of each voice itself.
    """

    partner_rows: jax.Array
    partner_ids: jax.Array
    lam: jax.Array


def _global(x, axis_name):
    return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


def _my_rows(x, b_local: int, axis_name):
    if axis_name is None:
        return x
    return jax.lax.dynamic_slice_in_dim(x, jax.lax.axis_index(axis_name) * b_local, b_local)


def draw_pairs(step_key, ids, alpha: float, axis_name: str | None = None) -> Pairs:
    """Pairs each voice with another of the global batch (a permutation). ids `[B_local]`."""
    b_local = ids.shape[0]
    all_ids = _global(ids, axis_name)
    key_perm, key_lam = jax.random.split(jax.random.fold_in(step_key, _KEY_SALT))
    rows = jax.random.permutation(key_perm, all_ids.shape[0])
    lam = jax.random.beta(key_lam, alpha, alpha, (all_ids.shape[0],))
    rows, lam = _my_rows(rows, b_local, axis_name), _my_rows(lam, b_local, axis_name)
    return Pairs(rows.astype(jnp.int32), all_ids[rows], lam.astype(jnp.float32))


def mix(embedding, pairs: Pairs, axis_name: str | None = None):
    """`[B_local, D]` unit embeddings -> the blends of `pairs`, unit again."""
    partners = _global(embedding, axis_name)[pairs.partner_rows]
    lam = pairs.lam[:, None]
    return models.unit(lam * embedding + (1.0 - lam) * partners)


def identity_loss(logits, ids, pairs: Pairs):
    """C's cross-entropy to the blend of both labels, a batch mean. logits `[B, K]`, ids `[B]`."""
    logits = logits.astype(jnp.float32)
    own = optax.softmax_cross_entropy_with_integer_labels(logits, ids)
    partner = optax.softmax_cross_entropy_with_integer_labels(logits, pairs.partner_ids)
    return jnp.mean(pairs.lam * own + (1.0 - pairs.lam) * partner)
