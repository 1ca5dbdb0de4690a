"""Several hosts: starting JAX's distributed runtime, and stopping every host at one step.

`initialize` must run before any other JAX call; `StopRequest` turns SIGTERM (preemption) into a
step at which the run saves and returns.
"""

from __future__ import annotations

import os
import signal
import threading

import jax


def initialize(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """`jax.distributed.initialize` from arguments or the environment; True if it ran.

    Arguments win; else `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`; else,
    under SLURM or Open MPI with more than one task, JAX's own cluster detection. One process and
    none of these: nothing to do. CPU collectives go through gloo (a no-op on GPU/TPU).
    """
    env = os.environ
    coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    cluster = int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    if num_processes == 1 or (coordinator is None and num_processes is None and not cluster):
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
    return True


class StopRequest:
    """`stop(step)` is True once the run should save and return at `step`.

    One process: after SIGTERM, at the next step boundary. Several: at JAX's preemption sync
    point, a step every host agrees on (each must save the same step).
    """

    def __init__(self):
        self.signalled = False
        self._previous = None
        self._multi = jax.process_count() > 1
        if not self._multi and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.signalled = True

    def __call__(self, step: int) -> bool:
        if self._multi:
            from jax.experimental import multihost_utils

            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # the preemption service is disabled
                return False
        return self.signalled

    def close(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
