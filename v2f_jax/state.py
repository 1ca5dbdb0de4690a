"""Training states (pytrees of arrays) and how they are created.

A state holds only arrays: parameters, BatchNorm statistics, optimiser states, the step and the
run's RNG key. The networks and optimisers themselves are static and rebuilt from the config, so a
state checkpoints and restores as one pytree.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from v2f_jax import models
from v2f_jax.training import face_targets

PyTree = Any


@flax.struct.dataclass
class GanState:
    """Everything a GAN run updates.

    Attributes:
      step: int32 `[]`, optimiser steps done.
      key: uint32 `[2]`, the run's base PRNG key; step `s` uses `fold_in(key, s)`.
      embedder: `{"params", "batch_stats"}` of E.
      generator: G's parameters.
      critics: F, D and C parameters (one tree; one Adam).
      g_opt, c_opt: Adam states of G and of the critics.
      e_opt: Adam state of E when it trains jointly (`train.train_embedder`), else None.
      generator_ema: an exponential moving average of G's parameters (`train.ema_decay` > 0),
        what evaluation and export use; else None.
    """

    step: jax.Array
    key: jax.Array
    embedder: PyTree
    generator: PyTree
    critics: PyTree
    g_opt: PyTree
    c_opt: PyTree
    e_opt: PyTree = None
    generator_ema: PyTree = None


@flax.struct.dataclass
class EmbedderState:
    """E's pretraining: E with a linear head over speakers (and one to face targets)."""

    step: jax.Array
    key: jax.Array
    embedder: PyTree
    head: PyTree
    opt: PyTree


def make_optimizer(optim_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam as the reference sets it (lr 2e-4, betas 0.5/0.999, eps 1e-8), at a constant rate
    unless asked otherwise. `optim.warmup_steps` > 0: the rate rises linearly from 0 to `lr` over
    that many updates (large global batches). `optim.decay_steps` > 0: it then follows a cosine
    to 0, reached at that many updates from the start (and stays there)."""
    lr = optim_config.lr
    warmup, decay = int(optim_config.warmup_steps), int(optim_config.decay_steps)
    if warmup > 0 and decay > 0:
        lr = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(decay, warmup + 1))
    elif warmup > 0:
        lr = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
        )
    elif decay > 0:
        lr = optax.cosine_decay_schedule(lr, decay)
    return optax.adam(lr, b1=optim_config.b1, b2=optim_config.b2)


def init_embedder(nets: models.Networks, key, n_mels: int = 64) -> PyTree:
    variables = nets.embedder.init(key, jnp.zeros((2, 64, n_mels)), train=False)
    return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def create_gan_state(config: ml_collections.ConfigDict, nets: models.Networks) -> GanState:
    """Fresh parameters and optimiser states from `config.seed`."""
    key = jax.random.PRNGKey(config.seed)
    k_e, k_g, k_c, k_run = jax.random.split(key, 4)
    size = config.data.image_size
    embedder = init_embedder(nets, k_e, config.data.n_mels)
    generator = nets.generator.init(k_g, jnp.zeros((1, nets.embed_dim)))["params"]
    critics = nets.critics.init(k_c, jnp.zeros((1, size, size, 3)))["params"]
    optimizer = make_optimizer(config.optim)
    return GanState(
        step=jnp.zeros((), jnp.int32),
        key=k_run,
        embedder=embedder,
        generator=generator,
        critics=critics,
        g_opt=optimizer.init(generator),
        c_opt=optimizer.init(critics),
        e_opt=optimizer.init(embedder["params"]) if config.train.train_embedder else None,
        # A copy, not the same arrays: a donated state must not hold one buffer twice.
        generator_ema=(
            jax.tree_util.tree_map(jnp.copy, generator) if config.train.ema_decay > 0 else None
        ),
    )


def speaker_head(config: ml_collections.ConfigDict, num_speakers: int) -> models.SpeakerHead:
    """E's pretraining head; with a face output when `train.face_target_weight` > 0."""
    face_dim = 0
    if float(config.train.face_target_weight) > 0:
        face_dim = face_targets.target_dim(int(config.train.face_target_pool))
    return models.SpeakerHead(num_speakers, face_dim)


def create_embedder_state(
    config: ml_collections.ConfigDict, nets: models.Networks, num_speakers: int
) -> EmbedderState:
    key = jax.random.PRNGKey(config.seed)
    k_e, k_h, k_run = jax.random.split(key, 3)
    embedder = init_embedder(nets, k_e, config.data.n_mels)
    head = speaker_head(config, num_speakers).init(k_h, jnp.zeros((1, nets.embed_dim)))["params"]
    optimizer = make_optimizer(config.optim)
    return EmbedderState(
        step=jnp.zeros((), jnp.int32),
        key=k_run,
        embedder=embedder,
        head=head,
        opt=optimizer.init({"embedder": embedder["params"], "head": head}),
    )


def count_params(tree: PyTree) -> int:
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))
