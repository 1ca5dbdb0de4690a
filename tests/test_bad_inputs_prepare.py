"""Hostile inputs, round 3: `v2f prepare` and `v2f features`. Metadata of every odd shape, audio
of every format and length, output folders that are not (only) ours, a worker killed mid-job and
a full disk: each is prepared, set aside as a reject naming the file and the reason, or refused
with exit 2 before anything is written; nothing half written is left, nothing of anyone else's
is touched, and a rerun resumes.
"""

import json
import multiprocessing
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

import hostile
import numpy as np
import pytest

from v2f_jax import cli
from v2f_jax.input_pipeline import audio, errors, prepare
from v2f_jax.input_pipeline import manifest as manifest_lib
from v2f_jax.synthetic import writer

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("corpus")
    writer.make_corpus(root, identities=8, utterances=2, faces=2, seed=0)
    return root


@pytest.fixture
def own(corpus, tmp_path) -> pathlib.Path:
    """A copy of the corpus to spoil."""
    shutil.copytree(corpus, tmp_path / "corpus", symlinks=True)
    return tmp_path / "corpus"


@pytest.fixture(scope="module")
def clean(corpus, tmp_path_factory) -> pathlib.Path:
    """The corpus prepared as it is (wen2019 front end)."""
    out = tmp_path_factory.mktemp("clean") / "records"
    assert cli.main(argv(corpus, out)) == 0
    return out


def argv(root: pathlib.Path, out: pathlib.Path, *extra, meta=None) -> list[str]:
    return ["prepare", "--voices", str(root / "voices"), "--faces", str(root / "faces"),
            "--meta", str(meta or root / "vox1_meta.csv"), "--out", str(out), "--workers", "1",
            "--no-progress", *extra]  # fmt: skip


def rejects(out: pathlib.Path) -> dict[str, str]:
    return {r["path"]: r["reason"] for r in map(json.loads, (out / "rejects.jsonl").open())}


def counts(out: pathlib.Path) -> dict:
    m = manifest_lib.Records.open(out).manifest
    return {
        s: (e["num_identities"], e["num_voices"], e["num_faces"]) for s, e in m["splits"].items()
    }


def meta_lines(root: pathlib.Path) -> list[str]:
    return (root / "vox1_meta.csv").read_text().splitlines()


def shards(out: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tfrecord"))}


def assert_refused(err: str, *words):
    assert "Traceback" not in err, err
    for word in words:
        assert word in err, err


# --- metadata -------------------------------------------------------------------------------


def test_a_bom_crlf_and_extra_columns_change_nothing(own, clean, tmp_path):
    lines = meta_lines(own)
    header, rows = lines[0] + "\tNotes", [x + "\tanything" for x in lines[1:]]
    raw = ("\r\n".join([header, *rows]) + "\r\n").encode("utf-8")
    (own / "vox1_meta.csv").write_bytes(b"\xef\xbb\xbf" + raw)
    out = tmp_path / "records"
    assert cli.main(argv(own, out)) == 0
    assert counts(out) == counts(clean)
    assert not [r for r in rejects(out).values() if "meta" in r]


def test_bad_meta_lines_are_rejects_naming_the_line(own, clean, tmp_path):
    meta = own / "vox1_meta.csv"
    lines = meta_lines(own)
    first_id, first_name = lines[1].split("\t")[:2]
    lines.append(lines[1].replace(first_name, "Someone_Else"))  # a duplicate VoxCeleb1 ID
    lines.append("id99998\tToo_Few")  # missing fields
    lines.append("id99997\tToo_Many\tm\tUK\tdev\textra")
    meta.write_text("\n".join(lines) + "\n")
    n = len(lines)
    out = tmp_path / "records"
    assert cli.main(argv(own, out)) == 0
    got = rejects(out)
    assert f"duplicate VoxCeleb1 ID {first_id} (line 2 is kept)" in got[f"{meta}:{n - 2}"]
    assert "2 tab-separated fields, the header has 5" in got[f"{meta}:{n - 1}"]
    assert "6 tab-separated fields" in got[f"{meta}:{n}"]
    assert counts(out) == counts(clean)


@pytest.mark.parametrize(
    "header,message",
    [
        ("VoxCeleb1 ID\tGender\tNationality\tSet", "meta header lacks ['VGGFace1 ID']"),
        ("VoxCeleb1 ID,VGGFace1 ID,Gender,Nationality,Set", "comma-separated"),
        ("", "empty meta file"),
    ],
)
def test_a_meta_file_without_its_columns_is_refused(own, tmp_path, capsys, header, message):
    meta = own / "vox1_meta.csv"
    meta.write_text(header + ("\n" + "\n".join(meta_lines(own)[1:]) if header else "") + "\n")
    out = tmp_path / "records"
    assert cli.main(argv(own, out)) == 2
    assert_refused(capsys.readouterr().err, f"{meta}: ", message)
    assert not out.exists()


def test_a_name_that_is_not_utf8_costs_its_line_only(own, clean, tmp_path):
    meta = own / "vox1_meta.csv"
    lines = meta_lines(own)
    vid, name = lines[2].split("\t")[:2]
    raw = "\n".join(lines).encode() + b"\n"
    raw = raw.replace(name.encode(), name.encode() + b"\xe9", 1)  # Latin-1, not UTF-8
    meta.write_bytes(raw)
    out = tmp_path / "records"
    assert cli.main(argv(own, out)) == 0
    got = rejects(out)
    assert "not valid UTF-8 (byte 0xe9" in got[f"{meta}:3"]
    voices = [p for p in got if f"/{vid}/" in p]
    assert voices and all("meta line 3 is not valid UTF-8" in got[p] for p in voices)
    kept = {s: c[0] for s, c in counts(out).items()}
    assert sum(kept.values()) == sum(c[0] for c in counts(clean).values()) - 1


@pytest.mark.parametrize("differ", ["nothing", "Gender", "Set"])
def test_two_ids_claiming_one_face_folder_are_refused_both(own, clean, tmp_path, differ):
    """One face folder is one speaker: which of the two it is, the meta file does not say."""
    meta = own / "vox1_meta.csv"
    lines = meta_lines(own)
    taken = lines[3].split("\t")  # two training people (A-E are held out for testing)
    other = lines[4].split("\t")
    other[1] = taken[1]
    if differ == "Gender":
        other[2] = "f" if taken[2] == "m" else "m"
    if differ == "Set":
        other[4] = "test" if taken[4] == "dev" else "dev"
    lines[4] = "\t".join(other)
    meta.write_text("\n".join(lines) + "\n")
    out = tmp_path / "records"
    assert cli.main(argv(own, out)) == 0
    got = rejects(out)
    for line in (4, 5):
        reason = got[f"{meta}:{line}"]
        assert f"face folder {taken[1]} is claimed by 2 VoxCeleb1 IDs" in reason
        assert f"{taken[0]} (line 4)" in reason and f"{other[0]} (line 5)" in reason
        if differ != "nothing":
            assert f"differ in {differ}" in reason
    for vid in (taken[0], other[0]):
        voices = [p for p in got if f"/{vid}/" in p]
        assert voices and all("is claimed by 2" in got[p] for p in voices)
    idents = manifest_lib.Records.open(out).manifest["splits"]
    assert all(taken[1] not in e["identities"] for e in idents.values())


def test_split_meta_without_a_set_column_is_named(own, tmp_path, capsys):
    meta = own / "vox1_meta.csv"
    lines = [x.rsplit("\t", 1)[0] for x in meta_lines(own)]
    meta.write_text("\n".join(lines) + "\n")
    out = tmp_path / "records"
    assert cli.main(argv(own, out, "--split", "meta")) == 2
    assert_refused(capsys.readouterr().err, f"{meta}: --split meta", "has none")
    assert not out.exists()


# --- audio ----------------------------------------------------------------------------------

FORMATS = {
    "8-bit": (16_000, "PCM_U8", 1),
    "24-bit": (16_000, "PCM_24", 1),
    "float32": (16_000, "FLOAT", 1),
    "stereo": (16_000, "PCM_16", 2),
    "8 kHz": (8_000, "PCM_16", 1),
    "96 kHz": (96_000, "PCM_16", 1),
}


def test_every_wav_format_is_read(tmp_path, capsys):
    paths = []
    for name, (rate, subtype, channels) in FORMATS.items():
        data = hostile.speech(2.0, rate)
        if channels == 2:
            data = np.stack([data, 0.5 * data], axis=1)
        paths.append(
            hostile.write_wav(tmp_path / f"{name.replace(' ', '')}.wav", data, rate, subtype)
        )
    out = tmp_path / "feats"
    assert cli.main(["features", "--audio", *map(str, paths), "--out", str(out)]) == 0, (
        capsys.readouterr().err
    )
    report = json.loads((out / "features.json").read_text())
    assert [f["seconds"] for f in report["files"]] == [2.0] * len(FORMATS)
    reference = np.load(out / "16-bit.npy") if (out / "16-bit.npy").exists() else None
    for path in paths:
        feats = np.load(out / f"{path.stem}.npy")
        assert feats.shape[1] == 64 and feats.shape[0] > 100 and np.all(np.isfinite(feats))
    del reference


def _spoilt_wavs(tmp_path: pathlib.Path) -> dict[pathlib.Path, str]:
    good = hostile.write_wav(tmp_path / "good.wav", hostile.speech(2.0), 16_000, "PCM_16")
    size = good.stat().st_size - 44
    silence = np.zeros(32_000)
    return {
        hostile.wav_header_with(good, tmp_path / "longer.wav", data_size=size * 3): (
            f"truncated WAV: its header promises {size * 3} bytes of audio, the file holds {size}"
        ),
        hostile.wav_header_with(good, tmp_path / "riff.wav", riff_size=10**9): "",  # harmless
        hostile.wav_header_with(good, tmp_path / "zero.wav", data_size=0): "empty audio",
        hostile.wav_header_with(good, tmp_path / "rate.wav", rate=0): "unreadable or not audio",
        hostile.write_wav(tmp_path / "empty.wav", np.zeros(0), 16_000, "PCM_16"): "empty audio",
        hostile.write_wav(tmp_path / "silent.wav", silence, 16_000, "PCM_16"): (
            "no speech after VAD"
        ),
        hostile.write_wav(tmp_path / "short.wav", hostile.speech(0.1), 16_000, "PCM_16"): (
            "after VAD"
        ),
        hostile.sparse_wav(tmp_path / "hours.wav", 3 * 3600): (
            "10800 s of audio, longer than the 600 s a file may hold"
        ),
    }


def test_lying_empty_silent_short_and_endless_wavs_are_named(tmp_path, capsys):
    spoilt = _spoilt_wavs(tmp_path)
    (tmp_path / "folder.wav").mkdir()
    spoilt[tmp_path / "folder.wav"] = "a directory, not a file"
    out = tmp_path / "feats"
    start = time.perf_counter()
    rc = cli.main(["features", "--audio", *map(str, spoilt), "--out", str(out)])
    assert time.perf_counter() - start < 60  # the 3-hour file is refused from its header
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    report = {f["path"]: f for f in json.loads((out / "features.json").read_text())["files"]}
    for path, reason in spoilt.items():
        if reason:
            assert reason in report[str(path)]["reason"], report[str(path)]
            assert f"{path}: " in err
        else:
            assert "reason" not in report[str(path)]
    assert not hostile.leftovers(out)


def test_audio_longer_than_the_limit_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    path = hostile.sparse_wav(tmp_path / "hours.wav", audio.MAX_SECONDS + 1)
    monkeypatch.setattr(audio, "_read_mono", lambda *a: pytest.fail("decoded"))
    with pytest.raises(errors.BadInputError, match="longer than the 600 s"):
        audio.load_audio(path)


def test_bad_audio_in_a_corpus_is_a_reject_and_the_rest_is_prepared(own, clean, tmp_path):
    speaker = sorted((own / "voices").glob("id*/*"))[0]
    spoilt = _spoilt_wavs(tmp_path)
    for path in spoilt:
        shutil.copyfile(path, speaker / path.name)
    (speaker / "folder.wav").mkdir()
    for name, (rate, subtype, channels) in FORMATS.items():
        data = hostile.speech(2.0, rate)
        if channels == 2:
            data = np.stack([data, data], axis=1)
        hostile.write_wav(speaker / f"{name.replace(' ', '')}.wav", data, rate, subtype)
    out = tmp_path / "records"
    assert cli.main(argv(own, out)) == 0
    got = rejects(out)
    for path, reason in spoilt.items():
        if reason:
            assert reason in got[str(speaker / path.name)]
    assert "a directory, not a file" in got[str(speaker / "folder.wav")]
    for name in FORMATS:
        assert str(speaker / f"{name.replace(' ', '')}.wav") not in got
    before = sum(c[1] for c in counts(clean).values())
    # riff.wav (a harmless lie) and the six formats are voices; every other file a reject
    assert sum(c[1] for c in counts(out).values()) == before + 1 + len(FORMATS)


@pytest.mark.slow
def test_ten_minutes_of_audio_are_read_in_bounded_memory(tmp_path):
    """The longest file allowed, 96 kHz stereo: decoded and resampled a block at a time, its
    features a chunk of frames at a time, in < 1.5 GB (0.8 GB on CPython 3.11, x86-64)."""
    rate = 96_000
    path = tmp_path / "long.wav"
    import soundfile

    with soundfile.SoundFile(str(path), "w", rate, 2, "PCM_16") as f:
        for k in range(int(audio.MAX_SECONDS // 20)):
            block = hostile.speech(20.0, rate, seed=k)
            f.write(np.stack([block, block], axis=1))
    code = (
        "from v2f_jax.input_pipeline import audio; "
        f"f = audio.voice_features({str(path)!r}); print(f.shape[0]); {hostile.PRINT_PEAK_RSS_KB}"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    frames, max_rss_kb = int(result.stdout), hostile.peak_rss_kb(result.stderr)
    assert frames > 50_000
    assert max_rss_kb < 1_500_000, max_rss_kb


# --- output folders -------------------------------------------------------------------------


@pytest.mark.parametrize("inside", ["voices", "faces", "voices/sub"])
def test_out_inside_the_inputs_is_refused(own, capsys, inside):
    out = own / inside / "records"
    before = hostile.snapshot(own)
    assert cli.main(argv(own, out)) == 2
    assert_refused(capsys.readouterr().err, f"{out}: is inside the input directory")
    assert hostile.snapshot(own) == before and not out.exists()


def test_other_files_in_out_are_left_alone(corpus, clean, tmp_path):
    out = tmp_path / "records"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    (out / "photo.png").write_bytes(b"\x89PNG not really")
    (out / "old").mkdir()
    (out / "old" / "voices-train-00000-of-00001.tfrecord").write_bytes(b"someone's")
    mine = {k: v for k, v in hostile.snapshot(out).items()}
    for _ in range(2):  # a first run and a rerun
        assert cli.main(argv(corpus, out)) == 0
        after = hostile.snapshot(out)
        assert {k: after[k] for k in mine} == mine
    assert shards(out) == shards(clean)


@pytest.mark.parametrize(
    "name,content",
    [
        ("manifest.json", b'{"name": "another tool", "version": 3}'),
        ("voices-train-00000-of-00002.tfrecord", b"another tool's shard"),
        ("faces-test-00000-of-00001.tfrecord.done", b"{}"),
        ("rejects.jsonl", b'{"file": "x"}\n'),
    ],
)
def test_a_folder_of_another_tool_is_refused_and_kept(corpus, tmp_path, capsys, name, content):
    out = tmp_path / "records"
    out.mkdir()
    (out / name).write_bytes(content)
    (out / "README").write_text("theirs\n")
    before = hostile.snapshot(out)
    assert cli.main(argv(corpus, out)) == 2
    assert_refused(capsys.readouterr().err, f"{out}: holds files that `v2f prepare` did not write",
                   name)  # fmt: skip
    assert hostile.snapshot(out) == before and sorted(os.listdir(out)) == sorted(before)


@pytest.mark.parametrize("damage", ["deleted", "flipped", "truncated"])
def test_a_damaged_shard_is_named_and_rebuilt(corpus, clean, tmp_path, capsys, damage):
    out = tmp_path / "records"
    shutil.copytree(clean, out)
    shard = sorted(out.glob("voices-train-*.tfrecord"))[0]
    data = bytearray(shard.read_bytes())
    if damage == "deleted":
        shard.unlink()
    elif damage == "flipped":  # same size, other bytes: only the digest tells
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    else:
        shard.write_bytes(bytes(data[: len(data) // 2]))
    assert cli.main(argv(corpus, out)) == 0
    captured = capsys.readouterr()
    assert f"v2f prepare: {shard}: " in captured.err and "rebuilt" in captured.err
    assert "shards: 1 written" in captured.out
    assert shards(out) == shards(clean)


def test_another_front_end_rebuilds_the_voices_and_is_never_mixed(corpus, clean, tmp_path):
    librosa = tmp_path / "librosa"
    assert cli.main(argv(corpus, librosa, "--frontend", "librosa")) == 0
    out = tmp_path / "records"
    shutil.copytree(clean, out)
    # A rerun with --frontend librosa that was cut short after its first voice shard: the old
    # manifest (wen2019) beside one librosa shard. Its readers refuse the records.
    first = sorted(librosa.glob("voices-train-*.tfrecord"))[0]
    shutil.copyfile(first, out / first.name)
    shutil.copyfile(f"{first}.done", out / f"{first.name}.done")
    records = manifest_lib.Records.open(out)
    with pytest.raises(manifest_lib.CorruptRecordsError, match="rewritten by a later"):
        records.shards("train", "voices")
    # ... and one cut short while writing it (no .done yet).
    (out / f"{first.name}.done").unlink()
    with pytest.raises(manifest_lib.CorruptRecordsError, match="being rewritten"):
        records.shards("train", "voices")
    # The rerun, to the end: every voice shard is librosa's, every face shard kept.
    assert cli.main(argv(corpus, out, "--frontend", "librosa")) == 0
    assert manifest_lib.Records.open(out).frontend["name"] == "librosa"
    assert shards(out) == shards(librosa)
    faces = {k: v for k, v in shards(clean).items() if k.startswith("faces")}
    assert {k: v for k, v in shards(out).items() if k.startswith("faces")} == faces


def test_a_finished_shard_of_changed_bytes_is_never_kept(corpus, clean, tmp_path):
    """read_done holds a shard to its .done digest, not just its size."""
    out = tmp_path / "records"
    shutil.copytree(clean, out)
    for shard in out.glob("*.tfrecord"):
        data = bytearray(shard.read_bytes())
        data[-1] ^= 0x01
        shard.write_bytes(bytes(data))
    result = prepare.prepare(corpus / "voices", corpus / "faces", corpus / "vox1_meta.csv", out,
                             workers=1, progress=False, require_test_split=True)  # fmt: skip
    assert result["shards_skipped"] == 0
    assert shards(out) == shards(clean)


# --- workers and resources --------------------------------------------------------------------


def test_a_worker_killed_mid_job_is_retried_then_named(tmp_path):
    """As the OOM killer would: a process killed once costs nothing; a file that kills every
    process that decodes it is a reject naming the signal. No hang either way."""
    tasks = [(i, {3: "once", 6: "always"}.get(i, ""), str(tmp_path / f"m{i}")) for i in range(12)]
    lines = []
    got = list(prepare._map_ordered(hostile.die_on, tasks, 2, log=lines.append))
    assert got[:6] == [("ok", 10 * i, 0.0, 0.0) for i in range(6)]
    assert got[6][0] == "reject" and "killed by SIGKILL: out of memory?" in got[6][1]
    assert got[7:] == [("ok", 10 * i, 0.0, 0.0) for i in range(7, 12)]
    assert lines and "a decoding process died" in lines[0]


def test_decoding_processes_leave_ctrl_c_to_prepare():
    """Ctrl-C in a terminal reaches every process of the group; prepare stops the job and
    kills its decoders, which must not each print a traceback or break the pool first."""
    ignored = ("ok", repr(signal.SIG_IGN), 0.0, 0.0)
    assert list(prepare._map_ordered(hostile.sigint_handler, [0, 1, 2, 3], 2)) == [ignored] * 4
    alone = prepare._run_alone(hostile.sigint_handler, 0, multiprocessing.get_context("forkserver"))
    assert alone == (ignored, None)


def _pool_threads():
    return [t for t in threading.enumerate() if type(t).__name__.endswith("ManagerThread")]


def test_an_abandoned_pool_leaves_no_thread_behind():
    """A pool given up on after losing a process has stopped when `_abandon` returns: a thread of
    it still joining its processes would import while prepare goes on, and TFDS's lazy imports
    (writing the metadata) swap `builtins.__import__` for every thread, so its import would
    fail with a traceback."""
    from concurrent import futures
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context("forkserver")
    for _ in range(3):
        pool = futures.ProcessPoolExecutor(2, mp_context=ctx)
        sleeping = [pool.submit(time.sleep, 60) for _ in range(2)]
        pids = prepare._pool_pids(pool)  # as `_map_ordered` keeps them: the pool forgets some
        os.kill(min(pids), signal.SIGKILL)  # as the OOM killer would
        futures.wait(sleeping, timeout=60, return_when=futures.FIRST_EXCEPTION)
        assert any(isinstance(f.exception(timeout=0), BrokenProcessPool) for f in sleeping)
        prepare._abandon(pool, pids)
        assert not _pool_threads()


def test_a_pool_abandoned_while_a_result_is_half_sent_stops_at_once(tmp_path):
    """Ctrl-C while a decoder sends a big result back: its process killed mid-message, the pool's
    thread would wait for the rest of it for ever (prepare's parent holds the pipe's write end
    too), and the interpreter, which joins that thread at exit, would never exit."""
    marker = tmp_path / "half-sent"
    results = prepare._map_ordered(hostile.half_a_result, [(0, ""), (1, str(marker))], 2)
    assert next(results) == ("ok", 0, 0.0, 0.0)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    start = time.monotonic()
    results.close()  # as the KeyboardInterrupt unwinding does
    assert time.monotonic() - start < 10
    assert not _pool_threads()


def _descendants(pid: int, depth: int = 99) -> list[int]:
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [(pid, 0)]
    while todo:
        parent, level = todo.pop()
        for child in children.get(parent, []) if level < depth else []:
            out.append(child)
            todo.append((child, level + 1))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["worker", "fork server"])
def test_prepare_survives_a_decoding_worker_killed_by_the_oom_killer(
    corpus, clean, tmp_path, victim
):
    out = tmp_path / "records"
    cmd = [sys.executable, "-m", "v2f_jax.cli", *argv(corpus, out)]
    cmd[cmd.index("--workers") + 1] = "2"
    log = tmp_path / "log"
    env = dict(os.environ, PYTHONFAULTHANDLER="1")  # a hang shows its stacks (SIGABRT below)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        # The fork server's children: the decoding workers (grandchildren of prepare).
        workers = [p for p in _descendants(proc.pid) if p not in _descendants(proc.pid, 1)]
        try:
            if workers and victim == "worker":
                killed = workers[-1]
            elif workers:
                killed = int(pathlib.Path(f"/proc/{workers[-1]}/stat").read_text().split()[3])
        except OSError:
            continue  # gone meanwhile
        if killed is not None:
            try:
                os.kill(killed, signal.SIGKILL)
            except ProcessLookupError:
                killed = None  # it ended meanwhile: the next one
        time.sleep(0.005)
    try:
        proc.wait(timeout=150)
    except subprocess.TimeoutExpired:
        for pid in [*_descendants(proc.pid), proc.pid]:
            os.kill(pid, signal.SIGABRT)
        proc.wait()
        pytest.fail(f"prepare hung:\n{log.read_text()[-6000:]}")
    err = log.read_text()
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    assert killed is not None, "no decoding process seen"
    if victim == "worker":
        assert "a decoding process died (out of memory?)" in err and "decoding them again" in err
    assert shards(out) == shards(clean)  # every file decoded, the same bytes


def test_a_full_disk_is_named_and_nothing_half_written_is_left(corpus, clean, tmp_path, capsys):
    out = tmp_path / "records"
    with hostile.file_size_limit(20_000):  # every shard is larger
        rc = cli.main(argv(corpus, out))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert_refused(err, f"v2f prepare: error: cannot write {out}/", "File too large")
    assert not hostile.leftovers(out)
    assert not (out / "manifest.json").exists()
    for shard in out.glob("*.tfrecord"):  # what is there is whole, and listed as done
        assert pathlib.Path(f"{shard}.done").exists()
    assert cli.main(argv(corpus, out)) == 0  # the rerun, with room
    assert shards(out) == shards(clean)
