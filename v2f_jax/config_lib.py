"""Loading `configs/*.py` and applying `--config.key=value` overrides.

An override must name a key the config already has; a typo is an error that names it, never a
silently ignored setting.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os

import ml_collections


class ConfigError(ValueError):
    """A config file or override that cannot be applied."""


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()):
    """Runs `get_config()` of the file at `path`, then applies `--config.a.b=v` overrides.

    Args:
      path: a Python file defining `get_config() -> ml_collections.ConfigDict`.
      overrides: strings `--config.a.b=value` (or `a.b=value`); values are parsed as Python
        literals where possible (`1e-3`, `(300, 800)`, `True`), else taken as strings.

    Returns:
      The ConfigDict, unlocked for reading only by convention.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file")
    spec = importlib.util.spec_from_file_location(f"v2f_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: defines no get_config()")
    config = module.get_config()
    apply_overrides(config, overrides)
    return config


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
    return ml_collections.ConfigDict(data)


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """`["a.b: old -> new", ...]` for every leaf that differs between two `to_dict` configs."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        elif json.dumps(a) != json.dumps(b):
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out
