"""A training config checked before anything is compiled or written.

Every value the networks, the step and the loop read is checked here, so a wrong one is a
`config_lib.ConfigError` that names the key (`v2f train` exits 2) instead of a traceback from
deep inside Flax or XLA minutes later. `take_from_records` carries the records' data properties
(front end, mel bins, image size) into the config, refusing a config that insists on others.
"""

from __future__ import annotations

import math
import os
from typing import Any

import ml_collections

from v2f_jax.config_lib import ConfigError

ARCHS = ("wen2019", "paper")
DTYPES = ("float32", "bfloat16")
PARALLEL_MODES = ("jit", "pmap")
TASKS = ("gan", "embedder")
ON_NONFINITE = ("stop", "skip")
# `train.embedder_init` that asks for a randomly initialised E on purpose.
RANDOM_EMBEDDER = "random"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    node = config
    for name in dotted.split("."):
        if name not in node:
            raise ConfigError(f"config has no {dotted!r}: is it a v2f config?")
        node = node[name]
    return node


def _int_at_least(config, dotted: str, low: int) -> None:
    value = _get(config, dotted)
    if not _is_int(value) or value < low:
        raise ConfigError(f"config.{dotted}={value!r}: must be an integer >= {low}")


def _one_of(config, dotted: str, choices: tuple[str, ...]) -> None:
    value = _get(config, dotted)
    if value not in choices:
        raise ConfigError(f"config.{dotted}={value!r}: must be one of {choices}")


def _positive_ints(config, dotted: str, length: int | None = None) -> None:
    value = _get(config, dotted)
    ok = isinstance(value, (tuple, list)) and value and all(_is_int(v) and v > 0 for v in value)
    if not ok:
        raise ConfigError(f"config.{dotted}={value!r}: must be a tuple of positive integers")
    if length is not None and len(value) != length:
        raise ConfigError(f"config.{dotted}={value!r}: must have {length} entries")


def check(config: ml_collections.ConfigDict) -> None:
    """Every setting's type and range; the networks' shapes (traced, nothing computed).

    Raises:
      ConfigError: the first wrong setting, by its key.
    """
    from v2f_jax.input_pipeline import audio

    _int_at_least(config, "seed", 0)
    check_networks(config)
    _positive_ints(config, "data.crop_lengths")
    _int_at_least(config, "data.shuffle_buffer", 1)
    prefetch = config.data.prefetch_to_device
    if not _is_int(prefetch) or prefetch < 0:
        raise ConfigError(f"config.data.prefetch_to_device={prefetch!r}: must be an integer >= 0")
    for key in ("on_device", "in_host_memory"):
        if not isinstance(config.data[key], bool):
            raise ConfigError(f"config.data.{key}: must be true or false")
    if config.data.on_device and config.data.in_host_memory:
        raise ConfigError(
            "config.data.on_device and config.data.in_host_memory: choose one place for the split"
        )
    if not isinstance(config.data.arrays_dir, str):
        raise ConfigError("config.data.arrays_dir: must be a folder path or ''")
    if not isinstance(config.data.service_address, str):
        raise ConfigError("config.data.service_address: must be a string (grpc://host:port or '')")
    _one_of(config, "data.frontend", ("", *audio.FRONTENDS))
    _positive_ints(config, "model.trunk_channels")
    for key in ("optim.lr", "optim.b1", "optim.b2"):
        value = _get(config, key)
        low_ok = value > 0 if key == "optim.lr" else value >= 0
        if not _is_number(value) or not low_ok or (key != "optim.lr" and value >= 1):
            want = "a number > 0" if key == "optim.lr" else "a number in [0, 1)"
            raise ConfigError(f"config.{key}={value!r}: must be {want}")
    _one_of(config, "train.task", TASKS)
    _int_at_least(config, "train.batch_size", 1)
    _int_at_least(config, "train.steps", 1)
    ema = config.train.ema_decay
    if not _is_number(ema) or not 0 <= ema < 1:
        raise ConfigError(f"config.train.ema_decay={ema!r}: must be a number in [0, 1)")
    decay = config.optim.decay_steps
    if not _is_int(decay) or decay < 0:
        raise ConfigError(f"config.optim.decay_steps={decay!r}: must be an integer >= 0")
    weight = config.train.identity_weight
    if not _is_number(weight) or weight < 0:
        raise ConfigError(f"config.train.identity_weight={weight!r}: must be a number >= 0")
    face_weight = config.train.face_target_weight
    if not _is_number(face_weight) or not 0 <= face_weight < float("inf"):
        raise ConfigError(
            f"config.train.face_target_weight={face_weight!r}: must be a finite number >= 0"
        )
    pool = config.train.face_target_pool
    if not _is_int(pool) or pool < 1 or 64 % pool:
        raise ConfigError(
            f"config.train.face_target_pool={pool!r}: must be a cell side in pixels that "
            "divides 64 (1, 2, 4, 8, 16, 32 or 64)"
        )
    mixup = config.train.voice_mixup
    if not _is_number(mixup) or not 0 <= mixup < float("inf"):
        raise ConfigError(
            f"config.train.voice_mixup={mixup!r}: must be a finite number >= 0 (0: off)"
        )
    if mixup > 0 and face_weight > 0 and config.train.task == "gan":
        raise ConfigError(
            "config.train.voice_mixup > 0 and config.train.face_target_weight > 0 do not "
            "combine in a GAN run: set one of them to 0"
        )
    noise = _get(config, "train.embed_noise")
    if not _is_number(noise) or noise < 0:
        raise ConfigError(f"config.train.embed_noise={noise!r}: must be a number >= 0")
    if not isinstance(_get(config, "train.train_embedder"), bool):
        raise ConfigError("config.train.train_embedder: must be true or false")
    if not isinstance(_get(config, "train.embedder_init"), str):
        raise ConfigError("config.train.embedder_init: must be a path, or 'random'")
    _one_of(config, "train.parallel", PARALLEL_MODES)
    _int_at_least(config, "train.log_every", 1)
    _int_at_least(config, "train.sample_every", 0)
    _one_of(config, "train.on_nonfinite", ON_NONFINITE)
    _int_at_least(config, "train.max_nonfinite_skips", 0)
    _int_at_least(config, "checkpoint.every", 1)
    _int_at_least(config, "checkpoint.keep", 1)
    _int_at_least(config, "eval.face_embedder_steps", 1)
    _int_at_least(config, "eval.gallery_size", 0)
    _check_shapes(config)


def check_networks(config: ml_collections.ConfigDict) -> None:
    """What building E and G needs (also all a model file's config must hold): `data.n_mels`,
    `data.image_size` and `model.*` but the critics' channels.

    Raises:
      ConfigError: the first wrong setting, by its key.
    """
    from v2f_jax.ops import conv

    _int_at_least(config, "data.n_mels", 1)
    _int_at_least(config, "data.image_size", 1)
    _one_of(config, "model.arch", ARCHS)
    _one_of(config, "model.dtype", DTYPES)
    try:
        conv.forms_for(_get(config, "model.impl"), "cpu")  # accepts the legacy "reference"
    except ValueError as err:
        raise ConfigError(str(err)) from None
    _int_at_least(config, "model.embed_dim", 1)
    _positive_ints(config, "model.voice_channels")
    _positive_ints(config, "model.gen_channels", 5)  # 1x1 -> 4x4, then four doublings: 64x64


def _check_shapes(config: ml_collections.ConfigDict) -> None:
    """G must draw `data.image_size` faces and the critics must read them."""
    import jax
    import jax.numpy as jnp

    from v2f_jax import models

    nets = models.Networks(config.model, 2)
    size = int(config.data.image_size)
    embedding = jnp.zeros((1, nets.embed_dim))
    g_vars = jax.eval_shape(nets.generator.init, jax.random.PRNGKey(0), embedding)
    faces = jax.eval_shape(nets.generator.apply, g_vars, embedding)
    if tuple(faces.shape) != (1, size, size, 3):
        raise ConfigError(
            f"config.model.gen_channels draws {faces.shape[1]}x{faces.shape[2]} faces, "
            f"config.data.image_size is {size}"
        )
    face = jnp.zeros((1, size, size, 3))
    try:
        c_vars = jax.eval_shape(nets.critics.init, jax.random.PRNGKey(0), face)
        jax.eval_shape(nets.critics.apply, c_vars, face)
    except (ValueError, TypeError) as err:
        raise ConfigError(
            f"config.model.trunk_channels={tuple(config.model.trunk_channels)} cannot read "
            f"{size}x{size} faces: {str(err).splitlines()[0][:200]}"
        ) from None


def check_devices(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """The global batch splits evenly over the devices (every device runs the same shapes)."""
    batch = int(config.train.batch_size)
    if batch % num_devices:
        low = max(num_devices, batch - batch % num_devices)
        raise ConfigError(
            f"config.train.batch_size={batch} does not split over {num_devices} devices: use a "
            f"multiple of {num_devices} (e.g. {low} or {low + num_devices})"
        )


def check_embedder_source(config: ml_collections.ConfigDict) -> None:
    """A GAN with a frozen E needs a trained E: against a random one every voice draws the same
    face. `train.embedder_init=random` asks for that on purpose (tests, ablations).

    Raises:
      ConfigError: a frozen E with no `train.embedder_init`, or one that does not exist.
    """
    source = str(config.train.embedder_init)
    if config.train.task != "gan" or source == RANDOM_EMBEDDER:
        return
    if not source:
        if config.train.train_embedder:
            return
        raise ConfigError(
            "this GAN would train against a random, frozen voice embedder E "
            "(config.train.embedder_init is empty, config.train.train_embedder is false): "
            "every voice would then draw the same face. Pretrain E first:\n"
            "  v2f train --config configs/embedder.py --records RECORDS --workdir runs/embedder\n"
            "(configs/embedder.py:tiny for configs/tiny.py), then add "
            "--config.train.embedder_init=runs/embedder to this command. To train against a "
            "random E on purpose, pass --config.train.embedder_init=random."
        )
    if not os.path.exists(source):
        raise ConfigError(f"config.train.embedder_init={source}: no such workdir or model file")


def records_frontend(records) -> str:
    """The front end of the records' voices: the manifest's, or wen2019 for records made only
    of the reference's precomputed `.npy` log-mels (its own front end computed those)."""
    name = records.frontend.get("name")
    if name:
        return name
    return "wen2019"


def take_from_records(config: ml_collections.ConfigDict, records) -> None:
    """Sets `data.frontend` from the records (where the config leaves it ""); refuses a config
    whose front end, mel bins or image size are not the records'. Mutates `config`.

    Raises:
      ConfigError: naming the key, the records' value and the manifest.
    """
    manifest = records.manifest
    if records.num_train_ids < 1:
        raise ConfigError(
            f"the records in {records.root} have no training identities ({records.manifest_path})"
        )
    have = {
        "data.frontend": records_frontend(records),
        "data.n_mels": int(manifest.get("n_mels", config.data.n_mels)),
        "data.image_size": int(manifest.get("image_size", config.data.image_size)),
    }
    if config.data.frontend == "":
        config.data.frontend = have["data.frontend"]
    for key, value in have.items():
        wanted = _get(config, key)
        if wanted != value:
            hint = (
                'leave it unset ("") to train on the records\' front end, or prepare records '
                f"with --frontend {wanted}"
                if key == "data.frontend"
                else "drop that override"
            )
            raise ConfigError(
                f"config.{key}={wanted!r}, but the records in {records.root} have {value!r} "
                f"({records.manifest_path}); {hint}"
            )
