"""Throughput measurements behind `v2f bench`: the training step, the input pipeline, the feature
front end and generation. Each returns one flat JSON-able dict.

Timings are wall-clock, one `block_until_ready` per step (the step's device->host copy of the
metrics is not timed: a training loop only fetches them at log steps). Every figure states its
spread because shared machines are noisy; compare runs only with each other's spread in mind, or
interleave them (`benchmarks/compare_pytorch.py`).
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from v2f_jax import compilation, host_memory, models, parallel, train_step
from v2f_jax import state as state_lib

DEFAULT_NUM_IDS = 924  # the reference's training identities (VoxCeleb1 F-Z)


# ------------------------------------------------------------------------------------ helpers


def machine() -> dict:
    """Where the numbers came from."""
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "malloc": host_memory.settings_in_effect(),
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def spread(seconds: Sequence[float]) -> dict:
    """Median, min, max and the interquartile range of a list of durations, in seconds."""
    xs = sorted(seconds)
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return {
        "median": statistics.median(xs),
        "min": xs[0],
        "max": xs[-1],
        "iqr": q[2] - q[0],
        "n": len(xs),
    }


def time_calls(fn: Callable[[], object], n: int) -> list[float]:
    """Wall seconds of `n` calls of `fn`, each blocked on its result."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - start)
    return out


# A matmul large enough to reach each platform's peak (a GPU needs far more work than a CPU).
PEAK_MATMUL_SIZE = {"cpu": 2048, "gpu": 8192, "tpu": 8192}


def matmul_peak(dtype: str = "float32", size: int | None = None, repeats: int = 5) -> dict:
    """GFLOP/s of one large `[size, size] @ [size, size]` in the compute dtype, best of `repeats`.

    bfloat16 is measured as the step computes it: bf16 inputs, float32 accumulation. `size`
    defaults to `PEAK_MATMUL_SIZE` of the default backend.
    """
    size = size or PEAK_MATMUL_SIZE.get(jax.default_backend(), 4096)
    dt = models.compute_dtype(dtype)
    a = jnp.asarray(np.random.default_rng(0).normal(size=(size, size)), dt)
    f = jax.jit(lambda a: jax.lax.dot(a, a, preferred_element_type=jnp.float32))
    jax.block_until_ready(f(a))
    best = min(time_calls(lambda: f(a), repeats))
    return {"gflops_per_s": 2 * size**3 / best / 1e9, "size": size, "dtype": dtype}


def compiled_flops(compiled) -> float | None:
    """FLOPs of one call, from XLA's cost analysis of the compiled executable (None if absent)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def hlo_op_counts(compiled) -> dict:
    """What the compiled step is made of: matmuls in a library fusion (XLA:CPU's YNNPACK/XNNPACK/
    oneDNN), other dots, and convolutions (the slow forms on XLA:CPU)."""
    try:
        text = compiled.as_text()
    except Exception:
        return {}
    library = len(re.findall(r'"kind":"__(?:ynn|xnn|onednn)[a-z_]*"', text))
    return {
        "library_fusions": library,
        "other_dots": len(re.findall(r"\bdot\(", text)) - _dots_inside_library_fusions(text),
        "convolutions": len(re.findall(r"\bconvolution\(", text)),
    }


def hlo_kernels(compiled) -> int | None:
    """Kernels the compiled step launches, about: its fusions and library calls (custom calls)
    outside fused computations. A `lax.scan` body counts once (divide by nothing: it is the
    per-step count). None where the backend gives no HLO text."""
    try:
        text = compiled.as_text()
    except Exception:
        return None
    outside_fusions = [
        block
        for block in re.split(r"\n(?=\S)", text)
        if not block.lstrip("%").startswith(("fused_", "wrapped_", "horizontally_fused"))
    ]
    body = "\n".join(outside_fusions)
    return len(re.findall(r"= [^\n=]*\b(?:fusion|custom-call)\(", body))


def _dots_inside_library_fusions(text: str) -> int:
    """Dots in the fused computations that library fusions call (counted once per fusion)."""
    called = set(re.findall(r'calls=(%[\w.\-]+)[^\n]*"kind":"__(?:ynn|xnn|onednn)', text))
    count = 0
    for block in re.split(r"\n(?=\S)", text):
        name = block.split(" ", 1)[0]
        if name in called:
            count += len(re.findall(r"\bdot\(", block))
    return count


# ------------------------------------------------------------------------------ training step


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
        self.dp = parallel.DataParallel(
            lambda axis_name: train_step.make_gan_step(config, self.nets, axis_name),
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
        host_state = _run_once(lambda: state_lib.create_gan_state(config, self.nets))
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


def _run_once(fn: Callable):
    """`jax.jit(fn)()` compiled with XLA:CPU's cheap settings (initialisation runs once)."""
    lowered = jax.jit(fn).lower()
    options = {}
    if jax.default_backend() == "cpu":
        options = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    return lowered.compile(compiler_options=options)()


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
    peak_before = matmul_peak(config.model.dtype) if peak else None
    with compilation.CompileCounter() as compiles:
        compile_s = runner.compile()
        runner.run(warmup_calls)
        times = [t / k for t in runner.run(calls)]
        pipelined_s = runner.run_pipelined(calls) / (calls * k)
    # XLA compiles one program per device (SPMD under jit, the same under pmap): its cost
    # analysis is one device's share of the step (a scan's body, one step, counts once).
    flops_device = compiled_flops(runner.compiled)
    peak_after = matmul_peak(config.model.dtype) if peak else None
    metrics = runner.metrics()
    step_s = spread(times)
    t = step_s["median"]
    n_dev = runner.dp.num_devices
    samples_per_s = runner.batch_size / t
    out = {
        "mode": "step",
        "batch": runner.batch_size,
        "bytes_per_sample_to_device": runner.bytes_per_sample,
        "frames": frames,
        "dtype": config.model.dtype,
        "matmul_precision": config.model.get("matmul_precision", "default"),
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
        "hlo": hlo_op_counts(runner.compiled),
        "hlo_kernels": hlo_kernels(runner.compiled),
    }
    if peak:
        best = max(peak_before["gflops_per_s"], peak_after["gflops_per_s"])
        out["peak_gflops_per_s_per_device"] = best
        out["peak_matmul"] = f"{peak_before['size']}^3 {config.model.dtype}"
        if flops_device:
            # CPU "devices" share the host's cores: there the peak is the host's.
            shared = jax.default_backend() == "cpu"
            out["peak_share"] = out["gflops_per_s" if shared else "gflops_per_s_per_device"] / best
    out["machine"] = machine()
    return out


def learnable_batches(
    n_batches: int, batch_size: int, frames: int, num_ids: int, n_mels: int = 64, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """Batches with something to learn: a face's colour and a voice's spectral tilt say the
    identity. For loss-tracking runs (bf16 vs fp32), not for quality."""
    rng = np.random.default_rng(seed)
    tint = np.linspace(-0.8, 0.8, num_ids)
    tilt = rng.normal(size=(num_ids, n_mels))
    out = []
    for _ in range(n_batches):
        face_id = rng.integers(0, num_ids, batch_size).astype(np.int32)
        voice_id = rng.integers(0, num_ids, batch_size).astype(np.int32)
        face = tint[face_id][:, None, None, None] + 0.1 * rng.normal(size=(batch_size, 64, 64, 3))
        face[..., 1] *= -1
        voice = tilt[voice_id][:, None, :] + rng.normal(size=(batch_size, frames, n_mels))
        out.append(
            {
                "voice": voice.astype(np.float32),
                "voice_id": voice_id,
                "face": np.clip(face, -1, 1).astype(np.float32),
                "face_id": face_id,
            }
        )
    return out


def loss_history(
    config: ml_collections.ConfigDict,
    steps: int,
    num_ids: int = 8,
    n_batches: int = 16,
    data_seed: int = 0,
) -> dict[str, list[float]]:
    """Every step's metrics over `steps` steps from the config's seed (initial parameters and
    noise) on `learnable_batches(seed=data_seed)`."""
    frames = max(config.data.crop_lengths)
    nets = models.Networks(config.model, num_ids)
    dp = parallel.DataParallel(
        lambda axis_name: train_step.make_gan_step(config, nets, axis_name),
        "jit",
        devices=jax.devices()[:1],
    )
    state = dp.put_state(
        jax.device_get(_run_once(lambda: state_lib.create_gan_state(config, nets)))
    )
    batches = [
        dp.put_batch(b)
        for b in learnable_batches(
            n_batches, config.train.batch_size, frames, num_ids, config.data.n_mels, data_seed
        )
    ]
    history: dict[str, list[float]] = {}
    for i in range(steps):
        state, metrics = dp(state, batches[i % n_batches])
        for k, v in dp.get_metrics(metrics).items():
            history.setdefault(k, []).append(v)
    return history


# ------------------------------------------------------------------------------ generation


def bench_generate(
    config: ml_collections.ConfigDict,
    *,
    frames: int = 800,
    batch_sizes: Sequence[int] = (1, 64),
    repeats: int = 10,
    num_ids: int = DEFAULT_NUM_IDS,
) -> dict:
    """Latency of E + G forward (voice features -> faces) at each batch size."""
    nets = models.Networks(config.model, num_ids)
    state = _run_once(lambda: state_lib.create_gan_state(config, nets))

    def generate(embedder, generator, voice):
        raw = nets.embedder.apply(embedder, voice)
        return nets.generator.apply({"params": generator}, models.unit(raw))

    out = {
        "mode": "generate",
        "frames": frames,
        "dtype": config.model.dtype,
        "impl_resolved": nets.convs.impl,
    }
    f = jax.jit(generate)
    for b in batch_sizes:
        voice = jnp.asarray(synthetic_batch(b, frames, 1, config.data.n_mels)["voice"], jnp.float32)
        start = time.perf_counter()
        jax.block_until_ready(f(state.embedder, state.generator, voice))
        compile_s = time.perf_counter() - start
        lat = spread(
            time_calls(lambda voice=voice: f(state.embedder, state.generator, voice), repeats)
        )
        out[f"batch{b}"] = {
            "latency_s": lat,
            "faces_per_s": b / lat["median"],
            "first_call_s": compile_s,
        }
    out["machine"] = machine()
    return out


# ------------------------------------------------------------------------------ input pipeline


INPUT_FEEDS = ("streaming", "host_memory", "on_device")


def _time_batches(it, batches: int, warmup: int, fetch=lambda b: b) -> dict:
    """Wall and process-CPU seconds of `batches` calls of `next(it)` after `warmup` ones."""
    start = time.perf_counter()
    for _ in range(warmup):
        fetch(next(it))
    first_s = time.perf_counter() - start
    times = []
    cpu0 = time.process_time()
    for _ in range(batches):
        t0 = time.perf_counter()
        last = fetch(next(it))
        times.append(time.perf_counter() - t0)
    return {"warmup_s": first_s, "times": times, "cpu_s": time.process_time() - cpu0, "last": last}


def bench_input(
    config: ml_collections.ConfigDict,
    records_dir: str | os.PathLike,
    *,
    batch_size: int,
    batches: int = 50,
    warmup: int = 5,
    demand_samples_per_s: float | None = None,
    feed: str = "streaming",
) -> dict:
    """The training input of one host against the step's demand.

    `feed="streaming"`: the tf.data reader's batches; `samples_per_cpu_s` is samples over this
    process's CPU time while they were read (every tf.data thread counts), the figure that says
    how many cores feed a device. `bytes_per_sample_to_device`: what one sample costs the
    host-to-device link. `"host_memory"` (`data.in_host_memory`): the index stream and the
    numpy gather from the split in RAM (memory-mapped from `config.data.arrays_dir` if set),
    together (loading the split is not timed).
    `"on_device"` (`data.on_device`): the host's index stream alone (its per-step work), and
    the gather on the devices timed apart.
    """
    if feed not in INPUT_FEEDS:
        raise ValueError(f"feed {feed!r}: one of {', '.join(INPUT_FEEDS)}")
    from v2f_jax.input_pipeline import manifest, reader

    records = manifest.Records.open(records_dir)
    common = dict(
        batch_size=batch_size,
        crop_lengths=tuple(config.data.crop_lengths),
        seed=config.seed,
        face_flip=config.data.face_flip,
        shuffle_buffer=config.data.shuffle_buffer,
    )
    out = {
        "mode": "input",
        "feed": feed,
        "records_dir": str(records_dir),
        "batch": batch_size,
        "crop_lengths": list(config.data.crop_lengths),
    }
    if feed == "host_memory":
        from v2f_jax import resident_data
        from v2f_jax.input_pipeline import train_arrays

        arrays = train_arrays.host_split(records, config.data.get("arrays_dir", ""))
        indices = reader.make_train_index_iterator(arrays, records, **common)
        rows = max(config.data.crop_lengths)
        it = (resident_data.gather_on_host(arrays, index, rows) for index in indices)
        timed = _time_batches(it, batches, warmup)
        out["host_bytes"] = int(arrays["mel"].nbytes + arrays["face"].nbytes)
    elif feed == "on_device":
        from v2f_jax import resident_data
        from v2f_jax.input_pipeline import train_arrays

        arrays = train_arrays.host_split(records, config.data.get("arrays_dir", ""))
        it = reader.make_train_index_iterator(arrays, records, **common)
        timed = _time_batches(it, batches, warmup)
        dp = parallel.DataParallel(lambda axis: lambda s, b: (s, {}), "jit")
        resident = resident_data.ResidentData(arrays, dp, max(config.data.crop_lengths))
        index_batch = timed["last"]
        jax.block_until_ready(resident([index_batch]))  # compiles
        gather_s = spread(time_calls(lambda: resident([index_batch]), 10))
        out["resident_bytes_per_device"] = resident.nbytes
        out["device_gather_s"] = gather_s
        out["device_gather_samples_per_s"] = batch_size / gather_s["median"]
    else:
        it = reader.make_train_iterator(records, **common)
        timed = _time_batches(it, batches, warmup)
    total = sum(timed["times"])
    out.update(
        {
            "warmup_s": timed["warmup_s"],
            "batch_s": spread(timed["times"]),
            "batches_per_s": batches / total,
            "samples_per_s": batch_size * batches / total,
            "samples_per_cpu_s": batch_size * batches / max(timed["cpu_s"], 1e-9),
            "bytes_per_sample_to_device": bytes_per_sample(timed["last"]),
            # Streaming sends the longest crop's frames; the resident mode sends none.
            "voice_frames_per_sample_to_device": (
                int(timed["last"]["voice"].shape[1]) if "voice" in timed["last"] else 0
            ),
        }
    )
    if demand_samples_per_s:
        out["step_demand_samples_per_s"] = demand_samples_per_s
        out["supply_over_demand"] = out["samples_per_s"] / demand_samples_per_s
        out["cpu_cores_to_meet_demand"] = demand_samples_per_s / out["samples_per_cpu_s"]
    out["machine"] = machine()
    return out


def bench_gather(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    utterances: int = 4096,
    mean_frames: int | None = None,
    faces: int = 2048,
    calls: int = 20,
    seed: int = 0,
) -> dict:
    """The device-resident feed's device side (`data.on_device`) without TensorFlow: a synthetic
    split of `utterances` log-mels (`mean_frames` on average) and `faces` faces held on the
    devices, and batches gathered there from host index batches, as the loop does.
    `mean_frames`: default the longest crop."""
    from v2f_jax import resident_data

    rng = np.random.default_rng(seed)
    mean_frames = mean_frames or max(config.data.crop_lengths)
    frames = rng.integers(mean_frames // 2, mean_frames * 3 // 2 + 1, utterances)
    size = config.data.image_size
    arrays = {
        "mel": rng.normal(size=(int(frames.sum()), config.data.n_mels)).astype(np.float16),
        "voice_offset": np.concatenate([[0], np.cumsum(frames)[:-1]]).astype(np.int64),
        "face": rng.integers(0, 256, (faces, size, size, 3), dtype=np.uint8),
    }
    longest = max(config.data.crop_lengths)
    dp = parallel.DataParallel(lambda axis: lambda s, b: (s, {}), "jit")
    resident = resident_data.ResidentData(arrays, dp, longest)

    def index_batch():
        index = rng.integers(0, utterances, batch_size)
        length = int(rng.choice(config.data.crop_lengths))
        count = np.minimum(frames[index], length)
        start = rng.integers(0, np.maximum(frames[index] - length, 0) + 1)
        return {
            "voice_index": index.astype(np.int64),
            "voice_start": start.astype(np.int32),
            "voice_frames": count.astype(np.int32),
            "voice_len": np.full(batch_size, length, np.int32),
            "voice_id": np.zeros(batch_size, np.int32),
            "face_index": rng.integers(0, faces, batch_size).astype(np.int64),
            "face_flip": rng.random(batch_size) < 0.5,
            "face_id": np.zeros(batch_size, np.int32),
        }

    batches = [index_batch() for _ in range(calls)]
    start = time.perf_counter()
    jax.block_until_ready(resident([batches[0]]))
    compile_s = time.perf_counter() - start
    blocked = spread(time_calls(lambda: resident([batches[0]]), calls))
    start = time.perf_counter()
    jax.block_until_ready([resident([b]) for b in batches])  # back to back, as the loop feeds
    pipelined = (time.perf_counter() - start) / calls
    return {
        "mode": "gather",
        "batch": batch_size,
        "devices": dp.num_devices,
        "resident_bytes_per_device": resident.nbytes,
        "first_call_s": compile_s,
        "gather_s": blocked,
        "samples_per_s": batch_size / blocked["median"],
        "samples_per_s_pipelined": batch_size / pipelined,
        "bytes_per_sample_to_device": bytes_per_sample(batches[0]),
        "machine": machine(),
    }


# ------------------------------------------------------------------------------ feature front end


def bench_prepare(paths: Sequence[str | os.PathLike], frontend: str = "wen2019", repeats=2) -> dict:
    """Audio seconds per CPU-second of decode + VAD + features (what `v2f prepare` runs per file).

    CPU time of this process (`time.process_time`), best of `repeats`, so other load on the
    machine does not count; wall time alongside.
    """
    from v2f_jax.input_pipeline import audio, errors

    if not paths:
        raise ValueError("no audio files to time")
    seconds = 0.0
    for p in paths:
        seconds += audio.load_audio(p).size / audio.SAMPLE_RATE
    audio.voice_features(paths[0], frontend)  # warm-up: imports and filter caches
    best_cpu, best_wall, rejected = float("inf"), float("inf"), 0
    for _ in range(repeats):
        cpu, wall, rejected = time.process_time(), time.perf_counter(), 0
        for p in paths:
            try:
                audio.voice_features(p, frontend)
            except errors.BadInputError:
                rejected += 1
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return {
        "mode": "prepare",
        "frontend": frontend,
        "files": len(paths),
        "rejected": rejected,
        "audio_s": seconds,
        "cpu_s": best_cpu,
        "wall_s": best_wall,
        "audio_s_per_cpu_s": seconds / best_cpu,
        "audio_s_per_wall_s": seconds / best_wall,
        "machine": machine(),
    }
