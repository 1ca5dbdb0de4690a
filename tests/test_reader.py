"""input_pipeline.reader: batches, determinism, exact resume, host sharding, corrupt shards."""

import os
import shutil

import cv2
import numpy as np
import pytest
import tensorflow as tf

from v2f_jax.input_pipeline import manifest as manifest_lib
from v2f_jax.input_pipeline import prepare, reader

NAMES = ["Ann_A", "Bea_B", "Cy_C", "Fay_F", "Gus_G", "Hal_H", "Ida_I", "Jo_J", "Kim_K", "Lu_L"]
VOICES, FACES = 5, 4


def _npy_corpus(root):
    """Reference-layout `.npy` log-mels (no audio decoding: fast), PNG faces, a meta file."""
    rng = np.random.default_rng(0)
    meta = ["VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"]
    for i, name in enumerate(NAMES):
        vid = f"id{10001 + i}"
        meta.append(f"{vid}\t{name}\t{'mf'[i % 2]}\tUK\tdev")
        for u in range(VOICES):
            d = root / "fbank" / vid / f"v{u % 2}"
            d.mkdir(parents=True, exist_ok=True)
            t = int(rng.integers(20, 200))
            np.save(d / f"{u:05d}.npy", rng.standard_normal([t, 64]).astype(np.float32))
        (root / "faces" / name).mkdir(parents=True)
        for k in range(FACES):
            img = rng.integers(0, 256, [72, 72, 3], dtype=np.uint8)
            cv2.imwrite(str(root / "faces" / name / f"{k}.png"), img)
    (root / "meta.csv").write_text("\n".join(meta) + "\n")


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("reader")
    _npy_corpus(root)
    out = root / "records"
    inputs = (root / "fbank", root / "faces", root / "meta.csv", out)
    prepare.prepare(*inputs, workers=1, shards_per_split=4, progress=False)
    return str(out)


@pytest.fixture(scope="module")
def records(records_dir):
    return manifest_lib.Records.open(records_dir)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _train(records, **kw):
    args = dict(batch_size=8, crop_lengths=(16, 48, 300), seed=0, shuffle_buffer=64)
    return reader.make_train_iterator(records, **(args | kw))


def test_batches_are_crops_of_real_utterances_and_faces(records):
    manifest = records.manifest
    k = manifest["splits"]["train"]["num_identities"]
    assert k == 7  # F..L
    utts = {}
    for voice, label, _ in reader.make_eval_voices(records, "train"):
        utts.setdefault(label, []).append(voice)
    faces, face_labels, _ = reader.load_faces(records, "train")
    seen_lengths = set()
    for batch in _take(_train(records), 12):
        assert batch["voice"].dtype == np.float32 and batch["face"].dtype == np.float32
        assert batch["voice_id"].dtype == np.int32 and batch["face_id"].dtype == np.int32
        # One shape for every batch: the longest crop, with the crop's length in voice_len.
        assert batch["voice"].shape == (8, 300, 64) and batch["voice_len"].shape == (8,)
        length = int(batch["voice_len"][0])
        assert length in (16, 48, 300) and (batch["voice_len"] == length).all()
        seen_lengths.add(length)
        assert not batch["voice"][:, length:].any()  # zeros past the crop
        assert batch["face"].shape == (8, 64, 64, 3)
        assert -1.0 <= batch["face"].min() and batch["face"].max() <= 1.0
        for row, label in zip(batch["voice"][:, :length], batch["voice_id"]):
            assert 0 <= label < k
            assert any(_is_cyclic_window(row, u) for u in utts[label]), label
        for face, label in zip(batch["face"], batch["face_id"]):
            raw = np.round(face * 127.5 + 127.5).astype(np.uint8)
            mine = faces[face_labels == label]
            assert any(np.array_equal(raw, f) or np.array_equal(raw, f[:, ::-1]) for f in mine)
    assert len(seen_lengths) >= 2


def _is_cyclic_window(row, utt):
    t = len(utt)
    for s in range(t):
        if np.array_equal(row, utt[(s + np.arange(len(row))) % t]):
            # long utterances are cropped, never wrapped; short ones start at 0
            return s + len(row) <= t or s == 0
    return False


def test_no_flip_gives_unflipped_faces(records):
    faces, labels, _ = reader.load_faces(records, "train")
    batch = next(_train(records, face_flip=False))
    for face in batch["face"]:
        raw = np.round(face * 127.5 + 127.5).astype(np.uint8)
        assert any(np.array_equal(raw, f) for f in faces)


def test_same_seed_same_batches_other_seed_other_batches(records):
    a, b = _take(_train(records), 6), _take(_train(records), 6)
    c = _take(_train(records, seed=1), 6)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert any(not np.array_equal(x["voice_id"], z["voice_id"]) for x, z in zip(a, c))


@pytest.mark.parametrize("start", [3, 10])  # inside the first epoch; several epochs on
def test_resume_is_exact(records, start):
    full = _take(_train(records), start + 4)
    resumed = _train(records, start_batch=start)
    assert resumed.state() == {"next_batch": start}
    for want, got in zip(full[start:], _take(resumed, 4)):
        for key in want:
            np.testing.assert_array_equal(want[key], got[key])
    assert resumed.state() == {"next_batch": start + 4}


def test_two_hosts_read_disjoint_files_covering_all(records):
    manifest = records.manifest
    for kind in ("voices", "faces"):
        every = {e["file"] for e in manifest["splits"]["train"][f"{kind}_shards"]}
        hosts = [
            {os.path.basename(e["file"]) for e in records.shards(*args)}
            for args in (("train", kind, 0, 2), ("train", kind, 1, 2))
        ]
        assert hosts[0] and hosts[1] and not hosts[0] & hosts[1]
        assert hosts[0] | hosts[1] == every
    h0 = _take(_train(records, process_index=0, process_count=2), 5)
    h1 = _take(_train(records, process_index=1, process_count=2), 5)
    for x, y in zip(h0, h1):
        assert x["voice"].shape == y["voice"].shape  # host shares of one global batch agree
        assert (x["voice_len"] == y["voice_len"]).all()
        assert x["voice"].shape[0] == 4 and x["face"].shape[0] == 4


def test_bad_arguments_are_clear(records, records_dir):
    with pytest.raises(ValueError, match="not divisible"):
        _train(records, batch_size=9, process_count=2)
    with pytest.raises(ValueError, match="shards-per-split"):
        _train(records, process_count=8)
    with pytest.raises(FileNotFoundError, match="no manifest"):
        manifest_lib.Records.open(os.path.dirname(records_dir))


def _copy(records_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(records_dir, dst)
    return dst


def test_corrupt_shard_is_named(records_dir, tmp_path):
    dst = _copy(records_dir, tmp_path)
    bad = dst / "voices-train-00002-of-00004.tfrecord"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    it = _train(manifest_lib.Records.open(dst))
    with pytest.raises(reader.CorruptRecordsError, match="voices-train-00002-of-00004") as err:
        _take(it, 3)
    assert "corrupt" in err.value.reason


def test_truncated_and_missing_shards_are_named(records_dir, tmp_path):
    dst = _copy(records_dir, tmp_path)
    bad = dst / "voices-test-00001-of-00004.tfrecord"
    bad.write_bytes(bad.read_bytes()[:-7])
    with pytest.raises(reader.CorruptRecordsError, match="voices-test-00001-of-00004.*truncated"):
        list(reader.make_eval_voices(manifest_lib.Records.open(dst), "test"))
    os.remove(dst / "faces-train-00000-of-00004.tfrecord")
    with pytest.raises(reader.CorruptRecordsError, match="faces-train-00000-of-00004.*missing"):
        _train(manifest_lib.Records.open(dst))


def test_eval_sets_match_the_manifest(records):
    manifest = records.manifest
    test = manifest["splits"]["test"]
    voices = list(reader.make_eval_voices(records, "test"))
    assert len(voices) == test["num_voices"] == 3 * VOICES
    faces, labels, genders = reader.load_faces(records, "test")
    assert faces.shape == (3 * FACES, 64, 64, 3) and faces.dtype == np.uint8
    for name, info in test["identities"].items():
        assert test["label_map"][name] == info["label"]
        assert np.sum(labels == info["label"]) == info["faces"] == FACES
        assert sum(v[1] == info["label"] for v in voices) == info["voices"] == VOICES
        want = {"m": 0, "f": 1}[info["gender"]]
        assert set(genders[labels == info["label"]]) == {want}
        assert {v[2] for v in voices if v[1] == info["label"]} == {want}
    assert all(v[0].dtype == np.float32 and v[0].shape[1] == 64 for v in voices)


def test_crop_and_flip_eager_equal_tf_data():
    rng = np.random.default_rng(0)
    mels = tf.ragged.constant([rng.standard_normal([t, 64]) for t in (5, 30, 12)], ragged_rank=1)
    mels = tf.cast(mels, tf.float16)
    key = tf.constant([3, 4], tf.int64)
    eager = reader.crop_voices(mels, tf.constant(10), key).numpy()
    (mapped,) = list(
        tf.data.Dataset.from_tensors(mels).map(lambda m: reader.crop_voices(m, 10, key))
    )
    np.testing.assert_array_equal(eager, mapped.numpy())
    assert eager.shape == (3, 10, 64)
    short = mels[0].numpy().astype(np.float32)
    np.testing.assert_array_equal(eager[0], short[np.arange(10) % 5])  # tiled from 0
    faces = tf.constant(rng.integers(0, 256, [6, 64, 64, 3]), tf.uint8)
    eager_f = reader.flip_faces(faces, key).numpy()
    (mapped_f,) = list(tf.data.Dataset.from_tensors(faces).map(lambda f: reader.flip_faces(f, key)))
    np.testing.assert_array_equal(eager_f, mapped_f.numpy())
    norm = reader.normalize_faces(tf.constant([0, 255], tf.uint8)).numpy()
    np.testing.assert_array_equal(norm, [-1.0, 1.0])
