#!/usr/bin/env bash
# benchmarks/gpu_check.sh: the whole GPU throughput check, prepared to run in one call on a lent
# GPU machine (an H200 with jax 0.11 + CUDA 13, flax, optax, orbax and torch installed; no
# TensorFlow, no ml_collections, no package registry), or as a tiny dry run on any CPU.
#
# Each step runs under its own time limit (and all of them under one budget, --budget, 450 s by
# default: the whole script ends in under 8 minutes); a step that fails or runs out of time is
# recorded and the next one runs. In order of importance:
#   env                   python, JAX devices, versions; JAX's bf16 and fp32 matmul peaks (8192^3)
#   bench_bf16_small      v2f bench (step mode), bfloat16, B=128, `--steps-per-call 1` (where
#                         v2f bench has no such flag yet: again without it, and a note says so)
#   compare_bf16          benchmarks/compare_pytorch.py, B=128: ours in bf16 against every PyTorch
#                         GPU variant in bf16 (AMP autocast; channels_last, fused Adam, no per-step
#                         .item(), torch.compile, alone and stacked), interleaved
#   bench_fp32_small      v2f bench, float32, B=128
#   bench_bf16_small_spc  v2f bench, bf16, B=128, `--steps-per-call 8` (the error is recorded
#                         where v2f bench has no such flag)
#   bench_bf16_large      v2f bench, bf16, B=1024
#   gather_resident       v2f bench --mode gather, B=128: the device-resident feed's gather
#                         (config.data.on_device) on a synthetic split, against the step's demand
#   compare_fp32          the same comparison in float32 (PyTorch with TF32 allowed)
#   bench_fp32_large      v2f bench, fp32, B=1024
#   profile_bf16          a jax.profiler trace of a few bf16 B=128 steps: the kernels that take the
#                         time (optional: its failure fails nothing else)
# Our runs share JAX's persistent compilation cache, so a program compiles once (compile_s of a
# later run of the same program is a cache load).
#
# Output, in $OUT (the device tool's folder) or --out DIR:
#   summary.md    a Markdown table: each run, its samples/s, its ratio to the fastest PyTorch
#                 variant measured, its share of the measured bf16 matmul peak; the steps' status
#   results.json  every step: status (ok | error | timeout | skipped), seconds, command, the JSON
#                 it printed, the end of its stderr; and the environment
#   log.txt       what the script printed
# (The device tool brings back at most 8 files, so the per-step JSON files stay in the work folder,
# WORK/runs/NAME.json, and are gathered into results.json.)
#
# Preparing, once, on a machine with a registry (the GPU image has no ml_collections):
#   pip download --no-deps ml_collections -d .whl      # .whl/ is ignored by git: carry it
# On the lent machine, through the device tool:
#   run(command="bash benchmarks/gpu_check.sh --wheels .whl", carry=[".whl"], timeout_s=560)
# The project is made importable there without a network: `pip install --no-index --no-deps
# --no-build-isolation -e .`, ml_collections from the wheels (`pip install --target`, on
# PYTHONPATH); failing the editable install, a sitecustomize shim maps v2f_jax.configs and
# v2f_jax.input_pipeline onto configs/ and input_pipeline/.
#
# Dry run (configs/tiny.py, batch 8, a few steps, on the CPU; what tests/test_gpu_check.py runs):
#   PYTHON=/work/venv/bin/python bash benchmarks/gpu_check.sh --dry-run --out /tmp/gpu_check
# (or V2F_GPU_CHECK_TINY=1). Environment: PYTHON (default python3), OUT, V2F_WHEELS,
# V2F_GPU_CHECK_WORK (work folder; default a new one under /tmp), V2F_GPU_CHECK_BUDGET (seconds),
# V2F_GPU_CHECK_SETUP=auto|pip|shim (how to make the project importable where it is not).
# `--steps a,b` runs only those steps (env always runs), e.g. to rerun one that failed.

set -u

usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; }

TINY=${V2F_GPU_CHECK_TINY:-0}
WHEELS=${V2F_WHEELS:-}
OUTDIR=${OUT:-}
BUDGET=${V2F_GPU_CHECK_BUDGET:-}
ONLY=
while (($#)); do
    case $1 in
    --dry-run | --tiny) TINY=1 ;;
    --wheels) WHEELS=$2; shift ;;
    --wheels=*) WHEELS=${1#*=} ;;
    --out) OUTDIR=$2; shift ;;
    --out=*) OUTDIR=${1#*=} ;;
    --budget) BUDGET=$2; shift ;;
    --budget=*) BUDGET=${1#*=} ;;
    --steps) ONLY=$2; shift ;;
    --steps=*) ONLY=${1#*=} ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (--help)" >&2; exit 2 ;;
    esac
    shift
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
PY=${PYTHON:-python3}
OUTDIR=${OUTDIR:-$REPO/out/gpu_check}
WORK=${V2F_GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/v2f_gpu_check.XXXXXX")}
RUNS=$WORK/runs
mkdir -p "$OUTDIR" "$RUNS" || exit 2
: >"$RUNS/order"
LOG=$OUTDIR/log.txt
: >"$LOG"
HELPER=$WORK/gpu_check_helper.py
T0=$(date +%s)
RESERVE=20 # seconds kept for writing the summary
MIN_STEP=20 # a step gets at least this long, or is skipped

export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export JAX_COMPILATION_CACHE_DIR=$WORK/jax_cache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1

if [[ $TINY == 1 ]]; then
    MODE=dry-run
    export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=
    DEVICE=cpu
    CONFIG=configs/tiny.py
    FRAMES=96
    B_SMALL=8
    B_LARGE=8
    SPC=2 # steps per call: a short one, the CPU compiles it
    BENCH_SMALL=(--frames "$FRAMES" --steps 2 --warmup 1 --no-peak)
    BENCH_LARGE=("${BENCH_SMALL[@]}")
    COMPARE=(--frames "$FRAMES" --rounds 2 --steps-per-round 1 --warmup 1 --start parallel
        --ready-timeout 150 --round-timeout 60)
    # Every PyTorch option, in few workers (a bf16 step's first call is slow on a CPU);
    # torch.compile is reported as skipped on the CPU.
    VARIANTS_BF16=bf16+channels_last+fused_adam+no_item,bf16+all
    VARIANTS_FP32=fp32,fp32+dedup+fused_adam,fp32+compile
    PROFILE=(--steps 2 --warmup 1)
    PEAK_SIZE=512
    BUDGET=${BUDGET:-600}
    LIMIT_BENCH=240 LIMIT_COMPARE=240 LIMIT_PROFILE=120
else
    MODE=gpu
    DEVICE=cuda
    CONFIG=configs/wen2019.py
    FRAMES=800
    B_SMALL=128
    B_LARGE=1024
    SPC=8
    BENCH_SMALL=(--frames "$FRAMES" --steps 30 --warmup 3)
    BENCH_LARGE=(--frames "$FRAMES" --steps 10 --warmup 2)
    COMPARE=(--frames "$FRAMES" --rounds 5 --steps-per-round 20 --warmup 5 --start parallel
        --ready-timeout 180 --round-timeout 60)
    VARIANTS_BF16=gpu
    VARIANTS_FP32=gpu
    PROFILE=(--steps 5 --warmup 3)
    PEAK_SIZE=8192
    BUDGET=${BUDGET:-450}
    LIMIT_BENCH=150 LIMIT_COMPARE=240 LIMIT_PROFILE=90
fi

log() { printf '%s\n' "$*" | tee -a "$LOG"; }
elapsed() { echo $(($(date +%s) - T0)); }

# ------------------------------------------------------------------------------ the steps' runner

add_order() { grep -qxF "$1" "$RUNS/order" || echo "$1" >>"$RUNS/order"; }

skip_step() { # NAME REASON
    add_order "$1"
    printf 'skipped=%s\n' "$2" >"$RUNS/$1.meta"
    log "[$(elapsed)s] $1: skipped ($2)"
}

selected() { [[ -z $ONLY || $1 == env || ,$ONLY, == *,$1,* ]]; }

run_step() { # NAME LIMIT_S COMMAND...; returns the command's exit status
    local name=$1 limit=$2
    shift 2
    if ! selected "$name"; then
        skip_step "$name" "not among --steps"
        return 125
    fi
    local left=$((BUDGET - $(elapsed) - RESERVE))
    if ((left < MIN_STEP)); then
        skip_step "$name" "the time budget of ${BUDGET} s is spent"
        return 125
    fi
    ((limit > left)) && limit=$left
    add_order "$name"
    printf '%s\n' "$*" >"$RUNS/$name.cmd"
    log "[$(elapsed)s] $name (limit ${limit} s): $*"
    local start end rc
    start=$(date +%s.%N)
    timeout -k 10 "$limit" "$@" >"$RUNS/$name.stdout" 2>"$RUNS/$name.stderr"
    rc=$?
    end=$(date +%s.%N)
    printf 'rc=%s\nseconds=%s\nlimit=%s\n' "$rc" "$(awk "BEGIN{print $end - $start}")" \
        "$limit" >"$RUNS/$name.meta"
    tail -n 12 "$RUNS/$name.stderr" | cut -c1-300 | sed 's/^/    | /' | tee -a "$LOG"
    log "    -> exit $rc after $(awk "BEGIN{printf \"%.0f\", $end - $start}") s"
    return "$rc"
}

# ------------------------------------------------------------------------------ the Python helper

cat >"$HELPER" <<'PYEOF'
"""gpu_check.sh's helper: `env`, `profile`, `assemble` (summary.md, results.json)."""

import argparse
import glob
import importlib
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import subprocess
import sys
import time


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def env(args):
    out = {"mode": args.mode, "python": platform.python_version(), "executable": sys.executable}
    out["platform"] = platform.platform()
    out["setup"] = pathlib.Path(args.setup_file).read_text().strip()
    dists = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax",
             "orbax-checkpoint", "numpy", "ml-collections", "torch", "tensorflow", "v2f-jax")
    out["versions"] = {d: _version(d) for d in dists}
    out["tensorflow_importable"] = importlib.util.find_spec("tensorflow") is not None
    flags = {"JAX_BACKEND": "none", "HAVE_TORCH": "0", "TORCH_CUDA": "0", "V2F_OK": "0"}
    try:
        import v2f_jax.bench  # noqa: F401
        import v2f_jax.configs.wen2019  # noqa: F401
        out["v2f_jax_importable"] = True
        flags["V2F_OK"] = "1"
    except Exception as err:
        out["v2f_jax_importable"] = f"{type(err).__name__}: {err}"
    try:
        import jax

        out["jax_backend"] = flags["JAX_BACKEND"] = jax.default_backend()
        out["jax_devices"] = [f"{d} ({d.device_kind})" for d in jax.devices()]
        out["jax_default_matmul_precision"] = str(jax.config.jax_default_matmul_precision)
    except Exception as err:
        out["jax_error"] = f"{type(err).__name__}: {err}"
    if importlib.util.find_spec("torch") is not None:
        flags["HAVE_TORCH"] = "1"
        try:
            import torch

            out["torch_cuda"] = torch.cuda.is_available()
            if out["torch_cuda"]:
                flags["TORCH_CUDA"] = "1"
                out["torch_device"] = torch.cuda.get_device_name(0)
                out["torch_cuda_version"] = torch.version.cuda
                out["cudnn"] = torch.backends.cudnn.version()
        except Exception as err:
            out["torch_error"] = f"{type(err).__name__}: {err}"
    try:
        q = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu"
        smi = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.SubprocessError):
        out["nvidia_smi"] = None
    # The flags first: the peaks below can be slow where there is no GPU.
    pathlib.Path(args.flags_file).write_text("".join(f"{k}={v}\n" for k, v in flags.items()))
    if "jax_backend" in out:
        out["matmul_peak_tflops"] = _peaks(args.peak_size if out["jax_backend"] == "gpu"
                                           or args.mode != "gpu" else 1024)
    print(json.dumps(out))


def _peaks(n):
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


def profile(args):
    import jax

    from v2f_jax import config_lib
    from v2f_jax.bench import step

    config = config_lib.load_config(args.config)
    config = step.apply_step_overrides(config, batch_size=args.batch, dtype=args.dtype,
                                       parallel_mode="jit")
    runner = step.StepRunner(config, frames=args.frames)
    runner.compile()
    runner.run(args.warmup)
    jax.profiler.start_trace(args.trace_dir)
    start = time.perf_counter()
    runner.run(args.steps)
    wall = time.perf_counter() - start
    jax.profiler.stop_trace()
    out = {"batch": args.batch, "dtype": args.dtype, "steps": args.steps, "wall_s": wall,
           "wall_ms_per_step": 1e3 * wall / args.steps}
    files = sorted(glob.glob(os.path.join(args.trace_dir, "**", "*.xplane.pb"), recursive=True))
    out["trace_files"] = [os.path.relpath(f, args.trace_dir) for f in files]
    if not files:
        raise SystemExit("jax.profiler wrote no .xplane.pb")
    from jax.profiler import ProfileData

    data = ProfileData.from_file(files[-1])
    planes = list(data.planes)
    out["planes"] = [p.name for p in planes]
    device = [p for p in planes if p.name.startswith("/device:")]
    chosen = []
    for plane in device:
        lines = list(plane.lines)
        streams = [ln for ln in lines if ln.name.startswith("Stream")]
        chosen += [(plane.name, ln) for ln in (streams or lines)
                   if "Modules" not in ln.name and "Steps" not in ln.name]
    if not chosen:  # the CPU: XLA's threads on the host plane
        for plane in planes:
            if plane.name.startswith("/host:CPU"):
                chosen += [(plane.name, ln) for ln in plane.lines if ln.name != "python"]
    totals = {}
    for _, line in chosen:
        for ev in line.events:
            if ev.name.startswith(("ThreadpoolListener", "ThunkExecutor")) or not ev.duration_ns:
                continue
            t = totals.setdefault(ev.name, [0.0, 0])
            t[0] += ev.duration_ns
            t[1] += 1
    busy = sum(t for t, _ in totals.values())
    out["lines"] = sorted({f"{p} {ln.name}" for p, ln in chosen})
    out["kernel_ms_per_step"] = busy / 1e6 / args.steps
    out["kernel_share_of_wall"] = busy / 1e9 / wall if wall else None
    out["distinct_kernels"] = len(totals)
    out["kernels_per_step"] = sum(c for _, c in totals.values()) / args.steps
    top = sorted(totals.items(), key=lambda kv: -kv[1][0])[: args.top]
    out["top"] = [{"name": k[:160], "ms_per_step": t / 1e6 / args.steps,
                   "calls_per_step": c / args.steps, "share": t / busy if busy else None}
                  for k, (t, c) in top]
    print(json.dumps(out))


# ------------------------------------------------------------------------------ assemble


def _last_json(text):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def _read(path):
    try:
        return pathlib.Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _meta(path):
    out = {}
    for line in _read(path).splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


def _fmt(x, spec=".1f"):
    return "" if x is None else format(x, spec)


def assemble(args):
    runs_dir = pathlib.Path(args.runs)
    order = [n for n in _read(runs_dir / "order").split() if n]
    runs = {}
    for name in order:
        meta = _meta(runs_dir / f"{name}.meta")
        entry = {"command": _read(runs_dir / f"{name}.cmd").strip() or None}
        note = _read(runs_dir / f"{name}.note").strip()
        if note:
            entry["note"] = note
        if "skipped" in meta:
            entry.update(status="skipped", reason=meta["skipped"])
            runs[name] = entry
            continue
        rc = int(meta.get("rc", -1))
        result = _last_json(_read(runs_dir / f"{name}.stdout"))
        stderr = _read(runs_dir / f"{name}.stderr").splitlines()
        status = "ok" if rc == 0 and result is not None else (
            "timeout" if rc in (124, 137) else "error")
        entry.update(status=status, rc=rc, seconds=float(meta.get("seconds", "nan")),
                     limit_s=int(meta.get("limit", 0)), result=result)
        if status != "ok" or args.mode == "dry-run":
            entry["stderr_tail"] = "\n".join(stderr[-40:])
        if status != "ok":
            errs = [s for s in stderr if "error" in s.lower()]
            entry["error"] = (errs[-1] if errs else (stderr[-1] if stderr else f"exit {rc}"))[:500]
        if result is not None:
            (runs_dir / f"{name}.json").write_text(json.dumps(result, indent=1, sort_keys=True))
        runs[name] = entry

    env = (runs.get("env") or {}).get("result") or {}
    peak = (env.get("matmul_peak_tflops") or {}).get("bfloat16")
    # The fastest PyTorch variant over every comparison that ran.
    fastest = None
    for name, r in runs.items():
        res = r.get("result") or {}
        for var, v in (res.get("pytorch_variants") or {}).items():
            if v.get("status") == "ok" and (fastest is None or v["samples_per_s"] > fastest[2]):
                fastest = (name, var, v["samples_per_s"], res.get("batch"))
    rows = []  # (run, what, samples/s, flops per sample or None, notes)

    # FLOPs per sample of one step, by (dtype, batch), from runs of one step per call: XLA's cost
    # analysis counts a loop's body once, so a K-steps-per-call executable's count is no guide.
    one_step = {}
    for r in runs.values():
        res = r.get("result") or {}
        if res.get("flops_per_step") and res.get("batch") and (res.get("steps_per_call") or 1) == 1:
            one_step.setdefault((res.get("dtype"), res["batch"]),
                                res["flops_per_step"] / res["batch"])

    def ours(name, what, res, sps, notes=""):
        per_sample = one_step.get((res.get("dtype"), res.get("batch")))
        if per_sample is None and (res.get("steps_per_call") or 1) == 1:
            flops = res.get("flops_per_step")
            per_sample = flops / res["batch"] if flops and res.get("batch") else None
        rows.append((name, what, sps, per_sample, notes))

    for name, r in runs.items():
        res = r.get("result") or {}
        if name.startswith("bench") and res.get("samples_per_s"):
            what = f"ours, v2f bench, {res.get('dtype')}, B={res.get('batch')}"
            spc = res.get("steps_per_call")
            notes = [f"compile {res['compile_s']:.1f} s" if res.get("compile_s") else ""]
            if spc:
                what += f", steps-per-call {spc}"
            for k in ("executables_compiled", "hlo_kernels", "matmul_precision", "impl_resolved"):
                if res.get(k) is not None:
                    v = res[k]
                    notes.append(f"{k} {json.dumps(v) if isinstance(v, (dict, list)) else v}")
            if r.get("note"):
                notes.append(r["note"])
            ours(name, what, res, res["samples_per_s"], "; ".join(n for n in notes if n))
            if res.get("samples_per_s_pipelined"):
                ours(name, what + ", pipelined", res, res["samples_per_s_pipelined"])
        elif name == "gather_resident" and res.get("samples_per_s"):
            # Not a step: the device-resident feed alone (data.on_device), against the steps above.
            what = f"device-resident feed's gather alone, B={res.get('batch')}"
            rows.append((name, what, res["samples_per_s"], None,
                         f"pipelined {res.get('samples_per_s_pipelined', 0):.0f}/s; "
                         f"{res.get('bytes_per_sample_to_device', 0):.0f} bytes/sample from the host"))
        elif name.startswith("compare") and res:
            j = res.get("jax") or {}
            b = res.get("batch")
            if j.get("samples_per_s"):
                sp = res.get("speedup_median_of_rounds")
                note = (f"{sp:.2f}x the fastest variant here, median of rounds" if sp else "")
                ours(name, f"ours, interleaved, {res.get('dtype')}, B={b}",
                     {**j, "batch": b, "dtype": res.get("dtype")}, j["samples_per_s"], note)
            variants = res.get("pytorch_variants") or {}
            for var in res.get("torch_variants") or list(variants):
                v = variants.get(var) or {"status": "missing"}
                what = f"PyTorch {var}, B={b}"
                if v.get("status") == "ok":
                    star = fastest is not None and (name, var) == fastest[:2]
                    rows.append((name, f"**{what}**" if star else what, v["samples_per_s"],
                                 None, "the fastest PyTorch" if star else ""))
                else:
                    why = v.get("reason") or (v.get("error") or "").splitlines()[0][:120]
                    rows.append((name, what, None, None, f"{v.get('status')}: {why}"))

    lines = [f"# v2f-jax GPU check ({args.mode}, {time.strftime('%Y-%m-%d %H:%M')})", ""]
    dev = ", ".join(env.get("jax_devices") or []) or "?"
    vers = env.get("versions") or {}
    lines.append(
        f"python {env.get('python')}; jax {vers.get('jax')} ({env.get('jax_backend')}: {dev}); "
        f"torch {vers.get('torch')} (CUDA {env.get('torch_cuda_version')}, "
        f"{env.get('torch_device', 'no GPU')}); flax {vers.get('flax')}, optax "
        f"{vers.get('optax')}, orbax {vers.get('orbax-checkpoint')}; the project: "
        f"{env.get('setup')}.")
    if env.get("matmul_peak_tflops"):
        p = env["matmul_peak_tflops"]
        lines.append(f"Measured matmul peak (JAX, {p['size']}^3): bf16 {p['bfloat16']:.4g} "
                     f"TFLOP/s, fp32 {p['float32']:.4g} TFLOP/s (JAX's default precision).")
    if fastest:
        lines.append(f"Fastest PyTorch variant: **{fastest[1]}** at **{fastest[2]:.1f} samples/s** "
                     f"({fastest[0]}, B={fastest[3]}).")
    else:
        lines.append("Fastest PyTorch variant: none ran.")
    lines += ["", "| run | what ran | samples/s | / fastest PyTorch | share of bf16 peak | notes |",
              "|---|---|---|---|---|---|"]
    for name, what, sps, per_sample, notes in rows:
        ratio = f"{sps / fastest[2]:.2f}x" if sps and fastest else ""
        share = (f"{100 * per_sample * sps / (peak * 1e12):.1f}%"
                 if sps and per_sample and peak else "")
        lines.append(f"| {name} | {what} | {_fmt(sps)} | {ratio} | {share} | {notes} |")
    lines += ["", "share of bf16 peak: XLA's FLOPs per step of our step (cost analysis of a "
              "one-step-per-call run of the same dtype and batch) x steps/s, over the bf16 "
              "matmul peak measured above (fp32 rows too).", ""]

    prof = (runs.get("profile_bf16") or {}).get("result")
    if prof and prof.get("top"):
        lines += [f"## Profile: {prof['dtype']}, B={prof['batch']}, {prof['steps']} steps", "",
                  f"{prof['wall_ms_per_step']:.2f} ms/step wall; kernels "
                  f"{prof['kernel_ms_per_step']:.2f} ms/step "
                  f"({100 * (prof.get('kernel_share_of_wall') or 0):.0f}% of wall), "
                  f"{prof['kernels_per_step']:.0f} kernels/step, {prof['distinct_kernels']} "
                  "distinct.", "", "| kernel | ms/step | calls/step | share |", "|---|---|---|---|"]
        for t in prof["top"]:
            lines.append(f"| `{t['name'][:90]}` | {t['ms_per_step']:.3f} | "
                         f"{t['calls_per_step']:.1f} | {100 * (t['share'] or 0):.1f}% |")
        lines.append("")

    lines += ["## Steps", "", "| step | status | seconds | detail |", "|---|---|---|---|"]
    for name, r in runs.items():
        detail = r.get("reason") or r.get("error") or r.get("note") or ""
        detail = detail.replace("|", "/").replace("\n", " ")[:200]
        lines.append(f"| {name} | {r['status']} | {_fmt(r.get('seconds'), '.0f')} | {detail} |")
    counts = {}
    for r in runs.values():
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines += ["", "steps: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())),
              f"total {args.total_s} s", ""]

    out = pathlib.Path(args.out)
    summary = {"mode": args.mode, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               "total_s": args.total_s, "budget_s": args.budget, "env": env,
               "fastest_pytorch": None if not fastest else {
                   "run": fastest[0], "variant": fastest[1], "samples_per_s": fastest[2],
                   "batch": fastest[3]},
               "status_counts": counts, "runs": runs}
    (out / "results.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    (out / "summary.md").write_text("\n".join(lines))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env")
    e.add_argument("--mode", required=True)
    e.add_argument("--peak-size", type=int, required=True)
    e.add_argument("--setup-file", required=True)
    e.add_argument("--flags-file", required=True)
    f = sub.add_parser("profile")
    for k in ("--config", "--dtype", "--trace-dir"):
        f.add_argument(k, required=True)
    for k, d in (("--batch", None), ("--frames", None), ("--steps", 5), ("--warmup", 3),
                 ("--top", 15)):
        f.add_argument(k, type=int, default=d)
    a = sub.add_parser("assemble")
    for k in ("--runs", "--out", "--mode"):
        a.add_argument(k, required=True)
    a.add_argument("--total-s", type=int, default=0)
    a.add_argument("--budget", type=int, default=0)
    args = p.parse_args()
    {"env": env, "profile": profile, "assemble": assemble}[args.cmd](args)


if __name__ == "__main__":
    main()
PYEOF

# ------------------------------------------------------------------------------ make it importable

IMPORT_CHECK='import v2f_jax.configs.wen2019, v2f_jax.bench'
importable() { "$PY" -c "$IMPORT_CHECK" >/dev/null 2>&1; }

make_importable() { # sets SETUP (what it did) and, where needed, PYTHONPATH
    local how=${V2F_GPU_CHECK_SETUP:-auto}
    SETUP="already importable"
    if [[ $how == auto ]] && importable; then
        return
    fi
    local steps=()
    if ! "$PY" -c 'import ml_collections' >/dev/null 2>&1; then
        local wheels=${WHEELS:-$REPO/.whl}
        if compgen -G "$wheels/*.whl" >/dev/null; then
            if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
                --target "$WORK/site" "$wheels"/*.whl >>"$LOG" 2>&1; then
                export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
                steps+=("wheels from $wheels on PYTHONPATH")
            else
                steps+=("installing the wheels in $wheels failed")
            fi
        else
            steps+=("no ml_collections and no wheels in $wheels (pip download --no-deps ml_collections -d .whl)")
        fi
    fi
    if [[ $how != shim ]] && { [[ $how == pip ]] || ! importable; }; then
        if "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e "$REPO" \
            >>"$LOG" 2>&1 && importable; then
            steps+=("editable install (pip install --no-deps --no-build-isolation -e .)")
            SETUP=$(printf '%s; ' "${steps[@]}")
            return
        fi
        steps+=("the editable install failed")
    fi
    if ! importable; then
        mkdir -p "$WORK/shim"
        cat >"$WORK/shim/sitecustomize.py" <<EOF
# gpu_check.sh: v2f_jax.configs and v2f_jax.input_pipeline live in configs/ and input_pipeline/.
import importlib.util
import sys


class _V2FPackages:
    _DIRS = {"v2f_jax.configs": "$REPO/configs", "v2f_jax.input_pipeline": "$REPO/input_pipeline"}

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        d = cls._DIRS.get(name)
        if d is None:
            return None
        return importlib.util.spec_from_file_location(
            name, d + "/__init__.py", submodule_search_locations=[d]
        )


sys.meta_path.append(_V2FPackages)
EOF
        export PYTHONPATH=$WORK/shim:$REPO${PYTHONPATH:+:$PYTHONPATH}
        if importable; then
            steps+=("the sitecustomize shim on PYTHONPATH")
        else
            steps+=("NOT importable: $("$PY" -c "$IMPORT_CHECK" 2>&1 | tail -n 1)")
        fi
    fi
    ((${#steps[@]})) && SETUP=$(printf '%s; ' "${steps[@]}")
}

# ------------------------------------------------------------------------------ the run

log "gpu_check.sh ($MODE): repo $REPO, out $OUTDIR, work $WORK, budget ${BUDGET} s"
log "python: $(command -v "$PY") ($("$PY" -V 2>&1))"
command -v nvidia-smi >/dev/null && nvidia-smi -L 2>&1 | tee -a "$LOG"
make_importable
SETUP=${SETUP%; }
log "project: $SETUP"
printf '%s\n' "$SETUP" >"$WORK/setup.txt"

run_step env 120 "$PY" "$HELPER" env --mode "$MODE" --peak-size "$PEAK_SIZE" \
    --setup-file "$WORK/setup.txt" --flags-file "$WORK/flags"
JAX_BACKEND=none HAVE_TORCH=0 TORCH_CUDA=0 V2F_OK=0
[[ -f $WORK/flags ]] && . "$WORK/flags"
log "env: jax backend $JAX_BACKEND, torch $HAVE_TORCH (CUDA $TORCH_CUDA), v2f_jax importable $V2F_OK"

WHY_NOT_OURS=
if [[ ! -f $WORK/flags ]]; then
    WHY_NOT_OURS="the env step failed (results.json has its stderr)"
elif [[ $V2F_OK != 1 ]]; then
    WHY_NOT_OURS="the project is not importable ($SETUP)"
elif [[ $MODE == gpu && $JAX_BACKEND != gpu ]]; then
    WHY_NOT_OURS="JAX sees no GPU (backend $JAX_BACKEND)"
fi
WHY_NOT_COMPARE=$WHY_NOT_OURS
if [[ -z $WHY_NOT_COMPARE && $HAVE_TORCH != 1 ]]; then
    WHY_NOT_COMPARE="torch is not installed"
fi

V2F=("$PY" -m v2f_jax.cli bench --config "$CONFIG")

bench() { # NAME DTYPE BATCH ARGS...
    local name=$1 dtype=$2 batch=$3
    shift 3
    if [[ -n $WHY_NOT_OURS ]]; then
        skip_step "$name" "$WHY_NOT_OURS"
        return
    fi
    run_step "$name" "$LIMIT_BENCH" "${V2F[@]}" --dtype "$dtype" --batch "$batch" "$@"
}

compare() { # NAME DTYPE VARIANTS
    if [[ -n $WHY_NOT_COMPARE ]]; then
        skip_step "$1" "$WHY_NOT_COMPARE"
        return
    fi
    # The comparison prints its JSON at the end: it keeps inside its step's limit itself
    # (--time-limit), stopping its rounds early rather than being killed with nothing to show.
    local limit=$((BUDGET - $(elapsed) - RESERVE))
    ((limit > LIMIT_COMPARE)) && limit=$LIMIT_COMPARE
    run_step "$1" "$limit" "$PY" benchmarks/compare_pytorch.py --device "$DEVICE" \
        --config "$CONFIG" --batch "$B_SMALL" --dtype "$2" --torch-variants "$3" "${COMPARE[@]}" \
        --time-limit $((limit > 40 ? limit - 15 : limit))
}

# The first run is our steps-per-call 1 baseline too; without the flag, again without it.
bench bench_bf16_small bfloat16 "$B_SMALL" "${BENCH_SMALL[@]}" --steps-per-call 1
if [[ $? == 2 ]] && grep -q -- "--steps-per-call" "$RUNS/bench_bf16_small.stderr"; then
    cp "$RUNS/bench_bf16_small.stderr" "$RUNS/bench_bf16_small.spc_error"
    echo "v2f bench has no --steps-per-call: ran without it" >"$RUNS/bench_bf16_small.note"
    bench bench_bf16_small bfloat16 "$B_SMALL" "${BENCH_SMALL[@]}"
fi
compare compare_bf16 bfloat16 "$VARIANTS_BF16"
bench bench_fp32_small float32 "$B_SMALL" "${BENCH_SMALL[@]}"
bench bench_bf16_small_spc bfloat16 "$B_SMALL" "${BENCH_SMALL[@]}" --steps-per-call "$SPC"
bench bench_bf16_large bfloat16 "$B_LARGE" "${BENCH_LARGE[@]}"
if [[ -n $WHY_NOT_OURS ]]; then
    skip_step gather_resident "$WHY_NOT_OURS"
else
    run_step gather_resident "$LIMIT_BENCH" "${V2F[@]}" --mode gather --batch "$B_SMALL" --steps 20
fi
compare compare_fp32 float32 "$VARIANTS_FP32"
bench bench_fp32_large float32 "$B_LARGE" "${BENCH_LARGE[@]}"
if [[ -n $WHY_NOT_OURS ]]; then
    skip_step profile_bf16 "$WHY_NOT_OURS"
else
    run_step profile_bf16 "$LIMIT_PROFILE" "$PY" "$HELPER" profile --config "$CONFIG" \
        --dtype bfloat16 --batch "$B_SMALL" --frames "$FRAMES" "${PROFILE[@]}" \
        --trace-dir "$WORK/trace"
fi

TOTAL=$(elapsed)
if ! "$PY" "$HELPER" assemble --runs "$RUNS" --out "$OUTDIR" --mode "$MODE" --total-s "$TOTAL" \
    --budget "$BUDGET" >>"$LOG" 2>&1; then
    log "writing summary.md failed: see $LOG"
    exit 1
fi
log ""
tee -a "$LOG" <"$OUTDIR/summary.md"
log "(gpu_check.sh: $TOTAL s; $OUTDIR: summary.md, results.json, log.txt; per-step files in $RUNS)"
