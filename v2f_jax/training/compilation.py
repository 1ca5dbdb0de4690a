"""Compiling once: XLA's persistent compilation cache, counting what gets compiled, and cheap
compiles of what runs once.

A restarted run (preemption, resume) would otherwise compile and autotune its step again, minutes
on a GPU; with the cache it loads the executable from disk. `CompileCounter` counts the backend
compilations in a block of code (how `v2f bench` and the tests prove one executable per run).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
from jax.experimental.compilation_cache import compilation_cache

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_counters: list[CompileCounter] = []
_listening = False


def use_persistent_cache(setting: str, workdir: str) -> str | None:
    """Points JAX's persistent compilation cache at `setting`'s folder; returns it (None: off).

    Args:
      setting: `train.compilation_cache`: "auto" (`$JAX_COMPILATION_CACHE_DIR` where the
        environment sets it, a folder every run on the machine or cluster shares; else
        `WORKDIR/xla_cache`), "workdir" (`WORKDIR/xla_cache`), a folder to share between runs,
        or "" (off).
      workdir: the run's directory.
    """
    path = None
    if setting == "auto":
        setting = os.environ.get("JAX_COMPILATION_CACHE_DIR") or "workdir"
    if setting == "workdir":
        path = os.path.join(workdir, "xla_cache")
    elif setting:
        path = os.path.abspath(os.path.expanduser(setting))
    if jax.config.jax_compilation_cache_dir != path:
        # The cache binds its folder on first use: rebind it for this run.
        compilation_cache.reset_cache()
        jax.config.update("jax_compilation_cache_dir", path)
    if path is not None:
        # The step is worth caching; tiny helper jits (stacking metrics) are not.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return path


def _on_event(event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == _BACKEND_COMPILE:
        for counter in _counters:
            counter.count += 1


class CompileCounter:
    """`with CompileCounter() as c: ...` then `c.count`: executables XLA compiled inside, or
    loaded from the persistent compilation cache (JAX times both as one backend compile)."""

    def __init__(self):
        self.count = 0

    def __enter__(self) -> CompileCounter:
        global _listening
        if not _listening:
            jax.monitoring.register_event_duration_secs_listener(_on_event)
            _listening = True
        _counters.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _counters.remove(self)


def run_once(fn: Callable[[], Any]) -> Any:
    """`jax.jit(fn)()` for a function run once per run (initialisation): on CPU, compiled with
    XLA's cheap backend settings, which take seconds where the optimising ones take tens."""
    lowered = jax.jit(fn).lower()
    options = {}
    if jax.default_backend() == "cpu":
        options = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    return lowered.compile(compiler_options=options)()
