"""A trained voice-to-face model in memory: E and G with the config and front end they belong to.

`Model` carries none of the training state (critics, optimisers, checkpoints). It is built here
from a training state or freshly initialised; `model_files` reads and writes it, `sources` finds
it in a workdir, a model file or the reference's .pth files.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np

from v2f_jax import models
from v2f_jax import state as state_lib
from v2f_jax.input_pipeline import audio

PyTree = Any


@dataclasses.dataclass
class Model:
    """E and G with what is needed to use them.

    Attributes:
      config: the training config (`config.model` builds the networks).
      embedder: `{"params", "batch_stats"}` of E (numpy or jax arrays).
      generator: G's params.
      frontend: the audio front end's parameters (`input_pipeline.audio.frontend_params`), with
        `name` "wen2019" or "librosa".
      source: where it came from (workdir and step, or .pth files); informational.
    """

    config: ml_collections.ConfigDict
    embedder: PyTree
    generator: PyTree
    frontend: dict
    source: dict = dataclasses.field(default_factory=dict)

    @property
    def frontend_name(self) -> str:
        return self.frontend["name"]

    def networks(self) -> models.Networks:
        """Static Flax modules for this config (the critics are built but never used here)."""
        return _networks(self.config)


def _networks(config: ml_collections.ConfigDict) -> models.Networks:
    return models.Networks(config.model, max(1, int(config.model.num_ids)))


def frontend_of(config: ml_collections.ConfigDict) -> dict:
    """The parameters of the front end `config` was trained on (`config.data.frontend`; a
    config that never met records, where it is "", means the default, wen2019)."""
    return audio.frontend_params(config.data.frontend or "wen2019")


def model_from_state(
    config: ml_collections.ConfigDict, gan_state, source: dict | None = None
) -> Model:
    """E and G out of a training state (`state.GanState`), as host numpy arrays.

    Args:
      config: the run's config.
      gan_state: anything with `step`, `embedder` and `generator` (device or host arrays).
      source: recorded in `Model.source`, with `step` added.

    Raises:
      ValueError: an embedder-pretraining state (no generator).
    """
    if not hasattr(gan_state, "generator"):
        raise ValueError(
            "this is a voice-embedder pretraining run (train.task='embedder'): it has no "
            "generator to export; train a GAN with --config.train.embedder_init=<its workdir>"
        )
    to_np = lambda tree: jax.tree_util.tree_map(np.asarray, jax.device_get(tree))
    source = dict(source or {}, step=int(np.asarray(gan_state.step)))
    generator = gan_state.generator
    # A run that averages G's weights (`train.ema_decay`) is evaluated and exported by them.
    if getattr(gan_state, "generator_ema", None) is not None:
        generator = gan_state.generator_ema
        source["generator"] = f"ema {config.train.ema_decay}"
    return Model(
        config=config,
        embedder=to_np(gan_state.embedder),
        generator=to_np(generator),
        frontend=frontend_of(config),
        source=source,
    )


def init_model(config: ml_collections.ConfigDict) -> Model:
    """E and G exactly as step 0 of a `v2f train` run of `config` (`state.create_gan_state`'s
    keys), without the critics: the untrained baseline of that run."""
    nets = _networks(config)

    @jax.jit
    def init(key):
        k_e, k_g, _, _ = jax.random.split(key, 4)
        embedder = state_lib.init_embedder(nets, k_e, config.data.n_mels)
        generator = nets.generator.init(k_g, jax.numpy.zeros((1, nets.embed_dim)))["params"]
        return embedder, generator

    embedder, generator = jax.tree_util.tree_map(np.asarray, init(jax.random.PRNGKey(config.seed)))
    return Model(
        config=config,
        embedder=embedder,
        generator=generator,
        frontend=frontend_of(config),
        source={"untrained": True, "step": 0},
    )
