"""A model checked in full before it is used or written: its config, its front end, and every
tensor's presence, shape, dtype and finiteness against the networks that config builds.

A file that passes loads into E and G that run; one that does not is refused with every problem
named (`problems`), instead of a KeyError or a Flax shape error at the first call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from v2f_jax.inference.model import Model

# Problems listed in one message; more are counted.
_SHOWN = 8


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """`{"embedder/params/conv0/kernel": shape, ...}` of the E and G that `config` builds
    (traced, nothing computed); every tensor is float32."""
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    from v2f_jax import models
    from v2f_jax import state as state_lib

    nets = models.Networks(config.model, 1)

    def init(key):
        k_e, k_g = jax.random.split(key)
        embedder = state_lib.init_embedder(nets, k_e, int(config.data.n_mels))
        generator = nets.generator.init(k_g, jnp.zeros((1, nets.embed_dim)))["params"]
        return {"embedder": embedder, "generator": generator}

    shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
    flat = traverse_util.flatten_dict(shapes, sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


def problems(m: Model) -> list[str]:
    """What is wrong with `m` (empty: nothing): config, front end, then tensors."""
    from flax import traverse_util

    from v2f_jax import config_checks, config_lib
    from v2f_jax.input_pipeline import audio

    try:
        config_checks.check_networks(m.config)
    except (config_lib.ConfigError, TypeError, AttributeError) as err:
        return [f"config: {err}"]
    found = []
    frontend = m.frontend if isinstance(m.frontend, dict) else {}
    name = frontend.get("name")
    if name not in audio.FRONTENDS:
        found.append(f"front end {name!r} is not one of {audio.FRONTENDS}")
    else:
        ours = audio.frontend_params(name)
        differ = sorted(k for k in ours if frontend.get(k) != ours[k])
        if differ:
            shown = ", ".join(differ)
            found.append(f"front end '{name}' has other parameters than this v2f's ({shown})")
        if ours["n_mels"] != int(m.config.data.n_mels):
            found.append(
                f"config data.n_mels={m.config.data.n_mels}, its front end makes {ours['n_mels']}"
            )

    want = expected_shapes(m.config)
    trees = {"embedder": m.embedder, "generator": m.generator}
    try:
        flat = traverse_util.flatten_dict(_plain(trees), sep="/")
    except (TypeError, AttributeError):
        return [*found, "the parameters are not a tree of arrays"]
    tensor_problems = []
    for key in sorted(want.keys() - flat.keys()):
        tensor_problems.append(f"{key}: missing")
    for key in sorted(flat.keys() - want.keys()):
        tensor_problems.append(f"{key}: not a tensor of this {m.config.model.arch} model")
    for key in sorted(want.keys() & flat.keys()):
        tensor_problems += _tensor_problems(key, flat[key], want[key])
    if len(tensor_problems) > _SHOWN:
        more = len(tensor_problems) - _SHOWN
        tensor_problems = [*tensor_problems[:_SHOWN], f"... and {more} more"]
    return found + tensor_problems


def _tensor_problems(key: str, value: Any, shape: tuple[int, ...]) -> list[str]:
    try:
        arr = np.asarray(value)
    except Exception:
        return [f"{key}: not an array"]
    if arr.dtype != np.float32:
        return [f"{key}: dtype {arr.dtype}, expected float32"]
    if arr.shape != shape:
        return [f"{key}: shape {list(arr.shape)}, the config's networks have {list(shape)}"]
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        return [f"{key}: {bad} of {arr.size} values are NaN or infinite"]
    if "/batch_stats/" in key and key.endswith("/var") and (arr < 0).any():
        return [f"{key}: negative variances"]
    return []


def _plain(tree):
    """Nested dicts (Flax FrozenDicts and msgpack's dicts alike)."""
    if hasattr(tree, "items"):
        return {str(k): _plain(v) for k, v in tree.items()}
    return tree
