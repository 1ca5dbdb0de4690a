"""The record schema: the only module that knows how a voice or a face is stored.

`v2f prepare` writes with `voice_example` / `face_example`; the reader parses with `parse_voice` /
`parse_face`. Both sides import this module, nothing else knows the feature keys.

Voice record (`tf.train.Example`):
  mel      bytes  float16 little-endian `[frames, 64]`, row-major (log-mel, finite)
  frames   int64  T, the number of rows of `mel`
  label    int64  identity label within its split's label map (see manifest.json)
  gender   int64  `GENDER_CODES`: 0 male, 1 female, -1 unknown
  speaker  bytes  VoxCeleb id (`id10001`)
  name     bytes  identity name (VGGFace name, `A.J._Buckley`)
  path     bytes  source file relative to the voices directory

Face record:
  image    bytes  raw uint8 `[64, 64, 3]` RGB, row-major
  label, gender, name, path  as for voices (path relative to the faces directory)

Faces are raw bytes, not PNG: 12 KiB each at 64x64, nothing to decode on the training host's CPU,
and the bytes do not depend on the zlib/libpng version, so shards stay byte-identical across
machines.
"""

from __future__ import annotations

import itertools
import os
import threading

import numpy as np
import tensorflow as tf

from v2f_jax import files
from v2f_jax.input_pipeline.constants import GENDER_CODES, IMAGE_SIZE, N_MELS, UNKNOWN_GENDER

# This schema's version is `manifest.SCHEMA_VERSION`: prepare stamps it, readers check it there.

_VOICE_FEATURES = {
    "mel": tf.io.FixedLenFeature([], tf.string),
    "frames": tf.io.FixedLenFeature([], tf.int64),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "gender": tf.io.FixedLenFeature([], tf.int64),
    "speaker": tf.io.FixedLenFeature([], tf.string),
    "name": tf.io.FixedLenFeature([], tf.string),
    "path": tf.io.FixedLenFeature([], tf.string),
}
_FACE_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "gender": tf.io.FixedLenFeature([], tf.int64),
    "name": tf.io.FixedLenFeature([], tf.string),
    "path": tf.io.FixedLenFeature([], tf.string),
}


def gender_code(gender: str) -> int:
    """`"m"` -> 0, `"f"` -> 1, anything else -> -1."""
    return GENDER_CODES.get(gender.strip().lower()[:1], UNKNOWN_GENDER)


def _bytes(value: bytes | str) -> tf.train.Feature:
    if isinstance(value, str):
        value = value.encode("utf-8")
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _serialize(features: dict[str, tf.train.Feature]) -> bytes:
    example = tf.train.Example(features=tf.train.Features(feature=features))
    # `feature` is a proto map: only deterministic serialisation fixes its order on disk.
    return example.SerializeToString(deterministic=True)


def mel_float16(mel: np.ndarray) -> np.ndarray:
    """The stored form of a log-mel: float16 `[T, 64]`; raises ValueError if it is not finite.

    Checked after the cast: a finite float32 above 65504 becomes inf in float16.
    """
    mel = np.asarray(mel)
    if mel.ndim != 2 or mel.shape[1] != N_MELS or mel.shape[0] == 0:
        raise ValueError(f"log-mel must be [T>0, {N_MELS}], got {list(mel.shape)}")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is what the check finds
        half = mel.astype("<f2")
    if not np.all(np.isfinite(half)):
        raise ValueError("log-mel has NaN/Inf values (after the float16 cast)")
    return half


def voice_example(
    mel: np.ndarray, *, label: int, gender: int, speaker: str, name: str, path: str
) -> bytes:
    """Serialises one utterance.

    Args:
      mel: `[T, 64]` log-mel, any float dtype; stored as float16.
      label: identity label within the split.
      gender: a `GENDER_CODES` value or -1.
      speaker: VoxCeleb id.
      name: identity name.
      path: source file relative to the voices directory.

    Returns:
      The serialised `tf.train.Example`.

    Raises:
      ValueError: wrong shape, or not finite as float16.
    """
    half = mel_float16(mel)
    return _serialize(
        {
            "mel": _bytes(np.ascontiguousarray(half).tobytes()),
            "frames": _int(half.shape[0]),
            "label": _int(label),
            "gender": _int(gender),
            "speaker": _bytes(speaker),
            "name": _bytes(name),
            "path": _bytes(path),
        }
    )


def face_example(image: np.ndarray, *, label: int, gender: int, name: str, path: str) -> bytes:
    """Serialises one face: `image` uint8 `[64, 64, 3]` RGB. Raises ValueError on another shape."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(
            f"face must be uint8 [{IMAGE_SIZE}, {IMAGE_SIZE}, 3], got {image.dtype} "
            f"{list(image.shape)}"
        )
    return _serialize(
        {
            "image": _bytes(np.ascontiguousarray(image).tobytes()),
            "label": _int(label),
            "gender": _int(gender),
            "name": _bytes(name),
            "path": _bytes(path),
        }
    )


def parse_voice(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses one voice record (eagerly or inside `tf.data.Dataset.map`).

    Returns:
      `mel` float16 `[T, 64]`, `frames`/`label`/`gender` int32 scalars, `speaker`/`name`/`path`
      string scalars.
    """
    ex = tf.io.parse_single_example(serialized, _VOICE_FEATURES)
    frames = tf.cast(ex["frames"], tf.int32)
    mel = tf.io.decode_raw(ex["mel"], tf.float16, little_endian=True)
    with tf.control_dependencies(
        [tf.debugging.assert_equal(tf.size(mel), frames * N_MELS, message="mel size != frames*64")]
    ):
        mel = tf.reshape(mel, [frames, N_MELS])
    return {
        "mel": mel,
        "frames": frames,
        "label": tf.cast(ex["label"], tf.int32),
        "gender": tf.cast(ex["gender"], tf.int32),
        "speaker": ex["speaker"],
        "name": ex["name"],
        "path": ex["path"],
    }


def parse_face(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses one face record: `image` uint8 `[64, 64, 3]`, `label`/`gender` int32, strings."""
    ex = tf.io.parse_single_example(serialized, _FACE_FEATURES)
    image = tf.io.decode_raw(ex["image"], tf.uint8)
    image = tf.reshape(image, [IMAGE_SIZE, IMAGE_SIZE, 3])
    return {
        "image": image,
        "label": tf.cast(ex["label"], tf.int32),
        "gender": tf.cast(ex["gender"], tf.int32),
        "name": ex["name"],
        "path": ex["path"],
    }


# Training reads only what a step uses, a batch at a time (`tf.io.parse_example`).
_VOICE_TRAIN_FEATURES = {k: _VOICE_FEATURES[k] for k in ("mel", "frames", "label")}
_FACE_TRAIN_FEATURES = {k: _FACE_FEATURES[k] for k in ("image", "label")}
MEL_ROW_BYTES = N_MELS * 2  # one float16 frame
FACE_BYTES = IMAGE_SIZE * IMAGE_SIZE * 3


def parse_voice_batch(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses a batch of voice records, leaving the log-mels as bytes (a crop is then a slice).

    Args:
      serialized: string `[B]`.

    Returns:
      `mel` string `[B]` (float16 `[T_i, 64]` each, see `mel_rows`), `frames` int64 `[B]` (T_i),
      `label` int32 `[B]`. Fails (InvalidArgumentError) where a mel's size is not frames x 64.
    """
    ex = tf.io.parse_example(serialized, _VOICE_TRAIN_FEATURES)
    check = tf.debugging.assert_equal(
        tf.cast(tf.strings.length(ex["mel"]), tf.int64),
        ex["frames"] * MEL_ROW_BYTES,
        message="mel size != frames*64",
    )
    with tf.control_dependencies([check]):
        return {
            "mel": tf.identity(ex["mel"]),
            "frames": ex["frames"],
            "label": tf.cast(ex["label"], tf.int32),
        }


def mel_rows(mel: tf.Tensor, start: tf.Tensor, count: tf.Tensor, rows: int) -> tf.Tensor:
    """Frames `start_i .. start_i + count_i - 1` of each stored log-mel, zero rows after them.

    Args:
      mel: string `[B]`, `parse_voice_batch`'s `mel`.
      start, count: int64 `[B]`; frames past an utterance's end are not read (zeros instead).
      rows: static row count of the result (>= every count).

    Returns:
      float16 `[B, rows, 64]`. Only the requested bytes are decoded: a byte slice, then one copy.
    """
    piece = tf.strings.substr(mel, start * MEL_ROW_BYTES, count * MEL_ROW_BYTES)
    # Padded decoding has no float16 kernel: decode the bits as uint16, then reinterpret them.
    bits = tf.io.decode_raw(piece, tf.uint16, little_endian=True, fixed_length=rows * MEL_ROW_BYTES)
    return tf.reshape(tf.bitcast(bits, tf.float16), [-1, rows, N_MELS])


def parse_face_batch(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses a batch of face records: `image` uint8 `[B, 64, 64, 3]`, `label` int32 `[B]`."""
    ex = tf.io.parse_example(serialized, _FACE_TRAIN_FEATURES)
    check = tf.debugging.assert_equal(
        tf.strings.length(ex["image"]), FACE_BYTES, message="image size != 64*64*3"
    )
    with tf.control_dependencies([check]):
        image = tf.io.decode_raw(ex["image"], tf.uint8)
    return {
        "image": tf.reshape(image, [-1, IMAGE_SIZE, IMAGE_SIZE, 3]),
        "label": tf.cast(ex["label"], tf.int32),
    }


def shard_name(kind: str, split: str, index: int, count: int) -> str:
    """`voices-train-00000-of-00004.tfrecord`."""
    return f"{kind}-{split}-{index:05d}-of-{count:05d}.tfrecord"


_ram_files = itertools.count()


def tfrecord_bytes(serialized: list[bytes]) -> bytes:
    """The bytes of an uncompressed TFRecord file holding `serialized`, in order.

    TensorFlow frames them (lengths and CRC32C checksums) in its in-memory file system; Python
    writes the bytes, so a failed write is an OSError with its errno (TensorFlow's own file
    writer reports a full disk as an OutOfRangeError without a reason).
    """
    path = f"ram://v2f-records/{os.getpid()}-{threading.get_ident()}-{next(_ram_files)}"
    try:
        with tf.io.TFRecordWriter(path) as writer:
            for record in serialized:
                writer.write(record)
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    finally:
        try:
            tf.io.gfile.remove(path)
        except tf.errors.OpError:
            pass


def write_records(path: str, serialized: list[bytes]) -> None:
    """Writes serialised records to one uncompressed TFRecord file, whole or not at all.

    Raises:
      files.WriteError: naming `path` (a full disk, ...).
    """
    files.write_bytes(path, tfrecord_bytes(serialized))


def count_records(path: str) -> int:
    """Reads a whole TFRecord file; raises `tf.errors.DataLossError` if corrupt or truncated."""
    return int(sum(1 for _ in tf.data.TFRecordDataset(path)))
