"""The device-resident feed's device side on a synthetic split (`v2f bench --mode gather`)."""

from __future__ import annotations

import time

import jax
import ml_collections
import numpy as np

from v2f_jax import parallel
from v2f_jax.bench import probes, step, timing


def bench_gather(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    utterances: int = 4096,
    mean_frames: int | None = None,
    faces: int = 2048,
    calls: int = 20,
    seed: int = 0,
) -> dict:
    """The device-resident feed's device side (`data.on_device`) without TensorFlow: a synthetic
    split of `utterances` log-mels (`mean_frames` on average) and `faces` faces held on the
    devices, and batches gathered there from host index batches, as the loop does.
    `mean_frames`: default the longest crop."""
    from v2f_jax.feed import resident_data

    rng = np.random.default_rng(seed)
    mean_frames = mean_frames or max(config.data.crop_lengths)
    frames = rng.integers(mean_frames // 2, mean_frames * 3 // 2 + 1, utterances)
    size = config.data.image_size
    arrays = {
        "mel": rng.normal(size=(int(frames.sum()), config.data.n_mels)).astype(np.float16),
        "voice_offset": np.concatenate([[0], np.cumsum(frames)[:-1]]).astype(np.int64),
        "face": rng.integers(0, 256, (faces, size, size, 3), dtype=np.uint8),
    }
    longest = max(config.data.crop_lengths)
    dp = parallel.DataParallel(lambda axis: lambda s, b: (s, {}), "jit")
    resident = resident_data.ResidentData(arrays, dp, longest)

    def index_batch():
        index = rng.integers(0, utterances, batch_size)
        length = int(rng.choice(config.data.crop_lengths))
        count = np.minimum(frames[index], length)
        start = rng.integers(0, np.maximum(frames[index] - length, 0) + 1)
        return {
            "voice_index": index.astype(np.int64),
            "voice_start": start.astype(np.int32),
            "voice_frames": count.astype(np.int32),
            "voice_len": np.full(batch_size, length, np.int32),
            "voice_id": np.zeros(batch_size, np.int32),
            "face_index": rng.integers(0, faces, batch_size).astype(np.int64),
            "face_flip": rng.random(batch_size) < 0.5,
            "face_id": np.zeros(batch_size, np.int32),
        }

    batches = [index_batch() for _ in range(calls)]
    start = time.perf_counter()
    jax.block_until_ready(resident([batches[0]]))
    compile_s = time.perf_counter() - start
    blocked = timing.spread(timing.time_calls(lambda: resident([batches[0]]), calls))
    start = time.perf_counter()
    jax.block_until_ready([resident([b]) for b in batches])  # back to back, as the loop feeds
    pipelined = (time.perf_counter() - start) / calls
    return {
        "mode": "gather",
        "batch": batch_size,
        "devices": dp.num_devices,
        "resident_bytes_per_device": resident.nbytes,
        "first_call_s": compile_s,
        "gather_s": blocked,
        "samples_per_s": batch_size / blocked["median"],
        "samples_per_s_pipelined": batch_size / pipelined,
        "bytes_per_sample_to_device": step.bytes_per_sample(batches[0]),
        "machine": probes.machine(),
    }
