"""Wall-clock timings and their spread: shared machines are noisy, so every figure states it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import jax


def spread(seconds: Sequence[float]) -> dict:
    """Median, min, max and the interquartile range of a list of durations, in seconds."""
    xs = sorted(seconds)
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return {
        "median": statistics.median(xs),
        "min": xs[0],
        "max": xs[-1],
        "iqr": q[2] - q[0],
        "n": len(xs),
    }


def time_calls(fn: Callable[[], object], n: int) -> list[float]:
    """Wall seconds of `n` calls of `fn`, each blocked on its result."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - start)
    return out


def median_warm_seconds(fn: Callable[..., object], args: Sequence, n: int) -> float:
    """Median wall seconds of `n` calls of `fn(*args)` after one untimed call (compile, warm)."""
    jax.block_until_ready(fn(*args))
    return statistics.median(time_calls(lambda: fn(*args), n))


def time_batches(it, batches: int, warmup: int, fetch=lambda b: b) -> dict:
    """Wall and process-CPU seconds of `batches` calls of `next(it)` after `warmup` ones."""
    start = time.perf_counter()
    for _ in range(warmup):
        fetch(next(it))
    first_s = time.perf_counter() - start
    times = []
    cpu0 = time.process_time()
    for _ in range(batches):
        t0 = time.perf_counter()
        last = fetch(next(it))
        times.append(time.perf_counter() - t0)
    return {"warmup_s": first_s, "times": times, "cpu_s": time.process_time() - cpu0, "last": last}
