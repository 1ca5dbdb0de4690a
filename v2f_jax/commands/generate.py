"""Draw a face for each voice: VAD, log-mel, E, G; one PNG per voice and a contact sheet.

The model's own front end (the one that made its training features) computes the log-mels;
`--frontend` may only confirm it. A file that cannot be used (unreadable, no speech) is reported
and skipped, and the exit status is then 1. `generate.json` in --out lists every input (names
that are not valid UTF-8 shown with `\\xNN` escapes; their PNGs named with `_` in their place).
Exit status 2: a bad argument, or a model that cannot be used (model files are checked in full:
metadata, config, front end, every tensor's shape, dtype and finiteness; the message names each
problem), or a write that failed (a full disk: the file is named; every file is written whole or
not at all, and generate.json lists what was drawn).

Limits: audio longer than 10 minutes (audio.MAX_SECONDS) is skipped, found from its header
before it is decoded. Voices are read, drawn and written 64 at a time, so any number of files
runs in bounded memory, with a progress line per 64 on stderr; the contact sheet shows the first
64 faces.

`--per-speaker` draws one face per speaker instead, from all of its clips (E's unit embeddings
of the clips averaged, then G): each --audio is a folder (all audio under it is one speaker,
named after the folder), `NAME=FILE,FILE,...`, or a file (a clip of the speaker named after its
folder). A skipped clip is reported (exit 1) and the speaker drawn from the rest.

Examples:
  v2f generate --model wen2019.safetensors --audio a.wav b.m4a --out faces/
  v2f generate --model wen2019.safetensors --per-speaker --audio vox1/wav/id10001 \
      anna=anna1.wav,anna2.wav --out faces/
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
    parser.add_argument(
        "--per-speaker",
        action="store_true",
        help="one face per speaker from all of its clips (their voice embeddings averaged): "
        "each --audio is then a folder (one speaker, named after it), NAME=FILE,FILE,... or a "
        "file (a clip of the speaker named after its folder)",
    )


def _progress(done: int, total: int) -> None:
    print(f"v2f generate: {done}/{total} voices", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from v2f_jax import files
    from v2f_jax.inference import generate

    try:
        model = export_command.load_source(args)
        generate.check_frontend(model, args.frontend)
    except export_command.SOURCE_ERRORS as err:
        return arguments.usage_error("generate", err)
    try:
        if args.per_speaker:
            groups = generate.speaker_groups(args.audio)
            result = generate.generate_per_speaker(
                model, groups, args.out, min_seconds=args.min_seconds
            )
        else:
            result = generate.generate(
                model,
                args.audio,
                args.out,
                min_seconds=args.min_seconds,
                progress=_progress if len(args.audio) > generate.CHUNK_VOICES else None,
            )
    except files.WriteError as err:  # the disk full: the file named, nothing half written
        return arguments.usage_error("generate", err)
    except OSError as err:  # --out not writable
        return arguments.usage_error("generate", f"cannot write to {args.out}: {err}")
    for item in result.items:
        for clip in item.get("skipped", ()):
            print(f"v2f generate: {clip['path']}: {clip['reason']}", file=sys.stderr)
        if "reason" in item:
            what = item["path"] if "path" in item else f"speaker {item['speaker']}"
            print(f"v2f generate: {what}: {item['reason']}", file=sys.stderr)
    print(f"v2f generate: {result.summary}")
    return 1 if result.n_failed else 0
