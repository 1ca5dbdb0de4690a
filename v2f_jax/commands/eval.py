"""Score a trained model on the test split (identities never seen in training).

1:2 matching (all impostors, and same-gender impostors), retrieval recall@1/5/10 over galleries of
test identities, and identity accuracy top-1/top-5 of faces generated from training voices; all
scored by a face embedder trained on the training split's real faces only (cached by the records'
manifest, and copied next to the report). Writes OUT/eval.json, OUT/eval.md, OUT/eval.png and
OUT/face_embedder.safetensors; OUT defaults to WORKDIR/eval (or MODEL's stem + `_eval`).
The report's three files are replaced together, each whole (a full disk leaves the previous
report as it was).

Exit status 2, before anything is trained or written: a source that cannot be used, records
without a test split, or with fewer than two test identities that have both voices and faces
(1:2 matching needs an impostor: never a `nan%` figure); also a write that failed (named).

Examples:
  v2f eval --workdir runs/wen2019 --records records/
  v2f eval --model wen2019.safetensors --records records/ --out eval/
  v2f eval --workdir runs/tiny --records records/ --config.eval.gallery_size=20
"""

from __future__ import annotations

import argparse
import os
import sys

from v2f_jax.commands import arguments
from v2f_jax.commands import export as export_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    export_command.add_source_arguments(parser)
    parser.add_argument("--records", required=True, help="a `v2f prepare` output directory")
    arguments.add_out_dir(parser, "report directory (default: see above)", required=False)
    parser.add_argument(
        "--face-embedder",
        default=None,
        metavar="FILE",
        help="score with this face embedder (e.g. another report's) instead of the cached one",
    )
    arguments.add_count(
        parser,
        "--max-train-voices",
        2000,
        "training utterances generated for identity accuracy, 0: all",
        at_least=0,
    )


def default_out(args: argparse.Namespace) -> str:
    if args.out:
        return args.out
    if args.workdir or (args.model and os.path.isdir(args.model)):
        return os.path.join(args.workdir or args.model, "eval")
    if args.model:
        return os.path.splitext(args.model)[0] + "_eval"
    return os.path.join(os.path.dirname(os.path.abspath(args.torch_generator)), "eval")


def run(args: argparse.Namespace) -> int:
    from v2f_jax import config_lib
    from v2f_jax.evaluation import evaluate
    from v2f_jax.input_pipeline import manifest

    out = default_out(args)
    try:
        model = export_command.load_source(args)
        # `--config.eval.*` overrides the run's own evaluation settings.
        config_lib.apply_overrides(model.config, args.config_overrides)
        result = evaluate.evaluate(
            model,
            manifest.Records.open(args.records),
            out,
            face_embedder_path=args.face_embedder,
            max_train_voices=args.max_train_voices,
            log=lambda msg: print(f"v2f eval: {msg}", file=sys.stderr),
        )
    except export_command.SOURCE_ERRORS as err:
        return arguments.usage_error("eval", err)
    print(summary(result, out))
    return 0


def summary(r: dict, out: str) -> str:
    pct = lambda x: "n/a" if x is None or x != x else f"{100 * x:.1f}%"  # NaN: nothing to score
    c = r["counts"]
    return "\n".join(
        [
            f"1:2 matching {pct(r['matching_1v2'])} (same gender {pct(r['matching_1v2_gender'])}; "
            f"chance 50%) over {c['test_voices']} voices of {c['test_identities']} test identities",
            f"recall@1/5/10 {pct(r['recall_at_1'])} / {pct(r['recall_at_5'])} / "
            f"{pct(r['recall_at_10'])} (gallery of {c['gallery_size']})",
            f"identity top-1/top-5 {pct(r['id_top1'])} / {pct(r['id_top5'])} over "
            f"{c['train_identities']} training identities",
            f"report: {os.path.join(out, 'eval.md')}",
            f"picture: {os.path.join(out, 'eval.png')}",
        ]
    )
