"""The training loop: batches in, jitted steps on every device, logs, samples, checkpoints.

`train(config, workdir, records)` trains the GAN (`train.task="gan"`) or
pretrains the voice embedder (`train.task="embedder"`) and writes, in `workdir`:

    config.json                  the resolved config (with `model.num_ids` from the records)
    checkpoints/<step>/          orbax steps: state, data position, counters (checkpointing.py)
    metrics.jsonl                one line per log step: `{"step", "train/d_loss", ...}`
    tb/                          TensorBoard scalars (`train/...`) and the sample grid
                                 (metric_writers.py)
    samples/step_NNNNNN.png      faces from fixed held-out voices beside the real faces
    xla_cache/                   compiled executables (`train.compilation_cache`): a restart
                                 loads the step instead of compiling it again
    profile/                     a jax.profiler trace of `train.profile_steps`, if set

Exact resume: loop step `n` consumes batch `n - 1` of the reader, whose stream is a pure function
of (seed, batch index); the step's RNG is `fold_in(state.key, state.step)`. A checkpoint holds the
state and `next_batch`, so a restarted run (same command) continues with the same batches, keys
and parameters as a run never stopped: bitwise equal on CPU.

The device never waits for the host: batches of every crop length share one padded shape (one
compiled step); a background thread puts the next batches on the devices ahead of the step
(`data.prefetch_to_device`, device_prefetch.py), in the reader's compact form (device_inputs.py),
or gathers them from a split held in device or host memory (`data.on_device`,
`data.in_host_memory`, resident_data.py);
`train.steps_per_call=K` runs K steps per dispatch; metrics stay on the device
and reach the log one log interval late, in one transfer (step_metrics.py), with each step's
non-finite flag (nonfinite.py). The host blocks only at checkpoint steps (a checkpoint is written
only after its steps' flags were read); sample grids are drawn on a worker thread from a copy the
device makes of E and G (samples.BackgroundGrids).

SIGTERM or SIGINT (Ctrl-C): the step in flight finishes, a checkpoint is saved, and the run
returns with `preempted=True` (`v2f train` exits 0); several hosts agree on the step
(distributed.py). A signal while the run starts stops it before its first step.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np

from v2f_jax import checkpointing, config_checks, config_lib, models, parallel, train_step
from v2f_jax import state as state_lib
from v2f_jax.feed import device_prefetch
from v2f_jax.input_pipeline import manifest as manifest_lib
from v2f_jax.training import (
    coarse_face,
    compilation,
    distributed,
    embedder_init,
    face_targets,
    metric_writers,
    nonfinite,
    profiling,
    step_metrics,
)
from v2f_jax.training import workdir as workdir_lib

PyTree = Any
Batch = dict[str, np.ndarray]
# make_batches(start_batch) -> this host's batches from global batch index `start_batch` on.
BatchFactory = Callable[[int], Iterator[Batch]]

logger = logging.getLogger("v2f.train")
TASKS = tuple(metric_writers.PROGRESS_KEYS)


# --- configuration --------------------------------------------------------------------------


def resolve_config(
    config: ml_collections.ConfigDict, records: manifest_lib.Records | None
) -> ml_collections.ConfigDict:
    """A checked copy of `config` (config_checks) with the records' data properties and
    `model.num_ids` = their training identities."""
    config = config_lib.from_dict(config_lib.to_dict(config))
    config_checks.check(config)
    if records is not None:
        config_checks.take_from_records(config, records)
        embedder_init.check_frontend(config)
        num_ids = records.num_train_ids
        if config.model.num_ids not in (0, num_ids):
            raise config_lib.ConfigError(
                f"config.model.num_ids={config.model.num_ids}, but {records.root} has {num_ids} "
                f"training identities; leave it 0 to take it from the records"
            )
        config.model.num_ids = num_ids
    if config.model.num_ids < 1:
        raise config_lib.ConfigError("config.model.num_ids is unset: pass records_dir")
    if config.train.task not in TASKS:
        raise config_lib.ConfigError(
            f"config.train.task must be 'gan' or 'embedder', not {config.train.task!r}"
        )
    if config.train.on_nonfinite not in ("stop", "skip"):
        raise config_lib.ConfigError(
            f"config.train.on_nonfinite must be 'stop' or 'skip', not {config.train.on_nonfinite!r}"
        )
    return config


# --- state ----------------------------------------------------------------------------------


def create_state(
    config: ml_collections.ConfigDict,
    nets: models.Networks,
    records: manifest_lib.Records | None = None,
):
    """The fresh state of a run, E from `train.embedder_init` if set, G's coarse map fitted on
    `records` with that E when `model.coarse_cell` > 0; host numpy arrays, the same on every host
    (process 0's values are broadcast).

    Raises:
      config_lib.ConfigError: a coarse map wanted without records to fit it on.
    """
    if config.train.task == "embedder":
        num = int(config.model.num_ids)
        state = compilation.run_once(lambda: state_lib.create_embedder_state(config, nets, num))
    else:
        state = compilation.run_once(lambda: state_lib.create_gan_state(config, nets))
        if config.train.embedder_init:
            embedder = embedder_init.load_embedder(config.train.embedder_init, state.embedder)
            state = state.replace(embedder=embedder)
            logger.info("E initialised from %s", config.train.embedder_init)
        if int(config.model.coarse_cell):
            state = with_coarse_map(config, state, records)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        # Initialisation may round differently on hosts with other CPUs; the replicas may not.
        state = multihost_utils.broadcast_one_to_all(state)
    return jax.tree_util.tree_map(np.asarray, jax.device_get(state))


def with_coarse_map(config: ml_collections.ConfigDict, state, records):
    """`state` with G's coarse map (`coarse_face.fit`) fitted with its E on the records."""
    if records is None:
        raise config_lib.ConfigError(
            "config.model.coarse_cell > 0 fits G's coarse face to the records' training "
            "speakers: give the records, or pass --config.model.coarse_cell=0"
        )
    try:
        kernel, bias = coarse_face.fit(config, state.embedder, records)
    except ValueError as e:
        raise config_lib.ConfigError(f"{e}; or pass --config.model.coarse_cell=0") from e
    generator = coarse_face.with_fitted_map(state.generator, kernel, bias)
    ema = state.generator_ema
    if ema is not None:
        ema = coarse_face.with_fitted_map(ema, kernel, bias)
    return state.replace(generator=generator, generator_ema=ema)


def make_step_factory(config: ml_collections.ConfigDict, nets: models.Networks, face_targets=None):
    """`axis_name -> step` for `parallel.DataParallel`: the task's step with the NaN guard.
    `face_targets`: the face targets of E or G (`load_face_targets`), or None."""
    keep_old = config.train.on_nonfinite == "skip"
    if config.train.task == "embedder":
        num = int(config.model.num_ids)
        make = lambda axis: train_step.make_embedder_step(config, nets, num, axis, face_targets)
    else:
        make = lambda axis: train_step.make_gan_step(config, nets, axis, face_targets)
    return lambda axis: nonfinite.guard(make(axis), keep_old)


def load_face_targets(config: ml_collections.ConfigDict, records: manifest_lib.Records | None):
    """The face targets (`face_targets.py`) of E's pretraining or of G when
    `train.face_target_weight` > 0, else None.

    Raises:
      config_lib.ConfigError: targets are wanted but there are no records to take them from, or
        no training identity has a face.
    """
    if float(config.train.face_target_weight) <= 0:
        return None
    hint = "or pass --config.train.face_target_weight=0"
    if records is None:
        raise config_lib.ConfigError(
            f"config.train.face_target_weight > 0 takes its face targets from the records' "
            f"training faces: give the records, {hint}"
        )
    start = time.perf_counter()
    try:
        targets = face_targets.from_records(records, int(config.train.face_target_pool))
    except ValueError as e:
        raise config_lib.ConfigError(f"{records.root}: {e}; {hint}") from e
    logger.info(
        "face targets: %d of %d training identities have faces, %d values each (%.1f s)",
        int(targets.present.sum()),
        len(targets.present),
        targets.values.shape[1],
        time.perf_counter() - start,
    )
    return targets


# --- the loop -------------------------------------------------------------------------------


def _stream_settings(config) -> dict[str, Any]:
    """What decides the training stream's batches, for every feed: the same settings, the same
    batches."""
    return dict(
        batch_size=config.train.batch_size,
        crop_lengths=tuple(config.data.crop_lengths),
        seed=config.seed,
        face_flip=config.data.face_flip,
        shuffle_buffer=config.data.shuffle_buffer,
    )


def default_batches(config, records: manifest_lib.Records) -> BatchFactory:
    """The tf.data training stream of this host (TensorFlow is imported here, not before)."""
    from v2f_jax.input_pipeline import reader

    def make(start_batch: int) -> Iterator[Batch]:
        return reader.make_train_iterator(
            records,
            **_stream_settings(config),
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            start_batch=start_batch,
            service_address=config.data.service_address,
        )

    return make


def resident_batches(
    config, records: manifest_lib.Records, dp: parallel.DataParallel
) -> tuple[BatchFactory, Callable[[list[Batch]], Any]]:
    """`config.data.on_device`: this host's shards of the training split loaded into its
    devices' memory once; the host stream is indices, which the devices turn into the same
    batches as `default_batches`, on any number of hosts."""
    from v2f_jax.feed import resident_data
    from v2f_jax.input_pipeline import reader, train_arrays

    host = dict(process_index=jax.process_index(), process_count=jax.process_count())
    arrays = train_arrays.host_split(records, config.data.arrays_dir, **host)
    resident = resident_data.ResidentData(arrays, dp, max(config.data.crop_lengths))
    logger.info(
        "training split in device memory: %.2f GB on each of this host's %d devices",
        resident.nbytes / 1e9,
        len(dp.local_devices),
    )

    def make(start_batch: int) -> Iterator[Batch]:
        return reader.make_train_index_iterator(
            arrays, records, **_stream_settings(config), start_batch=start_batch, **host
        )

    return make, resident


def host_memory_batches(config, records: manifest_lib.Records) -> BatchFactory:
    """`config.data.in_host_memory`: this host's shards of the training split loaded into its
    memory once (or memory-mapped from `config.data.arrays_dir`); each batch is gathered there
    (numpy, on the prefetch thread) from the index stream: the same batches as
    `default_batches`, on any number of hosts."""
    from v2f_jax.feed import resident_data
    from v2f_jax.input_pipeline import reader, train_arrays

    host = dict(process_index=jax.process_index(), process_count=jax.process_count())
    arrays = train_arrays.host_split(records, config.data.arrays_dir, **host)
    logger.info(
        "training split in host memory: %.2f GB (%d utterances, %d faces)",
        (arrays["mel"].nbytes + arrays["face"].nbytes) / 1e9,
        len(arrays["voice_frames"]),
        len(arrays["face"]),
    )
    rows = max(config.data.crop_lengths)

    def make(start_batch: int) -> Iterator[Batch]:
        indices = reader.make_train_index_iterator(
            arrays, records, **_stream_settings(config), start_batch=start_batch, **host
        )
        return (resident_data.gather_on_host(arrays, index, rows) for index in indices)

    return make


def chunk_sizes(start: int, total: int, steps_per_call: int) -> Iterator[int]:
    """Steps per dispatch from step `start` to `total`: `steps_per_call`, then single steps."""
    n = start
    while n < total:
        k = steps_per_call if total - n >= steps_per_call else 1
        yield k
        n += k


def train(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    records: manifest_lib.Records | str | os.PathLike | None = None,
    *,
    make_batches: BatchFactory | None = None,
    devices=None,
) -> dict[str, Any]:
    """Trains (or resumes training) until `config.train.steps`.

    Args:
      config: a `configs/*.py` config; `model.num_ids` is set from the records.
      workdir: where checkpoints, logs and samples go; a workdir with checkpoints is resumed.
      records: the output of `v2f prepare` (a `manifest.Records`, or its directory).
      make_batches: `start_batch -> iterator` of this host's batches, replacing the reader
        (tests; `config.model.num_ids` must then be set if records is None).
      devices: the devices to train on (default: all devices of all hosts).

    Returns:
      `{"step", "train/<metric>"..., "preempted", "nonfinite_skips"}`: the last logged means.

    Raises:
      NonFiniteLossError: a non-finite loss with `on_nonfinite="stop"`, or more than
        `max_nonfinite_skips` with "skip".
    """
    workdir = os.path.abspath(os.fspath(workdir))
    if records is not None and not isinstance(records, manifest_lib.Records):
        records = manifest_lib.Records.open(records)
    config = resolve_config(config, records)
    if records is not None:
        config_checks.check_batch(config, records)
    task = config.train.task
    total = int(config.train.steps)
    is_chief = jax.process_index() == 0
    config_checks.check_devices(config, jax.device_count() if devices is None else len(devices))
    # One run per workdir; a resumed run keeps the settings its checkpoints were trained with.
    lock = workdir_lib.start_run(workdir, config, is_chief, records)

    compilation.use_persistent_cache(config.train.compilation_cache, workdir)
    nets = models.Networks(config.model, int(config.model.num_ids))
    steps_per_call = int(config.train.steps_per_call)
    dp = parallel.DataParallel(
        make_step_factory(config, nets, load_face_targets(config, records)),
        config.train.parallel,
        devices,
        steps_per_call=steps_per_call,
    )
    global_batch = int(config.train.batch_size)
    ckpt = checkpointing.Checkpointer(
        os.path.join(workdir, checkpointing.CHECKPOINTS), keep=config.checkpoint.keep
    )
    writers = None
    stop = None
    profile = None
    feed = None
    grids = None
    try:
        found = ckpt.restore_latest(checkpointing.state_template(config, nets))
        if found is not None:
            ckpt_step, host_state, meta = found
            start, skips = int(meta["next_batch"]), int(meta.get("nonfinite_skips", 0))
            logger.info("resuming from %s at step %d", ckpt.directory, ckpt_step)
            state = dp.put_state(host_state)
        else:
            start, skips = 0, 0
            state = dp.put_state(create_state(config, nets, records))
        writers = metric_writers.MetricWriters(workdir, start, is_chief)
        grids = _make_grids(config, records, is_chief, workdir)
        to_device = dp.put
        if make_batches is None and config.data.on_device:
            make_batches, to_device = resident_batches(config, records, dp)
        if make_batches is None and config.data.in_host_memory:
            make_batches = host_memory_batches(config, records)
        make_batches = make_batches or default_batches(config, records)
        stop = distributed.StopRequest()
        logger.info(
            "%s: %d steps of %d (global batch %d on %d devices, %d process%s), workdir %s",
            task,
            total - min(start, total),
            total,
            global_batch,
            dp.num_devices,
            jax.process_count(),
            "" if jax.process_count() == 1 else "es",
            workdir,
        )

        result: dict[str, Any] = {"step": start, "preempted": False}
        if start >= total:
            logger.info("nothing to do: the checkpoint is at step %d of %d", start, total)
            return result | metric_writers.last_logged(workdir) | {"nonfinite_skips": skips}
        if stop.signalled:  # while the run was starting: nothing trained, nothing to save
            logger.warning(
                "stopped by %s before step %d of %d; nothing new to save; run the same command "
                "again to %s",
                distributed.stop_signal_name() or "a signal",
                start + 1,
                total,
                "resume" if start else "start",
            )
            return result | {"preempted": True, "nonfinite_skips": skips}

        feed = device_prefetch.DevicePrefetch(
            make_batches(start),
            to_device,
            chunk_sizes(start, total, steps_per_call),
            depth=int(config.data.prefetch_to_device),
        )
        ckpt_every = max(1, int(config.checkpoint.every))
        log_every = max(1, int(config.train.log_every))
        sample_every = int(config.train.sample_every)
        check = nonfinite.MetricsCheck(
            config.train.on_nonfinite, config.train.max_nonfinite_skips, skips
        )
        fetch = step_metrics.StepMetrics(dp)
        profile = profiling.StepProfile(config.train.profile_steps, workdir)

        def log(interval: step_metrics.Interval) -> None:
            """Checks one fetched interval's metrics and writes its log line."""
            means = check(interval.steps, interval.values)
            rate = len(interval.steps) / max(interval.seconds, 1e-9)
            result.update({f"train/{k}": v for k, v in means.items()})
            writers.scalars(
                interval.steps[-1],
                {
                    **{f"train/{k}": v for k, v in means.items()},
                    "perf/steps_per_sec": rate,
                    "perf/samples_per_sec": rate * global_batch,
                    "train/nonfinite_skips": float(check.skips),
                },
            )
            if is_chief:
                logger.info(
                    metric_writers.progress_line(
                        interval.steps[-1], total, rate, global_batch, means, task
                    )
                )

        def crossed(every: int, before: int, after: int) -> bool:
            return after // every > before // every or after == total

        n = start
        while n < total:
            k, batch = next(feed)
            profile.before(n + 1, n + k)
            with jax.profiler.StepTraceAnnotation("train", step_num=n + 1):
                if k == 1:
                    state, metrics = dp(state, batch)
                else:
                    state, metrics = dp.multi_step(state, batch)
            before, n = n, n + k
            fetch.add(before + 1, k, metrics)
            profile.after(n, state)
            stopping = stop(n)
            checkpointing_now = crossed(ckpt_every, before, n) or stopping
            if crossed(log_every, before, n):
                # This interval's metrics start their way to the host; the previous interval's,
                # long arrived, are checked and logged: the device never waits for the log.
                fetch.start()
                for interval in fetch.ready(keep=1):
                    log(interval)
            if checkpointing_now:
                # A checkpoint is written only after its steps' flags were read.
                for interval in fetch.drain():
                    log(interval)
            if grids is not None:
                if sample_every and crossed(sample_every, before, n):
                    # Drawn on the grids' thread from a copy made on the device now.
                    for step, grid in grids.submit(n, dp.get_state(state)):
                        writers.image(step, "samples", grid)
                for step, grid in grids.finished():
                    writers.image(step, "samples", grid)
            if checkpointing_now:
                meta = {"next_batch": n, "nonfinite_skips": check.skips}
                ckpt.save(n, dp.get_state(state), meta)
            if stopping:
                ckpt.wait()
                logger.warning(
                    "stopped by %s at step %d of %d; checkpoint saved; run the same "
                    "command again to resume",
                    distributed.stop_signal_name() or "the preemption notice",
                    n,
                    total,
                )
                result["preempted"] = True
                break
        if grids is not None:
            for step, grid in grids.close():
                writers.image(step, "samples", grid)
        result["step"] = n
        result["nonfinite_skips"] = check.skips
        return result
    finally:
        if grids is not None:
            grids.shutdown()
        if feed is not None:
            seconds = feed.close()
            if sum(seconds.values()) > device_prefetch.SLOW_CLOSE_S:
                logger.warning(
                    "closing the input stream took %.1f s (prefetch thread %.1f s, reader %.1f s)",
                    sum(seconds.values()),
                    seconds["thread"],
                    seconds["source"],
                )
        if profile is not None:
            profile.close()
        if stop is not None:
            stop.close()
        ckpt.close()
        if writers is not None:
            writers.close()
        if lock is not None:
            lock.release()


def _make_grids(config, records: manifest_lib.Records | None, is_chief: bool, workdir: str):
    if not is_chief or config.train.task != "gan" or records is None:
        return None
    if int(config.train.sample_every) <= 0:
        return None
    from v2f_jax.training import samples

    sample_set = samples.make_sample_set(records)
    if sample_set is None:
        logger.warning("no identity with both a voice and a face: no sample grid")
        return None
    writer = samples.SampleWriter(config, sample_set)
    return samples.BackgroundGrids(writer, os.path.join(workdir, "samples"))
