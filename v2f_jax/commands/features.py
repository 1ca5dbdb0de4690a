"""Write the log-mel voice features of audio files as `.npy`, one `<stem>.npy` per input.

Each file goes through the front end that training uses (decode to 16 kHz mono, the reference's
VAD, a [T, 64] float32 log mel normalised per bin). `features.json` in --out records the front
end's parameters and, per input, its frames and seconds or the reason it was rejected. A bad file
is reported on stderr and makes the exit status 1; the good files are still written. Audio longer
than 10 minutes (audio.MAX_SECONDS) is such a file, found from its header before it is decoded.
Every file is written whole or not at all; a write that fails (a full disk) is exit 2 naming it.

Example: `v2f features --audio a.wav b.m4a --out feats/ --frontend wen2019`
"""

from __future__ import annotations

import argparse
import io
import json
import pathlib
import sys

from v2f_jax.commands import arguments
from v2f_jax.input_pipeline import audio


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.add_audio_files(parser)
    arguments.add_out_dir(parser)
    parser.add_argument(
        "--frontend",
        choices=audio.FRONTENDS,
        default="wen2019",
        help="wen2019: the reference's features exactly (default); librosa: a plain librosa mel",
    )
    arguments.add_min_seconds(parser, "reject")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from v2f_jax import files
    from v2f_jax.input_pipeline import errors

    args.out.mkdir(parents=True, exist_ok=True)
    results, written, n_bad = [], set(), 0
    for path in args.audio:
        stem = pathlib.Path(path).stem
        try:
            if stem in written:
                raise errors.BadInputError(path, f"another input already wrote {stem}.npy")
            samples = audio.load_audio(path)
            speech = audio.speech_only(samples, source=path, min_seconds=args.min_seconds)
            feats = audio.compute_features(speech, args.frontend, source=path)
        except errors.BadInputError as err:
            n_bad += 1
            print(f"v2f features: {err}", file=sys.stderr)
            results.append({"path": str(path), "reason": err.reason})
            continue
        buffer = io.BytesIO()
        np.save(buffer, feats)
        try:
            files.write_bytes(args.out / f"{stem}.npy", buffer.getvalue())
        except files.WriteError as err:  # a full disk: named, nothing half written left
            return arguments.usage_error("features", err)
        written.add(stem)
        results.append(
            {
                "path": str(path),
                "out": f"{stem}.npy",
                "frames": int(feats.shape[0]),
                "seconds": round(samples.size / audio.SAMPLE_RATE, 3),
                "speech_seconds": round(speech.size / audio.SAMPLE_RATE, 3),
            }
        )
    summary = {
        "frontend": audio.frontend_params(args.frontend),
        "min_seconds": args.min_seconds,
        "n_written": len(written),
        "n_rejected": n_bad,
        "files": results,
    }
    try:
        files.write_text(args.out / "features.json", json.dumps(summary, indent=2) + "\n")
    except files.WriteError as err:
        return arguments.usage_error("features", err)
    print(f"v2f features: wrote {len(written)} of {len(args.audio)} to {args.out}", file=sys.stderr)
    return 1 if n_bad else 0
