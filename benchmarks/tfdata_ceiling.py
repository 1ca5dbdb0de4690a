"""What any tf.data stream of ~100 KB training records can reach, against a memory-mapped gather.

One float16 log-mel crop of 800 frames is 102,400 bytes. Reading such records through tf.data
and batching them costs per byte before any parsing, shuffling or cropping; this measures that
floor on synthetic bytes, side by side in one process, alternating, in samples per CPU-second
(process CPU time, every tf.data thread counted):

- `fixed_length`: `tf.data.FixedLengthRecordDataset` over one raw file, batch, `decode_raw`:
  no framing, no checksum, no proto;
- `tfrecord`: `TFRecordDataset` of one-feature `tf.train.Example`s, batch, `parse_example`,
  `decode_raw`: the least a TFRecord stream does;
- `memmap_gather`: numpy slices of a memory-mapped copy of the same file, in shuffled order
  (what `data.arrays_dir` does per crop).

    python benchmarks/tfdata_ceiling.py [--records 4000 --bytes 102400 --batch 128 --rounds 3]

Prints a table on stderr and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], "GPU")


def _write(folder: str, count: int, size: int) -> tuple[str, str]:
    """The same random records as one raw file and as a TFRecord file of Examples."""
    rng = np.random.default_rng(0)
    raw, framed = os.path.join(folder, "records.raw"), os.path.join(folder, "records.tfrecord")
    with open(raw, "wb") as f, tf.io.TFRecordWriter(framed) as w:
        for _ in range(count):
            payload = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            f.write(payload)
            feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[payload]))
            example = tf.train.Example(features=tf.train.Features(feature={"mel": feature}))
            w.write(example.SerializeToString())
    return raw, framed


def _decode(serialized):
    return tf.io.decode_raw(serialized, tf.uint16)


def _parse(serialized):
    return tf.io.parse_example(serialized, {"mel": tf.io.FixedLenFeature([], tf.string)})["mel"]


def _streams(raw: str, framed: str, size: int, batch: int, count: int):
    auto = tf.data.AUTOTUNE
    fixed = tf.data.FixedLengthRecordDataset(raw, size).batch(batch, drop_remainder=True)
    tfrecord = tf.data.TFRecordDataset(framed).batch(batch, drop_remainder=True)
    mapped = np.memmap(raw, dtype=np.uint8, mode="r", shape=(count, size))
    order = np.random.default_rng(1).permutation(count)

    def gather():
        out = np.empty([batch, size // 2], np.uint16)
        for start in range(0, count - batch + 1, batch):
            for row, i in enumerate(order[start : start + batch].tolist()):
                out[row] = mapped[i].view(np.uint16)
            yield out

    return {
        "fixed_length": lambda: fixed.map(_decode, num_parallel_calls=auto).prefetch(2),
        "tfrecord": lambda: (
            tfrecord.map(_parse, num_parallel_calls=auto)
            .map(_decode, num_parallel_calls=auto)
            .prefetch(2)
        ),
        "memmap_gather": gather,
    }


def _per_cpu_second(make) -> float:
    """Samples over process CPU seconds for one pass (the first batch, warm-up, left out)."""
    it = iter(make())
    next(it)
    samples, cpu0 = 0, time.process_time()
    for batch in it:
        samples += batch.shape[0]
    return samples / max(time.process_time() - cpu0, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--bytes", type=int, default=102_400, help="bytes per record")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="v2f-tfdata-") as tmp:
        raw, framed = _write(tmp, args.records, args.bytes)
        streams = _streams(raw, framed, args.bytes, args.batch, args.records)
        for make in streams.values():  # page cache warm, functions traced
            _per_cpu_second(make)
        rates = {name: [] for name in streams}
        for _ in range(args.rounds):
            for name, make in streams.items():
                rates[name].append(_per_cpu_second(make))
    result = {
        "records": args.records,
        "bytes_per_record": args.bytes,
        "batch": args.batch,
        "samples_per_cpu_s": {k: [round(x) for x in v] for k, v in rates.items()},
        "cpus": os.cpu_count(),
    }
    for name, values in rates.items():
        print(
            f"{name:14s} {min(values):>9,.0f} - {max(values):>9,.0f} samples/CPU-s", file=sys.stderr
        )
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
