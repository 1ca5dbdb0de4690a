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
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from v2f_jax.input_pipeline import data_service
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


def _epochs(
    counts: Sequence[int],
    read: Callable[[tf.Tensor], tf.data.Dataset],
    batch: int,
    seed: int,
    shuffle_buffer: int,
    start_batch: int,
    parallel_reads: bool = True,
) -> tf.data.Dataset:
    """This host's elements from batch `start_batch` on: an endless chain of epochs, each cut to
    whole batches. `read(f)` is the dataset of file `f` (0 <= f < len(counts)), holding
    `counts[f]` elements. The order depends only on the counts and the seed, not on what is
    read or whether the files are read in parallel (`parallel_reads`: worth it for files, not
    for ranges of indices, where the threads' hand-offs cost more than the elements): records
    and their indices come out in the same order."""
    total = sum(counts)
    per_epoch = total // batch
    if per_epoch == 0:
        raise ValueError(
            f"this host's shards hold {total} records, fewer than one batch of {batch}: "
            f"lower the batch size or use fewer hosts"
        )
    n_files = len(counts)
    file_seed, shuffle_seed = _seed(seed, 1), _seed(seed, 2)

    def epoch(e):
        key = tf.stack([tf.constant(file_seed, tf.int64), e])
        order = tf.argsort(tf.random.stateless_uniform([n_files], seed=key))
        ds = tf.data.Dataset.from_tensor_slices(tf.cast(order, tf.int64))
        ds = ds.interleave(
            read,
            cycle_length=min(n_files, 16),
            block_length=1,
            **(
                dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                if parallel_reads
                else {}
            ),
        )
        # A tensor seed: per-epoch order with no iterator state (tf.random.set_seed also feeds in).
        ds = ds.shuffle(shuffle_buffer, seed=(shuffle_seed + e * 1_000_003) % (2**31 - 1))
        return ds.take(per_epoch * batch)

    first_epoch, offset = divmod(start_batch, per_epoch)
    ds = tf.data.Dataset.range(first_epoch, _MAX_EPOCHS).flat_map(epoch)
    # Dropped before parsing: a resume re-reads raw bytes only.
    return ds.skip(offset * batch)


def _records_of(shards: Sequence[dict]) -> Callable[[tf.Tensor], tf.data.Dataset]:
    files = tf.constant([e["file"] for e in shards])
    return lambda f: tf.data.TFRecordDataset(tf.gather(files, f))


def _indices_of(shards: Sequence[dict]) -> Callable[[tf.Tensor], tf.data.Dataset]:
    """File f's records as their indices in the concatenation of `shards` (in list order)."""
    counts = [int(e["records"]) for e in shards]
    starts = tf.constant(np.cumsum([0] + counts[:-1]), tf.int64)
    ends = tf.constant(np.cumsum(counts), tf.int64)
    return lambda f: tf.data.Dataset.range(tf.gather(starts, f), tf.gather(ends, f))


def _key(base: int, batch_index: tf.Tensor) -> tf.Tensor:
    return tf.stack([tf.constant(base, tf.int64), tf.cast(batch_index, tf.int64)])


class _Randomness:
    """Everything random about batch i, a stateless function of (seed, i, host): the crop
    length (the same on every host: one global batch shape), crop starts and face flips."""

    def __init__(self, seed: int, process_index: int, crop_lengths: Sequence[int], face_flip):
        self.lengths = tf.constant([int(x) for x in crop_lengths], tf.int64)
        self.longest = max(int(x) for x in crop_lengths)
        self.face_flip = face_flip
        self._length_seed = _seed(seed, 10)
        self._crop_seed = _seed(seed, 11, process_index)
        self._flip_seed = _seed(seed, 12, process_index)

    def crops(self, i: tf.Tensor, frames: tf.Tensor) -> dict[str, tf.Tensor]:
        """Crops of utterances of `frames` int64 `[B]` frames: `start` (uniform in
        `[0, T_i - L]`, 0 if `T_i < L`), `count` = min(T_i, L) frames read, and `length` L."""
        n = tf.shape(self.lengths, out_type=tf.int32)[0]
        pick = tf.random.stateless_uniform(
            [], seed=_key(self._length_seed, i), maxval=n, dtype=tf.int32
        )
        length = self.lengths[pick]
        max_start = tf.maximum(frames - length, 0)
        u = tf.random.stateless_uniform(
            tf.shape(frames), seed=_key(self._crop_seed, i), dtype=tf.float64
        )
        start = tf.cast(tf.floor(u * tf.cast(max_start + 1, tf.float64)), tf.int64)
        return {
            "start": tf.minimum(start, max_start),
            "count": tf.minimum(frames, length),
            "length": length,
        }

    def flips(self, i: tf.Tensor, b: int) -> tf.Tensor:
        """bool `[b]`: mirror face k (probability 1/2; never without `face_flip`)."""
        if not self.face_flip:
            return tf.zeros([b], tf.bool)
        return tf.random.stateless_uniform([b], seed=_key(self._flip_seed, i)) < 0.5


class TrainIterator:
    """Host-local numpy batches; `state()` is the index of the next batch (for `start_batch`)."""

    def __init__(
        self,
        batches: tf.data.Dataset | Iterator[dict],
        shards: Sequence[dict],
        start_batch: int,
    ):
        if isinstance(batches, tf.data.Dataset):
            batches = batches.as_numpy_iterator()
        self._iterator = batches
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
        batch.pop("batch_index", None)  # the service's ordering key; the step has no use for it
        return batch

    def state(self) -> dict:
        """`{"next_batch": N}`: pass N as `start_batch` to resume exactly here."""
        return {"next_batch": self.next_batch}

    def close(self) -> None:
        """Releases the tf.data iterator and its threads now, not whenever it is collected."""
        close = getattr(self._iterator, "close", None)
        if callable(close):
            close()
        self._iterator = iter(())


def _check_batching(batch_size: int, process_count: int, crop_lengths: Sequence[int]) -> int:
    """This host's rows per batch."""
    if batch_size % process_count:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by process_count {process_count}"
        )
    lengths = [int(x) for x in crop_lengths]
    if not lengths or min(lengths) <= 0:
        raise ValueError(f"crop_lengths must be positive, got {crop_lengths}")
    return batch_size // process_count


def _finish(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(2)


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
    service_address: str = "",
) -> TrainIterator:
    """The endless training stream of this host's share of each global batch.

    Records are read and shuffled serialized; each batch is then parsed at once, keeping only
    what a step uses, and a voice crop is a byte slice of the stored float16 log-mel. Voices
    stay float16 and faces uint8 up to the device, where the step expands them
    (v2f_jax/feed/device_inputs.py).

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
      service_address: a tf.data service dispatcher (`grpc://host:port`, `v2f data-service`)
        whose workers parse the batches; the same batches in the same order. "": parse here.

    Returns:
      An iterator of wire batches (device_inputs.py): `{"voice": float16 [B, L_max, 64],
      "voice_len": int32 [B], "voice_frames": int32 [B], "voice_id": int32 [B], "face": uint8
      [B, 64, 64, 3], "face_flip": bool [B], "face_id": int32 [B]}`, L_max = max(crop_lengths).

    Raises:
      ValueError: batch_size not divisible by process_count, fewer shard files than hosts, or a
        host with less than one batch of records.
      CorruptRecordsError: a shard missing, or its size not the manifest's (here), or unreadable
        (on the `next` that meets it); the error names the file.
    """
    _hide_accelerators()
    b = _check_batching(batch_size, process_count, crop_lengths)
    voice_shards = records.shards(split, "voices", process_index, process_count)
    face_shards = records.shards(split, "faces", process_index, process_count)
    rand = _Randomness(seed, process_index, crop_lengths, face_flip)
    longest = rand.longest

    def voice_batch(i, serialized):
        rec = records_lib.parse_voice_batch(serialized)
        crop = rand.crops(i, rec["frames"])
        voice = records_lib.mel_rows(rec["mel"], crop["start"], crop["count"], longest)
        return {
            "voice": tf.ensure_shape(voice, [b, longest, records_lib.N_MELS]),
            "voice_len": tf.fill([b], tf.cast(crop["length"], tf.int32)),
            "voice_frames": tf.cast(crop["count"], tf.int32),
            "voice_id": rec["label"],
        }

    def face_batch(i, serialized):
        rec = records_lib.parse_face_batch(serialized)
        size = records_lib.IMAGE_SIZE
        return {
            "face": tf.ensure_shape(rec["image"], [b, size, size, 3]),
            "face_flip": rand.flips(i, b),
            "face_id": rec["label"],
        }

    voices = _epochs(
        [e["records"] for e in voice_shards],
        _records_of(voice_shards),
        b,
        _seed(seed, 20, process_index),
        shuffle_buffer,
        start_batch,
    )
    faces = _epochs(
        [e["records"] for e in face_shards],
        _records_of(face_shards),
        b,
        _seed(seed, 21, process_index),
        shuffle_buffer,
        start_batch,
    )
    # Serialized records cut to batches (cheap), then the parsing (the work), which the
    # tf.data service's workers split between them where there are some.
    source = tf.data.Dataset.zip(
        voices.batch(b, drop_remainder=True), faces.batch(b, drop_remainder=True)
    )
    source = source.enumerate(start=start_batch).map(
        lambda i, pair: {"batch_index": i, "voices": pair[0], "faces": pair[1]}
    )
    options = tf.data.Options()
    options.deterministic = True
    source = source.with_options(options)

    def parse(element):
        i = element["batch_index"]
        return {**voice_batch(i, element["voices"]), **face_batch(i, element["faces"])}

    shards = voice_shards + face_shards
    if service_address:
        job = data_service.unique_job_name("train", process_index, start_batch)
        batches = data_service.distribute(
            source, service_address, job_name=job, start=start_batch, transform=parse
        )
        return TrainIterator(batches, shards, start_batch)
    return TrainIterator(_finish(data_service.local_dataset(source, parse)), shards, start_batch)


def make_train_index_iterator(
    arrays: dict[str, np.ndarray],
    records: manifest_lib.Records,
    *,
    batch_size: int,
    crop_lengths: Sequence[int],
    seed: int,
    face_flip: bool = True,
    shuffle_buffer: int = 10_000,
    split: str = "train",
    start_batch: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> TrainIterator:
    """`make_train_iterator`'s stream as record indices into `arrays` (`load_train_arrays` of
    the same host): the same records, crops and flips in the same order, for a corpus held in
    memory (the host's or the devices').

    Returns:
      An iterator of `{"voice_index": int64 [B], "voice_start": int32 [B], "voice_frames":
      int32 [B], "voice_len": int32 [B], "voice_id": int32 [B], "face_index": int64 [B],
      "face_flip": bool [B], "face_id": int32 [B]}`, B = batch_size // process_count.
    """
    _hide_accelerators()
    b = _check_batching(batch_size, process_count, crop_lengths)
    voice_shards = records.shards(split, "voices", process_index, process_count)
    face_shards = records.shards(split, "faces", process_index, process_count)
    if len(arrays["voice_frames"]) != sum(e["records"] for e in voice_shards):
        raise ValueError("arrays: not load_train_arrays of this split and host")
    rand = _Randomness(seed, process_index, crop_lengths, face_flip)
    frames = tf.constant(arrays["voice_frames"], tf.int64)
    voice_labels = tf.constant(arrays["voice_label"], tf.int32)
    face_labels = tf.constant(arrays["face_label"], tf.int32)

    def voice_batch(i, index):
        crop = rand.crops(i, tf.gather(frames, index))
        return {
            "voice_index": index,
            "voice_start": tf.cast(crop["start"], tf.int32),
            "voice_frames": tf.cast(crop["count"], tf.int32),
            "voice_len": tf.fill([b], tf.cast(crop["length"], tf.int32)),
            "voice_id": tf.gather(voice_labels, index),
        }

    def face_batch(i, index):
        return {
            "face_index": index,
            "face_flip": rand.flips(i, b),
            "face_id": tf.gather(face_labels, index),
        }

    voices = _epochs(
        [e["records"] for e in voice_shards],
        _indices_of(voice_shards),
        b,
        _seed(seed, 20, process_index),
        shuffle_buffer,
        start_batch,
        parallel_reads=False,
    )
    voices = voices.batch(b, drop_remainder=True).enumerate(start=start_batch).map(voice_batch)
    faces = _epochs(
        [e["records"] for e in face_shards],
        _indices_of(face_shards),
        b,
        _seed(seed, 21, process_index),
        shuffle_buffer,
        start_batch,
        parallel_reads=False,
    )
    faces = faces.batch(b, drop_remainder=True).enumerate(start=start_batch).map(face_batch)
    ds = tf.data.Dataset.zip(voices, faces).map(lambda v, f: {**v, **f})
    # Nothing here has a parallelism to tune, and tf.data's tuning thread, left on, at times
    # kept the iterator's release waiting 10-50 s at the end of a run.
    options = tf.data.Options()
    options.autotune.enabled = False
    return TrainIterator(_finish(ds.with_options(options)), voice_shards + face_shards, start_batch)


def _checked_records(
    shards: Sequence[dict], parse: Callable, batch: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Each shard's records parsed by `parse` (or batches of `batch` of them), in shard order.

    Raises:
      CorruptRecordsError: a shard unreadable, or with fewer/more records than the manifest says.
    """
    for e in shards:
        n = 0
        try:
            ds = tf.data.TFRecordDataset(e["file"]).map(parse)
            for item in (ds.batch(batch) if batch else ds).as_numpy_iterator():
                n += len(item["label"]) if batch else 1
                yield item
        except tf.errors.OpError as err:
            raise _diagnose([e], err) from err
        if n != e["records"]:
            raise CorruptRecordsError(e["file"], f"{n} records, the manifest says {e['records']}")


def train_voices(
    records: manifest_lib.Records,
    split: str = "train",
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[tuple[np.ndarray, int]]:
    """`(mel float16 [T, 64], label)` of every utterance of this host's shards, in shard order
    (the order `make_train_index_iterator`'s indices count in)."""
    _hide_accelerators()
    shards = records.shards(split, "voices", process_index, process_count)
    for rec in _checked_records(shards, records_lib.parse_voice):
        yield rec["mel"], int(rec["label"])


def face_batches(
    records: manifest_lib.Records,
    split: str = "test",
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """This host's faces in shard order, in batches: `image` uint8 `[n, 64, 64, 3]`, `label`,
    `gender` int32 `[n]`."""
    _hide_accelerators()
    shards = records.shards(split, "faces", process_index, process_count)
    yield from _checked_records(shards, records_lib.parse_face, batch=1024)


def load_train_arrays(
    records: manifest_lib.Records,
    split: str = "train",
    process_index: int = 0,
    process_count: int = 1,
) -> dict[str, np.ndarray]:
    """A split's training data (this host's shards of it) as flat host arrays, records in shard
    order (what `make_train_index_iterator`'s indices point into).

    Returns:
      `{"mel": float16 [sum T_i, 64] (every utterance, end to end), "voice_offset": int64 [N]
      (first row of utterance i), "voice_frames": int64 [N], "voice_label": int32 [N], "face":
      uint8 [M, 64, 64, 3], "face_label": int32 [M]}`.

    Raises:
      CorruptRecordsError: as `make_eval_voices`.
    """
    mels, labels = [], []
    for mel, label in train_voices(records, split, process_index, process_count):
        mels.append(mel)
        labels.append(label)
    frames = np.array([m.shape[0] for m in mels], np.int64)
    faces, face_labels, _ = load_faces(records, split, process_index, process_count)
    return {
        "mel": np.concatenate(mels) if mels else np.zeros([0, records_lib.N_MELS], np.float16),
        "voice_offset": offsets(frames),
        "voice_frames": frames,
        "voice_label": np.asarray(labels, np.int32),
        "face": faces,
        "face_label": face_labels,
    }


def offsets(frames: np.ndarray) -> np.ndarray:
    """int64 `[N]`: the first row of each of N utterances of `frames` rows laid end to end."""
    return np.concatenate([[0], np.cumsum(frames)[:-1]]).astype(np.int64)


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
    records: manifest_lib.Records,
    split: str = "test",
    process_index: int = 0,
    process_count: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every face of a split (of host `process_index`'s shards of it), in shard order.

    Returns:
      `(faces uint8 [N, 64, 64, 3], labels int32 [N], genders int32 [N])`.

    Raises:
      CorruptRecordsError: as `make_eval_voices`.
    """
    images, labels, genders = [], [], []
    for batch in face_batches(records, split, process_index, process_count):
        images.append(batch["image"])
        labels.append(batch["label"])
        genders.append(batch["gender"])
    if not images:
        size = records_lib.IMAGE_SIZE
        return np.zeros([0, size, size, 3], np.uint8), *(np.zeros([0], np.int32),) * 2
    return np.concatenate(images), np.concatenate(labels), np.concatenate(genders)
