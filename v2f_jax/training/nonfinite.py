"""NaN/Inf guard: a bad update never lands, and the run stops or skips as configured.

The step is wrapped (`guard`) so that it returns a `finite` metric (and, with "skip", keeps the
old state when the update is not finite); the loop reads the flags with the metrics
(`MetricsCheck`) and stops naming the first bad step and loss (`train.on_nonfinite="stop"`) or
counts it as skipped ("skip", at most `train.max_nonfinite_skips`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

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


def guard(step: Callable, keep_old_state: bool) -> Callable:
    """Wraps a step: adds metric `finite`, 1.0 iff every metric is finite.

    The metrics hold every loss and the global norm of every gradient the step applied: when
    they are finite, so is Adam's update and hence the new state (a gradient too large for its
    norm to be finite is refused as well). So the flag costs no pass over parameters or
    optimiser state. `keep_old_state` (`on_nonfinite="skip"`) then returns the input state
    when the flag is 0.0 (exact: a select, no arithmetic on accepted values); with "stop" the
    run ends at the flag and never saves the state after it, so no select is needed.
    """

    def guarded(state, batch):
        new_state, metrics = step(state, batch)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in metrics.values()]))
        if keep_old_state:
            new_state = jax.tree_util.tree_map(
                lambda n, o: jnp.where(finite, n, o), new_state, state
            )
        return new_state, {**metrics, FINITE: finite.astype(jnp.float32)}

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
            # Losses first: they say what went wrong; gradient norms follow from them.
            bad = [k for k, v in m.items() if not math.isfinite(v)]
            names = sorted(bad, key=lambda k: (not k.endswith("loss"), k)) or ["parameters"]
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
