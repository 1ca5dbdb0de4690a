"""Where a GAN run's voice embedder E starts: a pretrained E (`train.embedder_init`)."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
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


def check_frontend(config: ml_collections.ConfigDict) -> None:
    """A pretrained E (`train.embedder_init`) learnt from one front end's features; refuse it for
    records of another."""
    source = str(config.train.embedder_init)
    if config.train.task != "gan" or not source or source == config_checks.RANDOM_EMBEDDER:
        return
    theirs = None
    if os.path.isdir(source):
        path = os.path.join(source, "config.json")
        try:
            with open(path) as f:
                theirs = json.load(f).get("data", {}).get("frontend")
        except (OSError, ValueError):
            return  # loading it names what is wrong with it
    elif os.path.isfile(source):
        from v2f_jax.inference import model_files

        try:
            theirs = model_files.load_model(source).frontend_name
        except (OSError, ValueError):
            return
    if theirs and theirs != config.data.frontend:
        raise config_lib.ConfigError(
            f"config.train.embedder_init={source}: that E was trained on '{theirs}' features, "
            f"these records hold '{config.data.frontend}' ones; pretrain E on these records"
        )
