"""input_pipeline.reader: batches, determinism, exact resume, host sharding, corrupt shards."""

import os
import shutil

import cv2
import jax
import numpy as np
import pytest
import tensorflow as tf

from v2f_jax import parallel
from v2f_jax.feed import device_inputs, resident_data
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


TRAIN = dict(batch_size=8, crop_lengths=(16, 48, 300), seed=0, shuffle_buffer=64)


def _train(records, **kw):
    return reader.make_train_iterator(records, **(TRAIN | kw))


_expand = jax.jit(device_inputs.to_model_inputs)


def _model(batch):
    """What the step sees: the wire batch expanded as on the device."""
    return jax.device_get(_expand(batch))


def test_batches_are_crops_of_real_utterances_and_faces(records):
    manifest = records.manifest
    k = manifest["splits"]["train"]["num_identities"]
    assert k == 7  # F..L
    utts = {}
    for voice, label, _ in reader.make_eval_voices(records, "train"):
        utts.setdefault(label, []).append(voice)
    faces, face_labels, _ = reader.load_faces(records, "train")
    seen_lengths = set()
    for wire in _take(_train(records), 12):
        # What crosses to the device: the stored dtypes.
        assert wire["voice"].dtype == np.float16 and wire["face"].dtype == np.uint8
        assert wire["face_flip"].dtype == bool and wire["voice_frames"].dtype == np.int32
        batch = _model(wire)
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
    assert not batch["face_flip"].any()
    for face in _model(batch)["face"]:
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


# The host pipeline that on-device preprocessing replaced: crops of a ragged batch of whole
# utterances, flipped and normalised faces, in float32 on the host.
def _host_crop_voices(mels, length, key):
    lengths = tf.cast(mels.row_lengths(), tf.int64)
    max_start = tf.maximum(lengths - tf.cast(length, tf.int64), 0)
    u = tf.random.stateless_uniform(tf.shape(lengths), seed=key, dtype=tf.float64)
    start = tf.minimum(
        tf.cast(tf.floor(u * tf.cast(max_start + 1, tf.float64)), tf.int64), max_start
    )
    idx = (start[:, None] + tf.range(tf.cast(length, tf.int64))[None, :]) % lengths[:, None]
    return tf.cast(tf.gather(mels.flat_values, mels.row_starts()[:, None] + idx), tf.float32)


def _host_flip_faces(images, key):
    flip = tf.random.stateless_uniform(tf.shape(images)[:1], seed=key) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)


def _host_normalize_faces(images):
    return (tf.cast(images, tf.float32) - 127.5) / 127.5


def _host_batch(arrays, index_batch, i, seed=0):
    """The old host pipeline's batch i from the same records (`index_batch` says which)."""
    key = lambda *parts: tf.constant([reader._seed(*parts), i], tf.int64)
    utts = [
        arrays["mel"][o : o + t]
        for o, t in zip(
            arrays["voice_offset"][index_batch["voice_index"]],
            arrays["voice_frames"][index_batch["voice_index"]],
        )
    ]
    length = int(index_batch["voice_len"][0])
    voice = _host_crop_voices(tf.ragged.constant(utts, ragged_rank=1), length, key(seed, 11, 0))
    voice = np.pad(voice.numpy(), [(0, 0), (0, 300 - length), (0, 0)])
    faces = tf.constant(arrays["face"][index_batch["face_index"]])
    face = _host_normalize_faces(_host_flip_faces(faces, key(seed, 12, 0))).numpy()
    return {"voice": voice, "face": face}


@pytest.fixture(scope="module")
def arrays(records):
    return reader.load_train_arrays(records)


@pytest.mark.parametrize("start", [0, 9])
def test_device_inputs_equal_the_host_pipeline_they_replace(records, arrays, start):
    """Streaming wire batches, expanded by the step's code, equal the float32 batches the host
    used to build from the same records: crops (short utterances repeated), zero padding,
    flips, normalisation, bit for bit."""
    stream = _train(records, start_batch=start)
    indices = reader.make_train_index_iterator(arrays, records, **TRAIN, start_batch=start)
    lengths = set()
    for i in range(start, start + 8):
        wire, index_batch = next(stream), next(indices)
        want = _host_batch(arrays, index_batch, i)
        got = _model(wire)
        np.testing.assert_array_equal(got["voice"], want["voice"])
        np.testing.assert_array_equal(got["face"], want["face"])
        np.testing.assert_array_equal(wire["voice_id"], index_batch["voice_id"])
        np.testing.assert_array_equal(wire["face_id"], index_batch["face_id"])
        lengths.add(int(wire["voice_len"][0]))
        assert (wire["voice_frames"] <= wire["voice_len"]).all()
    assert len(lengths) >= 2


def test_device_resident_batches_equal_the_stream(records, arrays):
    """`data.on_device`: the split in (four fake) devices' memory, gathered there from indices,
    gives the streaming reader's wire batches exactly, one at a time and stacked."""
    dp = parallel.DataParallel(lambda axis: lambda s, b: (s, {}), "jit")
    resident = resident_data.ResidentData(arrays, dp, rows=300)
    stream = _train(records, start_batch=5)
    indices = reader.make_train_index_iterator(arrays, records, **TRAIN, start_batch=5)
    for k in (1, 1, 3):
        want = [next(stream) for _ in range(k)]
        got = jax.device_get(resident([next(indices) for _ in range(k)]))
        assert got.keys() == want[0].keys()
        for key in want[0]:
            expected = np.stack([w[key] for w in want]) if k > 1 else want[0][key]
            np.testing.assert_array_equal(got[key], expected, err_msg=key)
    assert indices.state() == {"next_batch": 10}


@pytest.mark.parametrize("process_index, process_count", [(0, 1), (1, 2)])
def test_host_memory_batches_equal_the_stream(records, process_index, process_count):
    """`data.in_host_memory`: each host's shards in its memory, batches gathered there from
    indices, equal that host's streaming batches exactly (values and dtypes), from a resume
    point; and a host's arrays are its own shards only."""
    host = dict(process_index=process_index, process_count=process_count)
    arrays = reader.load_train_arrays(records, **host)
    voice_shards = records.shards("train", "voices", **host)
    assert len(arrays["voice_frames"]) == sum(e["records"] for e in voice_shards)
    stream = _train(records, start_batch=5, **host)
    indices = reader.make_train_index_iterator(arrays, records, **TRAIN, start_batch=5, **host)
    for _ in range(6):
        want, got = next(stream), resident_data.gather_on_host(arrays, next(indices), rows=300)
        assert got.keys() == want.keys()
        for key in want:
            assert got[key].dtype == want[key].dtype, key
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    other = reader.load_train_arrays(records)  # every shard: not this host's indices
    if process_count > 1:
        with pytest.raises(ValueError, match="not load_train_arrays of this split and host"):
            reader.make_train_index_iterator(other, records, **TRAIN, **host)


def test_the_tf_data_service_gives_the_same_batches(records):
    """`data.service_address`: two loopback workers parse the batches; the trainer gets the
    local stream's batches in its order, from a resume point too."""
    service = tf.data.experimental.service
    dispatcher = service.DispatchServer(
        service.DispatcherConfig(worker_addresses=["127.0.0.1:%port%"] * 2)
    )
    address = f"grpc://127.0.0.1:{dispatcher.target.rsplit(':', 1)[1]}"
    workers = [
        service.WorkerServer(
            service.WorkerConfig(
                dispatcher_address=address.split("://")[1],
                worker_address="127.0.0.1:%port%",
                heartbeat_interval_ms=100,
            )
        )
        for _ in range(2)
    ]
    try:
        want = _take(_train(records, start_batch=4), 6)
        got = _take(_train(records, start_batch=4, service_address=address), 6)
        for x, y in zip(want, got):
            assert x.keys() == y.keys()
            for key in x:
                np.testing.assert_array_equal(x[key], y[key], err_msg=key)
    finally:
        for w in workers:
            w.stop()
        dispatcher.stop()
