"""input_pipeline.records: the schema round-trips, eagerly and inside tf.data, byte-stably."""

import numpy as np
import pytest
import tensorflow as tf

from v2f_jax.input_pipeline import records


def _mel(t=37, seed=0):
    return np.random.default_rng(seed).standard_normal([t, 64]).astype(np.float32) * 3


def _face(seed=0):
    return np.random.default_rng(seed).integers(0, 256, [64, 64, 3], dtype=np.uint8)


def _voice_record(mel):
    return records.voice_example(
        mel, label=7, gender=1, speaker="id10007", name="Ada_Lovelace", path="id10007/v/1.wav"
    )


def test_voice_round_trip_eager_equals_tf_data():
    mel = _mel()
    rec = _voice_record(mel)
    eager = records.parse_voice(tf.constant(rec))
    (mapped,) = list(tf.data.Dataset.from_tensors(rec).map(records.parse_voice))
    for out in (eager, mapped):
        assert out["mel"].dtype == tf.float16 and out["mel"].shape == (37, 64)
        np.testing.assert_array_equal(out["mel"].numpy(), mel.astype(np.float16))
        assert int(out["frames"]) == 37 and int(out["label"]) == 7 and int(out["gender"]) == 1
        assert out["speaker"].numpy() == b"id10007" and out["name"].numpy() == b"Ada_Lovelace"
        assert out["path"].numpy() == b"id10007/v/1.wav"
        assert out["label"].dtype == tf.int32
    # float16 keeps log-mels (|x| of a few units) to ~3 significant digits
    np.testing.assert_allclose(eager["mel"].numpy().astype(np.float32), mel, rtol=1e-3, atol=1e-3)


def test_face_round_trip_eager_equals_tf_data():
    face = _face()
    rec = records.face_example(face, label=3, gender=0, name="Bo", path="Bo/1.jpg")
    eager = records.parse_face(tf.constant(rec))
    (mapped,) = list(tf.data.Dataset.from_tensors(rec).map(records.parse_face))
    for out in (eager, mapped):
        assert out["image"].dtype == tf.uint8 and out["image"].shape == (64, 64, 3)
        np.testing.assert_array_equal(out["image"].numpy(), face)
        assert (int(out["label"]), int(out["gender"])) == (3, 0)
        assert out["name"].numpy() == b"Bo" and out["path"].numpy() == b"Bo/1.jpg"


def test_serialisation_is_byte_stable():
    mel = _mel(seed=1)
    assert _voice_record(mel) == _voice_record(mel.copy())
    assert _voice_record(mel) != _voice_record(_mel(seed=2))


@pytest.mark.parametrize(
    "mel, reason",
    [
        (np.full([5, 64], np.nan, np.float32), "NaN/Inf"),
        (np.full([5, 64], 1e5, np.float32), "NaN/Inf"),  # finite in float32, inf in float16
        (np.zeros([5, 63], np.float32), "must be"),
        (np.zeros([0, 64], np.float32), "must be"),
    ],
)
def test_bad_mels_never_reach_a_record(mel, reason):
    with pytest.raises(ValueError, match=reason):
        _voice_record(mel)


def test_bad_faces_never_reach_a_record():
    for image in (np.zeros([64, 64, 3], np.float32), np.zeros([32, 32, 3], np.uint8)):
        with pytest.raises(ValueError, match="uint8"):
            records.face_example(image, label=0, gender=0, name="a", path="p")


def test_mel_size_mismatch_fails_the_parse():
    ex = tf.train.Example()
    ex.ParseFromString(_voice_record(_mel(t=4)))
    ex.features.feature["frames"].int64_list.value[0] = 5
    with pytest.raises(tf.errors.InvalidArgumentError):
        records.parse_voice(tf.constant(ex.SerializeToString()))


def test_write_and_count(tmp_path):
    path = str(tmp_path / records.shard_name("voices", "train", 1, 4))
    assert path.endswith("voices-train-00001-of-00004.tfrecord")
    records.write_records(path, [_voice_record(_mel(seed=i)) for i in range(3)])
    assert records.count_records(path) == 3
    assert records.gender_code("m") == 0 and records.gender_code("F") == 1
    assert records.gender_code("") == records.UNKNOWN_GENDER
