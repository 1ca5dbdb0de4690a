"""The feature front end's speed: audio seconds per CPU-second (`v2f bench --mode prepare`)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from v2f_jax.bench import probes


def bench_prepare(paths: Sequence[str | os.PathLike], frontend: str = "wen2019", repeats=2) -> dict:
    """Audio seconds per CPU-second of decode + VAD + features (what `v2f prepare` runs per file).

    CPU time of this process (`time.process_time`), best of `repeats`, so other load on the
    machine does not count; wall time alongside.
    """
    from v2f_jax.input_pipeline import audio, errors

    if not paths:
        raise ValueError("no audio files to time")
    seconds = 0.0
    for p in paths:
        seconds += audio.load_audio(p).size / audio.SAMPLE_RATE
    audio.voice_features(paths[0], frontend)  # warm-up: imports and filter caches
    best_cpu, best_wall, rejected = float("inf"), float("inf"), 0
    for _ in range(repeats):
        cpu, wall, rejected = time.process_time(), time.perf_counter(), 0
        for p in paths:
            try:
                audio.voice_features(p, frontend)
            except errors.BadInputError:
                rejected += 1
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return {
        "mode": "prepare",
        "frontend": frontend,
        "files": len(paths),
        "rejected": rejected,
        "audio_s": seconds,
        "cpu_s": best_cpu,
        "wall_s": best_wall,
        "audio_s_per_cpu_s": seconds / best_cpu,
        "audio_s_per_wall_s": seconds / best_wall,
        "machine": probes.machine(),
    }
