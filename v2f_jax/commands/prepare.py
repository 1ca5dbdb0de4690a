"""Turn voices, faces and VoxCeleb1 metadata into pre-sharded TFRecords for training.

Voices: `VOICES/<voxceleb id>/<video>/<utt>.wav` (or .m4a, ...), or the reference's processed
`.npy` log-mels in the same layout. Faces: `FACES/<VGGFace name>/<image>.jpg|png`. The meta file
(`vox1_meta.csv`) links the two and gives genders. Identities with both voices and faces are kept.

OUT gets `{voices,faces}-{train,test}-NNNNN-of-MMMMM.tfrecord`, `manifest.json` (counts, label
maps, genders, front end) and `rejects.jsonl` (one line per unusable file, with the reason). A
rerun keeps finished shards; the same inputs give byte-identical shards for any --workers.
Both splits need identities: the test split is what `v2f eval` and the sample grid hold out.

--out: a new or empty folder, or one prepare wrote before (a rerun keeps what is still good and
rebuilds a shard that was deleted or whose bytes changed, naming it). Refused: --out inside the
voices or faces directory, and a folder holding another tool's manifest.json, rejects.jsonl or
shard-like names (nothing there is overwritten or deleted; other files are left alone). Once a
rerun rewrites a shard, the records are refused by their readers until it writes its manifest,
so the shards of two runs (another --frontend, say) are never read together.

Metadata: UTF-8 (a BOM and CRLF line ends are fine), tab-separated, a header naming at least
`VoxCeleb1 ID` and `VGGFace1 ID`. A line that is not valid UTF-8, has the wrong number of fields
or repeats a VoxCeleb1 ID is a reject naming FILE:LINE; a face folder claimed by two VoxCeleb1
IDs is refused for both (their voices are rejects naming the lines); `--split meta` needs a Set
column. Audio longer than 10 minutes (audio.MAX_SECONDS) is a reject, found from its header
before it is decoded. A decoding process that dies (the OOM killer) does not stop the job: its
files are decoded again one process each, and one that kills that too is a reject.

Exit status: 0 done, 1 with --strict when a file was rejected, 2 bad arguments or inputs (a
missing directory, an unusable meta file, an --out that is not prepare's, no identities for a
split, every file of a split rejected) or a write that failed (a full disk: the file is named,
no partial file is left, finished shards are kept for the rerun).

Example: `v2f prepare --voices vox1/wav --faces vggface --meta vox1_meta.csv --out records/`
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

from v2f_jax.commands import arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--voices", required=True, type=pathlib.Path, help="voices directory")
    parser.add_argument("--faces", required=True, type=pathlib.Path, help="faces directory")
    parser.add_argument("--meta", required=True, type=pathlib.Path, help="vox1_meta.csv")
    arguments.add_out_dir(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--faces-aligned",
        dest="face_mode",
        action="store_const",
        const="aligned",
        help="faces are aligned crops: only resize to 64x64 (default)",
    )
    mode.add_argument(
        "--detect-faces",
        dest="face_mode",
        action="store_const",
        const="detect",
        help="raw photos: Haar face detection and eye alignment",
    )
    parser.set_defaults(face_mode="aligned")
    parser.add_argument(
        "--split",
        choices=("names", "meta"),
        default="names",
        help="names: A-E test, F-Z train, as the reference (default); meta: the Set column",
    )
    parser.add_argument(
        "--frontend",
        choices=("wen2019", "librosa"),
        default="wen2019",
        help="log-mel front end for audio inputs (default wen2019, the reference's)",
    )
    arguments.add_count(parser, "--workers", None, "decoding processes (default: all CPUs)")
    arguments.add_count(
        parser,
        "--shards-per-split",
        None,
        "shards per split and kind (default: ~512 voices or ~4096 faces per shard)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit non-zero if any file was rejected"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from v2f_jax import files
    from v2f_jax.input_pipeline import errors
    from v2f_jax.input_pipeline import prepare as prepare_lib

    try:
        result = prepare_lib.prepare(
            args.voices,
            args.faces,
            args.meta,
            args.out,
            face_mode=args.face_mode,
            split_rule=args.split,
            frontend=args.frontend,
            workers=args.workers,
            shards_per_split=args.shards_per_split,
            progress=not args.no_progress,
            require_test_split=True,
            log=lambda line: print(f"v2f prepare: {line}", file=sys.stderr, flush=True),
        )
    except (errors.BadInputError, ValueError) as err:
        return arguments.usage_error("prepare", err)
    except files.WriteError as err:  # the disk full: named; finished shards are kept
        return arguments.usage_error("prepare", err)
    except OSError as err:  # --out not writable
        return arguments.usage_error("prepare", f"cannot write to {args.out}: {err}")
    print(summary(result, args.out))
    if args.strict and result["rejects"]:
        print(
            f"v2f prepare: --strict: {len(result['rejects'])} rejected file(s), see "
            f"{os.path.join(args.out, 'rejects.jsonl')}",
            file=sys.stderr,
        )
        return 1
    return 0


def summary(result: dict, out_dir) -> str:
    """A few lines: per split identities/voices/faces, rejects by kind, shards, throughput."""
    m, s = result["manifest"], result["stats"]
    lines = []
    for split, e in m["splits"].items():
        lines.append(
            f"{split}: {e['num_identities']} identities, {e['num_voices']} voices "
            f"({e['voice_frames'] / 100 / 3600:.2f} h of speech), {e['num_faces']} faces"
        )
    r = m["rejects"]
    lines.append(
        f"rejected: {r['total']} (voice {r['voice']}, face {r['face']}, meta {r['meta']})"
        + (f" -> {os.path.join(out_dir, 'rejects.jsonl')}" if r["total"] else "")
    )
    line = (
        f"shards: {result['shards_written']} written, {result['shards_skipped']} already done; "
        f"{s['files']} files decoded in {s['wall_s']:.1f} s"
    )
    if s["files"] and s["wall_s"] > 0:
        line += f" ({s['files'] / s['wall_s']:.1f} files/s"
        if s["voices_cpu_s"] > 0:
            line += f"; voices: {s['audio_s'] / s['voices_cpu_s']:.0f} s of audio per CPU s"
        if s["faces_cpu_s"] > 0:
            line += f"; faces: {s['faces_files'] / s['faces_cpu_s']:.0f} per CPU s"
        line += ")"
    lines.append(line)
    lines.append(f"manifest: {os.path.join(out_dir, 'manifest.json')}")
    return "\n".join(lines)
