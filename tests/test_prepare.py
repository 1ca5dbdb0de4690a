"""`v2f prepare`: a synthetic corpus to shards and back; determinism, resume, bad inputs."""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import soundfile
import tensorflow as tf

from v2f_jax import cli
from v2f_jax.input_pipeline import audio, reader, records
from v2f_jax.input_pipeline import manifest as manifest_lib
from v2f_jax.synthetic import writer

IDS, UTTS, FACES = 8, 3, 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return writer.make_corpus(root, identities=IDS, utterances=UTTS, faces=FACES, seed=0)


def _argv(corpus, out, *extra):
    return ["prepare", "--voices", corpus["voices_dir"], "--faces", corpus["faces_dir"],
            "--meta", corpus["meta"], "--out", str(out), "--no-progress", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("records")
    assert cli.main(_argv(corpus, out, "--workers", "1", "--shards-per-split", "2")) == 0
    return out


def _shard_digests(out):
    return {
        f: hashlib.sha256((out / f).read_bytes()).hexdigest()
        for f in sorted(os.listdir(out))
        if f.endswith(".tfrecord")
    }


def _meta_rows(corpus):
    lines = open(corpus["meta"]).read().splitlines()[1:]
    return {r[1]: r for r in (line.split("\t") for line in lines)}


def test_counts_labels_and_genders_match_the_manifest(corpus, prepared):
    manifest = manifest_lib.Records.open(prepared).manifest
    rows = _meta_rows(corpus)
    test_names = sorted(n for n in rows if n[0] in "ABCDE")
    train_names = sorted(n for n in rows if n[0] not in "ABCDE")
    assert test_names and train_names
    for split, names in (("train", train_names), ("test", test_names)):
        entry = manifest["splits"][split]
        assert entry["label_map"] == {n: i for i, n in enumerate(names)}  # sorted names -> 0..K-1
        assert entry["num_voices"] == len(names) * UTTS and entry["num_faces"] == len(names) * FACES
        files = [s["file"] for k in ("voices", "faces") for s in entry[f"{k}_shards"]]
        assert len(files) == 4 and all((prepared / f).exists() for f in files)
        voices = list(reader.make_eval_voices(manifest_lib.Records.open(prepared), split))
        faces, labels, genders = reader.load_faces(manifest_lib.Records.open(prepared), split)
        assert len(voices) == entry["num_voices"] and len(faces) == entry["num_faces"]
        for name, info in entry["identities"].items():
            assert info["gender"] == rows[name][2] and info["voxceleb_ids"] == [rows[name][0]]
            assert info["voices"] == UTTS and info["faces"] == FACES
            code = records.gender_code(rows[name][2])
            mine = [v for v in voices if v[1] == info["label"]]
            assert len(mine) == UTTS and {v[2] for v in mine} == {code}
            assert np.sum(labels == info["label"]) == FACES
            assert set(genders[labels == info["label"]]) == {code}
        assert all(v[0].ndim == 2 and v[0].shape[1] == 64 and v[0].shape[0] > 100 for v in voices)
    assert manifest["frontend"] == audio.frontend_params("wen2019")
    assert manifest["face_mode"] == "aligned" and manifest["rejects"]["total"] == 0
    assert manifest["tool_version"] and (prepared / "rejects.jsonl").read_text() == ""


def test_rerun_skips_finished_shards_and_redoes_broken_ones(corpus, prepared, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(prepared, out)
    before = _shard_digests(out)
    mtimes = {f: os.stat(out / f).st_mtime_ns for f in before}
    assert cli.main(_argv(corpus, out, "--workers", "1", "--shards-per-split", "2")) == 0
    assert "0 written, 8 already done" in capsys.readouterr().out
    assert _shard_digests(out) == before
    assert {f: os.stat(out / f).st_mtime_ns for f in before} == mtimes
    # A half-written shard (size differs from its .done) and a shard without .done are redone.
    half = out / "voices-train-00001-of-00002.tfrecord"
    half.write_bytes(half.read_bytes()[:100])
    os.remove(out / "faces-test-00000-of-00002.tfrecord.done")
    assert cli.main(_argv(corpus, out, "--workers", "1", "--shards-per-split", "2")) == 0
    assert "2 written, 6 already done" in capsys.readouterr().out
    assert _shard_digests(out) == before


def test_workers_do_not_change_a_byte(corpus, prepared, tmp_path):
    out = tmp_path / "w2"
    assert cli.main(_argv(corpus, out, "--workers", "2", "--shards-per-split", "2")) == 0
    assert _shard_digests(out) == _shard_digests(prepared)
    assert (out / "manifest.json").read_bytes() == (prepared / "manifest.json").read_bytes()


def test_meta_split_follows_the_set_column(corpus, tmp_path):
    rows = _meta_rows(corpus)
    moved = sorted(n for n in rows if n[0] not in "ABCDE")[0]
    lines = open(corpus["meta"]).read().splitlines()
    meta = tmp_path / "meta.csv"
    lines = [x.replace("\tdev", "\ttest") if x.split("\t")[1] == moved else x for x in lines]
    meta.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    argv = _argv(corpus, out, "--workers", "1", "--split", "meta")
    argv[argv.index("--meta") + 1] = str(meta)
    assert cli.main(argv) == 0
    manifest = manifest_lib.Records.open(out).manifest
    assert moved in manifest["splits"]["test"]["label_map"]
    assert moved not in manifest["splits"]["train"]["label_map"]
    assert manifest["split_rule"] == "meta"


def _speech(corpus):
    path = sorted(p for p in _walk(corpus["voices_dir"]) if p.endswith(".wav"))[0]
    samples, _ = soundfile.read(path, dtype="int16")
    return path, audio.vad(samples)


def _walk(root):
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]


@pytest.fixture
def bad_corpus(corpus, tmp_path):
    """The corpus plus one file of each kind of trouble: path -> (kind, reason pattern)."""
    root = tmp_path / "bad"
    shutil.copytree(corpus["out_dir"], root)
    voices, faces = root / "voices", root / "faces"
    good_id = sorted(os.listdir(voices))[0]
    good_name = sorted(os.listdir(faces))[0]
    bad_v = voices / good_id / "zzBadVideo0"
    bad_v.mkdir()
    wav, speech = _speech(corpus)
    bad = {}
    corrupt = bad_v / "corrupt.wav"
    corrupt.write_bytes(open(wav, "rb").read()[:30])  # the header cut short
    bad[corrupt] = ("voice", "unreadable or not audio")
    soundfile.write(bad_v / "empty.wav", np.zeros(0, np.int16), 16000)
    bad[bad_v / "empty.wav"] = ("voice", "empty audio")
    soundfile.write(bad_v / "silent.wav", np.zeros(2 * 16000, np.int16), 16000)
    bad[bad_v / "silent.wav"] = ("voice", "no speech")
    short = np.concatenate([np.zeros(8000, np.int16), speech[:4000], np.zeros(8000, np.int16)])
    soundfile.write(bad_v / "short.wav", short, 16000)
    bad[bad_v / "short.wav"] = ("voice", "too short")
    (bad_v / "notes.wav").write_text("this is not audio\n")
    bad[bad_v / "notes.wav"] = ("voice", "unreadable or not audio")
    np.save(bad_v / "shape.npy", np.zeros([10, 63], np.float32))
    bad[bad_v / "shape.npy"] = ("voice", "shape")
    nan = np.zeros([10, 64], np.float32)
    nan[3, 5] = np.nan
    np.save(bad_v / "nan.npy", nan)
    bad[bad_v / "nan.npy"] = ("voice", "non-finite")
    (faces / good_name / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 200 + b"IEND")
    bad[faces / good_name / "corrupt.png"] = ("face", "corrupt")
    (faces / good_name / "empty.jpg").write_bytes(b"")
    bad[faces / good_name / "empty.jpg"] = ("face", "empty")
    (voices / "id99999" / "vid").mkdir(parents=True)
    shutil.copy(wav, voices / "id99999" / "vid" / "00001.wav")
    bad[voices / "id99999" / "vid" / "00001.wav"] = ("meta", "id99999 not in the meta file")
    # A good .npy among the wavs: mixed layouts are fine.
    good_npy = bad_v / "good.npy"
    np.save(good_npy, np.ones([50, 64], np.float32))
    return root, {str(k): v for k, v in bad.items()}, str(good_npy)


def test_bad_inputs_are_rejected_with_reasons_and_good_files_kept(bad_corpus, tmp_path, capsys):
    root, bad, good_npy = bad_corpus
    argv = ["prepare", "--voices", str(root / "voices"), "--faces", str(root / "faces"),
            "--meta", str(root / "vox1_meta.csv"), "--out", str(tmp_path / "out"),
            "--workers", "1", "--no-progress", "--shards-per-split", "2"]  # fmt: skip
    assert cli.main(argv + ["--strict"]) == 1
    assert f"rejected: {len(bad)} " in capsys.readouterr().out
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").open()]
    got = {r["path"]: r for r in rejects}
    assert set(got) == set(bad)
    for path, (kind, reason) in bad.items():
        assert got[path]["kind"] == kind and reason in got[path]["reason"], got[path]
    # Every good file is in the shards, and nothing else.
    stored = set()
    manifest = manifest_lib.Records.open(tmp_path / "out").manifest
    for split in ("train", "test"):
        for kind, parse in (("voices", records.parse_voice), ("faces", records.parse_face)):
            for s in manifest["splits"][split][f"{kind}_shards"]:
                ds = tf.data.TFRecordDataset(str(tmp_path / "out" / s["file"])).map(parse)
                for rec in ds:
                    stored.add(os.path.join(str(root / kind), rec["path"].numpy().decode()))
                    if kind == "voices":
                        assert np.all(np.isfinite(rec["mel"].numpy()))
    inputs = {p for p in _walk(root / "voices") + _walk(root / "faces")}
    assert stored == inputs - set(bad) and good_npy in stored
    assert manifest["rejects"] == {"total": len(bad), "voice": 7, "face": 2, "meta": 1}
    assert manifest["voice_sources"] == ["audio", "fbank_npy"]
    # Without --strict the same data is a success; the finished shards are kept.
    assert cli.main(argv) == 0
    assert "0 written" in capsys.readouterr().out


def test_no_usable_identity_is_an_error(corpus, tmp_path, capsys):
    empty = tmp_path / "faces"
    empty.mkdir()
    argv = _argv(corpus, tmp_path / "out")
    argv[argv.index("--faces") + 1] = str(empty)
    assert cli.main(argv) == 2
    assert "no identity has both voices" in capsys.readouterr().err
