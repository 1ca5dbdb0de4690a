"""Trained voice-to-face models as one file: E and G parameters, the config and the front end.

The file needs none of the training state (critics, optimisers, checkpoints). Two containers, by
the file's extension:

- `.safetensors` (default): one float32 tensor per parameter, named by its path in the Flax
  tree (`embedder/params/conv0/kernel`, `embedder/batch_stats/bn0/mean`,
  `generator/deconv0/kernel`, ...), and string metadata `format` = "v2f-model",
  `format_version`, `config` (the training config as JSON), `frontend` (the audio front end's
  parameters as JSON: the features the model was trained on) and `source` (JSON). Readable with
  `safetensors.numpy.load_file` alone.
- `.msgpack`: `flax.serialization.msgpack_serialize` of `{"format", "format_version", "config",
  "frontend", "source", "embedder", "generator"}`, the same strings and trees.

`load_model(path)` gives a `Model` that embeds log-mels and draws faces; see `generate.py`.
PyTorch state dicts of the reference go in and out through `torch_interop`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from v2f_jax import config_lib, models, torch_interop

PyTree = Any

FORMAT = "v2f-model"
FORMAT_VERSION = 1
SUFFIXES = (".safetensors", ".msgpack")


class ModelFileError(ValueError):
    """A file that is not a v2f model, or one this version cannot read."""


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
        return models.Networks(self.config.model, max(1, int(self.config.model.get("num_ids", 0))))


# ---------------------------------------------------------------------------------- constructors


def frontend_of(config: ml_collections.ConfigDict) -> dict:
    from input_pipeline import audio  # noqa: PLC0415

    return audio.frontend_params(config.data.get("frontend", "wen2019"))


def model_from_state(config, gan_state, source: dict | None = None) -> Model:
    """E and G out of a training state (`state.GanState`), as host numpy arrays."""
    if not hasattr(gan_state, "generator"):
        raise ValueError(
            "this is a voice-embedder pretraining run (train.task='embedder'): it has no "
            "generator to export; train a GAN with --config.train.embedder_init=<its workdir>"
        )
    to_np = lambda tree: jax.tree_util.tree_map(np.asarray, jax.device_get(tree))  # noqa: E731
    return Model(
        config=config,
        embedder=to_np(gan_state.embedder),
        generator=to_np(gan_state.generator),
        frontend=frontend_of(config),
        source=dict(source or {}, step=int(np.asarray(gan_state.step))),
    )


def init_model(config: ml_collections.ConfigDict) -> Model:
    """E and G exactly as step 0 of a `v2f train` run of `config` (`state.create_gan_state`'s
    keys), without the critics: the untrained baseline of that run."""
    nets = models.Networks(config.model, max(1, int(config.model.get("num_ids", 0))))

    @jax.jit
    def init(key):
        from v2f_jax import state as state_lib  # noqa: PLC0415

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


def model_from_workdir(workdir: str | os.PathLike, step: int | None = None) -> Model:
    """A checkpoint of a training run: the newest complete one, or `step`."""
    from v2f_jax import checkpointing  # noqa: PLC0415  (orbax)

    config, gan_state = checkpointing.restore_for_inference(os.fspath(workdir), step)
    return model_from_state(config, gan_state, {"workdir": os.path.abspath(workdir)})


def model_from_torch(embedder_pth: str | os.PathLike, generator_pth: str | os.PathLike) -> Model:
    """The reference's `voice_embedding.pth` and `generator.pth` (needs torch to read them)."""
    e_sd = torch_interop.load_pth(embedder_pth)
    g_sd = torch_interop.load_pth(generator_pth)
    config = torch_interop.model_config_from_torch(e_sd, g_sd)
    return Model(
        config=config,
        embedder=torch_interop.embedder_from_torch(e_sd),
        generator=torch_interop.generator_from_torch(g_sd),
        frontend=frontend_of(config),
        source={
            "torch_embedder": os.path.abspath(embedder_pth),
            "torch_generator": os.path.abspath(generator_pth),
        },
    )


def load_any(
    model: str | os.PathLike | None = None,
    workdir: str | os.PathLike | None = None,
    torch_embedder: str | os.PathLike | None = None,
    torch_generator: str | os.PathLike | None = None,
    step: int | None = None,
) -> Model:
    """Exactly one source: an exported file, a training workdir (at `step`, default the newest
    checkpoint), or a pair of .pth files. A directory given as `model` is taken as a workdir."""
    given = [
        model is not None,
        workdir is not None,
        (torch_embedder or torch_generator) is not None,
    ]
    if sum(given) != 1:
        raise ValueError(
            "give exactly one model source: --model FILE, --workdir DIR, or "
            "--torch-embedder voice_embedding.pth --torch-generator generator.pth"
        )
    if model is not None:
        if os.path.isdir(model):
            return model_from_workdir(model, step)
        return load_model(model)
    if workdir is not None:
        return model_from_workdir(workdir, step)
    if not (torch_embedder and torch_generator):
        raise ValueError("--torch-embedder and --torch-generator go together")
    return model_from_torch(torch_embedder, torch_generator)


# ------------------------------------------------------------------------------------ our format


def _metadata(m: Model) -> dict[str, str]:
    return {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(config_lib.to_dict(m.config), sort_keys=True),
        "frontend": json.dumps(m.frontend, sort_keys=True),
        "source": json.dumps(m.source, sort_keys=True),
    }


def _flatten(tree, prefix: str) -> dict[str, np.ndarray]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict) or hasattr(value, "items"):
            out |= _flatten(value, name)
        else:
            out[name] = np.ascontiguousarray(np.asarray(value, np.float32))
    return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def save_model(m: Model, path: str | os.PathLike) -> str:
    """Writes `m` to `path` (`.safetensors` or `.msgpack`); returns the path."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1]
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: the model file must end in one of {SUFFIXES}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tensors = _flatten({"embedder": m.embedder, "generator": m.generator}, "").items()
    tensors = {k.lstrip("/"): v for k, v in tensors}
    tmp = path + ".tmp"
    if suffix == ".safetensors":
        from safetensors import numpy as st_numpy  # noqa: PLC0415

        st_numpy.save_file(tensors, tmp, metadata=_metadata(m))
    else:
        from flax import serialization  # noqa: PLC0415

        payload = _metadata(m) | _unflatten(tensors)
        with open(tmp, "wb") as f:
            f.write(serialization.msgpack_serialize(payload))
    os.replace(tmp, path)
    return path


def load_model(path: str | os.PathLike) -> Model:
    """Reads a file written by `save_model` (`v2f export`).

    Raises:
      FileNotFoundError: no such file.
      ModelFileError: not a v2f model file, or a newer format version.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        if path.endswith(".msgpack"):
            from flax import serialization  # noqa: PLC0415

            with open(path, "rb") as f:
                payload = serialization.msgpack_restore(f.read())
            meta = {
                k: payload.get(k)
                for k in ("format", "format_version", "config", "frontend", "source")
            }
            trees = {k: payload.get(k) for k in ("embedder", "generator")}
        else:
            from safetensors import numpy as st_numpy  # noqa: PLC0415
            from safetensors import safe_open

            with safe_open(path, framework="numpy") as f:
                meta = dict(f.metadata() or {})
            trees = _unflatten(st_numpy.load_file(path))
    except ModelFileError:
        raise
    except Exception as err:  # a corrupt or foreign file: say so, with the cause
        raise ModelFileError(
            f"{path}: not a v2f model file ({err.__class__.__name__}: {err})"
        ) from err
    if meta.get("format") != FORMAT:
        raise ModelFileError(
            f"{path}: not a v2f model file (write one with `v2f export --workdir DIR --out FILE`)"
        )
    if int(meta.get("format_version") or 0) > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format version {meta['format_version']}; this v2f reads up to "
            f"{FORMAT_VERSION}. Upgrade v2f-jax."
        )
    if not trees.get("embedder") or not trees.get("generator"):
        raise ModelFileError(f"{path}: the embedder or generator parameters are missing")
    embedder = trees["embedder"]
    return Model(
        config=config_lib.from_dict(_lists_to_tuples(json.loads(meta["config"]))),
        embedder={"params": embedder["params"], "batch_stats": embedder.get("batch_stats", {})},
        generator=trees["generator"],
        frontend=json.loads(meta["frontend"]),
        source=json.loads(meta.get("source") or "{}"),
    )


def _lists_to_tuples(tree):
    """JSON turned the config's tuples into lists; back, so the config equals the one saved."""
    if isinstance(tree, dict):
        return {k: _lists_to_tuples(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return tuple(_lists_to_tuples(v) for v in tree)
    return tree


# -------------------------------------------------------------------------- the reference's format


def export_torch(m: Model, out_dir: str | os.PathLike) -> tuple[str, str]:
    """Writes `voice_embedding.pth` and `generator.pth` in the reference's layout into `out_dir`.

    Only the wen2019 architecture has PyTorch counterparts (`network.py` of the reference).
    """
    if m.config.model.arch != "wen2019":
        raise ValueError(
            f"only wen2019 models have the reference's PyTorch layout; this one is "
            f"{m.config.model.arch!r}"
        )
    os.makedirs(out_dir, exist_ok=True)
    e_path = os.path.join(os.fspath(out_dir), "voice_embedding.pth")
    g_path = os.path.join(os.fspath(out_dir), "generator.pth")
    torch_interop.save_pth(torch_interop.embedder_to_torch(m.embedder), e_path)
    torch_interop.save_pth(torch_interop.generator_to_torch(m.generator), g_path)
    return e_path, g_path
