"""Checkpoints of a run's workdir: the only module that imports orbax.

A checkpoint is one orbax step directory `WORKDIR/checkpoints/<step>/` with two items:
  state  the training state (GanState or EmbedderState) as host numpy arrays (`StandardSave`);
  meta   JSON: the data position (`next_batch`), the host-side loop counters, and the SHA-256 of
         the state's bytes, which a restore recomputes to find a damaged checkpoint.

Orbax writes a step into a temporary directory and renames it when complete, so a run killed
during a save (SIGKILL included) leaves no partial step, only a temporary directory that the next
run removes. A complete step whose files were later damaged (truncated, deleted, bytes changed)
fails to restore or fails the digest; it is moved to `WORKDIR/checkpoints.damaged/<step>` with a
warning and the previous step is used.

Saves are asynchronous: the state is copied to the host first (`jax.device_get`, the only part on
the loop's thread), so the training step that follows may donate the device buffers; a background
thread then computes the state's digest and hands it with the host arrays to orbax, which writes
in its own background thread. Every orbax call of a `Checkpointer` runs on that one thread, in
order, so saves, waits and restores never interleave.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from v2f_jax import config_lib, files, models
from v2f_jax import state as state_lib

PyTree = Any
CHECKPOINTS = "checkpoints"
DAMAGED = "checkpoints.damaged"
CONFIG = "config.json"
_FORMAT = "v2f-checkpoint"
_VERSION = 1

logger = logging.getLogger("v2f.checkpointing")


class CheckpointError(RuntimeError):
    """No usable checkpoint where one is required."""


class IncompatibleCheckpointError(CheckpointError):
    """A checkpoint intact on disk whose state has another structure than the one asked for:
    written by another version of v2f or for another task. Not damage: it is left in place."""


def state_digest(tree: PyTree) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes (host arrays; exact)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _to_numpy(tree: PyTree) -> PyTree:
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


class _Manager(ocp.CheckpointManager):
    """Orbax's manager, minus its own look at JAX's preemption sync point: the loop agrees the
    step to stop at (`distributed.StopRequest`), and a save asking too, from the checkpoint
    thread with an older step, would take that answer from the loop."""

    def reached_preemption(self, step: int) -> bool:
        del step
        return False


class Checkpointer:
    """Async, keep-N, verified checkpoints under `directory`.

    Call every method on every process (orbax synchronises the hosts; process 0 writes).

    Args:
      directory: the orbax root (`WORKDIR/checkpoints`).
      keep: complete steps to keep (the newest `keep`); at least 2 leaves a fallback.
      async_save: write in a background thread.
      read_only: restore only; damaged steps are skipped (with a warning), not moved.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        keep: int = 3,
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.directory = os.path.abspath(os.fspath(directory))
        self.damaged_dir = os.path.join(os.path.dirname(self.directory), DAMAGED)
        self.read_only = read_only
        if read_only:
            # Another process may be training into this directory: touch nothing. (Not orbax's
            # `read_only`, which warns on every open; this manager is simply never asked to save.)
            options = ocp.CheckpointManagerOptions(
                create=False,
                cleanup_tmp_directories=False,
                enable_async_checkpointing=False,
                save_root_metadata=False,
            )
        else:
            options = ocp.CheckpointManagerOptions(
                preservation_policy=ocp.checkpoint_managers.LatestN(max(1, int(keep))),
                # A run killed mid-save leaves `<step>.orbax-checkpoint-tmp-*`: removed here.
                cleanup_tmp_directories=True,
                enable_async_checkpointing=async_save,
                create=True,
            )
        self._manager = _Manager(self.directory, item_names=("state", "meta"), options=options)
        # One worker: the digest and orbax's save leave the loop's thread, in order.
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="v2f-ckpt")
        self._in_flight: list[concurrent.futures.Future] = []

    def all_steps(self) -> list[int]:
        return sorted(self._run(self._manager.all_steps))

    def save(self, step: int, state: PyTree, meta: dict | None = None) -> None:
        """Starts saving `state` (device or host arrays) as step `step`; returns once the state
        is on the host. `meta` is extra JSON (the loop's counters). An error of the background
        save is raised by the next `save`, `wait` or `close`."""
        if self.read_only:
            raise CheckpointError(f"{self.directory}: opened read-only")
        self._raise_failed()
        host = _to_numpy(state)
        saved_at = time.time()

        def digest_and_save():
            record = {
                "format": _FORMAT,
                "version": _VERSION,
                "step": int(step),
                "state_sha256": state_digest(host),
                "saved_at": saved_at,
                **(meta or {}),
            }
            self._manager.save(
                int(step),
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(record)
                ),
                force=True,
            )

        self._in_flight.append(self._worker.submit(digest_and_save))

    def _raise_failed(self) -> None:
        """Re-raises the error of a finished background save, if any."""
        done = [f for f in self._in_flight if f.done()]
        self._in_flight = [f for f in self._in_flight if not f.done()]
        for future in done:
            future.result()

    def _run(self, fn, *args):
        """`fn(*args)` on the worker thread, after every save handed to it; its result."""
        return self._worker.submit(fn, *args).result()

    def wait(self) -> None:
        """Blocks until the saves in flight are complete on disk."""
        self._run(self._manager.wait_until_finished)
        for future in self._in_flight:
            future.result()
        self._in_flight.clear()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._run(self._manager.close)
            self._worker.shutdown()

    def restore(self, step: int, template: PyTree) -> tuple[PyTree, dict]:
        """Step `step` as host numpy arrays in the structure of `template`; raises on damage."""
        target = jax.tree_util.tree_map(
            lambda x: np.zeros(np.shape(x), np.dtype(x.dtype)), template
        )
        try:
            restored = self._run(
                lambda: self._manager.restore(
                    int(step),
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
                    ),
                )
            )
        except ValueError as err:
            if "tree structures do not match" not in str(err):
                raise
            raise IncompatibleCheckpointError(
                f"{self.directory}/{step}: its state has another structure than this version "
                f"of v2f and this config make ({str(err).splitlines()[0][:200]}); it was "
                "written by another version or for another task. Left as it is: use the version "
                "that wrote it, or start a fresh workdir"
            ) from err
        state, meta = restored["state"], restored["meta"]
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise CheckpointError(f"step {step}: no v2f metadata")
        if meta.get("state_sha256") != state_digest(state):
            raise CheckpointError(f"step {step}: state bytes do not match the saved SHA-256")
        return state, meta

    def restore_latest(self, template: PyTree) -> tuple[int, PyTree, dict] | None:
        """The newest step that restores and verifies, as `(step, state, meta)`; None if no step
        exists. A damaged step is moved aside with a warning and the previous one tried.

        Raises:
          IncompatibleCheckpointError: the newest step holds a state of another structure.
          CheckpointError: steps exist but none is usable.
        """
        steps = self.all_steps()
        for step in reversed(steps):
            try:
                state, meta = self.restore(step, template)
            except IncompatibleCheckpointError:
                raise  # every step of the run has that structure: none is damaged
            except Exception as err:
                self._set_aside(step, err)
                continue
            return step, state, meta
        if steps:
            raise CheckpointError(
                f"{self.directory}: none of the checkpoints {steps} could be restored (damaged "
                f"ones moved to {self.damaged_dir}); start a fresh workdir"
            )
        return None

    def _set_aside(self, step: int, err: Exception) -> None:
        reason = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        if self.read_only:
            logger.warning(
                "checkpoint step %d in %s is damaged (%s); using the previous one",
                step,
                self.directory,
                reason,
            )
            return
        logger.warning(
            "checkpoint step %d in %s is damaged (%s); moving it to %s and using the previous one",
            step,
            self.directory,
            reason,
            self.damaged_dir,
        )
        if jax.process_index() == 0:
            src = os.path.join(self.directory, str(step))
            if os.path.isdir(src):
                os.makedirs(self.damaged_dir, exist_ok=True)
                dst = os.path.join(self.damaged_dir, f"{step}.{int(time.time())}")
                shutil.move(src, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"v2f_set_aside_{step}")
        self._run(self._manager.reload)


# --- workdirs ---------------------------------------------------------------------------------


def write_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> None:
    """`WORKDIR/config.json`: the fully resolved config (process 0 writes, atomically)."""
    if jax.process_index() != 0:
        return
    path = os.path.join(os.fspath(workdir), CONFIG)
    files.write_text(path, json.dumps(config_lib.to_dict(config), indent=2, sort_keys=True) + "\n")


def read_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    path = os.path.join(os.fspath(workdir), CONFIG)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no config.json; is {workdir} the --workdir of `v2f train`?")
    with open(path) as f:
        return config_lib.from_dict(json.load(f))


def state_template(config: ml_collections.ConfigDict, nets: models.Networks | None = None):
    """The shapes and dtypes of the state a run of `config` trains (`jax.ShapeDtypeStruct`s;
    nothing is computed). `config.model.num_ids` must be set."""
    nets = nets or models.Networks(config.model, int(config.model.num_ids))
    if config.train.task == "embedder":
        return jax.eval_shape(
            lambda: state_lib.create_embedder_state(config, nets, int(config.model.num_ids))
        )
    if config.train.task != "gan":
        raise ValueError(
            f"config.train.task must be 'gan' or 'embedder', not {config.train.task!r}"
        )
    return jax.eval_shape(lambda: state_lib.create_gan_state(config, nets))


def restore_for_inference(workdir: str | os.PathLike, step: int | None = None):
    """The config and trained state of a `v2f train` workdir.

    Args:
      workdir: the `--workdir` of a GAN or embedder run.
      step: a checkpoint step; default the newest complete, verified one.

    Returns:
      `(config, state)`: the run's ConfigDict (with `model.num_ids`) and a GanState (or
      EmbedderState for `train.task="embedder"`) of host numpy arrays.

    Raises:
      CheckpointError: no config.json, no checkpoint, or the requested step is unusable.
    """
    workdir = os.fspath(workdir)
    config = read_config(workdir)
    template = state_template(config)
    ckpt_dir = os.path.join(workdir, CHECKPOINTS)
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"{ckpt_dir}: no checkpoints")
    ckpt = Checkpointer(ckpt_dir, read_only=True)
    try:
        if step is not None:
            state, _ = ckpt.restore(step, template)
            return config, state
        found = ckpt.restore_latest(template)
        if found is None:
            raise CheckpointError(f"{ckpt_dir}: no complete checkpoint yet")
        return config, found[1]
    finally:
        ckpt.close()
