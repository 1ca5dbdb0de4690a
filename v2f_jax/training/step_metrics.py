"""Per-step metrics on their way from the devices to the log, without stalling the devices.

Each call of the step returns its metrics as device arrays (one step: scalars; K steps per call:
`[K]`). They stay on the device until a log boundary, where `start()` stacks the interval's
metrics on the device (one small jitted op) and starts one asynchronous device-to-host copy. The
loop reads an interval one log interval later (`ready()`), by when it has long arrived, so
logging never waits for the step in flight; `drain()` reads everything now (checkpoints, the end
of a run, a stop).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


@dataclasses.dataclass
class Interval:
    """The metrics of consecutive steps.

    Attributes:
      steps: the loop steps (1-based), in order.
      values: one `{name: float}` per step.
      seconds: wall time from the end of the previous interval to the end of this one.
    """

    steps: list[int]
    values: list[dict[str, float]]
    seconds: float


@jax.jit
def _stack(metrics: list[PyTree]) -> PyTree:
    """A list of per-call metric trees (leaves `[]` or `[K]`) -> one tree of `[steps]` leaves."""
    return jax.tree_util.tree_map(
        lambda *xs: jnp.concatenate([x.reshape(-1) for x in xs]), *metrics
    )


class StepMetrics:
    """Collects the step's device metrics and fetches them an interval at a time.

    Args:
      dp: the `parallel.DataParallel` running the step (pmap returns a copy per device).
    """

    def __init__(self, dp):
        self._dp = dp
        self._pending: list[tuple[int, int, PyTree]] = []
        self._in_flight: list[tuple[list[int], PyTree, float]] = []
        self._last_end = time.perf_counter()

    def add(self, first_step: int, count: int, metrics: PyTree) -> None:
        """The metrics of steps `first_step .. first_step + count - 1` (one call)."""
        self._pending.append((first_step, count, metrics))

    def start(self) -> None:
        """Ends the current interval: its metrics start their copy to the host."""
        if not self._pending:
            return
        steps = [s for first, k, _ in self._pending for s in range(first, first + k)]
        # One copy of pmap's per-device metrics, taken here (once per interval), not per step.
        stacked = _stack([self._dp.local_metrics(m) for _, _, m in self._pending])
        for leaf in jax.tree_util.tree_leaves(stacked):
            leaf.copy_to_host_async()
        now = time.perf_counter()
        self._in_flight.append((steps, stacked, now - self._last_end))
        self._last_end = now
        self._pending.clear()

    def ready(self, keep: int = 1) -> list[Interval]:
        """The intervals started before the newest `keep` ones, fetched (oldest first)."""
        out = []
        while len(self._in_flight) > keep:
            out.append(self._fetch(self._in_flight.pop(0)))
        return out

    def drain(self) -> list[Interval]:
        """Ends the current interval and fetches every interval not yet read."""
        self.start()
        return self.ready(keep=0)

    @staticmethod
    def _fetch(item) -> Interval:
        steps, stacked, seconds = item
        host = {k: np.asarray(v, np.float64) for k, v in jax.device_get(stacked).items()}
        values = [{k: float(v[i]) for k, v in host.items()} for i in range(len(steps))]
        return Interval(steps, values, seconds)
