"""The training loop: batches in, jitted steps on every device, logs, samples, checkpoints.

`train_and_evaluate(config, workdir, records_dir)` trains the GAN (`train.task="gan"`) or
pretrains the voice embedder (`train.task="embedder"`) and writes, in `workdir`:

    config.json                  the resolved config (with `model.num_ids` from the records)
    checkpoints/<step>/          orbax steps: state, data position, counters (checkpointing.py)
    metrics.jsonl                one line per log step: `{"step", "train/d_loss", ...}`
    tb/                          TensorBoard scalars (`train/...`) and the sample grid
    samples/step_NNNNNN.png      faces from fixed held-out voices beside the real faces

Exact resume: loop step `n` consumes batch `n - 1` of the reader, whose stream is a pure function
of (seed, batch index); the step's RNG is `fold_in(state.key, state.step)`. A checkpoint holds the
state and `next_batch`, so a restarted run (same command) continues with the same batches, keys
and parameters as a run never stopped: bitwise equal on CPU.

Host syncs happen only at log, sample and checkpoint steps: the metrics of the steps in between
stay on device and are fetched together then. Each step also returns an on-device `finite` flag
(every metric and every new parameter finite) and keeps the previous state when it is false, so
a bad update never lands; the host reads the flags with the metrics and stops the run naming the
first bad step and loss (`train.on_nonfinite="stop"`), or counts it as skipped ("skip", at most
`train.max_nonfinite_skips`). A checkpoint is written only after its steps' flags were read.

SIGTERM (one process): the step in flight finishes, a checkpoint is saved, and the run returns
with `preempted=True` (`v2f train` exits 0). With several processes JAX's preemption service
picks a step at which every host saves.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from v2f_jax import checkpointing, config_lib, models, parallel, train_step
from v2f_jax import state as state_lib

PyTree = Any
Batch = dict[str, np.ndarray]
# make_batches(start_batch) -> this host's batches from global batch index `start_batch` on.
BatchFactory = Callable[[int], Iterator[Batch]]

logger = logging.getLogger("v2f.train")

# What a person reads in the progress line, per task.
PROGRESS_KEYS = {"gan": ("d_loss", "c_loss", "g_adv", "g_id"), "embedder": ("e_loss", "e_acc")}
_FINITE = "finite"


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


# --- configuration --------------------------------------------------------------------------


def resolve_config(
    config: ml_collections.ConfigDict, records_dir: str | os.PathLike | None
) -> ml_collections.ConfigDict:
    """A copy of `config` with `model.num_ids` = the records' training identities."""
    config = config_lib.from_dict(config_lib.to_dict(config))
    if records_dir is not None:
        from input_pipeline import reader  # noqa: PLC0415  (TensorFlow)

        num_ids = int(reader.read_manifest(records_dir)["splits"]["train"]["num_identities"])
        if config.model.num_ids not in (0, num_ids):
            raise config_lib.ConfigError(
                f"config.model.num_ids={config.model.num_ids}, but {records_dir} has {num_ids} "
                f"training identities; leave it 0 to take it from the records"
            )
        config.model.num_ids = num_ids
    if config.model.num_ids < 1:
        raise config_lib.ConfigError("config.model.num_ids is unset: pass records_dir")
    if config.train.task not in PROGRESS_KEYS:
        raise config_lib.ConfigError(
            f"config.train.task must be 'gan' or 'embedder', not {config.train.task!r}"
        )
    if config.train.on_nonfinite not in ("stop", "skip"):
        raise config_lib.ConfigError(
            f"config.train.on_nonfinite must be 'stop' or 'skip', not {config.train.on_nonfinite!r}"
        )
    return config


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif json.dumps(a) != json.dumps(b):
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


# --- state ----------------------------------------------------------------------------------


def _params(state) -> PyTree:
    """The parameters of a state (what a non-finite update would poison)."""
    if isinstance(state, state_lib.EmbedderState):
        return (state.embedder, state.head)
    return (state.embedder, state.generator, state.critics)


def guard_nonfinite(step: Callable) -> Callable:
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
        return kept, {**metrics, _FINITE: finite.astype(jnp.float32)}

    return guarded


def load_embedder(path: str | os.PathLike, template: PyTree) -> PyTree:
    """E's `{"params", "batch_stats"}` from an embedder (or GAN) workdir or an exported model
    file, checked against `template` (the shapes this config's E has)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        _, restored = checkpointing.restore_for_inference(path)
        embedder = restored.embedder
    elif os.path.isfile(path):
        from v2f_jax import export  # noqa: PLC0415

        embedder = export.load_model(path).embedder
    else:
        raise FileNotFoundError(f"train.embedder_init: {path}: no such workdir or model file")
    embedder = {"params": embedder["params"], "batch_stats": embedder["batch_stats"]}
    want = jax.tree_util.tree_map(lambda x: (tuple(x.shape), np.dtype(x.dtype)), template)
    got = jax.tree_util.tree_map(lambda x: (tuple(np.shape(x)), np.asarray(x).dtype), embedder)
    if want != got:
        raise config_lib.ConfigError(
            f"train.embedder_init: the embedder in {path} does not fit this config's "
            f"model.voice_channels/embed_dim/n_mels (shapes differ)"
        )
    return jax.tree_util.tree_map(np.asarray, embedder)


def _run_once(fn: Callable) -> PyTree:
    """`jax.jit(fn)()` for a function run once per run (initialisation): on CPU, compiled with
    XLA's cheap backend settings, which take seconds where the optimising ones take tens."""
    lowered = jax.jit(fn).lower()
    options = {}
    if jax.default_backend() == "cpu":
        options = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    return lowered.compile(compiler_options=options)()


def create_state(config: ml_collections.ConfigDict, nets: models.Networks):
    """The fresh state of a run, E from `train.embedder_init` if set; host numpy arrays, the same
    on every host (process 0's values are broadcast)."""
    if config.train.task == "embedder":
        num = int(config.model.num_ids)
        state = _run_once(lambda: state_lib.create_embedder_state(config, nets, num))
    else:
        state = _run_once(lambda: state_lib.create_gan_state(config, nets))
        if config.train.embedder_init:
            embedder = load_embedder(config.train.embedder_init, state.embedder)
            state = state.replace(embedder=embedder)
            logger.info("E initialised from %s", config.train.embedder_init)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        # Initialisation may round differently on hosts with other CPUs; the replicas may not.
        state = multihost_utils.broadcast_one_to_all(state)
    return jax.tree_util.tree_map(np.asarray, jax.device_get(state))


def make_step_factory(config: ml_collections.ConfigDict, nets: models.Networks):
    if config.train.task == "embedder":
        num = int(config.model.num_ids)
        return lambda axis: guard_nonfinite(train_step.make_embedder_step(config, nets, num, axis))
    return lambda axis: guard_nonfinite(train_step.make_gan_step(config, nets, axis))


# --- multi-host -----------------------------------------------------------------------------


def init_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """`jax.distributed.initialize` from arguments or the environment; True if it ran.

    Arguments win; else `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`; else,
    under SLURM or Open MPI with more than one task, JAX's own cluster detection. One process and
    none of these: nothing to do. CPU collectives go through gloo (a no-op on GPU/TPU).
    Must run before any other JAX call.
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


class _StopRequest:
    """SIGTERM -> stop at the next step boundary (one process); JAX's preemption sync point
    with several (every host must save at the same step)."""

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
            from jax.experimental import multihost_utils  # noqa: PLC0415

            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # the preemption service is disabled
                return False
        return self.signalled

    def close(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


# --- logging --------------------------------------------------------------------------------


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class _Writers:
    """metrics.jsonl, TensorBoard and the progress line; process 0 writes, others do nothing."""

    def __init__(self, workdir: str, resumed_step: int, enabled: bool):
        self.enabled = enabled
        self.workdir = workdir
        self._tb = None
        if not enabled:
            return
        self.jsonl = os.path.join(workdir, "metrics.jsonl")
        self._truncate_after(resumed_step)
        import tensorflow as tf  # noqa: PLC0415

        self._tf = tf
        self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tb"))

    def _truncate_after(self, step: int) -> None:
        """Drops lines a killed run logged after its last checkpoint (they are redone)."""
        if not os.path.exists(self.jsonl):
            return
        keep = []
        with open(self.jsonl) as f:
            for line in f:
                try:
                    if json.loads(line)["step"] <= step:
                        keep.append(line if line.endswith("\n") else line + "\n")
                except (ValueError, KeyError, TypeError):
                    pass  # a line cut by a kill
        tmp = self.jsonl + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, self.jsonl)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps({"step": step, **values}, sort_keys=True) + "\n")
        with self._tb.as_default(step=step):
            for name, value in values.items():
                self._tf.summary.scalar(name, value)
        self._tb.flush()

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        if not self.enabled:
            return
        with self._tb.as_default(step=step):
            self._tf.summary.image(name, image[None], max_outputs=1)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


# --- the loop -------------------------------------------------------------------------------


def default_batches(config, records_dir) -> BatchFactory:
    from input_pipeline import reader  # noqa: PLC0415  (TensorFlow)

    def make(start_batch: int) -> Iterator[Batch]:
        return reader.make_train_iterator(
            records_dir,
            batch_size=config.train.batch_size,
            crop_lengths=tuple(config.data.crop_lengths),
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            face_flip=config.data.face_flip,
            shuffle_buffer=config.data.shuffle_buffer,
            start_batch=start_batch,
        )

    return make


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    records_dir: str | os.PathLike | None = None,
    *,
    make_batches: BatchFactory | None = None,
    devices=None,
) -> dict[str, Any]:
    """Trains (or resumes training) until `config.train.steps`.

    Args:
      config: a `configs/*.py` config; `model.num_ids` is set from the records.
      workdir: where checkpoints, logs and samples go; a workdir with checkpoints is resumed.
      records_dir: the `--out` of `v2f prepare`.
      make_batches: `start_batch -> iterator` of this host's batches, replacing the reader
        (tests; `config.model.num_ids` must then be set if records_dir is None).
      devices: the devices to train on (default: all devices of all hosts).

    Returns:
      `{"step", "train/<metric>"..., "preempted", "nonfinite_skips"}`: the last logged means.

    Raises:
      NonFiniteLossError: a non-finite loss with `on_nonfinite="stop"`, or more than
        `max_nonfinite_skips` with "skip".
    """
    workdir = os.path.abspath(os.fspath(workdir))
    config = resolve_config(config, records_dir)
    task = config.train.task
    total = int(config.train.steps)
    is_chief = jax.process_index() == 0
    if is_chief:
        os.makedirs(workdir, exist_ok=True)
    old_config_path = os.path.join(workdir, checkpointing.CONFIG)
    if is_chief and os.path.exists(old_config_path):
        with open(old_config_path) as f:
            changed = _differences(json.load(f), config_lib.to_dict(config))
        if changed:
            logger.warning(
                "config differs from the previous run in %s: %s", workdir, "; ".join(changed)
            )
    checkpointing.write_config(workdir, config)

    nets = models.Networks(config.model, int(config.model.num_ids))
    dp = parallel.DataParallel(make_step_factory(config, nets), config.train.parallel, devices)
    global_batch = int(config.train.batch_size)
    ckpt = checkpointing.Checkpointer(
        os.path.join(workdir, checkpointing.CHECKPOINTS), keep=config.checkpoint.keep
    )
    writers = None
    stop = None
    try:
        found = ckpt.restore_latest(checkpointing.state_template(config, nets))
        if found is not None:
            ckpt_step, host_state, meta = found
            start, skips = int(meta["next_batch"]), int(meta.get("nonfinite_skips", 0))
            logger.info("resuming from %s at step %d", ckpt.directory, ckpt_step)
            state = dp.put_state(host_state)
        else:
            start, skips = 0, 0
            state = dp.put_state(create_state(config, nets))
        writers = _Writers(workdir, start, is_chief)
        sampler = _make_sampler(config, records_dir, is_chief)
        make_batches = make_batches or default_batches(config, records_dir)
        stop = _StopRequest()
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
            return result | _last_logged(workdir) | {"nonfinite_skips": skips}

        batches = make_batches(start)
        pending: list[tuple[int, PyTree]] = []
        last_log = (start, time.perf_counter())
        ckpt_every = max(1, int(config.checkpoint.every))
        log_every = max(1, int(config.train.log_every))
        sample_every = int(config.train.sample_every) if sampler is not None else 0

        def flush() -> dict[str, float]:
            """Fetches the pending steps' metrics; checks them; returns their finite means."""
            nonlocal skips
            if not pending:
                return {}
            fetched = jax.device_get([m for _, m in pending])
            sums: dict[str, float] = {}
            count = 0
            for (n, _), m in zip(pending, fetched):
                m = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in m.items()}
                if m.pop(_FINITE) > 0:
                    count += 1
                    for k, v in m.items():
                        sums[k] = sums.get(k, 0.0) + v
                    continue
                names = [k for k, v in m.items() if not math.isfinite(v)] or ["parameters"]
                if config.train.on_nonfinite == "stop":
                    raise NonFiniteLossError(n, names, m, " (train.on_nonfinite='stop')")
                skips += 1
                logger.warning(
                    "step %d: non-finite %s; update skipped (%d of at most %d)",
                    n,
                    ", ".join(names),
                    skips,
                    config.train.max_nonfinite_skips,
                )
                if skips > config.train.max_nonfinite_skips:
                    raise NonFiniteLossError(
                        n,
                        names,
                        m,
                        f" (more than train.max_nonfinite_skips="
                        f"{config.train.max_nonfinite_skips} skipped)",
                    )
            pending.clear()
            return {k: v / count for k, v in sums.items()} if count else {}

        n = start
        while n < total:
            batch = next(batches)
            state, metrics = dp(state, dp.put_batch(batch))
            n += 1
            pending.append((n, metrics))
            stopping = stop(n)
            if n % log_every == 0 or n == total or stopping:
                means = flush()
                now = time.perf_counter()
                rate = (n - last_log[0]) / max(now - last_log[1], 1e-9)
                last_log = (n, now)
                result.update({f"train/{k}": v for k, v in means.items()})
                writers.scalars(
                    n,
                    {
                        **{f"train/{k}": v for k, v in means.items()},
                        "perf/steps_per_sec": rate,
                        "perf/samples_per_sec": rate * global_batch,
                        "train/nonfinite_skips": float(skips),
                    },
                )
                if is_chief:
                    logger.info(_progress(n, total, rate, global_batch, means, task))
            if sample_every and (n % sample_every == 0 or n == total):
                current = dp.get_state(state)
                embedder, generator = jax.device_get((current.embedder, current.generator))
                grid = sampler.write(
                    os.path.join(workdir, "samples", f"step_{n:06d}.png"), embedder, generator
                )
                writers.image(n, "samples", grid)
            if n % ckpt_every == 0 or n == total or stopping:
                flush()  # a checkpoint is written only after its steps were checked
                ckpt.save(n, dp.get_state(state), {"next_batch": n, "nonfinite_skips": skips})
            if stopping:
                ckpt.wait()
                logger.warning(
                    "stopped by SIGTERM at step %d of %d; checkpoint saved; run the same "
                    "command again to resume",
                    n,
                    total,
                )
                result["preempted"] = True
                break
        result["step"] = n
        result["nonfinite_skips"] = skips
        return result
    finally:
        if stop is not None:
            stop.close()
        ckpt.close()
        if writers is not None:
            writers.close()


def _progress(n, total, rate, global_batch, means, task) -> str:
    losses = " ".join(f"{k} {means[k]:.4f}" for k in PROGRESS_KEYS[task] if k in means)
    eta = _fmt_duration((total - n) / rate) if rate > 0 else "?"
    width = len(str(total))
    return (
        f"step {n:>{width}}/{total} ({100 * n // total:3d}%) | {rate:6.2f} steps/s | "
        f"{rate * global_batch:8.1f} samples/s | ETA {eta:>7} | {losses}"
    )


def _make_sampler(config, records_dir, is_chief):
    if not is_chief or config.train.task != "gan" or records_dir is None:
        return None
    if int(config.train.sample_every) <= 0:
        return None
    from v2f_jax import samples  # noqa: PLC0415

    sample_set = samples.make_sample_set(records_dir)
    if sample_set is None:
        logger.warning("no identity with both a voice and a face: no sample grid")
        return None
    return samples.SampleWriter(config, sample_set)


def _last_logged(workdir: str) -> dict:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    last = {}
    with open(path) as f:
        for line in f:
            try:
                last = json.loads(line)
            except ValueError:
                pass
    return {k: v for k, v in last.items() if k.startswith("train/")}
