"""Generate the built-in corpus: synthetic voices and faces of the same latent identities, in the
VoxCeleb1 / VGGFace layouts (`voices/`, `faces/`, `vox1_meta.csv`), so the whole pipeline runs
with no download. Same seed, same bytes.

Example: `v2f synth --out data/synth --identities 24 --utterances 4 --faces 4`; with
`--durations voxceleb`, utterances as long as VoxCeleb1's (input-pipeline benchmarks and `v2f
demo`); with `--corpus b`, a second corpus built otherwise (other voice and face generators,
other voice-face links: `v2f_jax/synthetic/corpus_b.py`), to tune a recipe on one and confirm
it on the other.
"""

from __future__ import annotations

import argparse

from v2f_jax.commands import arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.add_out_dir(parser, "output directory (created if needed)")
    arguments.add_count(parser, "--identities", 24, "people, at least 4")
    arguments.add_count(parser, "--utterances", 4, "wavs per person")
    arguments.add_count(parser, "--faces", 4, "faces per person")
    parser.add_argument("--seed", type=int, default=0, help="everything follows from it")
    arguments.add_count(parser, "--face-size", 96, "side of the face PNGs in pixels")
    arguments.add_corpus_flags(parser, durations_default="short")
    arguments.add_count(
        parser,
        "--workers",
        None,
        "processes drawing people at once (default: all CPUs); the same files for any number",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a corpus already in --out"
    )


def run(args: argparse.Namespace) -> int:
    import os
    import time

    from v2f_jax.synthetic import writer

    start = time.perf_counter()
    try:
        summary = writer.make_corpus(
            args.out,
            identities=args.identities,
            utterances=args.utterances,
            faces=args.faces,
            seed=args.seed,
            face_size=args.face_size,
            overwrite=args.overwrite,
            durations=args.durations,
            corpus=args.corpus,
            workers=args.workers or os.cpu_count() or 1,
        )
    except (ValueError, FileExistsError) as err:
        return arguments.usage_error("synth", err)
    seconds = time.perf_counter() - start
    s = summary
    print(
        f"wrote {s['identities']} identities of corpus {s['corpus']} ({s['train_identities']} "
        f"train F-Z, "
        f"{s['test_identities']} test A-E; {s['male']} m, {s['female']} f) to {s['out_dir']}\n"
        f"  voices: {s['utterances']} wavs ({s['durations']} durations), "
        f"{s['audio_seconds']:.1f} s of 16 kHz audio in {s['voices_dir']}\n"
        f"  faces:  {s['faces']} PNGs, {s['face_size']}x{s['face_size']}, in {s['faces_dir']}\n"
        f"  meta:   {s['meta']}\n"
        f"  seed {s['seed']}, {seconds:.1f} s"
    )
    return 0
