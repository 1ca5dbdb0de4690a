"""`train.profile_steps=(a, b)`: a `jax.profiler` trace of loop steps a..b, in WORKDIR/profile.

TensorBoard's profile plugin (or Perfetto) opens it; each step call carries a
`StepTraceAnnotation` there, so the trace viewer shows step boundaries.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import jax

logger = logging.getLogger("v2f.train")


class StepProfile:
    """Starts a trace before the call that runs step `a` and stops it after step `b`'s call.

    Args:
      steps: `()` (no trace) or `(a, b)`, 1-based loop steps, a <= b.
      workdir: the trace goes to `workdir/profile`.
    """

    def __init__(self, steps: Sequence[int], workdir: str):
        steps = tuple(int(s) for s in steps)
        if steps and (len(steps) != 2 or not 1 <= steps[0] <= steps[1]):
            raise ValueError(f"train.profile_steps must be () or (a, b) with 1 <= a <= b: {steps}")
        self.first, self.last = steps if steps else (0, -1)
        self.directory = os.path.join(workdir, "profile")
        self.active = False

    def before(self, first_step: int, last_step: int) -> None:
        """Before the call that runs steps `first_step..last_step`."""
        if not self.active and first_step <= self.last and last_step >= self.first:
            jax.profiler.start_trace(self.directory)
            self.active = True

    def after(self, last_step: int, outputs) -> None:
        """After that call (its outputs are waited for, so the trace holds the whole step)."""
        if self.active and last_step >= self.last:
            jax.block_until_ready(outputs)
            self.close()
            logger.info(
                "profile of steps %d-%d written to %s", self.first, self.last, self.directory
            )

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
