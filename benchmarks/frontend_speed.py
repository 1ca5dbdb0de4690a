"""Front-end throughput on the ten real VoxCeleb1 utterances, in audio-seconds per CPU-second.

Stages timed separately with `time.process_time` (CPU time of this process, so other load on
the machine does not count): decode, VAD, the wen2019 filterbank, the librosa log mel, and the
total of decode + VAD + wen2019 (what `v2f prepare` runs per file). Prints one JSON line.

    python benchmarks/frontend_speed.py [--examples DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import numpy as np

from v2f_jax.input_pipeline import audio

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "voxceleb-examples"


def _cpu_seconds(fn, inputs, repeats):
    """Best-of-`repeats` CPU seconds to run `fn` over all inputs."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for x in inputs:
            fn(x)
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=pathlib.Path, default=EXAMPLES)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    paths = sorted(args.examples.glob("*.wav"))
    if not paths:
        raise SystemExit(f"no wavs in {args.examples}")
    samples = [audio.load_audio(p) for p in paths]
    speech = [audio.vad(s) for s in samples]
    audio.wen2019_fbank(speech[0])  # warm-up: librosa/numba imports and filter caches
    audio.librosa_logmel(speech[0])
    audio_s = sum(s.size for s in samples) / audio.SAMPLE_RATE
    speech_s = sum(s.size for s in speech) / audio.SAMPLE_RATE

    def total(path):
        audio.compute_features(audio.speech_only(audio.load_audio(path), source=path))

    cpu = {
        "decode": _cpu_seconds(audio.load_audio, paths, args.repeats),
        "vad": _cpu_seconds(audio.vad, samples, args.repeats),
        "wen2019_fbank": _cpu_seconds(audio.wen2019_fbank, speech, args.repeats),
        "librosa_logmel": _cpu_seconds(audio.librosa_logmel, speech, args.repeats),
        "total_wen2019": _cpu_seconds(total, paths, args.repeats),
    }
    # Throughput is per second of input audio for every stage, so the stages compare directly.
    result = {
        "benchmark": "frontend_speed",
        "files": len(paths),
        "audio_seconds": round(audio_s, 2),
        "speech_seconds": round(speech_s, 2),
        "cpu_seconds": {k: round(v, 4) for k, v in cpu.items()},
        "audio_s_per_cpu_s": {k: round(audio_s / v, 1) for k, v in cpu.items()},
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
