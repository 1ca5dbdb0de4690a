"""A training config checked before anything is compiled or written.

Every value the networks, the step and the loop read is checked here, so a wrong one is a
`config_lib.ConfigError` that names the key (`v2f train` exits 2) instead of a traceback from
deep inside Flax or XLA minutes later. `RULES` holds one rule (type and range) for every setting
of configs/wen2019.py (a test holds them to it: a new setting needs its rule); a key no rule
knows is refused as a typo. The same rules check a workdir's config.json before a resume.
`take_from_records` carries the records' data properties (front end, mel bins, image size) into
the config, refusing a config that insists on others; `check_batch` holds the batch to the
training split.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import ml_collections

from v2f_jax.config_lib import ConfigError
from v2f_jax.input_pipeline import audio

ARCHS = ("wen2019", "paper")
DTYPES = ("float32", "bfloat16")
PARALLEL_MODES = ("jit", "pmap")
TASKS = ("gan", "embedder")
ON_NONFINITE = ("stop", "skip")
PRECISIONS = ("default", "high", "highest")  # jax.default_matmul_precision's names
# `train.embedder_init` that asks for a randomly initialised E on purpose.
RANDOM_EMBEDDER = "random"
# The longest crop a step may read (frames of 10 ms: 100 s). The reference crops 300-800.
MAX_CROP_FRAMES = 10_000
# The most batches `data.prefetch_to_device` may hold on the devices ahead of the step.
MAX_PREFETCH = 64


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    node = config
    for name in dotted.split("."):
        if not isinstance(node, (dict, ml_collections.ConfigDict)) or name not in node:
            raise ConfigError(f"config has no {dotted!r}: is it a v2f config?")
        node = node[name]
    return node


# --- one rule a setting ----------------------------------------------------------------------
# A rule takes the value and returns None (fine) or what the value must be ("an integer >= 1").


Rule = Callable[[Any], "str | None"]


def integer(low: int = 0, high: int | None = None) -> Rule:
    def rule(value):
        if _is_int(value) and value >= low and (high is None or value <= high):
            return None
        return f"an integer >= {low}" + ("" if high is None else f" and <= {high}")

    return rule


def number(low: float = 0.0, *, above: bool = False, below: float | None = None) -> Rule:
    """A finite number >= `low` (> `low` where `above`), < `below` where given."""

    def rule(value):
        ok = _is_number(value) and (value > low if above else value >= low)
        if ok and (below is None or value < below):
            return None
        if below is not None:
            return f"a number in [{low:g}, {below:g})"
        return f"a finite number {'>' if above else '>='} {low:g}"

    return rule


def boolean(value) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def one_of(*choices: str) -> Rule:
    def rule(value):
        return None if isinstance(value, str) and value in choices else f"one of {choices}"

    return rule


def text(what: str) -> Rule:
    def rule(value):
        return None if isinstance(value, str) else what

    return rule


def positive_ints(length: int | None = None, high: int | None = None) -> Rule:
    """A non-empty tuple of positive integers (of `length` entries, each <= `high`)."""

    def rule(value):
        want = "a tuple of positive integers" + ("" if high is None else f" <= {high}")
        if not isinstance(value, (tuple, list)) or not value:
            return want
        if not all(_is_int(v) and 0 < v and (high is None or v <= high) for v in value):
            return want
        if length is not None and len(value) != length:
            return f"{want}, {length} entries"
        return None

    return rule


def _impl(value) -> str | None:
    from v2f_jax.ops import conv

    try:
        conv.forms_for(value, "cpu")  # accepts the legacy "reference"
    except (ValueError, TypeError) as err:
        return str(err).partition("must be ")[2] or str(err)
    return None


def _upsample(value) -> str | None:
    from v2f_jax import models

    choices = ("", *models.UPSAMPLES)
    return None if isinstance(value, str) and value in choices else f"one of {choices}"


def _odd_kernel(value) -> str | None:
    # Odd, so that padding (k - 1) / 2 keeps the 64x64 face centred.
    return None if _is_int(value) and value >= 1 and value % 2 else "an odd integer >= 1"


def _face_target_pool(value) -> str | None:
    if _is_int(value) and value >= 1 and not 64 % value:
        return None
    return "a cell side in pixels that divides 64 (1, 2, 4, 8, 16, 32 or 64)"


def _coarse_cell(value) -> str | None:
    if _is_int(value) and (value == 0 or (value >= 2 and not 64 % value)):
        return None
    return "0 (off) or a cell side in pixels that divides 64 (2, 4, 8, 16, 32 or 64)"


def _profile_steps(value) -> str | None:
    want = "() (no trace) or (a, b): loop steps with 1 <= a <= b"
    if not isinstance(value, (tuple, list)):
        return want
    if not value:
        return None
    if len(value) != 2 or not all(_is_int(v) for v in value):
        return want
    return None if 1 <= value[0] <= value[1] else want


def _service_address(value) -> str | None:
    want = "'' or grpc://HOST:PORT (a `v2f data-service dispatcher`)"
    if not isinstance(value, str):
        return want
    if not value:
        return None
    rest = value.removeprefix("grpc://")
    host, sep, port = rest.rpartition(":")
    if "://" in rest or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return want
    return None


# Every setting of configs/wen2019.py and what its value must be (tests/ check that none lacks
# one). Ranges that depend on other settings or on the records are checked after these.
RULES: dict[str, Rule] = {
    "seed": integer(0, 2**32 - 1),
    "data.n_mels": integer(1),
    "data.frontend": one_of("", *audio.FRONTENDS),
    "data.crop_lengths": positive_ints(high=MAX_CROP_FRAMES),
    "data.image_size": integer(1),
    "data.face_flip": boolean,
    "data.shuffle_buffer": integer(1),
    "data.prefetch_to_device": integer(0, MAX_PREFETCH),
    "data.on_device": boolean,
    "data.in_host_memory": boolean,
    "data.arrays_dir": text("a folder path or ''"),
    "data.service_address": _service_address,
    "model.arch": one_of(*ARCHS),
    "model.embed_dim": integer(1),
    "model.voice_channels": positive_ints(),
    "model.gen_channels": positive_ints(length=5),  # 1x1 -> 4x4, then four doublings: 64x64
    "model.trunk_channels": positive_ints(),
    "model.upsample": _upsample,  # "": the architecture's own
    "model.upsample_blur": boolean,
    "model.gen_out_kernel": _odd_kernel,
    "model.coarse_cell": _coarse_cell,
    "model.dtype": one_of(*DTYPES),
    "model.impl": _impl,
    "model.matmul_precision": one_of(*PRECISIONS),
    "model.num_ids": integer(0),
    "optim.lr": number(0.0, above=True),
    "optim.b1": number(0.0, below=1.0),
    "optim.b2": number(0.0, below=1.0),
    "optim.decay_steps": integer(0),
    "optim.warmup_steps": integer(0),
    "train.task": one_of(*TASKS),
    "train.batch_size": integer(1),
    "train.steps": integer(1),
    "train.embed_noise": number(0.0),
    "train.identity_weight": number(0.0),
    "train.ema_decay": number(0.0, below=1.0),
    "train.voice_mixup": number(0.0),
    "train.train_embedder": boolean,
    "train.face_target_weight": number(0.0),
    "train.face_target_pool": _face_target_pool,
    "train.r1_weight": number(0.0),
    "train.r1_every": integer(1),
    "train.embedder_init": text("a workdir or model file, or 'random'"),
    "train.parallel": one_of(*PARALLEL_MODES),
    "train.steps_per_call": integer(1),
    "train.profile_steps": _profile_steps,
    "train.compilation_cache": text("'auto', 'workdir', a folder, or ''"),
    "train.log_every": integer(1),
    "train.sample_every": integer(0),
    "train.on_nonfinite": one_of(*ON_NONFINITE),
    "train.max_nonfinite_skips": integer(0),
    "checkpoint.every": integer(1),
    "checkpoint.keep": integer(1),
    "eval.face_embedder_steps": integer(1),
    "eval.gallery_size": integer(0),
}


def _leaves(node, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in node.items():
        if isinstance(value, (dict, ml_collections.ConfigDict)):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def value_problems(config, keys=None) -> list[str]:
    """Each setting of `config` (a ConfigDict or plain dict) that breaks its rule, or is not a
    v2f setting at all, as `config.KEY=VALUE: must be ...`; [] when all are fine.

    Args:
      keys: check only these (default: every setting `config` has, and every rule's key).
    """
    have = _leaves(config)
    found = []
    sections = {key.split(".")[0] for key in RULES if "." in key}
    for key in keys if keys is not None else sorted(have.keys() | RULES.keys()):
        if key in sections:
            found.append(f"config.{key}={have[key]!r}: must be a section of settings")
            continue
        if key not in RULES:
            found.append(
                f"config.{key}: not a v2f setting (configs/wen2019.py declares every one; a "
                f"typo, or a setting of another version?)"
            )
            continue
        if key not in have:
            try:
                _get(config, key)
            except ConfigError:
                found.append(f"config.{key}: missing (is it a v2f config?)")
            continue
        want = RULES[key](have[key])
        if want is not None:
            found.append(f"config.{key}={have[key]!r}: must be {want}")
    return found


def check_values(config, keys=None) -> None:
    """Raises ConfigError naming the first setting `value_problems` finds."""
    found = value_problems(config, keys)
    if found:
        raise ConfigError(found[0])


def check(config: ml_collections.ConfigDict) -> None:
    """Every setting's type and range (`RULES`), the settings that must agree with each other,
    and the networks' shapes (traced, nothing computed).

    Raises:
      ConfigError: the first wrong setting, by its key.
    """
    check_values(config)
    if config.data.on_device and config.data.in_host_memory:
        raise ConfigError(
            "config.data.on_device and config.data.in_host_memory: choose one place for the split"
        )
    cell, pool = int(config.model.coarse_cell), int(config.train.face_target_pool)
    mean_face_term = float(config.train.face_target_weight) > 0
    if config.train.task == "gan" and cell and mean_face_term and pool % cell:
        raise ConfigError(
            f"config.model.coarse_cell={cell}: G's mean-face term then holds its network's cell "
            f"means to those the coarse map draws, which sets them only over cells of "
            f"{cell} pixels or a multiple: config.train.face_target_pool={pool} is not one"
        )
    _check_shapes(config)


def check_networks(config: ml_collections.ConfigDict) -> None:
    """What building E and G needs (also all a model file's config must hold): `data.n_mels`,
    `data.image_size` and `model.*` but the critics' channels.

    Raises:
      ConfigError: the first wrong setting, by its key.
    """
    check_values(config, NETWORK_KEYS)


NETWORK_KEYS = (
    "data.n_mels",
    "data.image_size",
    "model.arch",
    "model.dtype",
    "model.impl",
    "model.embed_dim",
    "model.voice_channels",
    "model.gen_channels",
    "model.upsample",
    "model.upsample_blur",
    "model.gen_out_kernel",
    "model.coarse_cell",
)


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


def check_batch(config: ml_collections.ConfigDict, records) -> None:
    """The global batch fits the records' training split: a batch never repeats a sample, and
    a smaller split would have no whole batch to train on.

    Raises:
      ConfigError: naming the key, the split's size and the manifest.
    """
    train = records.split("train")
    batch, smallest = int(config.train.batch_size), min(train["num_voices"], train["num_faces"])
    if batch > smallest:
        raise ConfigError(
            f"config.train.batch_size={batch} is larger than the training split of the records "
            f"in {records.root} ({train['num_voices']} voices, {train['num_faces']} faces; "
            f"{records.manifest_path}): a batch may not repeat a sample; use at most {smallest}"
        )
