"""`v2f bench`: every mode runs on tiny shapes and prints one JSON line with its keys (no timing
assertions: the numbers depend on the machine)."""

import json

import numpy as np
import pytest

from v2f_jax import cli
from v2f_jax.bench import hlo, timing

STEP_KEYS = {
    "samples_per_s",
    "steps_per_s",
    "samples_per_s_per_device",
    "compile_s",
    "step_s",
    "flops_per_step",
    "gflops_per_s",
    "peak_gflops_per_s_per_device",
    "peak_share",
    "devices",
    "impl_resolved",
    "dtype",
    "batch",
    "frames",
    "machine",
    "losses_finite",
    "hlo",
}


def _bench(capsys, *argv):
    assert cli.main(["bench", *argv]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return json.loads(lines[0])


@pytest.mark.slow
def test_step_mode_reports_throughput_flops_and_peak(capsys):
    out = _bench(
        capsys,
        "--config",
        "configs/tiny.py",
        "--batch",
        "8",
        "--frames",
        "32",
        "--steps",
        "2",
        "--warmup",
        "0",
        "--num-ids",
        "5",
        "--devices",
        "2",
        "--config.model.embed_dim=8",
    )
    assert STEP_KEYS <= set(out)
    assert out["mode"] == "step" and out["batch"] == 8 and out["frames"] == 32
    assert out["devices"] == 2 and out["dtype"] == "float32"
    assert out["samples_per_s"] > 0 and out["flops_per_step"] > 0
    assert out["samples_per_s_per_device"] == pytest.approx(out["samples_per_s"] / 2)
    assert 0 < out["peak_share"]
    assert out["step_s"]["n"] == 2 and out["step_s"]["min"] <= out["step_s"]["median"]
    assert out["impl_resolved"] == "winograd" and out["losses_finite"]
    # The fast form leaves no convolution in G or the critics (E's five 1-D convs remain).
    assert out["hlo"]["convolutions"] <= 5
    # Timed as the loop runs it too, from one executable.
    assert out["samples_per_s_pipelined"] > 0 and out["executables_compiled"] == 1
    assert out["steps_per_call"] == 1 and out["hlo_kernels"] > 0
    assert out["matmul_precision"] == "default"


@pytest.mark.slow
def test_step_mode_times_the_recipe_with_its_face_target_term(capsys):
    """`configs/recipe.py` pulls G's faces to their speaker's mean face: the timed step carries
    that term (on synthetic mean faces)."""
    argv = ["--config", "configs/recipe.py:tiny", "--batch", "8", "--frames", "32", "--steps", "1"]
    argv += ["--warmup", "0", "--num-ids", "5", "--config.model.embed_dim=8"]
    recipe = _bench(capsys, *argv)
    without = _bench(capsys, *argv, "--config.train.face_target_weight=0.0")
    assert recipe["losses_finite"] and recipe["hlo"]["convolutions"] <= 5
    assert recipe["flops_per_step"] > without["flops_per_step"]


def test_generate_mode_reports_latency_at_each_batch(capsys):
    out = _bench(
        capsys,
        "--config",
        "configs/tiny.py",
        "--mode",
        "generate",
        "--frames",
        "32",
        "--steps",
        "2",
        "--num-ids",
        "5",
        "--impl",
        "xla",
    )
    assert out["impl_resolved"] == "xla"
    for b in ("batch1", "batch64"):
        assert out[b]["latency_s"]["median"] > 0 and out[b]["faces_per_s"] > 0


def test_prepare_mode_reports_audio_seconds_per_cpu_second(capsys, examples_dir):
    wavs = sorted(str(p) for p in examples_dir.glob("*.wav"))[:2]
    out = _bench(capsys, "--config", "configs/tiny.py", "--mode", "prepare", "--audio", *wavs)
    assert out["files"] == 2 and out["audio_s"] > 0 and out["audio_s_per_cpu_s"] > 0


def test_input_mode_reads_real_shards_against_a_demand(capsys, tmp_path):
    cv2 = pytest.importorskip("cv2")
    from v2f_jax.input_pipeline import prepare

    rng = np.random.default_rng(0)
    meta = ["VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"]
    for i, name in enumerate(["Fay_F", "Gus_G", "Hal_H", "Ida_I"]):
        vid = f"id{10001 + i}"
        meta.append(f"{vid}\t{name}\t{'mf'[i % 2]}\tUK\tdev")
        (tmp_path / "fbank" / vid / "v").mkdir(parents=True)
        (tmp_path / "faces" / name).mkdir(parents=True)
        for u in range(3):
            mel = rng.standard_normal([int(rng.integers(40, 120)), 64]).astype(np.float32)
            np.save(tmp_path / "fbank" / vid / "v" / f"{u:05d}.npy", mel)
            img = rng.integers(0, 256, [72, 72, 3], dtype=np.uint8)
            cv2.imwrite(str(tmp_path / "faces" / name / f"{u}.png"), img)
    (tmp_path / "meta.csv").write_text("\n".join(meta) + "\n")
    records = tmp_path / "records"
    prepare.prepare(
        tmp_path / "fbank",
        tmp_path / "faces",
        tmp_path / "meta.csv",
        records,
        workers=1,
        shards_per_split=2,
        progress=False,
    )
    out = _bench(
        capsys,
        "--config",
        "configs/tiny.py",
        "--mode",
        "input",
        "--records",
        str(records),
        "--batch",
        "4",
        "--steps",
        "3",
        "--demand",
        "100",
        "--config.data.shuffle_buffer=8",
    )
    assert out["feed"] == "streaming"
    assert out["samples_per_s"] == pytest.approx(4 * out["batches_per_s"])
    assert out["samples_per_cpu_s"] > 0
    # float16 voices of the longest crop (96 frames x 64), uint8 faces, five int32/bool per row.
    assert out["bytes_per_sample_to_device"] == 96 * 64 * 2 + 64 * 64 * 3 + 4 * 4 + 1
    assert out["step_demand_samples_per_s"] == 100 and out["supply_over_demand"] > 0
    resident = _bench(
        capsys,
        *("--config", "configs/tiny.py", "--mode", "input", "--records", str(records)),
        *("--batch", "4", "--steps", "3", "--demand", "100", "--on-device"),
        "--config.data.shuffle_buffer=8",
    )
    # The host sends indices, starts and flags: 8-byte indices, 4-byte ints, a bool, per row.
    assert resident["feed"] == "on_device" and resident["bytes_per_sample_to_device"] < 64
    assert resident["device_gather_samples_per_s"] > 0 and resident["resident_bytes_per_device"] > 0
    held = _bench(
        capsys,
        *("--config", "configs/tiny.py", "--mode", "input", "--records", str(records)),
        *("--batch", "4", "--steps", "3", "--demand", "100", "--in-host-memory"),
        "--config.data.shuffle_buffer=8",
    )
    assert held["feed"] == "host_memory" and held["samples_per_cpu_s"] > 0
    assert held["bytes_per_sample_to_device"] == out["bytes_per_sample_to_device"]
    assert held["host_bytes"] > 0
    # The device side alone, on a synthetic split: what a GPU without TensorFlow can measure.
    gather = _bench(capsys, "--config", "configs/tiny.py", "--mode", "gather", "--batch", "8")
    assert gather["samples_per_s"] > 0 and gather["bytes_per_sample_to_device"] < 64


def test_bad_impl_is_a_usage_error(capsys):
    assert cli.main(["bench", "--config", "configs/tiny.py", "--impl", "im2col"]) == 2
    err = capsys.readouterr().err
    assert "'im2col'" in err and "'xla'" in err


def test_spread_and_hlo_counts():
    s = timing.spread([3.0, 1.0, 2.0, 10.0])
    assert s["median"] == 2.5 and s["min"] == 1.0 and s["max"] == 10.0 and s["n"] == 4
    text = (
        "%ynn_fusion = f32[2,2]{1,0} fusion(%a, %b), kind=kCustom, calls=%fc, "
        'backend_config={"fusion_config":{"kind":"__ynn_fusion"}}\n'
        "%dot.1 = f32[2,2]{1,0} dot(%a, %b)\n"
        "%convolution.2 = f32[1,2,2,1]{3,2,1,0} convolution(%x, %w)\n"
    )

    class Fake:
        def as_text(self):
            return text

    assert hlo.hlo_op_counts(Fake()) == {"library_fusions": 1, "other_dots": 1, "convolutions": 1}
