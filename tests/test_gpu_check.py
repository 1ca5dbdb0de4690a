"""benchmarks/gpu_check.py (the prepared GPU throughput check, behind benchmarks/gpu_check.sh) and
the PyTorch variants of benchmarks/compare_pytorch.py.

The module is imported: its step order, its budget (run with a fake clock: each step skipped when
its estimate no longer fits, the whole check inside the budget even when every step runs to its
limit), how it reads a GPU-compiled step's convolutions, the wheels it fetches, and the modules it
keeps out of the dry run's reach. The tiny CPU dry run then runs end to end (marked slow): no
timing assertions, only that every step that ran reported, in order, with the host-to-device
transfer figure, and that the steps left out with `--steps` are reported as such.

The dry run runs the bf16 steps at B=8 only: they share one compiled step through the check's
compilation cache, and every kind of step (bench, profile, transfer, comparison, gather) is among
them. The fp32, B=16 and steps-per-call steps run the same commands with another dtype, batch or
flag (v2f bench's modes are tested in test_bench.py).
"""

import argparse
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time
import tomllib

import pytest
from packaging.requirements import Requirement

REPO = pathlib.Path(__file__).resolve().parents[1]
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gpu_check = _load("gpu_check")

# The steps the dry run runs (env always runs), and those it leaves out.
RUN = ("bench_bf16_small", "profile_bf16", "transfer", "compare_bf16", "gather_resident")
LEFT_OUT = (
    "bench_bf16_large",
    "bench_fp32_small",
    "bench_bf16_small_spc",
    "compare_fp32",
    "bench_fp32_large",
)
ORDER = (
    "env",
    "bench_bf16_small",
    "profile_bf16",
    "transfer",
    "compare_bf16",
    "bench_bf16_large",
    "bench_fp32_small",
    "gather_resident",
    "bench_bf16_small_spc",
    "compare_fp32",
    "bench_fp32_large",
)


# ------------------------------------------------------------------------------ the module


def test_the_order_puts_the_cheapest_most_informative_steps_first():
    for mode in (gpu_check.GPU, gpu_check.DRY_RUN):
        steps = gpu_check.plan(mode)
        assert tuple(s.name for s in steps) == ORDER
        assert all(s.limit_s >= s.estimate_s > 0 for s in steps)
    steps = {s.name: s for s in gpu_check.plan(gpu_check.GPU)}
    cmd = {n: gpu_check.command(s, gpu_check.GPU, "python3", REPO) for n, s in steps.items()}
    bench = " ".join(cmd["bench_bf16_small"])
    assert "-m v2f_jax.cli bench --config configs/wen2019.py --dtype bfloat16 --batch 128" in bench
    assert bench.endswith("--steps-per-call 1")
    assert "--batch 1024" in " ".join(cmd["bench_bf16_large"])
    assert cmd["bench_bf16_small_spc"][-2:] == ["--steps-per-call", "8"]
    compare = " ".join(cmd["compare_bf16"])
    assert "compare_pytorch.py --device cuda" in compare and "--torch-variants gpu" in compare
    assert "--time-limit 225" in compare  # its limit, less 15 s to print its JSON
    limited = gpu_check.command(steps["compare_bf16"], gpu_check.GPU, "python3", REPO, 100)
    assert "--time-limit 85" in " ".join(limited)
    transfer = json.loads(cmd["transfer"][-1])
    assert transfer["batches"] == [128, 1024] and transfer["overlap_batch"] == 128
    assert json.loads(cmd["profile_bf16"][-1])["batch"] == 128
    # The steps the default budget fits, each taking its estimate: at least through B=1024.
    left, fit = gpu_check.BUDGET_S["gpu"] - gpu_check.RESERVE_S, []
    for step in steps.values():
        if step.estimate_s <= left:
            left -= step.estimate_s
            fit.append(step.name)
    assert fit[:6] == list(ORDER[:6])
    # One 10-minute command, with room for the machine's start-up and a margin.
    assert gpu_check.BUDGET_S["gpu"] + gpu_check.KILL_GRACE_S <= 540


def _fake_run(budget, durations=None, env_result=None, selected=None, mode=None):
    """run_steps with a fake clock: each step takes durations[name] (default its estimate,
    "limit": the whole limit it was given, as a step that times out)."""
    mode = mode or gpu_check.GPU
    now = [0.0]
    calls = []
    env_result = env_result or {"v2f_jax_importable": True, "jax_backend": "gpu", "torch": True}
    env_result.setdefault("torch_cuda", True)

    def execute(step, limit):
        calls.append((step.name, limit))
        took = (durations or {}).get(step.name, step.estimate_s)
        now[0] += min(limit, limit if took == "limit" else took)
        result = env_result if step.kind == "env" else {"ok": True}
        return {"status": "ok", "seconds": took, "result": result}

    runs = gpu_check.run_steps(
        gpu_check.plan(mode),
        execute,
        mode=mode,
        budget_s=budget,
        selected=selected,
        clock=lambda: now[0],
        log=lambda _: None,
    )
    return runs, calls, now[0]


def test_a_step_that_does_not_fit_the_budget_left_is_skipped():
    estimates = {s.name: s.estimate_s for s in gpu_check.plan(gpu_check.GPU)}
    # Room for the first six and 30 s more: bench_fp32_small (50 s) does not fit, gather (25 s)
    # after it does, and nothing after that.
    budget = gpu_check.RESERVE_S + sum(estimates[n] for n in ORDER[:6]) + 30
    runs, calls, end = _fake_run(budget)
    assert list(runs) == list(ORDER)
    ran = [n for n, r in runs.items() if r["status"] == "ok"]
    assert ran == [*ORDER[:6], "gather_resident"]
    for name in ("bench_fp32_small", "bench_bf16_small_spc", "compare_fp32", "bench_fp32_large"):
        assert runs[name]["status"] == gpu_check.SKIP_BUDGET == "skipped: budget"
        assert "s of the budget left" in runs[name]["reason"]
    assert runs["bench_fp32_small"]["reason"].startswith("30 s")
    assert end <= budget - gpu_check.RESERVE_S
    # A step's limit is its own, cut to what is left of the budget.
    assert dict(calls)["env"] == 120
    assert dict(calls)["gather_resident"] == 30


def test_the_check_ends_inside_its_budget_when_every_step_runs_to_its_limit():
    for budget in (60, 300, 480, 1200):
        runs, calls, end = _fake_run(budget, durations={n: "limit" for n in ORDER})
        assert end <= budget - gpu_check.RESERVE_S
        assert all(limit >= 1 for _, limit in calls)
        assert runs["bench_fp32_large"]["status"] == "skipped: budget"
    runs, calls, end = _fake_run(1)  # not even env: every step reported, none run
    assert not calls and {r["status"] for r in runs.values()} == {"skipped: budget"}


def test_steps_whose_needs_are_unmet_are_skipped_with_the_reason():
    runs, _, _ = _fake_run(10_000, env_result={"v2f_jax_importable": True, "jax_backend": "cpu"})
    for name in ORDER[1:]:
        assert runs[name]["status"] == "skipped: gpu", name
        assert "JAX sees no GPU (backend cpu)" in runs[name]["reason"]
    env = {"v2f_jax_importable": True, "jax_backend": "gpu", "torch": False}
    runs, _, _ = _fake_run(10_000, env_result=env)
    assert runs["compare_bf16"]["status"] == "skipped: torch"
    assert runs["bench_bf16_large"]["status"] == "ok"
    env = {"v2f_jax_importable": "ModuleNotFoundError: ml_collections", "jax_backend": "gpu"}
    runs, _, _ = _fake_run(10_000, env_result=env)
    assert runs["bench_bf16_small"]["status"] == "skipped: project"
    assert "ml_collections" in runs["bench_bf16_small"]["reason"]
    # The dry run needs no GPU; --steps leaves the others out (env always runs).
    env = {"v2f_jax_importable": True, "jax_backend": "cpu", "torch": True}
    runs, calls, _ = _fake_run(
        10_000, env_result=env, selected={"transfer"}, mode=gpu_check.DRY_RUN
    )
    assert [n for n, _ in calls] == ["env", "transfer"]
    assert runs["bench_bf16_small"] == {
        "status": "skipped: not selected",
        "reason": "not among --steps",
        "estimate_s": 30,
    }


def test_a_timed_out_step_is_ended_with_its_process_group(tmp_path):
    cmd = ["bash", "-c", "sleep 60 & sleep 60"]  # a child of its own, as the comparison has
    with open(tmp_path / "out", "wb") as out:
        start = time.monotonic()
        rc, seconds = gpu_check.run_process(cmd, 1, out, subprocess.STDOUT, dict(os.environ))
    assert rc == 124 and seconds < 5 and time.monotonic() - start < 5


# Lines as XLA:GPU prints them (the wen2019 bf16 step compiled for XLA's H100 spec, deviceless).
BACKWARD_INPUT = (
    "  %cudnn-conv-bw-input.15 = (bf16[8,4,4,1024]{3,2,1,0}, u8[0]{0}) custom-call(%bitcast.68.0,"
    " %loop_transpose_fusion.6), window={size=4x4}, dim_labels=b01f_o01i->b01f, "
    'custom_call_target="__cudnn$convBackwardInput", metadata={op_name="jit(step)/deconv0"}'
)
FORWARD = (
    "  %cudnn-conv.51 = (bf16[8,400,256]{2,1,0}, u8[0]{0}) custom-call(%loop_select_fusion.9, "
    "%input_transpose_fusion.24), window={size=3 stride=2 pad=1_1}, dim_labels=b0f_o0i->b0f, "
    'custom_call_target="__cudnn$convForward", metadata={op_name="jit(step)/conv0"}'
)
INTERIOR_PAD = (
    "  ROOT %pad.8.1 = bf16[8,67,67,128]{3,2,1,0} pad(%max.66.3, %constant_489_36), "
    'padding=0_0_0x2_2_1x2_2_1x0_0_0, metadata={op_name="jit(step)/jvp(Generator)/max"}'
)
EDGE_PAD = (
    "  %pad.3.3 = f32[8,2,924]{2,1,0} pad(%bitcast.22.3, %constant_487_46), padding=0_0x0_1x0_0"
)


def test_the_compiled_steps_convolutions_say_how_the_transposed_convs_ran():
    good = gpu_check.hlo_convs("\n".join([BACKWARD_INPUT, FORWARD, EDGE_PAD]))
    assert good["cudnn_calls"] == {"__cudnn$convBackwardInput": 1, "__cudnn$convForward": 1}
    assert good["pads_with_interior"] == good["forward_over_dilated_input"] == 0
    assert gpu_check.deconv_verdict("gpu", good).startswith("as cuDNN backward-input convs")
    # G's deconvs as XLA runs them when it does not recognise them: a zero-dilated input, padded
    # explicitly (or lhs_dilate on the forward call), then a forward conv.
    bad = gpu_check.hlo_convs(
        "\n".join([FORWARD, INTERIOR_PAD, FORWARD.replace("}, dim", " lhs_dilate=2}, dim")])
    )
    assert bad["pads_with_interior"] == 1 and bad["forward_over_dilated_input"] == 1
    assert gpu_check.deconv_verdict("gpu", bad).startswith("NOT all as cuDNN backward-input")
    assert gpu_check.deconv_verdict("cpu", good).startswith("not read")
    kinds = {
        "sm90_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc": "backward_input",
        "cudnn-conv-bw-input.3": "backward_input",
        "sm90_xmma_wgrad_implicit_gemm_indexed": "backward_filter",
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc": "forward",
        "cudnn-conv-bias-activation.2": "forward",
        "loop_fusion.12": None,
        "ampere_bf16_s16816gemm_bf16_128x64": None,
    }
    for name, kind in kinds.items():
        assert gpu_check.conv_kind(name) == kind, name


def test_the_wheels_are_fetched_pinned_inside_pyprojects_range(tmp_path):
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ranges = {Requirement(d).name.replace("-", "_"): Requirement(d).specifier for d in deps}
    for name, pin in gpu_check.WHEELS.items():
        assert pin in ranges[name], (name, pin, ranges[name])
    cmds = gpu_check.fetch_commands(tmp_path / ".whl", "python3")
    assert len(cmds) == len(gpu_check.WHEELS) * 3
    versions = sorted(c[c.index("--python-version") + 1] for c in cmds)
    assert versions == ["3.10", "3.11", "3.12"]
    for c in cmds:
        assert c[:6] == ["python3", "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        assert c[-1] == "ml_collections==1.1.0" and c[-3:-1] == ["-d", str(tmp_path / ".whl")]
    # Ignored by git: the device tool carries it (`carry: [".whl"]`), git never holds it.
    assert "/.whl/" in (REPO / ".gitignore").read_text().splitlines()


def test_the_dry_runs_children_cannot_import_what_the_gpu_image_lacks(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(gpu_check.sitecustomize(block=True, shim=True))
    probe = """
import importlib.util, json, sys
out = {n: importlib.util.find_spec(n) is not None for n in sys.argv[1:]}
try:
    import soundfile
except ModuleNotFoundError as e:
    out["error"] = str(e)
print(json.dumps(out))
"""
    names = gpu_check.NOT_ON_STEP_PATH

    def found(pythonpath):
        env = dict(os.environ, PYTHONPATH=pythonpath)
        cmd = [sys.executable, "-c", probe, *names]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    installed = found("")
    blocked = found(str(tmp_path))  # the sitecustomize there is loaded at start-up
    assert not any(blocked[n] for n in names), blocked
    assert "No module named 'soundfile'" in blocked["error"]
    assert any(installed[n] for n in names)  # the project's own venv has them
    # The shim: without site-packages (-S: where the project is installed), v2f_jax.configs
    # is configs/.
    shim = (
        f"import sys; sys.path[:0] = [{str(tmp_path)!r}, {str(REPO)!r}]; import sitecustomize; "
        "import v2f_jax.configs; print(v2f_jax.configs.__file__)"
    )
    proc = subprocess.run([sys.executable, "-S", "-c", shim], capture_output=True, text=True)
    assert proc.stdout.strip() == str(REPO / "configs" / "__init__.py"), proc.stderr


def test_help_plan_and_a_spent_budget_from_the_command_line(tmp_path):
    script = ["bash", str(REPO / "benchmarks" / "gpu_check.sh")]
    env = dict(os.environ, PYTHON=sys.executable)

    def run(*args):
        return subprocess.run([*script, *args], env=env, capture_output=True, text=True)

    help_text = run("--help")
    assert help_text.returncode == 0
    for flag in ("--fetch-wheels", "--dry-run", "--steps", "--budget", "summary.md"):
        assert flag in help_text.stdout
    plan = run("--plan").stdout.splitlines()
    assert [line.split()[0] for line in plan[2:]] == list(ORDER)
    assert run("--steps", "bench_nope").returncode == 2
    # No time left: every step skipped, the three files written all the same.
    out = tmp_path / "out"
    spent = run("--dry-run", "--budget", "1", "--out", str(out), "--work", str(tmp_path / "w"))
    assert spent.returncode == 0, spent.stderr
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "results.json", "summary.md"]
    results = json.loads((out / "results.json").read_text())
    assert results["order"] == list(ORDER)
    assert {r["status"] for r in results["runs"].values()} == {"skipped: budget"}
    assert "| env | skipped: budget |" in (out / "summary.md").read_text()


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)]
        + ["--work", str(work), "--steps", ",".join(RUN)],
        cwd=REPO,
        env=dict(os.environ, PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # What comes back from the device tool: at most 8 files.
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "results.json", "summary.md"]
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "dry-run"
    runs = results["runs"]
    detail = {k: (v["status"], v.get("error") or v.get("reason")) for k, v in runs.items()}
    assert results["order"] == list(runs) == list(ORDER)  # in the order they ran

    ours = ("env", "bench_bf16_small", "profile_bf16", "transfer", "gather_resident")
    for name in ours:
        assert runs[name]["status"] == "ok", (name, runs[name].get("stderr_tail"))
        on_disk = json.loads((work / "runs" / f"{name}.json").read_text())
        assert on_disk == runs[name]["result"]
    env = results["env"]
    assert env["jax_backend"] == "cpu" and env["v2f_jax_importable"] is True
    assert env["matmul_peak_tflops"]["bfloat16"] > 0
    # The step's imports, and every step's, needed none of the modules the GPU image lacks.
    assert env["step_path_imports"]["ok"] and not env["step_path_imports"]["loaded"]
    assert "blocked" in results["setup"]
    r = runs["bench_bf16_small"]["result"]
    assert r["mode"] == "step" and r["batch"] == 8 and r["losses_finite"]
    assert r["samples_per_s"] > 0 and r["steps_per_call"] == 1
    prof = runs["profile_bf16"]["result"]
    assert prof["top"] and prof["deconvs"].startswith("not read") and "hlo_convs" in prof
    gather = runs["gather_resident"]["result"]
    assert gather["mode"] == "gather" and gather["samples_per_s"] > 0

    # The transfer figure: a fresh host batch's put, at both batch sizes, against the step.
    transfer = runs["transfer"]["result"]
    assert sorted(transfer["batches"]) == ["16", "8"]
    b8 = transfer["batches"]["8"]
    voices, faces = 8 * 96 * 64 * 2, 8 * 64 * 64 * 3  # float16 [B, T, 64], uint8 [B, 64, 64, 3]
    assert voices + faces < b8["bytes"] < voices + faces + 8 * 4 * 8
    assert b8["arrays"]["voice"] == "float16[8, 96, 64]" and b8["arrays"]["face_id"] == "int32[8]"
    assert b8["seconds"]["median"] > 0 and b8["bytes_per_s"] > 0
    assert transfer["overlap"]["step_s_pipelined_fresh_batches"] > 0
    row = next(t for t in results["transfer"] if t["batch"] == 8)
    assert row["fraction_of_step"] == pytest.approx(row["transfer_s"] / row["step_s"])
    assert row["step_s"] == r["step_s"]["median"]

    for name in LEFT_OUT:
        assert runs[name]["status"] == "skipped: not selected", detail
        assert not (work / "runs" / f"{name}.json").exists()

    r = runs["compare_bf16"]
    if not HAVE_TORCH:
        assert r["status"] == "skipped: torch" and "torch" in r["reason"]
    else:
        assert r["status"] == "ok", r.get("stderr_tail")
        res = r["result"]
        assert res["device"] == "cpu" and res["jax"]["samples_per_s"] > 0
        variants = res["pytorch_variants"]
        assert list(variants) and set(variants) == set(res["torch_variants"])
        assert any("compile" in var for var in variants)  # what needs CUDA is among them
        for var, v in variants.items():
            if "compile" in var:
                assert v["status"] == "skipped" and "CUDA" in v["reason"], (var, v)
            else:
                assert v["status"] == "ok" and v["samples_per_s"] > 0, (var, v)
                assert v["losses_finite"]
        fastest = res["fastest_pytorch_variant"]
        assert variants[fastest]["samples_per_s"] == max(
            v["samples_per_s"] for v in variants.values() if v["status"] == "ok"
        )
        assert results["fastest_pytorch"]["samples_per_s"] > 0

    summary = (out / "summary.md").read_text()
    header = "| run | what ran | samples/s | / fastest PyTorch | share of bf16 peak | notes |"
    assert header in summary and "Fastest PyTorch variant" in summary
    assert "## Host to device: a fresh batch" in summary and "\n| 8 | 0.20 |" in summary
    assert "## Profile: bfloat16, B=8" in summary
    steps_table = summary[summary.index("## Steps") :]
    assert [line.split("|")[1].strip() for line in steps_table.splitlines()[4:15]] == list(ORDER)
    rows = [line for line in summary.splitlines() if line.startswith("| bench_bf16_small |")]
    assert rows and "%" in rows[0]  # its share of the bf16 peak
    for name in LEFT_OUT:
        assert f"| {name} | skipped: not selected |" in summary, name


# ------------------------------------------------------------------------------ compare_pytorch


def _args(**kw):
    base = dict(
        torch_dtype=None,
        dtype="float32",
        torch_variant="reference",
        channels_last=False,
        torch_variants=None,
    )
    return argparse.Namespace(**{**base, **kw})


def test_pytorch_variant_names_and_default_lists():
    cp = _load("compare_pytorch")
    assert cp.parse_variant("compile+bf16+channels-last", "fp32")[0] == (
        "bf16+channels_last+compile"
    )
    name, options = cp.parse_variant("all", "bf16")
    assert name == "bf16+channels_last+fused_adam+no_item+compile"
    assert options["precision"] == "bf16" and not options["dedup"]
    with pytest.raises(ValueError, match="turbo"):
        cp.parse_variant("fp32+turbo", "fp32")
    # The CPU default is the published loop alone, as before; the old flags still apply.
    assert list(cp.variants_for(_args(), "cpu")) == ["fp32"]
    assert list(cp.variants_for(_args(torch_variant="dedup"), "cpu")) == ["fp32+dedup"]
    assert list(cp.variants_for(_args(dtype="bfloat16"), "cpu")) == ["bf16"]
    # On CUDA: each option alone, then stacked; the precision from --torch-dtype.
    gpu = list(cp.variants_for(_args(torch_dtype="bfloat16"), "cuda"))
    assert gpu[0] == "bf16" and len(gpu) == len(set(gpu)) == 8
    assert {"bf16+fused_adam", "bf16+no_item", "bf16+compile", "bf16+channels_last"} <= set(gpu)
    assert gpu[-1] == "bf16+channels_last+fused_adam+no_item+compile+dedup"
    assert list(cp.variants_for(_args(torch_variants="gpu"), "cpu")) == list(
        cp.variants_for(_args(), "cuda")
    )
    assert list(cp.variants_for(_args(torch_variants="fp32, bf16+all,fp32"), "cuda")) == [
        "fp32",
        "bf16+channels_last+fused_adam+no_item+compile",
    ]
