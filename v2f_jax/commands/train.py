"""Train the GAN, or pretrain the voice embedder E, from the records of `v2f prepare`.

    v2f train --config configs/wen2019.py --records records/ --workdir runs/wen2019 \\
        [--config.train.steps=1000 ...]

Run the same command again to resume: a workdir with checkpoints continues from the newest
complete one, with the same batches and the same numbers as a run never stopped. SIGTERM saves a
checkpoint and exits 0. E pretraining: `--config configs/embedder.py`; then start the GAN from it
with `--config.train.embedder_init=WORKDIR_OF_THAT_RUN` (or an exported model file).

Several hosts: run the command on each with `--coordinator HOST:PORT --num-processes N
--process-id I` (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, or SLURM/Open
MPI); every host reads its own record files; `train.batch_size` is the global batch.

One run per workdir: a second `v2f train` on a workdir in use is refused (exit 2) with the
holder's pid and host. A resumed run may change only how long it trains and how often it logs,
samples and saves (`workdir.RESUMABLE`, recorded in WORKDIR/config_changes.jsonl); any other
changed setting is refused by name. The front end, mel bins and image size come from the
records' manifest. A GAN with a frozen E needs `train.embedder_init` (or `=random`, on purpose).

Exit status: 0 done (or stopped by SIGTERM with a checkpoint), 2 bad arguments/config/records or
a workdir in use, 3 a non-finite loss (the message names the step and the loss), 4 the disk
refused a write (full, quota): one message, the last complete checkpoint kept.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys

from v2f_jax.commands import arguments

EXIT_OK, EXIT_USAGE, EXIT_NONFINITE, EXIT_WRITE = 0, arguments.EXIT_USAGE, 3, 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.add_config(parser)
    parser.add_argument("--records", required=True, type=pathlib.Path, help="v2f prepare --out")
    parser.add_argument("--workdir", required=True, type=pathlib.Path, help="run directory")
    group = parser.add_argument_group("multi-host (default: one process, or from the environment)")
    group.add_argument("--coordinator", default=None, help="HOST:PORT of process 0")
    group.add_argument("--num-processes", type=int, default=None, help="number of processes")
    group.add_argument("--process-id", type=int, default=None, help="this process's index")


def _setup_logging() -> None:
    log = logging.getLogger("v2f")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def run(args: argparse.Namespace) -> int:
    _setup_logging()
    from v2f_jax.training import distributed

    # Before any other JAX call.
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)

    import jax

    from v2f_jax import checkpointing, config_checks, config_lib, train
    from v2f_jax.input_pipeline import errors
    from v2f_jax.training import nonfinite, workdir

    try:
        config = config_lib.load_config(args.config, getattr(args, "config_overrides", []))
        config_checks.check(config)
        if not workdir.checkpoint_steps(args.workdir):  # a resumed run keeps the E it has
            config_checks.check_embedder_source(config)
    except config_lib.ConfigError as err:
        print(f"v2f train: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with workdir.held_errors() as background_errors:
            try:
                result = train.train(config, args.workdir, args.records)
            except Exception as err:
                code = workdir.write_failure(err)
                if code is None:
                    raise
                background_errors.discard()  # orbax's threads' copies of the same failure
                print(
                    f"v2f train: {workdir.write_failure_message(args.workdir, code)}",
                    file=sys.stderr,
                )
                return EXIT_WRITE
    except nonfinite.NonFiniteLossError as err:
        print(f"v2f train: {err}", file=sys.stderr)
        return EXIT_NONFINITE
    except (
        FileNotFoundError,
        config_lib.ConfigError,
        errors.BadInputError,
        checkpointing.CheckpointError,
        workdir.WorkdirError,
    ) as err:
        print(f"v2f train: {err}", file=sys.stderr)
        return EXIT_USAGE
    if jax.process_index() == 0:
        shown = " ".join(f"{k}={v:.4f}" for k, v in result.items() if k.startswith("train/"))
        state = "stopped (SIGTERM)" if result.get("preempted") else "done"
        print(f"v2f train: {state} at step {result['step']}: {shown}", file=sys.stderr)
    return EXIT_OK
