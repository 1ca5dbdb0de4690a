"""Hostile inputs, round 3: `v2f generate`, `v2f export`, `v2f eval` and `v2f features`. Clips
too short, too long or too many, a model file replaced while another command reads it, records
that cannot be scored, a full disk and a kill mid-write: each is a skip or exit 2 naming the file
and the reason, in bounded memory, and never leaves half a file behind.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

import cv2
import hostile
import numpy as np
import pytest

from v2f_jax import cli, config_lib, files
from v2f_jax.inference import generate, model_files
from v2f_jax.inference.model import init_model
from v2f_jax.input_pipeline import prepare

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> pathlib.Path:
    config = config_lib.load_config(REPO / "configs" / "tiny.py")
    config.model.num_ids = 4
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return pathlib.Path(model_files.save_model(init_model(config), path))


@pytest.fixture(scope="module")
def other_model_file(tmp_path_factory) -> pathlib.Path:
    config = config_lib.load_config(REPO / "configs" / "tiny.py", ["--config.seed=1"])
    config.model.num_ids = 4
    path = tmp_path_factory.mktemp("model") / "other.safetensors"
    return pathlib.Path(model_files.save_model(init_model(config), path))


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("clips") / "voice.wav"
    return hostile.write_wav(path, hostile.speech(2.0), 16_000, "PCM_16")


def same_tensors(a: pathlib.Path, b: pathlib.Path) -> bool:
    from safetensors.numpy import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta)


def test_the_two_models_differ(model_file, other_model_file):
    assert not same_tensors(model_file, other_model_file)


def run_generate(model_file, out, *audio, extra=()) -> int:
    return cli.main(["generate", "--model", str(model_file), "--audio", *map(str, audio),
                     "--out", str(out), *extra])  # fmt: skip


# --- generate: clips too short, too long, too many ----------------------------------------------


def test_a_tenth_of_a_second_and_an_hour_are_skipped_naming_why(model_file, clip, tmp_path, capsys):
    short = hostile.write_wav(tmp_path / "short.wav", hostile.speech(0.1), 16_000, "PCM_16")
    hour = hostile.sparse_wav(tmp_path / "hour.wav", 3600)  # refused from its header
    out = tmp_path / "faces"
    start = time.perf_counter()
    assert run_generate(model_file, out, short, hour, clip) == 1
    assert time.perf_counter() - start < 120
    err = capsys.readouterr().err
    assert f"{short}: too short after VAD" in err
    assert f"{hour}: 3600 s of audio, longer than the 600 s a file may hold" in err
    assert "Traceback" not in err
    assert sorted(os.listdir(out)) == ["contact_sheet.png", "generate.json", "voice.png"]


def test_many_clips_go_through_in_chunks_with_progress(model_file, clip, tmp_path, capsys,
                                                       monkeypatch):  # fmt: skip
    """Memory holds one chunk of voices, whatever the number of files: E never sees more than a
    chunk, and each chunk's faces are written before the next is read."""
    monkeypatch.setattr(generate, "CHUNK_VOICES", 8)
    monkeypatch.setattr(generate, "SHEET_MAX", 12)
    seen = []
    real = generate.embed_voices
    monkeypatch.setattr(generate, "embed_voices", lambda c, e, v, **k: seen.append(len(v))
                        or real(c, e, v, **k))  # fmt: skip
    clips = tmp_path / "clips"
    clips.mkdir()
    paths = []
    for i in range(30):
        paths.append(clips / f"c{i:03d}.wav")
        os.link(clip, paths[-1])
    out = tmp_path / "faces"
    assert run_generate(model_file, out, *paths) == 0
    err = capsys.readouterr().err
    assert max(seen) <= 8 and sum(seen) == 30
    assert [x for x in err.splitlines() if "voices" in x][-1] == "v2f generate: 30/30 voices"
    assert "v2f generate: 8/30 voices" in err
    report = json.loads((out / "generate.json").read_text())
    assert [item["png"] for item in report["items"]] == [f"c{i:03d}.png" for i in range(30)]
    assert len(list(out.glob("c[0-9]*.png"))) == 30
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet.shape[0] < 3 * 160  # the first 12 faces: two rows of eight at most


@pytest.mark.slow
def test_a_thousand_clips_in_bounded_memory(model_file, clip, tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(1000):
        os.link(clip, clips / f"c{i:04d}.wav")
    out = tmp_path / "faces"
    code = (
        "import sys; from v2f_jax import cli; rc = cli.main(sys.argv[1:]); "
        f"{hostile.PRINT_PEAK_RSS_KB}; sys.exit(rc)"
    )
    argv = ["generate", "--model", str(model_file), "--out", str(out), "--audio",
            *sorted(map(str, clips.iterdir()))]  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True,
                            text=True, timeout=1200)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "v2f generate: 64/1000 voices" in result.stderr
    assert "v2f generate: 1000/1000 voices" in result.stderr
    max_rss_kb = hostile.peak_rss_kb(result.stderr)
    assert max_rss_kb < 3_000_000, max_rss_kb
    assert len(list(out.glob("c[0-9]*.png"))) == 1000


# --- export: a model file that another command is reading ------------------------------------


def test_export_over_a_model_being_read_replaces_it_atomically(model_file, other_model_file,
                                                               tmp_path):  # fmt: skip
    target = tmp_path / "model.safetensors"
    shutil.copyfile(model_file, target)
    original = target.read_bytes()
    reader = open(target, "rb")  # another command, mid-read
    head = reader.read(1000)
    stop, failures, loads = threading.Event(), [], [0]

    def keep_loading():
        while not stop.is_set():
            try:
                model_files.load_model(target)
                loads[0] += 1
            except Exception as err:  # a half-written file would land here
                failures.append(repr(err))

    thread = threading.Thread(target=keep_loading)
    thread.start()
    try:
        for source in (other_model_file, model_file, other_model_file):
            assert cli.main(["export", "--model", str(source), "--out", str(target)]) == 0
    finally:
        stop.set()
        thread.join()
    assert not failures and loads[0] > 0, failures[:3]
    assert head + reader.read() == original  # the reader still reads the old file, whole
    reader.close()
    assert same_tensors(target, other_model_file)
    assert not hostile.leftovers(tmp_path)


def test_a_temporary_left_by_a_killed_export_is_cleared_by_the_next(model_file, tmp_path):
    target = tmp_path / "model.safetensors"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".model.safetensors.tmp{dead.pid}"
    stale.write_bytes(b"half a model")
    assert cli.main(["export", "--model", str(model_file), "--out", str(target)]) == 0
    assert not stale.exists() and not hostile.leftovers(tmp_path)
    assert same_tensors(target, model_file)


def test_export_onto_a_directory_is_named(model_file, tmp_path, capsys):
    target = tmp_path / "model.safetensors"
    target.mkdir()
    (target / "keep").write_text("mine")
    assert cli.main(["export", "--model", str(model_file), "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {target}: " in err and "Traceback" not in err, err
    assert (target / "keep").read_text() == "mine" and not hostile.leftovers(tmp_path)


@pytest.mark.slow
def test_kill_9_during_export_leaves_the_old_file_or_the_new_one(model_file, other_model_file,
                                                                 tmp_path):  # fmt: skip
    target = tmp_path / "model.safetensors"
    shutil.copyfile(model_file, target)
    cmd = [sys.executable, "-m", "v2f_jax.cli", "export", "--model", str(other_model_file),
           "--out", str(target)]  # fmt: skip
    for delay in (0.5, 1.5, 2.5, 3.5, 5.0):
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Never half a file: the old model or the new one, whole.
        assert same_tensors(target, model_file) or same_tensors(target, other_model_file), delay
        model_files.load_model(target)
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert same_tensors(target, other_model_file)
    assert not hostile.leftovers(tmp_path)


# --- a full disk ------------------------------------------------------------------------------


def test_a_full_disk_in_export_is_named_and_the_old_file_kept(model_file, other_model_file,
                                                              tmp_path, capsys):  # fmt: skip
    target = tmp_path / "model.safetensors"
    shutil.copyfile(model_file, target)
    with hostile.file_size_limit(100_000):
        rc = cli.main(["export", "--model", str(other_model_file), "--out", str(target)])
    err = capsys.readouterr().err
    assert rc == 2 and f"v2f export: error: cannot write {target}: File too large" in err, err
    assert target.read_bytes() == model_file.read_bytes()
    assert not hostile.leftovers(tmp_path)


def test_a_full_disk_in_generate_is_named_and_nothing_half_written(model_file, clip, tmp_path,
                                                                   capsys):  # fmt: skip
    free = tmp_path / "unlimited"
    assert run_generate(model_file, free, clip) == 0
    face_bytes = (free / "voice.png").stat().st_size
    sheet_bytes = (free / "contact_sheet.png").stat().st_size
    assert face_bytes < sheet_bytes
    out = tmp_path / "faces"
    # A face's PNG fits, the contact sheet does not.
    with hostile.file_size_limit((face_bytes + sheet_bytes) // 2):
        rc = run_generate(model_file, out, clip)
    err = capsys.readouterr().err
    sheet = out / "contact_sheet.png"
    assert rc == 2 and f"v2f generate: error: cannot write {sheet}: File too large" in err, err
    assert "Traceback" not in err
    assert not hostile.leftovers(out) and not sheet.exists()
    assert cv2.imread(str(out / "voice.png")).shape == (64, 64, 3)  # whole
    report = json.loads((out / "generate.json").read_text())
    assert report["items"][0]["png"] == "voice.png"


def test_a_full_disk_in_features_is_named(clip, tmp_path, capsys):
    out = tmp_path / "feats"
    with hostile.file_size_limit(4_000):
        rc = cli.main(["features", "--audio", str(clip), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and f"cannot write {out / 'voice.npy'}: File too large" in err, err
    assert not hostile.leftovers(out) and not (out / "voice.npy").exists()


def test_files_written_together_are_all_new_or_all_old(tmp_path):
    old = {tmp_path / n: f"old {n}".encode() for n in ("a.json", "b.md", "c.png")}
    for path, data in old.items():
        path.write_bytes(data)
    new = {path: b"x" * (5_000 if path.name == "b.md" else 10) for path in old}
    with hostile.file_size_limit(1_000), pytest.raises(files.WriteError, match="b.md"):
        files.write_all(new)
    assert {p: p.read_bytes() for p in old} == old and not hostile.leftovers(tmp_path)


# --- eval: records that cannot be scored ------------------------------------------------------


def _records(root: pathlib.Path, names: list[str]) -> pathlib.Path:
    """Records of `names` (A-E test, others train), 2 voices and 2 faces each."""
    rng = np.random.default_rng(0)
    meta = ["VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"]
    for i, name in enumerate(names):
        vid = f"id{10001 + i}"
        meta.append(f"{vid}\t{name}\t{'mf'[i % 2]}\tUK\tdev")
        (root / "fbank" / vid / "v").mkdir(parents=True)
        (root / "faces" / name).mkdir(parents=True)
        for u in range(2):
            np.save(root / "fbank" / vid / "v" / f"{u}.npy", rng.standard_normal([120, 64]))
            img = rng.integers(0, 256, [72, 72, 3], dtype=np.uint8)
            cv2.imwrite(str(root / "faces" / name / f"{u}.png"), img)
    (root / "meta.csv").write_text("\n".join(meta) + "\n")
    prepare.prepare(root / "fbank", root / "faces", root / "meta.csv", root / "records",
                    workers=1, progress=False)  # fmt: skip
    return root / "records"


@pytest.mark.parametrize(
    "names,message",
    [
        (["Fay_F", "Gus_G", "Hal_H"], "no test split to evaluate on"),
        (
            ["Ann_A", "Fay_F", "Gus_G", "Hal_H"],
            "1 test identity with both voices and faces; evaluation needs at least 2",
        ),  # fmt: skip
    ],
)
def test_eval_refuses_records_it_cannot_score(model_file, tmp_path, capsys, names, message):
    records = _records(tmp_path, names)
    if "no test split" in message:  # records prepared without held-out people
        manifest = json.loads((records / "manifest.json").read_text())
        del manifest["splits"]["test"]
        (records / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "eval"
    rc = cli.main(["eval", "--model", str(model_file), "--records", str(records),
                   "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and f"{records / 'manifest.json'}: {message}" in err, err
    assert "nan" not in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.slow
def test_a_full_disk_in_eval_leaves_no_report_half_written(model_file, tmp_path):
    records = _records(tmp_path, ["Ann_A", "Bob_B", "Fay_F", "Gus_G", "Hal_H", "Ida_I"])
    out = tmp_path / "eval"
    argv = ["eval", "--model", model_file, "--records", records, "--out", out,
            "--max-train-voices", "4", "--config.eval.face_embedder_steps=2"]  # fmt: skip
    full = hostile.v2f(*argv, limit=30_000)
    assert full.returncode == 2, full.stderr[-3000:]
    assert f"cannot write {out}/" in full.stderr and "File too large" in full.stderr
    assert "Traceback" not in full.stderr
    assert not hostile.leftovers(out) and not hostile.leftovers(records)
    assert not (out / "eval.json").exists()
    again = hostile.v2f(*argv)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {"eval.json", "eval.md", "eval.png"} <= set(os.listdir(out))
