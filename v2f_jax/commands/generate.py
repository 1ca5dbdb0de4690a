"""Draw a face for each voice: VAD, log-mel, E, G; one PNG per voice and a contact sheet.

The model's own front end (the one that made its training features) computes the log-mels;
`--frontend` may only confirm it. A file that cannot be used (unreadable, no speech) is reported
and skipped, and the exit status is then 1. `generate.json` in --out lists every input (names
that are not valid UTF-8 shown with `\\xNN` escapes; their PNGs named with `_` in their place).
Exit status 2: a bad argument, or a model that cannot be used (model files are checked in full:
metadata, config, front end, every tensor's shape, dtype and finiteness; the message names each
problem).

Examples:
  v2f generate --model wen2019.safetensors --audio a.wav b.m4a --out faces/
  v2f generate --torch-embedder voice_embedding.pth --torch-generator generator.pth \\
      --audio data/example_data/*.wav --out faces/
"""

from __future__ import annotations

import argparse
import sys

from v2f_jax.commands import arguments
from v2f_jax.commands import export as export_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    export_command.add_source_arguments(parser)
    arguments.add_audio_files(parser)
    arguments.add_out_dir(parser)
    parser.add_argument(
        "--frontend",
        choices=("wen2019", "librosa"),
        default=None,
        help="the model's front end is used; naming a different one is an error",
    )
    arguments.add_min_seconds(parser, "skip")


def run(args: argparse.Namespace) -> int:
    from v2f_jax.inference import generate

    try:
        model = export_command.load_source(args)
        generate.check_frontend(model, args.frontend)
    except export_command.SOURCE_ERRORS as err:
        return arguments.usage_error("generate", err)
    try:
        result = generate.generate(model, args.audio, args.out, min_seconds=args.min_seconds)
    except OSError as err:  # --out not writable, or the disk full
        return arguments.usage_error("generate", f"cannot write to {args.out}: {err}")
    for item in result.items:
        if "reason" in item:
            print(f"v2f generate: {item['path']}: {item['reason']}", file=sys.stderr)
    print(f"v2f generate: {result.summary}")
    return 1 if result.n_failed else 0
