"""The training step on synthetic data, compiled and timed (`v2f bench --mode step`).

Timings are wall-clock, one `block_until_ready` per step (the step's device->host copy of the
metrics is not timed: a training loop only fetches them at log steps), and also dispatched back to
back as the loop runs it.
"""

from __future__ import annotations

import time

import jax
import ml_collections
import numpy as np

from v2f_jax import models, parallel, train_step
from v2f_jax import state as state_lib
from v2f_jax.bench import hlo, probes, timing
from v2f_jax.training import compilation, face_targets

DEFAULT_NUM_IDS = 924  # the reference's training identities (VoxCeleb1 F-Z)


def synthetic_batch(
    batch_size: int, frames: int, num_ids: int, n_mels: int = 64, image_size: int = 64, seed=0
) -> dict[str, np.ndarray]:
    """A training batch as the reader sends it (device_inputs.py: float16 voices N(0, 1) of
    `frames` frames, uint8 faces), so the step timed is the step trained."""
    rng = np.random.default_rng(seed)
    size = (batch_size, image_size, image_size, 3)
    return {
        "voice": rng.normal(size=(batch_size, frames, n_mels)).astype(np.float16),
        "voice_len": np.full((batch_size,), frames, np.int32),
        "voice_frames": np.full((batch_size,), frames, np.int32),
        "voice_id": rng.integers(0, num_ids, batch_size).astype(np.int32),
        "face": rng.integers(0, 256, size=size, dtype=np.uint8),
        "face_flip": rng.random(batch_size) < 0.5,
        "face_id": rng.integers(0, num_ids, batch_size).astype(np.int32),
    }


def synthetic_face_targets(config, num_ids: int, seed=0):
    """Face targets for every identity from random mean faces when the config's step uses them
    (`train.face_target_weight` > 0, as `configs/recipe.py` does), else None: the loss term
    costs the same whatever the faces."""
    if float(config.train.get("face_target_weight", 0.0)) <= 0:
        return None
    pool = int(config.train.face_target_pool)
    rng = np.random.default_rng(seed)
    sums = rng.uniform(0, 255, (num_ids, face_targets.target_dim(pool)))
    return face_targets.standardise(sums, np.ones(num_ids, np.int64), pool)


def bytes_per_sample(batch: dict[str, np.ndarray]) -> float:
    """Host-to-device bytes of one sample of a (host) batch, every array counted."""
    rows = len(next(iter(batch.values())))
    return sum(np.asarray(v).nbytes for v in batch.values()) / rows


def apply_step_overrides(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int | None = None,
    dtype: str | None = None,
    parallel_mode: str | None = None,
    impl: str | None = None,
    matmul_precision: str | None = None,
) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    if matmul_precision is not None:
        config.model.matmul_precision = matmul_precision
    if batch_size is not None:
        config.train.batch_size = batch_size
    if dtype is not None:
        config.model.dtype = dtype
    if parallel_mode is not None:
        config.train.parallel = parallel_mode
    if impl is not None:
        config.model.impl = impl
    return config


class StepRunner:
    """The compiled GAN step of a config on synthetic data: `compile()`, then `run(n)` (each call
    waited for) or `run_pipelined(n)` (calls dispatched back to back, as the training loop does,
    one wait at the end).

    Shared by `v2f bench` and `benchmarks/compare_pytorch.py`, so both time the same thing.
    `steps_per_call=K` runs K steps per call (`lax.scan`, `train.steps_per_call`); times are
    then per call of K steps.
    """

    def __init__(
        self,
        config,
        *,
        frames: int,
        num_ids: int = DEFAULT_NUM_IDS,
        seed: int = 0,
        devices: int | None = None,
        steps_per_call: int = 1,
    ):
        self.config = config
        self.frames = frames
        self.num_ids = num_ids
        self.steps_per_call = steps_per_call
        self.nets = models.Networks(config.model, num_ids)
        mode = config.train.parallel
        targets = synthetic_face_targets(config, num_ids, seed)
        self.dp = parallel.DataParallel(
            lambda axis_name: train_step.make_gan_step(config, self.nets, axis_name, targets),
            mode,
            devices=jax.devices()[:devices] if devices else None,
            steps_per_call=steps_per_call,
        )
        batch_size = config.train.batch_size
        if batch_size % self.dp.num_devices:
            raise ValueError(
                f"batch {batch_size} is not divisible by {self.dp.num_devices} devices"
            )
        self.batch_size = batch_size
        host_state = compilation.run_once(lambda: state_lib.create_gan_state(config, self.nets))
        self.state = self.dp.put_state(jax.device_get(host_state))
        host_batch = synthetic_batch(
            batch_size, frames, num_ids, config.data.n_mels, config.data.image_size, seed
        )
        self.bytes_per_sample = bytes_per_sample(host_batch)
        if steps_per_call > 1:
            self.batch = self.dp.put_batches([host_batch] * steps_per_call)
            self._jitted = self.dp.multi_step
        else:
            self.batch = self.dp.put_batch(host_batch)
            self._jitted = self.dp.step
        self.step = None
        self.compile_s = None
        self.compiled = None
        self.last_metrics = None

    def compile(self) -> float:
        """Compiles the step once; returns the seconds it took."""
        start = time.perf_counter()
        self.compiled = self._jitted.lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - start
        self.step = self.compiled
        return self.compile_s

    def run(self, n: int) -> list[float]:
        """Runs `n` steps; their wall seconds each. The state advances (donated buffers)."""
        if self.step is None:
            self.compile()
        times = []
        for _ in range(n):
            start = time.perf_counter()
            self.state, self.last_metrics = self.step(self.state, self.batch)
            jax.block_until_ready((self.state, self.last_metrics))
            times.append(time.perf_counter() - start)
        return times

    def run_pipelined(self, n: int) -> float:
        """Runs `n` calls without waiting in between; the wall seconds of all of them."""
        if self.step is None:
            self.compile()
        start = time.perf_counter()
        for _ in range(n):
            self.state, self.last_metrics = self.step(self.state, self.batch)
        jax.block_until_ready((self.state, self.last_metrics))
        return time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        """The last step's metrics (of the last call's K steps, the last)."""
        last = jax.tree_util.tree_map(
            lambda x: x.reshape(-1)[-1], self.dp.local_metrics(self.last_metrics)
        )
        return {k: float(v) for k, v in jax.device_get(last).items()}


def bench_step(
    config: ml_collections.ConfigDict,
    *,
    frames: int,
    steps: int = 10,
    warmup: int = 2,
    num_ids: int = DEFAULT_NUM_IDS,
    peak: bool = True,
    devices: int | None = None,
    steps_per_call: int = 1,
) -> dict:
    """Compile once, warm up, time the full GAN step (`train_step`) two ways: each call waited
    for (`step_s`, `samples_per_s`) and calls dispatched back to back as the training loop does
    (`samples_per_s_pipelined`: what the host's dispatch costs shows as the difference).

    `steps`: timed steps (rounded up to whole calls of `steps_per_call`); `devices`: use the
    first N devices (default all). `executables_compiled` counts XLA compilations from the
    first compile to the end of timing: 1 when the step compiled once.
    """
    k = max(1, int(steps_per_call))
    calls, warmup_calls = -(-steps // k), -(-warmup // k)
    runner = StepRunner(config, frames=frames, num_ids=num_ids, devices=devices, steps_per_call=k)
    # The peak is measured before and after the step (the machine may change in between).
    peak_before = probes.matmul_peak(config.model.dtype) if peak else None
    with compilation.CompileCounter() as compiles:
        compile_s = runner.compile()
        runner.run(warmup_calls)
        times = [t / k for t in runner.run(calls)]
        pipelined_s = runner.run_pipelined(calls) / (calls * k)
    # XLA compiles one program per device (SPMD under jit, the same under pmap): its cost
    # analysis is one device's share of the step (a scan's body, one step, counts once).
    flops_device = hlo.compiled_flops(runner.compiled)
    peak_after = probes.matmul_peak(config.model.dtype) if peak else None
    metrics = runner.metrics()
    step_s = timing.spread(times)
    t = step_s["median"]
    n_dev = runner.dp.num_devices
    samples_per_s = runner.batch_size / t
    out = {
        "mode": "step",
        "batch": runner.batch_size,
        "bytes_per_sample_to_device": runner.bytes_per_sample,
        "frames": frames,
        "dtype": config.model.dtype,
        "matmul_precision": config.model.matmul_precision,
        "impl": config.model.impl,
        "impl_resolved": runner.nets.convs.impl,
        "arch": config.model.arch,
        "parallel": config.train.parallel,
        "steps_per_call": k,
        "num_ids": num_ids,
        "compile_s": compile_s,
        "executables_compiled": compiles.count,
        "step_s": step_s,
        "samples_per_s": samples_per_s,
        "steps_per_s": 1.0 / t,
        "step_s_pipelined": pipelined_s,
        "samples_per_s_pipelined": runner.batch_size / pipelined_s,
        "devices": n_dev,
        "samples_per_s_per_device": samples_per_s / n_dev,
        "flops_per_step": flops_device * n_dev if flops_device else None,
        "flops_per_step_per_device": flops_device,
        "gflops_per_s": flops_device * n_dev / t / 1e9 if flops_device else None,
        "gflops_per_s_per_device": flops_device / t / 1e9 if flops_device else None,
        "losses_finite": all(np.isfinite(v) for v in metrics.values()),
        "hlo": hlo.hlo_op_counts(runner.compiled),
        "hlo_kernels": hlo.hlo_kernels(runner.compiled),
    }
    if peak:
        best = max(peak_before["gflops_per_s"], peak_after["gflops_per_s"])
        out["peak_gflops_per_s_per_device"] = best
        out["peak_matmul"] = f"{peak_before['size']}^3 {config.model.dtype}"
        if flops_device:
            # CPU "devices" share the host's cores: there the peak is the host's.
            shared = jax.default_backend() == "cpu"
            out["peak_share"] = out["gflops_per_s" if shared else "gflops_per_s_per_device"] / best
    out["machine"] = probes.machine()
    return out
