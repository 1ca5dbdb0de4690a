"""One host's training input against the step's demand (`v2f bench --mode input`)."""

from __future__ import annotations

import os

import jax
import ml_collections

from v2f_jax import parallel
from v2f_jax.bench import probes, step, timing

INPUT_FEEDS = ("streaming", "host_memory", "on_device")


def bench_input(
    config: ml_collections.ConfigDict,
    records_dir: str | os.PathLike,
    *,
    batch_size: int,
    batches: int = 50,
    warmup: int = 5,
    demand_samples_per_s: float | None = None,
    feed: str = "streaming",
) -> dict:
    """The training input of one host against the step's demand.

    `feed="streaming"`: the tf.data reader's batches; `samples_per_cpu_s` is samples over this
    process's CPU time while they were read (every tf.data thread counts), the figure that says
    how many cores feed a device. `bytes_per_sample_to_device`: what one sample costs the
    host-to-device link. `"host_memory"` (`data.in_host_memory`): the index stream and the
    numpy gather from the split in RAM (memory-mapped from `config.data.arrays_dir` if set),
    together (loading the split is not timed).
    `"on_device"` (`data.on_device`): the host's index stream alone (its per-step work), and
    the gather on the devices timed apart.
    """
    if feed not in INPUT_FEEDS:
        raise ValueError(f"feed {feed!r}: one of {', '.join(INPUT_FEEDS)}")
    from v2f_jax.input_pipeline import manifest, reader

    records = manifest.Records.open(records_dir)
    common = dict(
        batch_size=batch_size,
        crop_lengths=tuple(config.data.crop_lengths),
        seed=config.seed,
        face_flip=config.data.face_flip,
        shuffle_buffer=config.data.shuffle_buffer,
    )
    out = {
        "mode": "input",
        "feed": feed,
        "records_dir": str(records_dir),
        "batch": batch_size,
        "crop_lengths": list(config.data.crop_lengths),
    }
    if feed == "host_memory":
        from v2f_jax.feed import resident_data
        from v2f_jax.input_pipeline import train_arrays

        arrays = train_arrays.host_split(records, config.data.arrays_dir)
        indices = reader.make_train_index_iterator(arrays, records, **common)
        rows = max(config.data.crop_lengths)
        it = (resident_data.gather_on_host(arrays, index, rows) for index in indices)
        timed = timing.time_batches(it, batches, warmup)
        out["host_bytes"] = int(arrays["mel"].nbytes + arrays["face"].nbytes)
    elif feed == "on_device":
        from v2f_jax.feed import resident_data
        from v2f_jax.input_pipeline import train_arrays

        arrays = train_arrays.host_split(records, config.data.arrays_dir)
        it = reader.make_train_index_iterator(arrays, records, **common)
        timed = timing.time_batches(it, batches, warmup)
        dp = parallel.DataParallel(lambda axis: lambda s, b: (s, {}), "jit")
        resident = resident_data.ResidentData(arrays, dp, max(config.data.crop_lengths))
        index_batch = timed["last"]
        jax.block_until_ready(resident([index_batch]))  # compiles
        gather_s = timing.spread(timing.time_calls(lambda: resident([index_batch]), 10))
        out["resident_bytes_per_device"] = resident.nbytes
        out["device_gather_s"] = gather_s
        out["device_gather_samples_per_s"] = batch_size / gather_s["median"]
    else:
        it = reader.make_train_iterator(records, **common)
        timed = timing.time_batches(it, batches, warmup)
    total = sum(timed["times"])
    out.update(
        {
            "warmup_s": timed["warmup_s"],
            "batch_s": timing.spread(timed["times"]),
            "batches_per_s": batches / total,
            "samples_per_s": batch_size * batches / total,
            "samples_per_cpu_s": batch_size * batches / max(timed["cpu_s"], 1e-9),
            "bytes_per_sample_to_device": step.bytes_per_sample(timed["last"]),
            # Streaming sends the longest crop's frames; the resident mode sends none.
            "voice_frames_per_sample_to_device": (
                int(timed["last"]["voice"].shape[1]) if "voice" in timed["last"] else 0
            ),
        }
    )
    if demand_samples_per_s:
        out["step_demand_samples_per_s"] = demand_samples_per_s
        out["supply_over_demand"] = out["samples_per_s"] / demand_samples_per_s
        out["cpu_cores_to_meet_demand"] = demand_samples_per_s / out["samples_per_cpu_s"]
    out["machine"] = probes.machine()
    return out
