"""benchmarks/gpu_check.sh (the prepared GPU throughput check) in its tiny CPU dry run, and the
PyTorch variants of benchmarks/compare_pytorch.py. No timing assertions: only that every step that
ran reported, that what needs CUDA is reported as skipped, and that the steps left out with
`--steps` are reported as such.

The dry run runs the bf16 steps only (`--steps`): they share one compiled step through the
script's compilation cache, and each kind of step (bench, steps per call, comparison, gather,
profile) is among them. The fp32 and "large" steps run the same commands with another dtype or
batch (v2f bench's fp32 step mode is tested in test_bench.py)."""

import argparse
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
HAVE_TORCH = importlib.util.find_spec("torch") is not None
OURS = ("env", "bench_bf16_small")
# The steps the dry run runs (env always runs), and those it leaves out.
RUN = (
    "bench_bf16_small",
    "compare_bf16",
    "bench_bf16_small_spc",
    "gather_resident",
    "profile_bf16",
)
LEFT_OUT = ("bench_fp32_small", "bench_bf16_large", "compare_fp32", "bench_fp32_large")


def _compare_module():
    spec = importlib.util.spec_from_file_location(
        "compare_pytorch", REPO / "benchmarks" / "compare_pytorch.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    cp = _compare_module()
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


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        OUT=str(out),
        V2F_GPU_CHECK_WORK=str(work),
        V2F_GPU_CHECK_TINY="1",
    )
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--steps", ",".join(RUN)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # What comes back from the device tool: at most 8 files.
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "results.json", "summary.md"]
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "dry-run"
    runs = results["runs"]
    detail = {k: (v["status"], v.get("error") or v.get("reason")) for k, v in runs.items()}

    for name in (*OURS, "profile_bf16"):
        assert runs[name]["status"] == "ok", (name, runs[name].get("stderr_tail"))
        on_disk = json.loads((work / "runs" / f"{name}.json").read_text())
        assert on_disk == runs[name]["result"]
    assert results["env"]["jax_backend"] == "cpu" and results["env"]["v2f_jax_importable"] is True
    assert results["env"]["matmul_peak_tflops"]["bfloat16"] > 0
    for name in OURS[1:]:
        r = runs[name]["result"]
        assert r["mode"] == "step" and r["batch"] == 8 and r["losses_finite"], name
        assert r["samples_per_s"] > 0
    assert runs["profile_bf16"]["result"]["top"]
    r = runs["gather_resident"]
    assert r["status"] == "ok", r.get("stderr_tail")
    assert r["result"]["mode"] == "gather" and r["result"]["samples_per_s"] > 0
    # Every step is reported; those not asked for as skipped.
    assert set(runs) == {"env", *RUN, *LEFT_OUT}
    for name in LEFT_OUT:
        assert runs[name]["status"] == "skipped", detail
        assert runs[name]["reason"] == "not among --steps", detail
        assert not (work / "runs" / f"{name}.json").exists()

    # --steps-per-call: a result where `v2f bench` has the flag, its error where it has not.
    spc = runs["bench_bf16_small_spc"]
    if spc["status"] == "ok":
        assert spc["result"]["steps_per_call"] == 2
        assert spc["result"]["mode"] == "step" and spc["result"]["losses_finite"]
    else:
        assert spc["status"] == "error" and "steps-per-call" in spc["stderr_tail"], detail

    for name in ("compare_bf16",):
        r = runs[name]
        if not HAVE_TORCH:
            assert r["status"] == "skipped" and "torch" in r["reason"]
            continue
        assert r["status"] == "ok", (name, r.get("stderr_tail"))
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
        assert res["pytorch"]["variant"] == fastest
    if HAVE_TORCH:
        assert results["fastest_pytorch"]["samples_per_s"] > 0

    summary = (out / "summary.md").read_text()
    header = "| run | what ran | samples/s | / fastest PyTorch | share of bf16 peak | notes |"
    assert header in summary
    assert "Fastest PyTorch variant" in summary
    for name in runs:
        assert f"| {name} |" in summary, name
    # Their share of the bf16 peak; the K-steps-per-call run's from the one-step run's FLOPs.
    for name in ("bench_bf16_small", "bench_bf16_small_spc")[: 1 + (spc["status"] == "ok")]:
        rows = [line for line in summary.splitlines() if line.startswith(f"| {name} |")]
        assert rows and "%" in rows[0], name
    for name in LEFT_OUT:
        assert f"| {name} | skipped |" in summary, name
