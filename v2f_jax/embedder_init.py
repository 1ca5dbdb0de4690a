"""Where a GAN run's voice embedder E starts: a pretrained E (`train.embedder_init`)."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from v2f_jax import checkpointing, config_checks, config_lib

PyTree = Any


def load_embedder(path: str | os.PathLike, template: PyTree) -> PyTree:
    """E's `{"params", "batch_stats"}` from an embedder (or GAN) workdir or an exported model
    file, checked against `template` (the shapes this config's E has); `"random"`: `template`
    itself, the freshly initialised E (asked for on purpose: `config_checks`).

    Raises:
      FileNotFoundError: `path` is neither a workdir nor a file.
      config_lib.ConfigError: that E's shapes differ from this config's.
    """
    path = os.fspath(path)
    if path == config_checks.RANDOM_EMBEDDER:
        return jax.tree_util.tree_map(np.asarray, template)
    if os.path.isdir(path):
        _, restored = checkpointing.restore_for_inference(path)
        embedder = restored.embedder
    elif os.path.isfile(path):
        # Only here does training read a model file: the inference path loads lazily.
        from v2f_jax.inference import model_files

        embedder = model_files.load_model(path).embedder
    else:
        raise FileNotFoundError(f"train.embedder_init: {path}: no such workdir or model file")
    embedder = {"params": embedder["params"], "batch_stats": embedder["batch_stats"]}
    want = jax.tree_util.tree_map(lambda x: (tuple(x.shape), np.dtype(x.dtype)), template)
    got = jax.tree_util.tree_map(lambda x: (tuple(np.shape(x)), np.asarray(x).dtype), embedder)
    if want != got:
        raise config_lib.ConfigError(
            f"train.embedder_init: the embedder in {path} does not fit this config's "
            f"model.voice_channels/embed_dim/n_mels (shapes differ)"
        )
    return jax.tree_util.tree_map(np.asarray, embedder)
