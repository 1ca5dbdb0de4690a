"""tf.data readers of the records `v2f prepare` writes: the training stream and evaluation sets.

Training (`make_train_iterator`): per host, the voice and face streams are built separately and
zipped, unpaired, as the reference samples them. Each stream is a chain of epochs; an epoch is
this host's files in a seeded order, interleaved, shuffled with a seeded buffer and cut to whole
batches. Per-batch randomness (the crop length, crop offsets, flips) is a stateless function of
(seed, batch index), so the stream is a pure function of (seed, batch index).

Exact resume: `make_train_iterator(..., start_batch=N)` yields batch N, N+1, ... exactly as an
uninterrupted iterator. Whole epochs before N are skipped arithmetically (counts come from the
manifest); inside the current epoch the raw records before N are read and dropped unparsed, so a
resume costs at most one epoch of this host's raw reads, whatever N. `it.state()` gives N. (A
`tf.train.Checkpoint` of the iterator would store the 10k-utterance shuffle buffer, ~1 GB.)

TensorFlow is kept off accelerators: JAX owns them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf

from v2f_jax.input_pipeline import manifest as manifest_lib
from v2f_jax.input_pipeline import records as records_lib

# Upper bound of the epoch counter; a stream never gets near it.
_MAX_EPOCHS = 1 << 40

CorruptRecordsError = manifest_lib.CorruptRecordsError


def _hide_accelerators() -> None:
    try:
        tf.config.set_visible_devices([], "GPU")
        tf.config.set_visible_devices([], "TPU")
    except (RuntimeError, ValueError):
        pass  # already initialised (hidden by an earlier call), or no such device type


def _diagnose(shards: Sequence[dict], err: Exception) -> Exception:
    """Finds the shard behind a tf.data read error (TF's message does not name the file)."""
    for e in shards:
        try:
            n = records_lib.count_records(e["file"])
        except tf.errors.OpError as read_err:
            return CorruptRecordsError(
                e["file"], f"corrupt or truncated TFRecord shard ({read_err.message.strip()})"
            )
        if n != e["records"]:
            return CorruptRecordsError(e["file"], f"{n} records, the manifest says {e['records']}")
    files = ", ".join(os.path.basename(e["file"]) for e in shards)
    return CorruptRecordsError(shards[0]["file"], f"reading [{files}] failed: {err}")


def _seed(*parts: int) -> int:
    """A 31-bit seed from integers (stable across runs and platforms)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] >> 1)


def _epochs_of_records(
    shards: Sequence[dict], batch: int, seed: int, shuffle_buffer: int, start_batch: int
) -> tf.data.Dataset:
    """Serialized records of this host from batch `start_batch` on: an endless chain of epochs,
    each cut to whole batches."""
    total = sum(e["records"] for e in shards)
    per_epoch = total // batch
    if per_epoch == 0:
        raise ValueError(
            f"this host's shards hold {total} records, fewer than one batch of {batch}: "
            f"lower the batch size or use fewer hosts"
        )
    files = tf.constant([e["file"] for e in shards])
    n_files = len(shards)
    file_seed, shuffle_seed = _seed(seed, 1), _seed(seed, 2)

    def epoch(e):
        key = tf.stack([tf.constant(file_seed, tf.int64), e])
        order = tf.argsort(tf.random.stateless_uniform([n_files], seed=key))
        ds = tf.data.Dataset.from_tensor_slices(tf.gather(files, order))
        ds = ds.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(n_files, 16),
            block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        # A tensor seed: per-epoch order with no iterator state (tf.random.set_seed also feeds in).
        ds = ds.shuffle(shuffle_buffer, seed=(shuffle_seed + e * 1_000_003) % (2**31 - 1))
        return ds.take(per_epoch * batch)

    first_epoch, offset = divmod(start_batch, per_epoch)
    ds = tf.data.Dataset.range(first_epoch, _MAX_EPOCHS).flat_map(epoch)
    # Dropped before parsing: a resume re-reads raw bytes only.
    return ds.skip(offset * batch)


def crop_voices(mels: tf.RaggedTensor, length: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """Random crops of a ragged batch of log-mels to one length, tiling short ones cyclically.

    Args:
      mels: `[B, (T_i), 64]` ragged.
      length: int scalar, the crop length L.
      key: int64 `[2]` stateless seed.

    Returns:
      float32 `[B, L, 64]`: rows `s_i, s_i+1, ... (mod T_i)` of utterance i, with `s_i` uniform
      in `[0, T_i - L]` when `T_i >= L`, else 0 (the utterance repeated, as the reference tiles).
    """
    lengths = tf.cast(mels.row_lengths(), tf.int64)
    max_start = tf.maximum(lengths - tf.cast(length, tf.int64), 0)
    u = tf.random.stateless_uniform(tf.shape(lengths), seed=key, dtype=tf.float64)
    start = tf.cast(tf.floor(u * tf.cast(max_start + 1, tf.float64)), tf.int64)
    start = tf.minimum(start, max_start)
    frame = tf.range(tf.cast(length, tf.int64), dtype=tf.int64)
    idx = (start[:, None] + frame[None, :]) % lengths[:, None]
    flat = mels.row_starts()[:, None] + idx
    return tf.cast(tf.gather(mels.flat_values, flat), tf.float32)


def flip_faces(images: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """Each uint8 `[B, 64, 64, 3]` face mirrored left-right with probability 1/2 (stateless)."""
    flip = tf.random.stateless_uniform(tf.shape(images)[:1], seed=key) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)


def normalize_faces(images: tf.Tensor) -> tf.Tensor:
    """uint8 `[..., 3]` -> float32 in [-1, 1] as the reference: (x - 127.5) / 127.5."""
    return (tf.cast(images, tf.float32) - 127.5) / 127.5


def _key(base: int, batch_index: tf.Tensor) -> tf.Tensor:
    return tf.stack([tf.constant(base, tf.int64), tf.cast(batch_index, tf.int64)])


class TrainIterator:
    """Host-local numpy batches; `state()` is the index of the next batch (for `start_batch`)."""

    def __init__(self, dataset: tf.data.Dataset, shards: Sequence[dict], start_batch: int):
        self._iterator = dataset.as_numpy_iterator()
        self._shards = list(shards)
        self.next_batch = start_batch

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        try:
            batch = next(self._iterator)
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as err:
            raise _diagnose(self._shards, err) from err
        self.next_batch += 1
        return batch

    def state(self) -> dict:
        """`{"next_batch": N}`: pass N as `start_batch` to resume exactly here."""
        return {"next_batch": self.next_batch}


def make_train_iterator(
    records: manifest_lib.Records,
    *,
    batch_size: int,
    crop_lengths: Sequence[int],
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    face_flip: bool = True,
    shuffle_buffer: int = 10_000,
    split: str = "train",
    start_batch: int = 0,
) -> TrainIterator:
    """The endless training stream of this host's share of each global batch.

    Args:
      records: the output of `v2f prepare` (`manifest.Records.open(dir)`).
      batch_size: the global batch; each host yields `batch_size // process_count`.
      crop_lengths: static crop lengths; one is picked per batch (the same on every host).
      seed: everything random derives from it: same seed, same batches.
      process_index, process_count: this host and the number of hosts; host i reads shard files
        i, i + count, ... of each stream.
      face_flip: mirror faces at random.
      shuffle_buffer: records in each stream's shuffle buffer.
      split: records split to read.
      start_batch: index of the first batch to yield (exact resume).

    Returns:
      An iterator of `{"voice": float32 [B, L_max, 64], "voice_len": int32 [B], "voice_id":
      int32 [B], "face": float32 [B, 64, 64, 3] in [-1, 1], "face_id": int32 [B]}`: each batch's
      voices are crops of one length L drawn from `crop_lengths` (`voice_len` = L), zero-padded
      to L_max = max(crop_lengths) so that every batch has one shape.

    Raises:
      ValueError: batch_size not divisible by process_count, fewer shard files than hosts, or a
        host with less than one batch of records.
      CorruptRecordsError: a shard missing, or its size not the manifest's (here), or unreadable
        (on the `next` that meets it); the error names the file.
    """
    _hide_accelerators()
    if batch_size % process_count:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by process_count {process_count}"
        )
    lengths = [int(x) for x in crop_lengths]
    if not lengths or min(lengths) <= 0:
        raise ValueError(f"crop_lengths must be positive, got {crop_lengths}")
    b = batch_size // process_count
    voice_shards = records.shards(split, "voices", process_index, process_count)
    face_shards = records.shards(split, "faces", process_index, process_count)
    # The crop length must agree across hosts (one global batch shape): no process_index in it.
    length_seed = _seed(seed, 10)
    crop_seed, flip_seed = _seed(seed, 11, process_index), _seed(seed, 12, process_index)
    lengths_t = tf.constant(lengths, tf.int32)

    voices = _epochs_of_records(
        voice_shards, b, _seed(seed, 20, process_index), shuffle_buffer, start_batch
    )
    voices = voices.map(
        lambda r: (lambda v: (v["mel"], v["label"]))(records_lib.parse_voice(r)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    voices = voices.ragged_batch(b, drop_remainder=True).enumerate(start=start_batch)

    longest = max(lengths)

    def crop(i, batch):
        mels, labels = batch
        pick = tf.random.stateless_uniform(
            [], seed=_key(length_seed, i), maxval=len(lengths), dtype=tf.int32
        )
        length = lengths_t[pick]
        voices = crop_voices(mels, length, _key(crop_seed, i))
        # Every batch has the longest crop's shape (one compiled step); `voice_len` says how
        # much of it is voice, the rest is zeros that E masks out.
        voices = tf.pad(voices, [[0, 0], [0, longest - length], [0, 0]])
        voices = tf.ensure_shape(voices, [b, longest, None])
        return voices, tf.fill([b], length), labels

    voices = voices.map(crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    faces = _epochs_of_records(
        face_shards, b, _seed(seed, 21, process_index), shuffle_buffer, start_batch
    )
    faces = faces.map(
        lambda r: (lambda f: (f["image"], f["label"]))(records_lib.parse_face(r)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    faces = faces.batch(b, drop_remainder=True).enumerate(start=start_batch)

    def flip(i, batch):
        images, labels = batch
        if face_flip:
            images = flip_faces(images, _key(flip_seed, i))
        return normalize_faces(images), labels

    faces = faces.map(flip, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    ds = tf.data.Dataset.zip(voices, faces).map(
        lambda v, f: {
            "voice": v[0],
            "voice_len": v[1],
            "voice_id": v[2],
            "face": f[0],
            "face_id": f[1],
        }
    )
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options).prefetch(2)
    return TrainIterator(ds, voice_shards + face_shards, start_batch)


def make_eval_voices(
    records: manifest_lib.Records, split: str = "test"
) -> Iterator[tuple[np.ndarray, int, int]]:
    """Every utterance of a split, whole, in shard order.

    Yields:
      `(voice float32 [T, 64], label, gender)`; gender 0 male, 1 female, -1 unknown.

    Raises:
      CorruptRecordsError: a shard missing, unreadable, or with fewer/more records than the
        manifest says.
    """
    _hide_accelerators()
    shards = records.shards(split, "voices")

    def generate():
        for e in shards:
            n = 0
            try:
                for rec in tf.data.TFRecordDataset(e["file"]).map(records_lib.parse_voice):
                    n += 1
                    yield (
                        rec["mel"].numpy().astype(np.float32),
                        int(rec["label"]),
                        int(rec["gender"]),
                    )
            except tf.errors.OpError as err:
                raise _diagnose([e], err) from err
            if n != e["records"]:
                raise CorruptRecordsError(
                    e["file"], f"{n} records, the manifest says {e['records']}"
                )

    return generate()


def load_faces(
    records: manifest_lib.Records, split: str = "test"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every face of a split, in shard order.

    Returns:
      `(faces uint8 [N, 64, 64, 3], labels int32 [N], genders int32 [N])`.

    Raises:
      CorruptRecordsError: as `make_eval_voices`.
    """
    _hide_accelerators()
    shards = records.shards(split, "faces")
    images, labels, genders = [], [], []
    for e in shards:
        n = 0
        try:
            ds = tf.data.TFRecordDataset(e["file"]).map(records_lib.parse_face).batch(1024)
            for batch in ds.as_numpy_iterator():
                images.append(batch["image"])
                labels.append(batch["label"])
                genders.append(batch["gender"])
                n += len(batch["label"])
        except tf.errors.OpError as err:
            raise _diagnose([e], err) from err
        if n != e["records"]:
            raise CorruptRecordsError(e["file"], f"{n} records, the manifest says {e['records']}")
    if not images:
        size = records_lib.IMAGE_SIZE
        return np.zeros([0, size, size, 3], np.uint8), *(np.zeros([0], np.int32),) * 2
    return np.concatenate(images), np.concatenate(labels), np.concatenate(genders)
