"""Running a step on every device of every host: `jit` over a mesh (default) or `pmap`.

`jit`: a 1-D `("data",)` mesh of all devices; the batch is sharded over it, the state is
replicated, the state's buffers are donated. `pmap`: the same step function with `axis_name`,
state stacked per local device. Either way the loop only sees `DataParallel`.

Several steps per dispatch (`steps_per_call=K`): `multi_step(state, batches)` runs K steps in one
compiled call (`lax.scan` over K stacked batches), returning each step's metrics stacked `[K]`;
where a step takes a few milliseconds, the host then dispatches K times less often.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"
PyTree = Any
StepFactory = Callable[[str | None], Callable]  # axis_name -> step(state, batch)


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D data-parallel mesh. Auto axes: XLA propagates shardings (no sharding-in-types)."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh(
        (len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


class DataParallel:
    """A step compiled for one parallel mode, with the transfers that mode needs.

    Args:
      make_step: called with `axis_name` (None under jit) and returning the pure step.
      mode: "jit" or "pmap".
      devices: defaults to all devices of all hosts.
      donate: donate the input state's buffers (the state is updated in place).
    """

    def __init__(
        self,
        make_step: StepFactory,
        mode: str = "jit",
        devices=None,
        donate=True,
        steps_per_call: int = 1,
    ):
        if mode not in ("jit", "pmap"):
            raise ValueError(f"train.parallel must be 'jit' or 'pmap', not {mode!r}")
        if steps_per_call < 1:
            raise ValueError(f"train.steps_per_call must be >= 1, not {steps_per_call}")
        self.mode = mode
        self.steps_per_call = int(steps_per_call)
        self.mesh = make_mesh(devices)
        self.devices = list(self.mesh.devices.flat)
        self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P(AXIS))
        self.stacked_sharding = NamedSharding(self.mesh, P(None, AXIS))
        donate_argnums = (0,) if donate else ()
        step = make_step(None if mode == "jit" else AXIS)
        scanned = _scan_steps(step)
        if mode == "jit":
            self.step = jax.jit(
                step,
                in_shardings=(self.replicated, self.batch_sharding),
                out_shardings=(self.replicated, self.replicated),
                donate_argnums=donate_argnums,
            )
            self.multi_step = jax.jit(
                scanned,
                in_shardings=(self.replicated, self.stacked_sharding),
                out_shardings=(self.replicated, self.replicated),
                donate_argnums=donate_argnums,
            )
        else:
            pmapped = dict(axis_name=AXIS, devices=self.devices, donate_argnums=donate_argnums)
            self.step = jax.pmap(step, **pmapped)
            self.multi_step = jax.pmap(scanned, **pmapped)

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def __call__(self, state, batch):
        return self.step(state, batch)

    def put_state(self, state: PyTree) -> PyTree:
        """A host state (identical on every host) onto the devices."""
        if self.mode == "jit":
            return jax.device_put(state, self.replicated)
        # One copy per local device along a new leading axis; pmap moves it on the first step.
        n_local = len(self.local_devices)
        return jax.tree_util.tree_map(
            lambda x: np.broadcast_to(np.asarray(x), (n_local, *np.shape(x))).copy(), state
        )

    def get_state(self, state: PyTree) -> PyTree:
        """The device state as one replicated copy (what checkpoints and exports save).

        Under pmap, the first local device's copy, read from that device alone: indexing the
        stacked array instead would run a gather across every device, per leaf, at each save.
        """
        if self.mode == "jit":
            return state
        return jax.tree_util.tree_map(lambda x: x.addressable_data(0)[0], state)

    def _check_rows(self, batch: dict[str, np.ndarray], axis: int) -> int:
        """The number of local devices, which must divide every array's batch `axis`."""
        n_local = len(self.local_devices)
        for name, value in batch.items():
            if value.shape[axis] % n_local:
                raise ValueError(
                    f"batch '{name}' has {value.shape[axis]} rows per host, not divisible by "
                    f"{n_local} local devices"
                )
        return n_local

    def put(self, local_batches: list[dict[str, np.ndarray]]) -> dict:
        """One batch for `__call__` (a list of one) or K stacked for `multi_step`."""
        if len(local_batches) == 1:
            return self.put_batch(local_batches[0])
        return self.put_batches(local_batches)

    def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict:
        """This host's share of the global batch (leading axis `B / process_count`) onto devices."""
        n_local = self._check_rows(local_batch, axis=0)
        if self.mode == "jit":
            return {
                name: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
                for name, v in local_batch.items()
            }
        return {
            name: np.asarray(v).reshape(n_local, v.shape[0] // n_local, *v.shape[1:])
            for name, v in local_batch.items()
        }

    def put_batches(self, local_batches: list[dict[str, np.ndarray]]) -> dict:
        """K of this host's batches, stacked `[K, B_host, ...]`, onto the devices for
        `multi_step` (the step axis first, the batch axis sharded as in `put_batch`)."""
        stacked = {k: np.stack([b[k] for b in local_batches]) for k in local_batches[0]}
        n_local = self._check_rows(stacked, axis=1)
        if self.mode == "jit":
            return {
                name: jax.make_array_from_process_local_data(self.stacked_sharding, v)
                for name, v in stacked.items()
            }
        # [K, n_local * b, ...] -> [n_local, K, b, ...]: each device scans its own rows.
        return {
            name: np.swapaxes(v.reshape(v.shape[0], n_local, -1, *v.shape[2:]), 0, 1)
            for name, v in stacked.items()
        }

    def local_metrics(self, metrics: PyTree) -> PyTree:
        """Metrics as one copy (pmap returns one per local device), leaves `[]` or `[K]`."""
        if self.mode == "pmap":
            return jax.tree_util.tree_map(lambda x: x[0], metrics)
        return metrics

    def get_metrics(self, metrics: PyTree) -> dict[str, float]:
        """Device metrics to host floats (a device->host copy: only at log steps)."""
        if self.mode == "pmap":
            metrics = jax.tree_util.tree_map(lambda x: x[0], metrics)
        return {k: float(v) for k, v in jax.device_get(metrics).items()}


def _scan_steps(step: Callable) -> Callable:
    """`step(state, batch)` -> `multi(state, batches)`: the steps over the leading axis of
    `batches`, in order, each on the state the previous one left; metrics stacked `[K]`."""

    def multi(state, batches):
        return jax.lax.scan(step, state, batches)

    return multi
