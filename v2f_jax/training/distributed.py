"""Several hosts: starting JAX's distributed runtime, and stopping every host at one step.

`initialize` must run before any other JAX call; `StopRequest` turns SIGTERM (preemption) or
SIGINT (Ctrl-C) into a step at which the run saves and returns. `catch_stop_signals`, called
first thing by `v2f train`, makes a signal that arrives while the run starts (reading records,
building the state, compiling) count too: nothing is interrupted half way, the run stops before
its first step, or saves at the step in flight. A second signal does not cut the save short.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import jax

logger = logging.getLogger("v2f.train")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []  # the stop signals received since `catch_stop_signals`


def _on_stop_signal(signum, frame) -> None:
    del frame
    first = not _received
    _received.append(signum)
    name = signal.Signals(signum).name
    if first:
        logger.warning("%s: stopping at the next step boundary (a checkpoint is saved)", name)
    else:
        logger.warning("%s again: already stopping; the checkpoint is being saved", name)


def catch_stop_signals() -> dict[int, object]:
    """SIGTERM and SIGINT, from now on, ask the run to stop (`StopRequest`) instead of ending
    the process or raising KeyboardInterrupt. Main thread only. Returns the previous handlers
    (`restore_signals` puts them back)."""
    del _received[:]
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, _on_stop_signal) for s in STOP_SIGNALS}


def restore_signals(previous: dict[int, object]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def stop_signal_name() -> str | None:
    """The name of the first stop signal received (`"SIGTERM"`), or None."""
    return signal.Signals(_received[0]).name if _received else None


def initialize(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """`jax.distributed.initialize` from arguments or the environment; True if it ran.

    Arguments win; else `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`; else,
    under SLURM or Open MPI with more than one task, JAX's own cluster detection. `coordinator`
    "auto": JAX's cluster detection whatever the environment (Cloud TPU pods, GKE, SLURM, Open
    MPI). One process and none of these: nothing to do. CPU collectives go through gloo (a no-op
    on GPU/TPU).

    Raises:
      DistributedError: the runtime could not start (no cluster found for "auto", a coordinator
        that never answers), naming what was asked.
    """
    env = os.environ
    if coordinator == "auto":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        try:
            jax.distributed.initialize(num_processes=num_processes, process_id=process_id)
        except (ValueError, RuntimeError) as err:
            raise DistributedError(
                f"--coordinator auto: JAX found no cluster to join here ({err}); on a machine "
                "outside a TPU pod, SLURM, Open MPI or Kubernetes job, pass --coordinator "
                "HOST:PORT --num-processes N --process-id I"
            ) from None
        return True
    coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    cluster = int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    if num_processes == 1 or (coordinator is None and num_processes is None and not cluster):
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
    except (ValueError, RuntimeError) as err:
        raise DistributedError(
            f"the distributed runtime did not start (coordinator {coordinator}, "
            f"{num_processes} processes, this one {process_id}): {err}"
        ) from None
    return True


class DistributedError(RuntimeError):
    """JAX's distributed runtime could not start: `v2f train` exits 2 naming why."""


class StopRequest:
    """`stop(step)` is True once the run should save and return at `step`.

    One process: after SIGTERM or SIGINT (also one received before this object was made, once
    `catch_stop_signals` ran), at the next step boundary. Several: at JAX's preemption sync
    point, a step every host agrees on (each must save the same step).
    """

    def __init__(self):
        self._previous: dict[int, object] = {}
        self._multi = jax.process_count() > 1
        if not self._multi and threading.current_thread() is threading.main_thread():
            if any(signal.getsignal(s) is not _on_stop_signal for s in STOP_SIGNALS):
                del _received[:]  # not caught since the command started: a fresh run
            for signum in STOP_SIGNALS:
                if signal.getsignal(signum) is not _on_stop_signal:
                    self._previous[signum] = signal.signal(signum, _on_stop_signal)

    @property
    def signalled(self) -> bool:
        return bool(_received)

    def __call__(self, step: int) -> bool:
        if self._multi:
            from jax.experimental import multihost_utils

            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # the preemption service is disabled
                return False
        return self.signalled

    def close(self):
        restore_signals(self._previous)
        self._previous = {}
