"""A trained model as one file: E and G parameters, the config and the front end.

Two containers, by the file's extension:

- `.safetensors` (default): one float32 tensor per parameter, named by its path in the Flax
  tree (`embedder/params/conv0/kernel`, `embedder/batch_stats/bn0/mean`,
  `generator/deconv0/kernel`, ...), and string metadata `format` = "v2f-model",
  `format_version`, `config` (the training config as JSON), `frontend` (the audio front end's
  parameters as JSON: the features the model was trained on) and `source` (JSON). Readable with
  `safetensors.numpy.load_file` alone.
- `.msgpack`: `flax.serialization.msgpack_serialize` of `{"format", "format_version", "config",
  "frontend", "source", "embedder", "generator"}`, the same strings and trees.
"""

from __future__ import annotations

import json
import os

import numpy as np
from flax import serialization, traverse_util
from safetensors import numpy as st_numpy
from safetensors import safe_open

from v2f_jax import config_lib, files
from v2f_jax.inference import validate
from v2f_jax.inference.model import Model

FORMAT = "v2f-model"
FORMAT_VERSION = 1
SUFFIXES = (".safetensors", ".msgpack")
_META_KEYS = ("format", "format_version", "config", "frontend", "source")
_TORCH_SUFFIXES = (".pth", ".pt")
# torch.save's zip container, and a bare pickle (protocol 2+) of older torch versions.
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


class ModelFileError(ValueError):
    """A file that is not a v2f model, or one this version cannot read."""


def save_model(m: Model, path: str | os.PathLike) -> str:
    """Writes `m` to `path` (`.safetensors` or `.msgpack`) atomically; returns the path.

    Raises:
      ValueError: another extension.
      ModelFileError: the model does not pass `validate.problems` (nothing is written).
      files.WriteError: the write failed (a full disk), naming `path`; nothing is left of it.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1]
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: the model file must end in one of {SUFFIXES}")
    found = validate.problems(m)
    if found:
        raise ModelFileError(f"{path}: not written, the model is not usable: {'; '.join(found)}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    flat = traverse_util.flatten_dict({"embedder": m.embedder, "generator": m.generator}, sep="/")
    tensors = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in flat.items()}
    if suffix == ".safetensors":
        data = st_numpy.save(tensors, metadata=_metadata(m))
    else:
        payload = _metadata(m) | traverse_util.unflatten_dict(tensors, sep="/")
        data = serialization.msgpack_serialize(payload)
    # Written by Python (not safetensors' own writer, which makes files 0600): the umask rules.
    # Atomically: a command reading the old file (an open handle, a memory map) keeps reading
    # it whole, and a write cut short (a full disk, kill -9) leaves the old file as it was.
    files.write_bytes(path, data)
    return path


def load_model(path: str | os.PathLike) -> Model:
    """Reads a file written by `save_model` (`v2f export`), checked in full (`validate`).

    Raises:
      FileNotFoundError: no such file.
      ModelFileError: not a v2f model file (a PyTorch file said so), a newer format version,
        metadata that does not parse, or a config, front end or tensor that does not fit.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such model file")
    with open(path, "rb") as f:
        head = f.read(4)
    if path.endswith(_TORCH_SUFFIXES) or head.startswith(_TORCH_MAGIC):
        raise ModelFileError(
            f"{path}: a PyTorch file, not a v2f model. The reference's pair goes in as "
            f"--torch-embedder voice_embedding.pth --torch-generator generator.pth (or convert "
            f"it once: v2f export --torch-embedder ... --torch-generator ... --out FILE)"
        )
    try:
        if path.endswith(".msgpack"):
            with open(path, "rb") as f:
                payload = serialization.msgpack_restore(f.read())
            meta = {k: payload.get(k) for k in _META_KEYS}
            trees = {k: payload.get(k) for k in ("embedder", "generator")}
        else:
            with safe_open(path, framework="numpy") as f:
                meta = dict(f.metadata() or {})
            trees = traverse_util.unflatten_dict(st_numpy.load_file(path), sep="/")
    except Exception as err:  # a corrupt or foreign file: say so, with the cause
        raise ModelFileError(
            f"{path}: not a v2f model file ({err.__class__.__name__}: {err})"
        ) from err
    if meta.get("format") != FORMAT:
        raise ModelFileError(
            f"{path}: not a v2f model file (write one with `v2f export --workdir DIR --out FILE`)"
        )
    try:
        version = int(meta.get("format_version") or 0)
    except (TypeError, ValueError):
        raise ModelFileError(f"{path}: bad format_version {meta.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format version {meta['format_version']}; this v2f reads up to "
            f"{FORMAT_VERSION}. Upgrade v2f-jax."
        )
    embedder, generator = trees.get("embedder"), trees.get("generator")
    if not isinstance(embedder, dict) or not embedder.get("params") or not generator:
        raise ModelFileError(f"{path}: the embedder or generator parameters are missing")
    fields = {}
    for key, want in (("config", dict), ("frontend", dict), ("source", dict)):
        raw = meta.get(key) or ("{}" if key == "source" else None)
        try:
            fields[key] = json.loads(raw)
        except (TypeError, ValueError):
            raise ModelFileError(f"{path}: metadata {key!r} is missing or not JSON") from None
        if not isinstance(fields[key], want):
            raise ModelFileError(f"{path}: metadata {key!r} is not a JSON object")
    m = Model(
        config=config_lib.from_dict(_lists_to_tuples(fields["config"])),
        embedder={"params": embedder["params"], "batch_stats": embedder.get("batch_stats", {})},
        generator=generator,
        frontend=fields["frontend"],
        source=fields["source"],
    )
    found = validate.problems(m)
    if found:
        raise ModelFileError(f"{path}: not a usable v2f model: {'; '.join(found)}")
    return m


def _metadata(m: Model) -> dict[str, str]:
    return {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(config_lib.to_dict(m.config), sort_keys=True),
        "frontend": json.dumps(m.frontend, sort_keys=True),
        "source": json.dumps(m.source, sort_keys=True),
    }


def _lists_to_tuples(tree):
    """JSON turned the config's tuples into lists; back, so the config equals the one saved."""
    if isinstance(tree, dict):
        return {k: _lists_to_tuples(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return tuple(_lists_to_tuples(v) for v in tree)
    return tree
