"""Run everything once on built-in data: synthesise a small voice/face corpus, prepare it,
pretrain the voice embedder and train the GAN (tiny config), evaluate it (and the same networks
with the generator untrained: the chance baseline), and draw faces for held-out voices. Under 5
minutes on 2 CPU cores. Ends with the paths of the report (`eval.md`) and its picture.

Example: `v2f demo --out v2f-demo` (a rerun reuses the corpus, records and finished training).
"""

from __future__ import annotations

import argparse
import sys

from v2f_jax.commands import arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from v2f_jax import demo

    d = demo.DEFAULTS
    parser.add_argument(
        "--out",
        default="v2f-demo",
        type=arguments.out_dir,
        help="output directory (default v2f-demo)",
    )
    parser.add_argument(
        "--identities",
        type=arguments.positive_int,
        default=d["identities"],
        help=f"synthetic people, about a third held out (default {d['identities']})",
    )
    parser.add_argument(
        "--utterances",
        type=arguments.positive_int,
        default=d["utterances"],
        help=f"voices per person (default {d['utterances']})",
    )
    parser.add_argument(
        "--durations",
        choices=("short", "voxceleb"),
        default=d["durations"],
        help="utterance lengths (v2f synth --durations): voxceleb (default: 4-30 s of speech, "
        "as VoxCeleb1's) or short (2.5-4.5 s files: a quicker corpus)",
    )
    parser.add_argument(
        "--faces",
        type=arguments.positive_int,
        default=d["faces"],
        help=f"faces per person (default {d['faces']})",
    )
    parser.add_argument(
        "--embedder-steps",
        type=arguments.positive_int,
        default=d["embedder_steps"],
        help=f"voice-embedder pretraining steps (default {d['embedder_steps']})",
    )
    parser.add_argument(
        "--steps",
        type=arguments.positive_int,
        default=d["steps"],
        help=f"GAN training steps (default {d['steps']})",
    )
    parser.add_argument(
        "--embedder-batch-size",
        type=arguments.positive_int,
        default=d["embedder_batch_size"],
        help=f"global batch of E's pretraining (default {d['embedder_batch_size']})",
    )
    parser.add_argument(
        "--batch-size",
        type=arguments.positive_int,
        default=None,
        help="global batch of the GAN (default: configs/recipe.py:tiny's)",
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip evaluating the untrained generator"
    )
    parser.add_argument(
        "--seed", type=arguments.non_negative_int, default=0, help="corpus and training seed"
    )
    parser.add_argument(
        "--corpus",
        choices=("a", "b"),
        default="a",
        help="the built-in corpus (v2f synth --corpus): a (default) or b, built differently "
        "with other voice-to-face links",
    )


def run(args: argparse.Namespace) -> int:
    import logging

    from v2f_jax import demo

    logging.getLogger("v2f").setLevel(logging.INFO)
    say = lambda msg: print(f"v2f demo: {msg}", file=sys.stderr, flush=True)
    result = demo.run_demo(
        args.out,
        identities=args.identities,
        utterances=args.utterances,
        durations=args.durations,
        faces=args.faces,
        embedder_steps=args.embedder_steps,
        steps=args.steps,
        embedder_batch_size=args.embedder_batch_size,
        batch_size=args.batch_size,
        config_overrides=[o[len("--config.") :] for o in args.config_overrides],
        baseline=not args.no_baseline,
        seed=args.seed,
        corpus_kind=args.corpus,
        log=say,
    )
    print(demo.summary(result))
    return 0
