"""The reference's PyTorch state dicts (`voice_embedding.pth`, `generator.pth`) <-> our parameters.

The reference (cmu-mlsp/reconstructing_faces_from_voices, `network.py`) builds both networks as one
`nn.Sequential` named `model`:

    VoiceEmbedNet  model.{0,3,6,9}       Conv1d(k=3, s=2, p=1, bias=False)  weight [out, in, 3]
                   model.{1,4,7,10}      BatchNorm1d  weight, bias, running_mean, running_var,
                                                      num_batches_tracked
                   model.12              Conv1d(k=3, s=2, p=1)  weight [out, in, 3], bias
    Generator      model.{0,2,4,6,8,10}  ConvTranspose2d        weight [in, out, kh, kw], bias

Ours (`models.VoiceEmbedder`, `models.Generator(upsample="deconv")` without blur: the wen2019
config's default; G's other forms, `model.upsample` and `model.upsample_blur`, have no PyTorch
counterpart here and are refused), channels-last:

    E  params conv{i}.kernel [3, in, out], conv4.bias, bn{i}.scale/.bias;
       batch_stats bn{i}.mean/.var
    G  params deconv{i}.kernel [kh, kw, in, out] (PyTorch's kernel, un-flipped), deconv{i}.bias

so every conversion is a transpose. The layout functions here work on numpy arrays and need no
torch; only the file functions (`load_pth`, `save_pth`, `export_torch`) import it (an optional
dependency: `pip install torch`).
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from v2f_jax import files
from v2f_jax.configs import wen2019

if TYPE_CHECKING:
    from v2f_jax.inference.model import Model

# Positions of the layers inside the reference's nn.Sequential.
_E_CONVS = (0, 3, 6, 9, 12)
_E_BNS = (1, 4, 7, 10)
_G_DECONVS = (0, 2, 4, 6, 8, 10)
_CONV1D_TO_FLAX = (2, 1, 0)  # [out, in, k] <-> [k, in, out] (its own inverse)
_CONVT_TO_FLAX = (2, 3, 0, 1)  # [in, out, kh, kw] <-> [kh, kw, in, out] (its own inverse)


class StateDictError(ValueError):
    """A state dict that is not the reference's VoiceEmbedNet / Generator."""


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Drops a `module.` prefix (nn.DataParallel) and converts values to numpy."""
    out = {}
    for key, value in state_dict.items():
        out[key[len("module.") :] if key.startswith("module.") else key] = _np(value)
    return out


def _take(sd: dict, key: str, what: str, ndim: int | None = None) -> np.ndarray:
    if key not in sd:
        raise StateDictError(f"{what}: missing {key!r}; keys present: {sorted(sd)[:8]}...")
    value = sd.pop(key)
    if ndim is not None and value.ndim != ndim:
        raise StateDictError(f"{what}: {key!r} has shape {value.shape}, expected {ndim} dims")
    return value


def _no_leftovers(sd: dict, what: str) -> None:
    if sd:
        raise StateDictError(f"{what}: unexpected keys {sorted(sd)}")


# ------------------------------------------------------------------------------ voice embedder


def embedder_from_torch(state_dict: Mapping[str, Any]) -> dict:
    """`voice_embedding.pth`'s state dict -> `{"params", "batch_stats"}` of `models.VoiceEmbedder`.

    Raises:
      StateDictError: keys or shapes that are not the reference's VoiceEmbedNet.
    """
    sd, what = _strip_prefix(state_dict), "voice embedder state dict"
    params, stats = {}, {}
    for i, pos in enumerate(_E_CONVS):
        weight = _take(sd, f"model.{pos}.weight", what, ndim=3)
        if weight.shape[2] != 3:
            raise StateDictError(f"{what}: model.{pos}.weight has kernel {weight.shape[2]}, not 3")
        params[f"conv{i}"] = {"kernel": weight.transpose(_CONV1D_TO_FLAX).astype(np.float32)}
    params["conv4"]["bias"] = _take(sd, "model.12.bias", what, ndim=1).astype(np.float32)
    for i, pos in enumerate(_E_BNS):
        params[f"bn{i}"] = {
            "scale": _take(sd, f"model.{pos}.weight", what, ndim=1).astype(np.float32),
            "bias": _take(sd, f"model.{pos}.bias", what, ndim=1).astype(np.float32),
        }
        stats[f"bn{i}"] = {
            "mean": _take(sd, f"model.{pos}.running_mean", what, ndim=1).astype(np.float32),
            "var": _take(sd, f"model.{pos}.running_var", what, ndim=1).astype(np.float32),
        }
        sd.pop(f"model.{pos}.num_batches_tracked", None)
    _no_leftovers(sd, what)
    return {"params": params, "batch_stats": stats}


def embedder_to_torch(embedder: Mapping[str, Any]) -> dict:
    """`{"params", "batch_stats"}` of `models.VoiceEmbedder` -> the reference's state dict.

    Values are numpy (float32; `num_batches_tracked` int64 `[]` zero, which PyTorch reads only
    when BatchNorm's momentum is None); `save_pth` turns them into tensors.

    Raises:
      StateDictError: not the wen2019 voice embedder.
    """
    params = _tree_np(embedder["params"])
    stats = _tree_np(embedder["batch_stats"])
    if set(params) != {f"conv{i}" for i in range(5)} | {f"bn{i}" for i in range(4)}:
        raise StateDictError(
            "only the wen2019 voice embedder (4 conv+BN blocks, 1 conv) converts; got "
            f"{sorted(params)}"
        )
    sd = collections.OrderedDict()
    for i, pos in enumerate(_E_CONVS):
        sd[f"model.{pos}.weight"] = params[f"conv{i}"]["kernel"].transpose(_CONV1D_TO_FLAX)
        if i == 4:
            sd[f"model.{pos}.bias"] = params["conv4"]["bias"]
        if i < 4:
            bn = _E_BNS[i]
            sd[f"model.{bn}.weight"] = params[f"bn{i}"]["scale"]
            sd[f"model.{bn}.bias"] = params[f"bn{i}"]["bias"]
            sd[f"model.{bn}.running_mean"] = stats[f"bn{i}"]["mean"]
            sd[f"model.{bn}.running_var"] = stats[f"bn{i}"]["var"]
            sd[f"model.{bn}.num_batches_tracked"] = np.array(0, np.int64)
    return _ordered(sd)


# ----------------------------------------------------------------------------------- generator


def generator_from_torch(state_dict: Mapping[str, Any]) -> dict:
    """`generator.pth`'s state dict -> the params of `models.Generator(upsample="deconv")`.

    Raises:
      StateDictError: keys or shapes that are not the reference's Generator.
    """
    sd, what = _strip_prefix(state_dict), "generator state dict"
    params = {}
    for i, pos in enumerate(_G_DECONVS):
        weight = _take(sd, f"model.{pos}.weight", what, ndim=4)
        params[f"deconv{i}"] = {
            "kernel": weight.transpose(_CONVT_TO_FLAX).astype(np.float32),
            "bias": _take(sd, f"model.{pos}.bias", what, ndim=1).astype(np.float32),
        }
    _no_leftovers(sd, what)
    return params


def generator_to_torch(generator: Mapping[str, Any]) -> dict:
    """Params of `models.Generator(upsample="deconv")` -> the reference's state dict (numpy).

    Raises:
      StateDictError: not the wen2019 generator.
    """
    params = _tree_np(generator)
    if set(params) != {f"deconv{i}" for i in range(6)}:
        raise StateDictError(
            "only the wen2019 generator (six transposed convs) has a PyTorch counterpart; "
            f"this one has {sorted(params)}"
        )
    sd = collections.OrderedDict()
    for i, pos in enumerate(_G_DECONVS):
        sd[f"model.{pos}.weight"] = params[f"deconv{i}"]["kernel"].transpose(_CONVT_TO_FLAX)
        sd[f"model.{pos}.bias"] = params[f"deconv{i}"]["bias"]
    return _ordered(sd)


# ------------------------------------------------------------------------------------- configs


def model_config_from_torch(embedder_sd: Mapping[str, Any], generator_sd: Mapping[str, Any]):
    """A wen2019 config whose model section matches the shapes of the two state dicts.

    The front end is the reference's (`wen2019`): its models were trained on its own features.
    """
    e = embedder_from_torch(embedder_sd)["params"]
    g = generator_from_torch(generator_sd)
    n_mels = int(e["conv0"]["kernel"].shape[1])
    embed_dim = int(e["conv4"]["kernel"].shape[2])
    if g["deconv0"]["kernel"].shape[2] != embed_dim:
        raise StateDictError(
            f"the generator takes {g['deconv0']['kernel'].shape[2]}-d embeddings, the voice "
            f"embedder makes {embed_dim}-d ones: not a pair"
        )
    if g["deconv5"]["kernel"].shape[3] != 3:
        raise StateDictError("the generator's last layer must have 3 (RGB) output channels")
    config = wen2019.get_config()
    config.data.n_mels = n_mels
    config.data.frontend = "wen2019"
    config.model.embed_dim = embed_dim
    config.model.voice_channels = tuple(int(e[f"conv{i}"]["kernel"].shape[2]) for i in range(4))
    config.model.gen_channels = tuple(int(g[f"deconv{i}"]["kernel"].shape[3]) for i in range(5))
    return config


# ---------------------------------------------------------------------------------------- files


def export_torch(m: Model, out_dir: str | os.PathLike) -> tuple[str, str]:
    """Writes `voice_embedding.pth` and `generator.pth` in the reference's layout into `out_dir`.

    Only the wen2019 architecture has PyTorch counterparts (`network.py` of the reference).

    Returns:
      The two paths written.

    Raises:
      ValueError: another architecture.
      ImportError: no torch.
    """
    if m.config.model.arch != "wen2019":
        raise ValueError(
            f"only wen2019 models have the reference's PyTorch layout; this one is "
            f"{m.config.model.arch!r}"
        )
    from v2f_jax import models  # jax: only for a model to export

    upsample, blur = models.generator_form(m.config.model)
    out_kernel = m.config.model.gen_out_kernel
    coarse = int(m.config.model.coarse_cell)
    if upsample != "deconv" or blur or out_kernel != 1 or coarse:
        form = f"model.upsample={upsample!r}" + (", model.upsample_blur=True" if blur else "")
        form += f", model.gen_out_kernel={out_kernel}" if out_kernel != 1 else ""
        form += f", model.coarse_cell={coarse}" if coarse else ""
        raise ValueError(
            f"only wen2019 models with the reference's generator (transposed convs, no blur) have "
            f"its PyTorch layout; this one's G upsamples by {form}: export it as .safetensors "
            "or .msgpack instead"
        )
    os.makedirs(out_dir, exist_ok=True)
    e_path = os.path.join(os.fspath(out_dir), "voice_embedding.pth")
    g_path = os.path.join(os.fspath(out_dir), "generator.pth")
    save_pth(embedder_to_torch(m.embedder), e_path)
    save_pth(generator_to_torch(m.generator), g_path)
    return e_path, g_path


def _import_torch():
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            "reading or writing PyTorch .pth files needs torch: `pip install torch` (the CPU "
            "wheel is enough)"
        ) from err
    return torch


def load_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A state dict saved with `torch.save(net.state_dict(), path)`, as numpy arrays.

    Loaded with `weights_only=True`: tensors only, no arbitrary pickled code. A checkpoint dict
    with a `state_dict` entry is unwrapped.
    """
    torch = _import_torch()
    try:
        obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise StateDictError(
            f"{path}: not a PyTorch state dict ({err.__class__.__name__}: {err})"
        ) from err
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise StateDictError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return {k: _np(v) for k, v in obj.items()}


def save_pth(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """`torch.save` of an OrderedDict of tensors, as `net.state_dict()` would be saved."""
    torch = _import_torch()
    tensors = collections.OrderedDict(
        (k, torch.from_numpy(np.array(v, copy=True))) for k, v in state_dict.items()
    )
    with files.replacing(path) as tmp:  # whole or not at all; a failed write names `path`
        torch.save(tensors, tmp)


def _tree_np(tree) -> dict:
    if isinstance(tree, Mapping):
        return {k: _tree_np(v) for k, v in tree.items()}
    return np.asarray(tree)


def _ordered(sd: dict) -> collections.OrderedDict:
    """Sorted by layer position, as `nn.Sequential.state_dict()` lists them."""

    def key(name):
        m = re.match(r"model\.(\d+)\.(.*)", name)
        order = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        return int(m.group(1)), order.index(m.group(2))

    return collections.OrderedDict((k, sd[k]) for k in sorted(sd, key=key))
