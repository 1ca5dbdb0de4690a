"""Loading `configs/*.py` and applying `--config.key=value` overrides.

An override must name a key the config already has; a typo is an error that names it, never a
silently ignored setting. Every setting and its default is declared once, in
`configs/wen2019.py`: a config that lacks one (a config.json or model file written before the
setting existed, a config file of the user's own) gets that default when loaded, so the code
reads `config.train.x`, never `config.train.get("x", default)`.
"""

from __future__ import annotations

import ast
import importlib.util
import os

import ml_collections


class ConfigError(ValueError):
    """A config file or override that cannot be applied."""


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()):
    """Runs `get_config()` of the file at `path`, then applies `--config.a.b=v` overrides.

    Args:
      path: a Python file defining `get_config() -> ml_collections.ConfigDict`; `FILE:ARG`
        calls `get_config("ARG")` instead (ml_collections' convention), e.g.
        `configs/embedder.py:tiny` for E pretraining at the size of configs/tiny.py.
      overrides: strings `--config.a.b=value` (or `a.b=value`); values are parsed as Python
        literals where possible (`1e-3`, `(300, 800)`, `True`), else taken as strings.

    Returns:
      The ConfigDict, unlocked for reading only by convention.
    """
    path, arg = split_config_arg(os.fspath(path))
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file")
    spec = importlib.util.spec_from_file_location(f"v2f_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's Python file: say which and why, not a traceback
        raise ConfigError(f"{path}: cannot be loaded ({type(err).__name__}: {err})") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: defines no get_config()")
    where = path if arg is None else f"{path}:{arg}"
    try:
        config = module.get_config() if arg is None else module.get_config(arg)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None
    except Exception as err:  # the user's code: say which file and why, not a traceback
        raise ConfigError(f"{where}: get_config() failed ({type(err).__name__}: {err})") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"{where}: get_config() returned a {type(config).__name__}, not a ConfigDict"
        )
    with_defaults(config)
    apply_overrides(config, overrides)
    return config


def with_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds, in place, every setting of `configs/wen2019.py` that `config` lacks, with its
    default there; returns `config`. Settings `config` has are left as they are."""
    from v2f_jax.configs import wen2019

    _fill(config, wen2019.get_config())
    return config


def _fill(node: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict) -> None:
    for key, default in defaults.items():
        if key not in node:
            node[key] = (
                ml_collections.ConfigDict(default.to_dict())
                if isinstance(default, ml_collections.ConfigDict)
                else default
            )
        elif isinstance(default, ml_collections.ConfigDict) and isinstance(
            node[key], ml_collections.ConfigDict
        ):
            _fill(node[key], default)


def split_config_arg(path: str) -> tuple[str, str | None]:
    """`"configs/embedder.py:tiny"` -> `("configs/embedder.py", "tiny")`; a plain path (or one
    that exists as written, colon and all) -> `(path, None)`."""
    head, sep, arg = path.rpartition(":")
    if not sep or os.path.isfile(path) or not head.endswith(".py"):
        return path, None
    return head, arg


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> None:
    """Sets each `a.b=value` in place, refusing keys the config does not have."""
    for item in overrides:
        text = item[len("--config.") :] if item.startswith("--config.") else item
        if "=" not in text:
            raise ConfigError(f"override {item!r} has no '=value'")
        dotted, raw = text.split("=", 1)
        *parents, leaf = dotted.split(".")
        node = config
        for depth, name in enumerate(parents):
            if name not in node:
                raise ConfigError(f"unknown config key {'.'.join(parents[: depth + 1])!r}")
            node = node[name]
            if not isinstance(node, ml_collections.ConfigDict):
                where = ".".join(parents[: depth + 1])
                raise ConfigError(f"config.{where}={node!r} is not a section: cannot set {dotted}")
        if leaf not in node:
            raise ConfigError(f"unknown config key {dotted!r}")
        node[leaf] = _coerce(raw, node[leaf], dotted)


def _coerce(raw: str, current, dotted: str):
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if current is None:
        return value
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise ConfigError(f"config key {dotted!r} wants true/false, got {raw!r}")
    if isinstance(current, float) and isinstance(value, int):
        return float(value)
    if isinstance(current, (tuple, list)) and isinstance(value, (int, float)):
        value = (value,)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(current, str):
        return raw if not isinstance(value, str) else value
    if type(value) is not type(current):
        raise ConfigError(f"config key {dotted!r} wants {type(current).__name__}, got {raw!r}")
    return value


def to_dict(config: ml_collections.ConfigDict) -> dict:
    """A plain JSON-able dict (for manifests, exports and the workdir's config.json)."""
    return config.to_dict()


def from_dict(data: dict) -> ml_collections.ConfigDict:
    """A config from its dict (`to_dict`, a workdir's config.json, a model file), with the
    defaults of settings it predates."""
    return with_defaults(ml_collections.ConfigDict(data))
