"""NaN/Inf guard: a bad update never lands, and the run stops or skips as configured.

The step is wrapped (`guard`) so that it returns a `finite` metric and keeps the old state when
the update is not finite; the loop reads the flags with the metrics (`MetricsCheck`) and stops
naming the first bad step and loss (`train.on_nonfinite="stop"`) or counts it as skipped ("skip",
at most `train.max_nonfinite_skips`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from v2f_jax import state as state_lib

PyTree = Any
FINITE = "finite"  # the metric the guard adds: 1.0 iff the step's update was finite

logger = logging.getLogger("v2f.train")


class NonFiniteLossError(FloatingPointError):
    """A step produced a NaN/Inf loss (or parameters); the run stops without saving it.

    Attributes:
      step: the loop step (1-based) whose update was refused.
      names: the non-finite metrics at that step (or "parameters").
    """

    def __init__(self, step: int, names: list[str], values: dict[str, float], reason: str = ""):
        self.step, self.names, self.values = step, names, values
        shown = ", ".join(f"{k}={values[k]}" if k in values else k for k in names)
        super().__init__(f"non-finite loss at step {step}: {shown}{reason}")


def _params(state) -> PyTree:
    """The parameters of a state (what a non-finite update would poison)."""
    if isinstance(state, state_lib.EmbedderState):
        return (state.embedder, state.head)
    return (state.embedder, state.generator, state.critics)


def guard(step: Callable) -> Callable:
    """Wraps a step: adds metric `finite` (1.0 iff every metric and every new parameter is
    finite) and returns the input state unchanged when it is 0.0. Exact: a select, no arithmetic
    on accepted values."""

    def guarded(state, batch):
        new_state, metrics = step(state, batch)
        checks = [jnp.all(jnp.isfinite(v)) for v in metrics.values()]
        checks += [
            jnp.all(jnp.isfinite(x))
            for x in jax.tree_util.tree_leaves(_params(new_state))
            if jnp.issubdtype(x.dtype, jnp.inexact)
        ]
        finite = jnp.all(jnp.stack(checks))
        kept = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new_state, state)
        return kept, {**metrics, FINITE: finite.astype(jnp.float32)}

    return guarded


class MetricsCheck:
    """Host side: checks fetched step metrics and averages the finite ones.

    Args:
      on_nonfinite: "stop" raises at the first refused step; "skip" counts it.
      max_skips: with "skip", more than this many refused steps raise.
      skips: refused steps so far (restored from a checkpoint).
    """

    def __init__(self, on_nonfinite: str, max_skips: int, skips: int = 0):
        self.on_nonfinite = on_nonfinite
        self.max_skips = max_skips
        self.skips = skips

    def __call__(self, steps: list[int], fetched: list[dict]) -> dict[str, float]:
        """The finite steps' mean metrics (without `finite`).

        Raises:
          NonFiniteLossError: as configured.
        """
        sums: dict[str, float] = {}
        count = 0
        for n, m in zip(steps, fetched):
            m = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in m.items()}
            if m.pop(FINITE) > 0:
                count += 1
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + v
                continue
            names = [k for k, v in m.items() if not math.isfinite(v)] or ["parameters"]
            if self.on_nonfinite == "stop":
                raise NonFiniteLossError(n, names, m, " (train.on_nonfinite='stop')")
            self.skips += 1
            logger.warning(
                "step %d: non-finite %s; update skipped (%d of at most %d)",
                n,
                ", ".join(names),
                self.skips,
                self.max_skips,
            )
            if self.skips > self.max_skips:
                raise NonFiniteLossError(
                    n, names, m, f" (more than train.max_nonfinite_skips={self.max_skips} skipped)"
                )
        return {k: v / count for k, v in sums.items()} if count else {}
