"""The whole GPU throughput check, prepared to run in one call on a lent GPU machine.

The machine (an H100 or H200 whose image has jax with CUDA, flax, optax, orbax and torch; no
TensorFlow, no ml_collections, no package registry) runs `bash benchmarks/gpu_check.sh` (this
module behind a thin wrapper) in one command of at most 10 minutes. Any CPU runs it as a tiny dry
run (`--dry-run`: configs/tiny.py, batch 8, a few steps), as tests/test_gpu_check.py does.

Steps, cheapest and most informative first (`--plan` prints them with their estimated seconds).
Each runs in its own process under its own time limit; one that fails or runs out of time is
recorded and the next one runs; one whose estimate no longer fits the budget (`--budget`, 480 s by
default: the whole check ends inside one 10-minute command) is recorded as "skipped: budget":
  env                   python, JAX devices, versions; JAX's bf16 and fp32 matmul peaks (8192^3);
                        that the step's imports need none of tensorflow, simplejpeg, soundfile,
                        librosa, webrtcvad
  bench_bf16_small      v2f bench (step mode), bfloat16, B=128, one step per call
  profile_bf16          a jax.profiler trace of a few bf16 B=128 steps: the kernels that take the
                        time, and how G's transposed convs ran (cuDNN backward-input convs, or
                        forward convs over zero-dilated inputs), from the trace and the HLO
  transfer              a fresh host batch as the reader sends it (float16 voices, uint8 faces,
                        int32 ids) put on the device (`jax.device_put` + block), B=128 and 1024:
                        seconds and bytes/s; then B=128 steps with and without a fresh batch put
                        during each, to see whether the transfer hides behind the step
  compare_bf16          benchmarks/compare_pytorch.py, B=128: ours in bf16 against every PyTorch
                        GPU variant in bf16 (AMP autocast; channels_last, fused Adam, no per-step
                        .item(), torch.compile, alone and stacked), interleaved
  bench_bf16_large      v2f bench, bf16, B=1024
  bench_fp32_small      v2f bench, float32, B=128
  gather_resident       v2f bench --mode gather, B=128: the device-resident feed's gather
  bench_bf16_small_spc  v2f bench, bf16, B=128, `--steps-per-call 8`
  compare_fp32          the comparison in float32 (PyTorch with TF32 allowed)
  bench_fp32_large      v2f bench, fp32, B=1024
The steps share one persistent compilation cache ($JAX_COMPILATION_CACHE_DIR, else WORK/jax_cache):
a program compiles once (the profile and transfer steps load the B=128 bf16 step bench_bf16_small
compiled; a later compile_s of the same program is a cache load). With the default budget, steps
taking their estimates run up to bench_fp32_small and skip the rest; faster ones leave room.

Output, in $OUT (the device tool's folder) or --out DIR (the tool brings back at most 8 files):
  summary.md    the runs' samples/s, their ratio to the fastest PyTorch variant, their share of
                the measured bf16 matmul peak; the host->device transfer against the step; the
                profile's top kernels and conv kinds; every step's status, seconds and estimate
  results.json  every step: status (ok | error | timeout | skipped: WHY), seconds, estimate,
                command, the JSON it printed, the end of its stderr; the environment; the order
  log.txt       what the check printed
The per-step files stay in the work folder (WORK/runs/NAME.{json,stdout,stderr}).

Preparing, once, here (a registry is needed; .whl/ is ignored by git, so the call carries it):
  bash benchmarks/gpu_check.sh --fetch-wheels
On the lent machine, through the device tool:
  run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=560)
There the project is made importable without a network: ml_collections from .whl/ (`pip install
--no-index --target`, on PYTHONPATH), then `pip install --no-index --no-deps
--no-build-isolation -e .`; failing that, a sitecustomize shim maps v2f_jax.configs and
v2f_jax.input_pipeline onto configs/ and input_pipeline/ (`--setup`).

Dry run (its children cannot import tensorflow, simplejpeg, soundfile, librosa or webrtcvad,
as on the GPU image; ~50 s on 2 busy cores with the steps tests/test_gpu_check.py picks):
  PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh --dry-run --out /tmp/gpu_check
`--steps a,b` runs only those steps (env always runs), e.g. to rerun one that failed:
  run(command="bash benchmarks/gpu_check.sh --steps bench_bf16_large --budget 240", ...)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import importlib
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

REPO = pathlib.Path(__file__).resolve().parents[1]

# The wheels the GPU image lacks, pinned inside pyproject's range (ml-collections>=1.0,<2).
# ml_collections is pure Python (py3-none-any): one wheel serves every Python of the image.
WHEELS = {"ml_collections": "1.1.0"}
WHEEL_PYTHONS = ("3.10", "3.11", "3.12")  # the image's was 3.12 when last seen
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
# Not on the GPU image; the step must not need them (the dry run's children cannot import them).
NOT_ON_STEP_PATH = ("tensorflow", "simplejpeg", "soundfile", "librosa", "webrtcvad")
# What `v2f bench` and the comparison's JAX worker import before the step runs.
STEP_PATH = (
    "v2f_jax.cli",
    "v2f_jax.config_lib",
    "v2f_jax.configs.wen2019",
    "v2f_jax.bench.step",
    "v2f_jax.bench.gather",
    "v2f_jax.bench.probes",
    "v2f_jax.bench.loss_tracking",
)
BUDGET_S = {"gpu": 480, "dry-run": 300}  # the GPU's ends inside one 10-minute command
RESERVE_S = 15  # kept for a timed-out step's grace period and the summary
KILL_GRACE_S = 8  # a timed-out step gets SIGTERM, then SIGKILL this long after
SKIP_BUDGET = "skipped: budget"


# ------------------------------------------------------------------------------ the plan


@dataclasses.dataclass(frozen=True)
class Mode:
    """The sizes the check runs at: the real ones on a GPU, tiny ones in the dry run."""

    name: str
    config: str
    device: str  # compare_pytorch.py's --device
    frames: int
    b_small: int
    b_large: int
    steps_per_call: int
    bench_small: str  # v2f bench's flags at b_small
    bench_large: str
    compare: str  # compare_pytorch.py's flags
    variants_bf16: str
    variants_fp32: str
    profile: dict
    transfer: dict
    peak_size: int


GPU = Mode(
    name="gpu",
    config="configs/wen2019.py",
    device="cuda",
    frames=800,
    b_small=128,
    b_large=1024,
    steps_per_call=8,
    bench_small="--steps 30 --warmup 3",
    bench_large="--steps 10 --warmup 2",
    compare="--rounds 5 --steps-per-round 20 --warmup 5 --start parallel --ready-timeout 150 "
    "--round-timeout 60",
    variants_bf16="gpu",
    variants_fp32="gpu",
    profile={"steps": 5, "warmup": 3, "top": 15},
    transfer={"repeats": 10, "overlap_steps": 20},
    peak_size=8192,
)
DRY_RUN = Mode(
    name="dry-run",
    config="configs/tiny.py",
    device="cpu",
    frames=96,
    b_small=8,
    b_large=16,
    steps_per_call=2,
    bench_small="--steps 2 --warmup 1 --no-peak",
    bench_large="--steps 2 --warmup 1 --no-peak",
    compare="--rounds 2 --steps-per-round 1 --warmup 1 --start parallel --ready-timeout 150 "
    "--round-timeout 60",
    # Every PyTorch option, in few workers; torch.compile is reported as skipped on the CPU.
    variants_bf16="bf16+channels_last+fused_adam+no_item,bf16+all",
    variants_fp32="fp32,fp32+dedup+fused_adam,fp32+compile",
    profile={"steps": 2, "warmup": 1, "top": 15},
    transfer={"repeats": 3, "overlap_steps": 2},
    peak_size=512,
)
MODES = {m.name: m for m in (GPU, DRY_RUN)}


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of the check: what it runs, what it needs, and how long it should take.

    `estimate_s`: seconds expected, start-up and compiles included (a step whose estimate does
    not fit in what is left of the budget is skipped); `limit_s`: the most it may take (cut to
    what is left); `needs`: facts from the env step it cannot run without ("project", "gpu",
    "torch"); `batch`, `dtype`, `extra`: its sizes and its command's own flags.
    """

    name: str
    kind: str  # env | bench | profile | transfer | compare | gather
    what: str
    estimate_s: int
    limit_s: int
    needs: tuple[str, ...] = ()
    dtype: str = "bfloat16"
    batch: int = 0
    extra: tuple[str, ...] = ()


# The order: cheapest and most informative first. (name, kind, dtype, batch: "small" | "large").
ORDER = (
    ("env", "env", None, None),
    ("bench_bf16_small", "bench", "bfloat16", "small"),
    ("profile_bf16", "profile", "bfloat16", "small"),
    ("transfer", "transfer", "bfloat16", "small"),
    ("compare_bf16", "compare", "bfloat16", "small"),
    ("bench_bf16_large", "bench", "bfloat16", "large"),
    ("bench_fp32_small", "bench", "float32", "small"),
    ("gather_resident", "gather", None, "small"),
    ("bench_bf16_small_spc", "bench", "bfloat16", "small"),
    ("compare_fp32", "compare", "float32", "small"),
    ("bench_fp32_large", "bench", "float32", "large"),
)
# Seconds each step is expected to take, (GPU, dry run). The GPU's were set before any run
# there, for an H100: JAX's start ~5 s, a cold compile of the wen2019 step with cuDNN autotuning
# ~30 s (later steps load it from the cache), torch.compile of five networks ~60 s in parallel
# workers. The dry run's were measured on 2 busy cores (a cold compile of the tiny step ~20 s).
ESTIMATES = {
    "env": (30, 5),
    "bench_bf16_small": (60, 30),
    "profile_bf16": (40, 8),
    "transfer": (30, 8),
    "compare_bf16": (180, 25),
    "bench_bf16_large": (60, 30),
    "bench_fp32_small": (50, 30),
    "gather_resident": (25, 6),
    "bench_bf16_small_spc": (50, 25),
    "compare_fp32": (180, 30),
    "bench_fp32_large": (60, 30),
}
LIMITS = {"env": 120, "bench": 150, "profile": 120, "transfer": 90, "compare": 240, "gather": 90}
WHAT = {
    "env": "devices, versions, matmul peaks; the step needs no module the image lacks",
    "bench": "v2f bench, {dtype}, B={batch}",
    "profile": "jax.profiler trace, {dtype}, B={batch}: top kernels, how the convs ran",
    "transfer": "a fresh host batch put on the device, B={small} and {large}",
    "compare": "compare_pytorch.py, {dtype}, B={batch}: every PyTorch variant",
    "gather": "v2f bench --mode gather, B={batch}",
}


def plan(mode: Mode) -> list[Step]:
    """The check's steps for `mode`, in the order they run."""
    steps = []
    for name, kind, dtype, size in ORDER:
        batch = {"small": mode.b_small, "large": mode.b_large}.get(size, 0)
        extra: tuple[str, ...] = ()
        if kind == "bench":
            extra = tuple((mode.bench_small if size == "small" else mode.bench_large).split())
            spc = mode.steps_per_call if name.endswith("_spc") else 1
            extra += ("--steps-per-call", str(spc))
        elif kind == "compare":
            extra = (mode.variants_bf16 if dtype == "bfloat16" else mode.variants_fp32,)
        needs = {"env": (), "compare": ("project", "gpu", "torch")}.get(kind, ("project", "gpu"))
        what = WHAT[kind].format(dtype=dtype, batch=batch, small=mode.b_small, large=mode.b_large)
        if kind == "bench" and extra[-1] != "1":
            what += f", {extra[-1]} steps per call"
        estimate = ESTIMATES[name][0 if mode is GPU else 1]
        limit = max(LIMITS[kind], estimate)
        steps.append(Step(name, kind, what, estimate, limit, needs, dtype or "", batch, extra))
    return steps


def command(
    step: Step, mode: Mode, python: str, work: pathlib.Path, limit_s: float | None = None
) -> list[str]:
    """The command line that runs `step` (within `limit_s`, default its own limit)."""
    v2f = [python, "-m", "v2f_jax.cli", "bench", "--config", mode.config]
    worker = [python, str(pathlib.Path(__file__).resolve()), "--worker", step.kind]
    sizes = {"config": mode.config, "dtype": step.dtype, "frames": mode.frames}
    if step.kind == "env":
        opts = {"mode": mode.name, "peak_size": mode.peak_size}
    elif step.kind == "profile":
        opts = {**sizes, **mode.profile, "batch": step.batch, "trace_dir": str(work / "trace")}
    elif step.kind == "transfer":
        batches = sorted({mode.b_small, mode.b_large})
        opts = {**sizes, **mode.transfer, "batches": batches, "overlap_batch": step.batch}
    elif step.kind == "bench":
        flags = f"--dtype {step.dtype} --batch {step.batch} --frames {mode.frames}"
        return [*v2f, *flags.split(), *step.extra]
    elif step.kind == "gather":
        return [*v2f, *f"--mode gather --batch {step.batch} --steps 20".split()]
    elif step.kind == "compare":
        # It keeps inside its limit itself, stopping its rounds early rather than be killed
        # with nothing to show; the limit it is given is the step's at most.
        limit = int(limit_s or step.limit_s)
        time_limit = limit - 15 if limit > 40 else limit
        flags = (
            f"--device {mode.device} --config {mode.config} --batch {step.batch} "
            f"--dtype {step.dtype} --frames {mode.frames} {mode.compare} "
            f"--time-limit {time_limit} --torch-variants {step.extra[0]}"
        )
        return [python, "benchmarks/compare_pytorch.py", *flags.split()]
    else:
        raise ValueError(f"unknown step kind {step.kind!r}")
    return [*worker, "--worker-args", json.dumps(opts)]


# ------------------------------------------------------------------------------ the budget


def facts_from_env(record: dict | None, mode: Mode) -> dict[str, str | None]:
    """What the env step found: for each need, why it is unmet (None: met)."""
    res = (record or {}).get("result")
    if not res:
        why = "the env step failed (results.json has its stderr)"
        return {"project": why, "gpu": why, "torch": why}
    project = res.get("v2f_jax_importable")
    facts = {
        "project": None if project is True else f"the project is not importable ({project})",
        "gpu": None,
        "torch": None if res.get("torch") else "torch is not installed",
    }
    if mode is GPU:
        if res.get("jax_backend") != "gpu":
            facts["gpu"] = f"JAX sees no GPU (backend {res.get('jax_backend')})"
        if not facts["torch"] and not res.get("torch_cuda"):
            facts["torch"] = "torch sees no GPU"
    return facts


def skip_status(
    step: Step, *, selected: set[str] | None, facts: dict, remaining_s: float
) -> tuple[str, str] | None:
    """Why `step` does not run, as (status, reason); None when it runs.

    Not among `--steps`: "skipped: not selected"; a need unmet: "skipped: <need>"; its estimate
    more than the `remaining_s` seconds of the budget: "skipped: budget".
    """
    if selected is not None and step.name != "env" and step.name not in selected:
        return "skipped: not selected", "not among --steps"
    for need in step.needs:
        if facts.get(need):
            return f"skipped: {need}", facts[need]
    if remaining_s < step.estimate_s:
        left = max(remaining_s, 0)
        return SKIP_BUDGET, f"{left:.0f} s of the budget left; it needs about {step.estimate_s} s"
    return None


def run_steps(
    steps: list[Step],
    execute: Callable[[Step, float], dict],
    *,
    mode: Mode,
    budget_s: float,
    selected: set[str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    start: float | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Runs `steps` in order within `budget_s` seconds of `start`; every step's record, in order.

    `execute(step, limit_s)` runs one step and returns its record (status, seconds, result...);
    `limit_s` is the step's own limit cut to what is left of the budget less `RESERVE_S`, so the
    last step ends in time for the summary.
    """
    start = clock() if start is None else start
    runs: dict[str, dict] = {}
    facts: dict = {}
    for step in steps:
        remaining = budget_s - (clock() - start) - RESERVE_S
        skip = skip_status(step, selected=selected, facts=facts, remaining_s=remaining)
        if skip:
            runs[step.name] = {"status": skip[0], "reason": skip[1], "estimate_s": step.estimate_s}
            log(f"[{clock() - start:.0f}s] {step.name}: {skip[0]} ({skip[1]})")
            continue
        record = execute(step, max(1.0, min(step.limit_s, remaining)))
        runs[step.name] = {**record, "estimate_s": step.estimate_s}
        if step.kind == "env":
            facts = facts_from_env(record, mode)
    return runs


# ------------------------------------------------------------------------------ running a step


def last_json(text: str) -> dict | None:
    """The last line of `text` that parses as a JSON object."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def run_process(cmd: list[str], limit_s: float, stdout, stderr, env: dict) -> tuple[int, float]:
    """Runs `cmd` in a process group of its own for at most `limit_s` seconds; (exit status,
    seconds). Out of time, the group (the comparison's workers too) is ended: the status is 124
    (137 where SIGTERM did not end it)."""
    begin = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=stdout, stderr=stderr, start_new_session=True
    )
    try:
        rc = proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        rc = 124 if _end_group(proc) else 137
    except BaseException:  # Ctrl-C: the group is in a session of its own, it would run on
        _end_group(proc)
        raise
    return rc, time.monotonic() - begin


def _end_group(proc: subprocess.Popen) -> bool:
    """SIGTERM to `proc`'s process group, SIGKILL to what is left of it `KILL_GRACE_S` later;
    True where the leader ended on SIGTERM."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=KILL_GRACE_S)
        gentle = True
    except subprocess.TimeoutExpired:
        gentle = False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group's stragglers too
    proc.wait()
    return gentle


def make_executor(mode: Mode, python: str, work: pathlib.Path, env: dict, log, start: float):
    """`execute(step, limit_s)` for `run_steps`: runs the step's command, records what it did
    (its stdout, stderr and JSON in WORK/runs/NAME.*)."""
    runs_dir = work / "runs"

    def execute(step: Step, limit_s: float) -> dict:
        cmd = command(step, mode, python, work, limit_s)
        clock = f"[{time.monotonic() - start:.0f}s]"
        log(
            f"{clock} {step.name} (limit {limit_s:.0f} s, estimate {step.estimate_s} s): "
            + " ".join(cmd)
        )
        out_path, err_path = runs_dir / f"{step.name}.stdout", runs_dir / f"{step.name}.stderr"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            rc, seconds = run_process(cmd, limit_s, out, err, env)
        result = last_json(out_path.read_text(errors="replace"))
        stderr = err_path.read_text(errors="replace").splitlines()
        status = "ok" if rc == 0 and result is not None else "error"
        status = "timeout" if rc in (124, 137) else status
        record = {"status": status, "rc": rc, "seconds": round(seconds, 2)}
        record.update(limit_s=round(limit_s), command=" ".join(cmd), result=result)
        if status != "ok" or mode is DRY_RUN:
            record["stderr_tail"] = "\n".join(stderr[-40:])
        if status != "ok":
            errors = [s for s in stderr if "error" in s.lower()]
            record["error"] = (errors or stderr or [f"exit {rc}"])[-1][:500]
        if result is not None:
            text = json.dumps(result, indent=1, sort_keys=True)
            (runs_dir / f"{step.name}.json").write_text(text)
        for line in stderr[-12:]:
            log(f"    | {line[:300]}")
        log(f"    -> {status} (exit {rc}) after {seconds:.0f} s")
        return record

    return execute


# ------------------------------------------------------------------------------ setup


ABSENT = """
class _AbsentOnTheGpuImage:
    # Every finder finds none of NAMES: importing one fails, and find_spec() says it is absent
    # (raising there instead would break the libraries that probe for them, jax's cache too).
    NAMES = {names!r}

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.NAMES:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.finder, attr)


sys.meta_path[:] = [_AbsentOnTheGpuImage(f) for f in sys.meta_path]
"""
SHIM = """
class _V2FPackages:
    DIRS = {dirs!r}

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        d = cls.DIRS.get(name)
        if d is None:
            return None
        return importlib.util.spec_from_file_location(
            name, d + "/__init__.py", submodule_search_locations=[d]
        )


sys.meta_path.append(_V2FPackages)
"""


def sitecustomize(block: bool, shim: bool) -> str:
    """A sitecustomize.py that makes `NOT_ON_STEP_PATH` unimportable (`block`), and maps
    v2f_jax.configs and v2f_jax.input_pipeline onto configs/ and input_pipeline/ (`shim`)."""
    text = "# written by benchmarks/gpu_check.py\nimport importlib.util\nimport sys\n"
    if block:
        text += ABSENT.format(names=NOT_ON_STEP_PATH)
    if shim:
        dirs = {f"v2f_jax.{d}": str(REPO / d) for d in ("configs", "input_pipeline")}
        text += SHIM.format(dirs=dirs)
    return text


IMPORT_CHECK = "import ml_collections, v2f_jax.configs.wen2019"


def _run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)


def _prepend_path(env: dict, path: pathlib.Path) -> None:
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(path) not in parts:
        env["PYTHONPATH"] = os.pathsep.join([str(path), *parts])


def make_importable(
    python: str, env: dict, work: pathlib.Path, wheels: pathlib.Path, how: str, block: bool, log
) -> str:
    """Makes the project importable by `python` under `env` without a network (`env` changes in
    place: PYTHONPATH); says how. `how`: auto | pip | shim. `block`: the children cannot import
    `NOT_ON_STEP_PATH`, as on the GPU image (the dry run)."""
    site = work / "site"
    site.mkdir(parents=True, exist_ok=True)
    if block:  # first: the checks below then import as the GPU image would
        (site / "sitecustomize.py").write_text(sitecustomize(block=True, shim=False))
        _prepend_path(env, site)
    check = [python, "-c", IMPORT_CHECK]
    note = [f"{', '.join(NOT_ON_STEP_PATH)} blocked"] if block else []
    if how == "auto" and _run(check, env).returncode == 0:
        return "; ".join(["already importable", *note])
    done: list[str] = []
    if _run([python, "-c", "import ml_collections"], env).returncode:
        found = sorted(wheels.glob("*.whl"))
        pip = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        pip += ["--no-cache-dir", "--upgrade", "--target", str(site), *map(str, found)]
        if not found:
            done.append(f"no ml_collections and no wheels in {wheels} (--fetch-wheels, here)")
        elif (proc := _run(pip, env)).returncode == 0:
            _prepend_path(env, site)
            done.append(f"{', '.join(f.name for f in found)} on PYTHONPATH")
        else:
            log(proc.stdout + proc.stderr)
            done.append(f"installing the wheels in {wheels} failed")
    if how != "shim" and (how == "pip" or _run(check, env).returncode):
        pip = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        proc = _run([*pip, "--no-build-isolation", "-e", str(REPO)], env)
        if proc.returncode == 0 and _run(check, env).returncode == 0:
            return "; ".join([*done, "editable install (pip install --no-deps -e .)", *note])
        log(proc.stdout + proc.stderr)
        done.append("the editable install failed")
    if _run(check, env).returncode:
        (site / "sitecustomize.py").write_text(sitecustomize(block=block, shim=True))
        _prepend_path(env, site)
        _prepend_path(env, REPO)
        proc = _run(check, env)
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        done.append("a sitecustomize shim" if proc.returncode == 0 else f"NOT importable: {last}")
    return "; ".join([*(done or ["already importable"]), *note])


def fetch_commands(dest: pathlib.Path, python: str = sys.executable) -> list[list[str]]:
    """The `pip download` commands that fetch `WHEELS` for each of `WHEEL_PYTHONS` into `dest`."""
    platforms = [a for p in WHEEL_PLATFORMS for a in ("--platform", p)]
    pip = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    return [
        [*pip, "--python-version", version, "--implementation", "cp", *platforms]
        + ["-d", str(dest), f"{name}=={pin}"]
        for name, pin in WHEELS.items()
        for version in WHEEL_PYTHONS
    ]


def fetch_wheels(dest: pathlib.Path) -> int:
    """Downloads `WHEELS` into `dest`, here, where pip reaches a registry; removes other versions
    of them there (two versions of one package stop the install on the GPU machine)."""
    dest.mkdir(parents=True, exist_ok=True)
    for cmd in fetch_commands(dest):
        print("$", " ".join(cmd), flush=True)
        if subprocess.run(cmd).returncode:
            return 1
    for name, pin in WHEELS.items():
        for whl in dest.glob(f"{name}-*.whl"):
            if not whl.name.startswith(f"{name}-{pin}-"):
                print(f"removing {whl.name}: not {pin}")
                whl.unlink()
    for whl in sorted(dest.glob("*.whl")):
        kind = "pure Python, any Python 3" if whl.name.endswith("-none-any.whl") else "binary"
        print(f"{whl} ({whl.stat().st_size // 1024} KiB, {kind})")
    print(
        f'then: run(command="bash benchmarks/gpu_check.sh", carry=["{dest.name}"], timeout_s=560)'
    )
    return 0


# ------------------------------------------------------------------------------ workers


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def step_path_imports(config: str) -> dict:
    """Imports what `v2f bench` imports before its step runs (the CLI's every command module, the
    step's, the config) and says whether that needed any of `NOT_ON_STEP_PATH`: `ok`, the error,
    and those of them loaded."""
    out: dict = {"modules": list(STEP_PATH)}
    try:
        for name in STEP_PATH:
            importlib.import_module(name)
        from v2f_jax import cli, config_lib

        cli.build_parser()
        config_lib.load_config(REPO / config)
        out["ok"] = True
    except Exception as err:
        out["ok"] = False
        out["error"] = f"{type(err).__name__}: {err}"
    out["loaded"] = sorted(n for n in NOT_ON_STEP_PATH if n in sys.modules)
    out["ok"] = out["ok"] and not out["loaded"]
    return out


def env_worker(opts: dict) -> dict:
    """The environment: python, versions, the step's imports, JAX's devices, torch and CUDA,
    nvidia-smi, JAX's matmul peaks."""
    out = {"mode": opts["mode"], "python": platform.python_version()}
    out.update(executable=sys.executable, platform=platform.platform())
    dists = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax")
    dists += ("orbax-checkpoint", "numpy", "ml-collections", "torch", "tensorflow", "v2f-jax")
    out["versions"] = {d: _version(d) for d in dists}
    out["step_path_imports"] = step_path_imports(MODES[opts["mode"]].config)
    # Loading one of NOT_ON_STEP_PATH where it is installed is reported, not fatal.
    out["v2f_jax_importable"] = out["step_path_imports"].get("error", True)
    try:
        import jax

        out["jax_backend"] = jax.default_backend()
        out["jax_devices"] = [f"{d} ({d.device_kind})" for d in jax.devices()]
        out["jax_default_matmul_precision"] = str(jax.config.jax_default_matmul_precision)
    except Exception as err:
        out["jax_error"] = f"{type(err).__name__}: {err}"
    out["torch"] = importlib.util.find_spec("torch") is not None
    if out["torch"]:
        try:
            import torch

            out["torch_cuda"] = torch.cuda.is_available()
            if out["torch_cuda"]:
                out["torch_device"] = torch.cuda.get_device_name(0)
                out["torch_cuda_version"] = torch.version.cuda
                out["cudnn"] = torch.backends.cudnn.version()
        except Exception as err:
            out["torch_error"] = f"{type(err).__name__}: {err}"
    query = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu"
    try:
        smi = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.SubprocessError):
        out["nvidia_smi"] = None
    if "jax_backend" in out:
        # A GPU-sized product on a CPU that stands in for a GPU would take minutes.
        real = out["jax_backend"] == "gpu" or opts["mode"] != "gpu"
        out["matmul_peak_tflops"] = matmul_peaks(opts["peak_size"] if real else 1024)
    return out


def matmul_peaks(n: int) -> dict:
    """TFLOP/s of an n^3 product in bf16 and fp32 (float32 accumulation), best of 3 rounds of up
    to 10 products dispatched back to back."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    out = {"size": n, "how": "JAX, n^3 product, float32 accumulation, best of 3 rounds"}
    for dtype in ("bfloat16", "float32"):
        a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
        f = jax.jit(lambda a: jnp.dot(a, a, preferred_element_type=jnp.float32))
        jax.block_until_ready(f(a))
        start = time.perf_counter()
        jax.block_until_ready(f(a))
        calls = max(1, min(10, int(0.2 / max(time.perf_counter() - start, 1e-6))))
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            jax.block_until_ready([f(a) for _ in range(calls)])
            best = min(best, (time.perf_counter() - start) / calls)
        out[dtype] = 2 * n**3 / best / 1e12
    return out


def _runner(opts: dict, batch: int):
    """A compiled `StepRunner` of the options' config and dtype at `batch`, one step per call:
    the program `v2f bench` compiled, loaded from the compilation cache where it ran first."""
    from v2f_jax import config_lib
    from v2f_jax.bench import step

    config = config_lib.load_config(REPO / opts["config"])
    config = step.apply_step_overrides(
        config, batch_size=batch, dtype=opts["dtype"], parallel_mode="jit"
    )
    runner = step.StepRunner(config, frames=opts["frames"])
    runner.compile()
    return runner


def transfer_worker(opts: dict) -> dict:
    """A fresh host batch put on the devices and waited for, at each of `batches`: seconds and
    bytes/s. The batch is what the reader sends (`synthetic_batch`: float16 voices [B, T, 64],
    uint8 faces [B, 64, 64, 3], int32 ids), in new host buffers every time, sharded over a
    ("data",) mesh as the training loop's batches are. Then `_overlap` at `overlap_batch`."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from v2f_jax.bench import step, timing

    sharding = NamedSharding(jax.make_mesh((jax.device_count(),), ("data",)), P("data"))
    out: dict = {"devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind}
    out.update(frames=opts["frames"], repeats=opts["repeats"], batches={})
    out["how"] = "jax.device_put(new host buffers, NamedSharding) + block; a first put untimed"
    for batch in opts["batches"]:
        base = step.synthetic_batch(batch, opts["frames"], step.DEFAULT_NUM_IDS)
        nbytes = sum(v.nbytes for v in base.values())
        times = []
        for i in range(opts["repeats"] + 1):
            fresh = {k: np.array(v, copy=True) for k, v in base.items()}
            start = time.perf_counter()
            jax.block_until_ready(jax.device_put(fresh, sharding))
            if i:
                times.append(time.perf_counter() - start)
        seconds = timing.spread(times)
        out["batches"][str(batch)] = {
            "batch": batch,
            "bytes": nbytes,
            "arrays": {k: f"{v.dtype}{list(v.shape)}" for k, v in base.items()},
            "seconds": seconds,
            "bytes_per_s": nbytes / seconds["median"],
        }
    try:
        out["overlap"] = _overlap(opts, opts["overlap_batch"])
    except Exception as err:  # the figures above stand without it
        out["overlap_error"] = f"{type(err).__name__}: {err}"
    return out


def _overlap(opts: dict, batch: int) -> dict:
    """Seconds a step takes dispatched back to back on one resident batch, and with the next
    fresh batch put before each step (as a loop that prefetches one batch ahead): the
    difference is what the transfer adds where it does not hide behind the step."""
    import jax

    from v2f_jax.bench import step

    runner = _runner(opts, batch)
    runner.run(2)
    n = opts["overlap_steps"]
    alone = runner.run_pipelined(n) / n
    hosts = [
        step.synthetic_batch(batch, opts["frames"], step.DEFAULT_NUM_IDS, seed=s) for s in (1, 2)
    ]
    start = time.perf_counter()
    current = runner.dp.put_batch(hosts[0])
    for i in range(n):
        upcoming = runner.dp.put_batch(hosts[(i + 1) % 2])
        runner.state, runner.last_metrics = runner.step(runner.state, current)
        current = upcoming
    jax.block_until_ready((runner.state, runner.last_metrics, current))
    fed = (time.perf_counter() - start) / n
    out = {"batch": batch, "steps": n, "step_s_pipelined": alone}
    out.update(step_s_pipelined_fresh_batches=fed, added_s=fed - alone)
    return out


# How a convolution ran, from its XLA op (`cudnn-conv-bw-input.3`) or cuDNN kernel name. G's
# transposed convs are backward-input convs (dgrad) where XLA's GPU conv rewriter recognises
# them, forward convs over a zero-dilated input where it does not.
CONV_KINDS = (
    ("backward_input", r"bw-input|convBackwardInput|dgrad|bwd_data|backward_?data"),
    ("backward_filter", r"bw-filter|convBackwardFilter|wgrad|bwd_filter|backward_?filter"),
    ("forward", r"cudnn-conv|convForward|fprop|implicit_convolve|conv2d_fwd"),
)


def conv_kind(name: str) -> str | None:
    """The kind of a convolution's kernel or op name: "backward_input", "backward_filter" or
    "forward"; None for anything else."""
    for kind, pattern in CONV_KINDS:
        if re.search(pattern, name, re.IGNORECASE):
            return kind
    return None


def hlo_convs(text: str) -> dict:
    """The compiled step's convolutions, from its HLO text: cuDNN calls by target; forward calls
    over a dilated input (`lhs_dilate`: a transposed conv run forward); pads with interior
    padding (a zero-dilated input built explicitly, then convolved forward); plain
    `convolution` ops (XLA:CPU's), and those with `lhs_dilate`."""
    targets: dict[str, int] = {}
    dilated_forward = 0
    for m in re.finditer(r'[^\n]*custom_call_target="(__cudnn\$conv\w*)"[^\n]*', text):
        targets[m.group(1)] = targets.get(m.group(1), 0) + 1
        dilated_forward += "Forward" in m.group(1) and "lhs_dilate=" in m.group(0)
    pads = re.findall(r"\bpad\([^\n]*?padding=([0-9_x\-]+)", text)
    interior = sum(
        any(d.count("_") == 2 and not d.endswith("_0") for d in p.split("x")) for p in pads
    )
    plain = re.findall(r"\bconvolution\([^\n]*", text)
    return {
        "cudnn_calls": targets,
        "forward_over_dilated_input": dilated_forward,
        "pads_with_interior": interior,
        "plain_convolutions": len(plain),
        "plain_with_lhs_dilate": sum("lhs_dilate=" in c for c in plain),
    }


def deconv_verdict(backend: str, convs: dict) -> str:
    """How G's transposed convs ran, in words, from `hlo_convs`."""
    if backend != "gpu":
        return f"not read: {backend}, no cuDNN convolutions"
    backward = convs["cudnn_calls"].get("__cudnn$convBackwardInput", 0)
    dilated = convs["forward_over_dilated_input"] + convs["pads_with_interior"]
    if dilated:
        return (
            f"NOT all as cuDNN backward-input convs: {dilated} forward conv(s) over zero-dilated "
            f"inputs (interior pads or lhs_dilate), {backward} backward-input call(s)"
        )
    if backward:
        return f"as cuDNN backward-input convs ({backward} calls; no dilated inputs)"
    return "no cuDNN backward-input convs, and no dilated inputs"


def _stat(event, name: str) -> str:
    """One stat of a trace event as text ("" where it has none)."""
    try:
        return next((str(v) for k, v in event.stats if k == name), "")
    except Exception:
        return ""


def _kernel_lines(planes) -> tuple[list, list]:
    """The trace's lines of kernels (a GPU's streams; on the CPU, XLA's threads) and its
    "XLA Ops" lines (an op per event, named as in the HLO)."""
    kernels, ops = [], []
    for plane in planes:
        if not plane.name.startswith("/device:"):
            continue
        lines = list(plane.lines)
        streams = [ln for ln in lines if ln.name.startswith("Stream")]
        skip = ("Modules", "Steps", "Ops")
        kernels += [ln for ln in streams or lines if not any(s in ln.name for s in skip)]
        ops += [ln for ln in lines if ln.name == "XLA Ops"]
    if not kernels:
        for plane in planes:
            if plane.name.startswith("/host:CPU"):
                kernels += [ln for ln in plane.lines if ln.name != "python"]
    return kernels, ops


def profile_worker(opts: dict) -> dict:
    """A jax.profiler trace of a few steps: the kernels that take the time, the convolutions by
    kind (from the trace and the compiled HLO), and how G's transposed convs ran."""
    import jax
    from jax.profiler import ProfileData

    runner = _runner(opts, opts["batch"])
    runner.run(opts["warmup"])
    jax.profiler.start_trace(opts["trace_dir"])
    start = time.perf_counter()
    runner.run(opts["steps"])
    wall = time.perf_counter() - start
    jax.profiler.stop_trace()
    n = opts["steps"]
    out = {"batch": opts["batch"], "dtype": opts["dtype"], "steps": n, "wall_s": wall}
    out.update(wall_ms_per_step=1e3 * wall / n, backend=jax.default_backend())
    try:
        out["hlo_convs"] = hlo_convs(runner.compiled.as_text())
        out["deconvs"] = deconv_verdict(out["backend"], out["hlo_convs"])
    except Exception as err:
        out["hlo_convs_error"] = f"{type(err).__name__}: {err}"
    files = sorted(glob.glob(os.path.join(opts["trace_dir"], "**", "*.xplane.pb"), recursive=True))
    if not files:
        raise SystemExit("jax.profiler wrote no .xplane.pb")
    planes = list(ProfileData.from_file(files[-1]).planes)
    kernel_lines, op_lines = _kernel_lines(planes)
    out["planes"] = [p.name for p in planes]
    out["lines"] = sorted({ln.name for ln in kernel_lines})
    totals: dict[str, list] = {}
    convs: dict[str, dict] = {}
    for line in kernel_lines:
        for ev in line.events:
            if ev.name.startswith(("ThreadpoolListener", "ThunkExecutor")) or not ev.duration_ns:
                continue
            t = totals.setdefault(ev.name, [0.0, 0])
            t[0] += ev.duration_ns
            t[1] += 1
            kind = conv_kind(f"{ev.name} {_stat(ev, 'hlo_op')}")
            if kind:
                c = convs.setdefault(kind, {"ms_per_step": 0.0, "kernels_per_step": 0.0})
                c["ms_per_step"] += ev.duration_ns / 1e6 / n
                c["kernels_per_step"] += 1 / n
                c.setdefault("names", set()).add(ev.name[:120])
    busy = sum(t for t, _ in totals.values())
    out["kernel_ms_per_step"] = busy / 1e6 / n
    out["kernel_share_of_wall"] = busy / 1e9 / wall if wall else None
    out["distinct_kernels"] = len(totals)
    out["kernels_per_step"] = sum(c for _, c in totals.values()) / n
    out["top"] = [
        {"name": k[:160], "ms_per_step": t / 1e6 / n, "calls_per_step": c / n}
        | {"share": t / busy if busy else None, "conv": conv_kind(k)}
        for k, (t, c) in sorted(totals.items(), key=lambda kv: -kv[1][0])[: opts["top"]]
    ]
    out["conv_kernels"] = {k: {**v, "names": sorted(v["names"])[:6]} for k, v in convs.items()}
    op_kinds = [conv_kind(ev.name) for line in op_lines for ev in line.events]
    out["conv_ops_per_step"] = {k: op_kinds.count(k) / n for k in set(op_kinds) if k}
    return out


# ------------------------------------------------------------------------------ the summary


def _fmt(x, spec=".1f") -> str:
    return "" if x is None else format(x, spec)


def one_step_runs(runs: dict) -> dict[tuple, dict]:
    """The results of `v2f bench` runs of one step per call, by (dtype, batch)."""
    out: dict[tuple, dict] = {}
    for name, r in runs.items():
        res = r.get("result") or {}
        if name.startswith("bench") and res.get("step_s") and res.get("steps_per_call", 1) == 1:
            out.setdefault((res.get("dtype"), res.get("batch")), res)
    return out


def transfer_rows(runs: dict) -> list[dict]:
    """The transfer step's figures beside the bf16 step's time at the same batch: the fraction
    of a step (each step waited for, and dispatched back to back) one fresh batch's put takes."""
    res = (runs.get("transfer") or {}).get("result") or {}
    steps = one_step_runs(runs)
    rows = []
    for t in (res.get("batches") or {}).values():
        row = {"batch": t["batch"], "bytes": t["bytes"], "transfer_s": t["seconds"]["median"]}
        row["bytes_per_s"] = t["bytes_per_s"]
        bench = steps.get(("bfloat16", t["batch"]))
        if bench:
            row["step_s"] = bench["step_s"]["median"]
            row["fraction_of_step"] = row["transfer_s"] / row["step_s"]
            if bench.get("step_s_pipelined"):
                row["step_s_pipelined"] = bench["step_s_pipelined"]
                row["fraction_of_pipelined_step"] = row["transfer_s"] / bench["step_s_pipelined"]
        rows.append(row)
    return rows


def fastest_pytorch(runs: dict) -> tuple | None:
    """(run, variant, samples/s, batch) of the fastest PyTorch variant over every comparison."""
    fastest = None
    for name, r in runs.items():
        res = r.get("result") or {}
        for var, v in (res.get("pytorch_variants") or {}).items():
            if v.get("status") == "ok" and (fastest is None or v["samples_per_s"] > fastest[2]):
                fastest = (name, var, v["samples_per_s"], res.get("batch"))
    return fastest


def throughput_rows(runs: dict, fastest: tuple | None) -> list[tuple]:
    """(run, what ran, samples/s, FLOPs per sample or None, notes) for every figure measured."""
    # FLOPs per sample by (dtype, batch) from runs of one step per call: XLA's cost analysis
    # counts a loop's body once, so a K-steps-per-call executable's count is no guide.
    flops = {k: r["flops_per_step"] / r["batch"] for k, r in one_step_runs(runs).items()}
    rows = []

    def ours(name, what, res, sps, notes=""):
        rows.append((name, what, sps, flops.get((res.get("dtype"), res.get("batch"))), notes))

    for name, r in runs.items():
        res = r.get("result") or {}
        if name.startswith("bench") and res.get("samples_per_s"):
            what = f"ours, v2f bench, {res.get('dtype')}, B={res.get('batch')}"
            what += f", steps-per-call {res.get('steps_per_call', 1)}"
            notes = [f"compile {res['compile_s']:.1f} s"] if res.get("compile_s") else []
            for k in ("executables_compiled", "hlo_kernels", "matmul_precision", "impl_resolved"):
                if res.get(k) is not None:
                    notes.append(f"{k} {res[k]}")
            ours(name, what, res, res["samples_per_s"], "; ".join(notes))
            if res.get("samples_per_s_pipelined"):
                ours(name, what + ", pipelined", res, res["samples_per_s_pipelined"])
        elif name == "gather_resident" and res.get("samples_per_s"):
            what = f"device-resident feed's gather alone, B={res.get('batch')}"
            notes = f"pipelined {res.get('samples_per_s_pipelined', 0):.0f}/s; "
            notes += f"{res.get('bytes_per_sample_to_device', 0):.0f} bytes/sample from the host"
            rows.append((name, what, res["samples_per_s"], None, notes))
        elif name.startswith("compare") and res:
            j, b = res.get("jax") or {}, res.get("batch")
            if j.get("samples_per_s"):
                sp = res.get("speedup_median_of_rounds")
                note = f"{sp:.2f}x the fastest variant here, median of rounds" if sp else ""
                res_j = {"dtype": res.get("dtype"), "batch": b}
                what = f"ours, interleaved, {res.get('dtype')}, B={b}"
                ours(name, what, res_j, j["samples_per_s"], note)
            variants = res.get("pytorch_variants") or {}
            for var in res.get("torch_variants") or list(variants):
                v = variants.get(var) or {"status": "missing"}
                what = f"PyTorch {var}, B={b}"
                if v.get("status") == "ok":
                    star = fastest is not None and (name, var) == fastest[:2]
                    what, note = (f"**{what}**", "the fastest PyTorch") if star else (what, "")
                    rows.append((name, what, v["samples_per_s"], None, note))
                else:
                    why = v.get("reason") or ((v.get("error") or "").splitlines() or [""])[0]
                    rows.append((name, what, None, None, f"{v.get('status')}: {why[:120]}"))
    return rows


def _head(env: dict, setup: str, fastest: tuple | None) -> list[str]:
    dev = ", ".join(env.get("jax_devices") or []) or "?"
    v = env.get("versions") or {}
    lines = [
        f"python {env.get('python')}; jax {v.get('jax')} ({env.get('jax_backend')}: {dev}); "
        f"torch {v.get('torch')} (CUDA {env.get('torch_cuda_version')}, "
        f"{env.get('torch_device', 'no GPU')}); flax {v.get('flax')}, optax {v.get('optax')}, "
        f"orbax {v.get('orbax-checkpoint')}; the project: {setup}."
    ]
    imports = env.get("step_path_imports")
    if imports and imports.get("ok"):
        lines.append(f"The step's imports need none of {', '.join(NOT_ON_STEP_PATH)}.")
    elif imports:
        why = imports.get("error") or f"it loads {', '.join(imports['loaded'])}"
        lines.append(f"**The step's imports need a module the GPU image lacks**: {why}.")
    if env.get("matmul_peak_tflops"):
        p = env["matmul_peak_tflops"]
        lines.append(
            f"Measured matmul peak (JAX, {p['size']}^3): bf16 {p['bfloat16']:.4g} TFLOP/s, fp32 "
            f"{p['float32']:.4g} TFLOP/s (JAX's default precision)."
        )
    if fastest:
        lines.append(
            f"Fastest PyTorch variant: **{fastest[1]}** at **{fastest[2]:.1f} samples/s** "
            f"({fastest[0]}, B={fastest[3]})."
        )
    else:
        lines.append("Fastest PyTorch variant: none ran.")
    return lines


def _transfer_section(rows: list[dict], res: dict) -> list[str]:
    lines = ["## Host to device: a fresh batch", ""]
    lines.append(
        "| batch | MB | put + wait, ms | GB/s | bf16 step, ms | / step | / pipelined step |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for t in rows:
        step_ms = 1e3 * t["step_s"] if "step_s" in t else None
        lines.append(
            f"| {t['batch']} | {t['bytes'] / 1e6:.2f} | {1e3 * t['transfer_s']:.2f} | "
            f"{t['bytes_per_s'] / 1e9:.2f} | {_fmt(step_ms, '.2f')} | "
            f"{_fmt(t.get('fraction_of_step'), '.3f')} | "
            f"{_fmt(t.get('fraction_of_pipelined_step'), '.3f')} |"
        )
    lines += ["", "A fraction below 1: a batch put one step ahead can hide behind the step."]
    o = res.get("overlap")
    if o:
        lines.append(
            f"B={o['batch']}, {o['steps']} steps dispatched back to back: "
            f"{1e3 * o['step_s_pipelined']:.2f} ms/step on one resident batch, "
            f"{1e3 * o['step_s_pipelined_fresh_batches']:.2f} ms/step with the next fresh batch "
            f"put before each step ({1e3 * o['added_s']:+.2f} ms: what the transfer adds where "
            "it does not hide)."
        )
    elif res.get("overlap_error"):
        lines.append(f"The run with fresh batches failed: {res['overlap_error'][:200]}")
    return [*lines, ""]


def _profile_section(prof: dict) -> list[str]:
    lines = [f"## Profile: {prof['dtype']}, B={prof['batch']}, {prof['steps']} steps", ""]
    lines.append(
        f"{prof['wall_ms_per_step']:.2f} ms/step wall; kernels {prof['kernel_ms_per_step']:.2f} "
        f"ms/step ({100 * (prof.get('kernel_share_of_wall') or 0):.0f}% of wall), "
        f"{prof['kernels_per_step']:.0f} kernels/step, {prof['distinct_kernels']} distinct."
    )
    if prof.get("deconvs"):
        lines.append(f"G's transposed convs: **{prof['deconvs']}**.")
    if prof.get("hlo_convs"):
        lines.append(f"Convolutions in the compiled step: `{json.dumps(prof['hlo_convs'])}`.")
    for kind, c in (prof.get("conv_kernels") or {}).items():
        lines.append(
            f"- {kind} conv kernels: {c['ms_per_step']:.3f} ms/step, "
            f"{c['kernels_per_step']:.1f}/step (e.g. `{c['names'][0][:80]}`)"
        )
    lines += ["", "| kernel | ms/step | calls/step | share | conv |", "|---|---|---|---|---|"]
    for t in prof["top"]:
        lines.append(
            f"| `{t['name'][:90]}` | {t['ms_per_step']:.3f} | {t['calls_per_step']:.1f} | "
            f"{100 * (t['share'] or 0):.1f}% | {t.get('conv') or ''} |"
        )
    return [*lines, ""]


def assemble(runs: dict, *, mode: Mode, budget_s: float, total_s: float, setup: str) -> tuple:
    """results.json's object and summary.md's text from every step's record."""
    env = (runs.get("env") or {}).get("result") or {}
    peak = (env.get("matmul_peak_tflops") or {}).get("bfloat16")
    fastest = fastest_pytorch(runs)
    lines = [f"# v2f-jax GPU check ({mode.name}, {time.strftime('%Y-%m-%d %H:%M')})", ""]
    lines += _head(env, setup, fastest)
    lines += ["", "| run | what ran | samples/s | / fastest PyTorch | share of bf16 peak | notes |"]
    lines.append("|---|---|---|---|---|---|")
    for name, what, sps, per_sample, notes in throughput_rows(runs, fastest):
        ratio = f"{sps / fastest[2]:.2f}x" if sps and fastest else ""
        share = (
            f"{100 * per_sample * sps / (peak * 1e12):.1f}%" if sps and per_sample and peak else ""
        )
        lines.append(f"| {name} | {what} | {_fmt(sps)} | {ratio} | {share} | {notes} |")
    lines += [
        "",
        "share of bf16 peak: XLA's FLOPs per step of our step (cost analysis of a one-step-per-"
        "call run of the same dtype and batch) x steps/s, over the bf16 matmul peak measured "
        "above (fp32 rows too).",
        "",
    ]
    transfers = transfer_rows(runs)
    if transfers:
        lines += _transfer_section(transfers, runs["transfer"]["result"])
    prof = (runs.get("profile_bf16") or {}).get("result")
    if prof and prof.get("top"):
        lines += _profile_section(prof)
    lines += [
        "## Steps",
        "",
        "| step | status | seconds | estimate | detail |",
        "|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        detail = (r.get("reason") or r.get("error") or "").replace("|", "/").replace("\n", " ")
        seconds = _fmt(r.get("seconds"), ".0f")
        lines.append(f"| {name} | {r['status']} | {seconds} | {r['estimate_s']} | {detail[:200]} |")
    counts: dict[str, int] = {}
    for r in runs.values():
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines += ["", "steps: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))]
    lines += [f"total {total_s:.0f} s of a {budget_s:.0f} s budget", ""]
    results = {
        "mode": mode.name,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "total_s": round(total_s, 1),
        "budget_s": budget_s,
        "setup": setup,
        "env": env,
        "order": list(runs),
        "transfer": transfers,
        "status_counts": counts,
        "runs": runs,
        "fastest_pytorch": fastest
        and dict(zip(("run", "variant", "samples_per_s", "batch"), fastest, strict=True)),
    }
    return results, "\n".join(lines)


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; `--help` prints this module's docstring."""
    p = argparse.ArgumentParser(
        prog="bash benchmarks/gpu_check.sh",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dry-run", "--tiny", action="store_true", help="the tiny run on the CPU")
    p.add_argument(
        "--out",
        type=pathlib.Path,
        help="where summary.md, results.json, log.txt go (default $OUT, else out/gpu_check)",
    )
    p.add_argument(
        "--budget",
        type=float,
        help=f"seconds for the whole check (default {BUDGET_S['gpu']}; dry run "
        f"{BUDGET_S['dry-run']})",
    )
    p.add_argument("--steps", metavar="A,B", help="run only these steps (env always runs)")
    p.add_argument("--plan", action="store_true", help="print the steps and estimates; run none")
    p.add_argument(
        "--wheels", type=pathlib.Path, default=REPO / ".whl", help="the wheels (default .whl/)"
    )
    p.add_argument(
        "--fetch-wheels",
        action="store_true",
        help="here, where pip reaches a registry: download the wheels into --wheels, and exit",
    )
    p.add_argument("--work", type=pathlib.Path, help="work folder (default a new one in /tmp)")
    p.add_argument(
        "--setup",
        choices=("auto", "pip", "shim"),
        default="auto",
        help="how the project is made importable where it is not (auto: pip, then the shim)",
    )
    p.add_argument("--worker", choices=("env", "profile", "transfer"), help=argparse.SUPPRESS)
    p.add_argument("--worker-args", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps is not None:
        known = [name for name, *_ in ORDER]
        args.steps = {s.strip() for s in args.steps.split(",") if s.strip()}
        if args.steps - set(known):
            p.error(f"unknown steps {sorted(args.steps - set(known))}; known: {', '.join(known)}")
    return args


def run_check(args: argparse.Namespace) -> int:
    """Sets up, runs the steps within the budget, writes summary.md, results.json, log.txt."""
    start = time.monotonic()
    mode = DRY_RUN if args.dry_run else GPU
    budget = args.budget if args.budget is not None else BUDGET_S[mode.name]
    out = args.out or pathlib.Path(os.environ.get("OUT") or REPO / "out" / "gpu_check")
    work = args.work or pathlib.Path(tempfile.mkdtemp(prefix="v2f_gpu_check."))
    (work / "runs").mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.txt", "w") as log_file:

        def log(text: str) -> None:
            if text.strip():
                print(text.rstrip(), flush=True)
                log_file.write(text.rstrip() + "\n")
                log_file.flush()

        python = sys.executable
        env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
        # One compilation cache for every step: a program compiles once (a later step loads it).
        env.setdefault("JAX_COMPILATION_CACHE_DIR", str(work / "jax_cache"))
        env.update(
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
        )
        if mode is DRY_RUN:
            env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
        log(f"gpu_check ({mode.name}): repo {REPO}, out {out}, work {work}, budget {budget:.0f} s")
        log(f"python: {python} ({platform.python_version()})")
        if mode is GPU:
            try:
                smi = subprocess.run(
                    ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20
                )
                log(smi.stdout + smi.stderr)
            except (OSError, subprocess.SubprocessError):
                log("nvidia-smi: not found")
        setup = make_importable(python, env, work, args.wheels, args.setup, mode is DRY_RUN, log)
        log(f"project: {setup} ({time.monotonic() - start:.0f} s)")
        execute = make_executor(mode, python, work, env, log, start)
        runs = run_steps(
            plan(mode),
            execute,
            mode=mode,
            budget_s=budget,
            selected=args.steps,
            start=start,
            log=log,
        )
        total = time.monotonic() - start
        results, summary = assemble(runs, mode=mode, budget_s=budget, total_s=total, setup=setup)
        results["work"] = str(work)
        (out / "results.json").write_text(json.dumps(results, indent=1))
        (out / "summary.md").write_text(summary)
        log("\n" + summary)
        log(f"(gpu_check: {total:.0f} s; in {out}: summary.md, results.json, log.txt)")
    return 0


def print_plan(mode: Mode, budget: float) -> None:
    """The steps of `mode` in order, with their estimates and limits, and which the budget fits
    where each takes its estimate."""
    left = budget - RESERVE_S
    print(f"{mode.name}: budget {budget:.0f} s ({RESERVE_S} s of it kept for the summary)")
    print(f"{'step':22} {'estimate':>8} {'limit':>6}  fits  what")
    for step in plan(mode):
        fits = left >= step.estimate_s
        left -= step.estimate_s if fits else 0
        row = (
            f"{step.name:22} {step.estimate_s:>7}s {step.limit_s:>5}s  {'yes' if fits else 'no':4}"
        )
        print(f"{row}  {step.what}")


def main(argv: list[str] | None = None) -> int:
    """`bash benchmarks/gpu_check.sh [options]`: the check, its plan, the wheels, or a worker."""
    args = parse_args(argv)
    if args.worker:
        workers = {"env": env_worker, "profile": profile_worker, "transfer": transfer_worker}
        print(json.dumps(workers[args.worker](json.loads(args.worker_args))), flush=True)
        return 0
    if args.fetch_wheels:
        return fetch_wheels(args.wheels)
    if args.plan:
        mode = DRY_RUN if args.dry_run else GPU
        print_plan(mode, args.budget if args.budget is not None else BUDGET_S[mode.name])
        return 0
    return run_check(args)


if __name__ == "__main__":
    sys.exit(main())
