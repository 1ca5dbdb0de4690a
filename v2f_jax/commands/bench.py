"""Measure throughput; print one JSON line.

Modes:
  step      (default) the full GAN training step on synthetic data: compile time, median step
            time and its spread, samples/s and steps/s (total and per device), FLOPs/step from
            XLA's cost analysis, GFLOP/s, and the share of a matmul peak measured in the same run.
  input     the training reader over real shards (`--records`, from `v2f prepare`): samples/s,
            samples per CPU-second and bytes per sample sent to the device, against the step's
            demand (measured here unless `--demand` is given); `--in-host-memory` and
            `--on-device` for the feeds from a split held in memory.
  gather    the device-resident feed's device side alone, on a synthetic split, no TensorFlow
            needed: batches gathered on the devices from index batches (`--batch`).
  prepare   the feature front end (decode + VAD + log-mel) over audio files: audio seconds per
            CPU-second.
  generate  E + G forward latency at batch 1 and 64.

Examples:
  v2f bench --config configs/wen2019.py --batch 128 --frames 800 --dtype bfloat16
  v2f bench --config configs/wen2019.py --mode input --records records/
  v2f bench --config configs/wen2019.py --mode prepare --audio voices/*/*/*.wav
The PyTorch comparison is `python benchmarks/compare_pytorch.py` (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import pathlib

from v2f_jax.commands import arguments

MODES = ("step", "input", "gather", "prepare", "generate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    arguments.add_config(parser)
    parser.add_argument("--mode", choices=MODES, default="step")
    parser.add_argument("--batch", type=int, default=None, help="global batch (config's default)")
    parser.add_argument(
        "--frames",
        type=int,
        default=None,
        help="voice frames per example (default: the config's longest crop)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help="compute dtype (config's default); parameters stay float32",
    )
    parser.add_argument(
        "--impl",
        default=None,
        help="conv forms: auto | xla | subpixel | matmul | winograd (config's default)",
    )
    parser.add_argument("--parallel", choices=("jit", "pmap"), default=None)
    parser.add_argument(
        "--matmul-precision",
        choices=("default", "high", "highest"),
        default=None,
        help="the step's matmul/conv precision (config's default, model.matmul_precision)",
    )
    parser.add_argument(
        "--steps-per-call",
        type=int,
        default=None,
        help="step mode: steps per dispatch, K (config's train.steps_per_call)",
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=None,
        help="step mode: use the first N devices (default: all)",
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps (or batches, calls)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument(
        "--num-ids",
        type=int,
        default=None,
        help="identities for C (default: config.model.num_ids, else 924)",
    )
    parser.add_argument("--no-peak", action="store_true", help="skip the matmul peak")
    parser.add_argument("--records", type=pathlib.Path, help="input mode: v2f prepare --out")
    held = parser.add_mutually_exclusive_group()
    held.add_argument(
        "--on-device",
        action="store_true",
        help="input mode: the device-resident feed (config.data.on_device): the host's index "
        "stream, and the gather on the devices",
    )
    held.add_argument(
        "--in-host-memory",
        action="store_true",
        help="input mode: the split held in host memory (config.data.in_host_memory): index "
        "stream and numpy gather",
    )
    parser.add_argument(
        "--demand",
        type=float,
        default=None,
        help="input mode: the step's samples/s (default: measure it here)",
    )
    arguments.add_audio_files(parser, required=False)
    parser.add_argument("--frontend", default="wen2019", help="prepare mode: front end")


def run(args: argparse.Namespace) -> int:
    from v2f_jax import config_lib, ops
    from v2f_jax.bench import gather, generate, input_feed, prepare, step

    try:
        config = config_lib.load_config(args.config, getattr(args, "config_overrides", []))
        config = step.apply_step_overrides(
            config,
            batch_size=args.batch,
            dtype=args.dtype,
            parallel_mode=args.parallel,
            impl=args.impl,
            matmul_precision=args.matmul_precision,
        )
        ops.conv.forms_for(config.model.impl)  # a bad name fails here, not mid-compile
        steps_per_call = args.steps_per_call or int(config.train.steps_per_call)
        if steps_per_call < 1:
            raise ValueError(f"--steps-per-call must be >= 1, not {steps_per_call}")
    except (config_lib.ConfigError, ValueError) as err:
        return arguments.usage_error("bench", err)
    frames = args.frames or max(config.data.crop_lengths)
    num_ids = args.num_ids or int(config.model.num_ids or 0) or step.DEFAULT_NUM_IDS

    if args.mode == "step":
        result = step.bench_step(
            config,
            frames=frames,
            steps=args.steps,
            warmup=args.warmup,
            num_ids=num_ids,
            peak=not args.no_peak,
            devices=args.devices,
            steps_per_call=steps_per_call,
        )
    elif args.mode == "generate":
        result = generate.bench_generate(config, frames=frames, repeats=args.steps, num_ids=num_ids)
    elif args.mode == "gather":
        result = gather.bench_gather(config, batch_size=config.train.batch_size, calls=args.steps)
    elif args.mode == "input":
        if args.records is None:
            return arguments.usage_error(
                "bench", "--mode input needs --records DIR (from v2f prepare)"
            )
        demand = args.demand
        if demand is None:
            demand_run = step.bench_step(
                config,
                frames=frames,
                steps=3,
                warmup=1,
                num_ids=num_ids,
                peak=False,
                devices=args.devices,
            )
            demand = demand_run["samples_per_s"]
        try:
            result = input_feed.bench_input(
                config,
                args.records,
                batch_size=config.train.batch_size,
                batches=args.steps,
                demand_samples_per_s=demand,
                feed=(
                    "on_device"
                    if args.on_device
                    else "host_memory"
                    if args.in_host_memory
                    else "streaming"
                ),
            )
        except (OSError, ValueError) as err:
            return arguments.usage_error("bench", f"{args.records}: {err}")
    else:
        if not args.audio:
            return arguments.usage_error("bench", "--mode prepare needs --audio FILE [FILE ...]")
        result = prepare.bench_prepare(args.audio, args.frontend)
    result["config"] = str(args.config)
    print(json.dumps(result, sort_keys=True))
    return 0
