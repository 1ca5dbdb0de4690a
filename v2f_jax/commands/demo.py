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
    arguments.add_count(
        parser, "--identities", d["identities"], "synthetic people, about a third held out"
    )
    arguments.add_count(parser, "--utterances", d["utterances"], "voices per person")
    arguments.add_count(parser, "--faces", d["faces"], "faces per person")
    arguments.add_corpus_flags(parser, durations_default=d["durations"])
    arguments.add_count(
        parser, "--embedder-steps", d["embedder_steps"], "voice-embedder pretraining steps"
    )
    arguments.add_count(parser, "--steps", d["steps"], "GAN training steps")
    arguments.add_count(
        parser, "--embedder-batch-size", d["embedder_batch_size"], "global batch of E's pretraining"
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
