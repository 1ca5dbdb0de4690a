"""Train the GAN, or pretrain the voice embedder E, from the records of `v2f prepare`.

    v2f train --config configs/wen2019.py --records records/ --workdir runs/wen2019 \\
        [--config.train.steps=1000 ...]

Run the same command again to resume: a workdir with checkpoints continues from the newest
complete one, with the same batches and the same numbers as a run never stopped. SIGTERM or
SIGINT (Ctrl-C), at any moment, stops the run cleanly: the step in flight finishes, a checkpoint
is saved, and the command exits 0 (a signal before the first step saves nothing); a second
signal does not cut the save short. A run killed outright (SIGKILL) resumes from its last
complete checkpoint. E pretraining: `--config configs/embedder.py`; then start the GAN from it
with `--config.train.embedder_init=WORKDIR_OF_THAT_RUN` (or an exported model file).

Several hosts: run the command on each with `--coordinator HOST:PORT --num-processes N
--process-id I` (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, or SLURM/Open
MPI); every host reads its own record files; `train.batch_size` is the global batch.

One run per workdir: a second `v2f train` on a workdir in use is refused (exit 2) with the
holder's pid and host. A resumed run may change only how long it trains and how often it logs,
samples and saves (`workdir.RESUMABLE`, recorded in WORKDIR/config_changes.jsonl); any other
changed setting is refused by name. The front end, mel bins and image size come from the
records' manifest. A GAN with a frozen E needs `train.embedder_init` (or `=random`, on purpose).

Every config value is checked against its rule (`config_checks.RULES`: type and range, one rule
for each setting of configs/wen2019.py; a key no rule knows is a typo) before anything is
compiled or written; so are `train.batch_size` against the training split (a batch never
repeats a sample) and the records' manifest field by field. `train.steps` must be at least 1
(0 is refused: a run that trains nothing is a mistake); a resumed run whose checkpoint is
already at `train.steps` does nothing and says so. A resumed run checks its config.json (one
edited by hand into other types is named) and WORKDIR/records.json: the records it trained on
(their manifest's sha256), so other records are refused, and the same records moved are not.

Exit status: 0 done (or stopped by SIGTERM/SIGINT, with a checkpoint of the step in flight), 2
bad arguments/config/records, a workdir in use, a file, or not writable, or a tf.data service
that cannot be reached; 3 a non-finite loss (the message names the step and the loss); 4 the
disk refused a write mid-run (full, quota, read-only): one message, the last complete checkpoint
kept.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import signal
import sys

from v2f_jax.commands import arguments

EXIT_OK, EXIT_USAGE, EXIT_NONFINITE, EXIT_WRITE = 0, arguments.EXIT_USAGE, 3, 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.add_config(parser)
    parser.add_argument("--records", required=True, type=pathlib.Path, help="v2f prepare --out")
    parser.add_argument("--workdir", required=True, type=pathlib.Path, help="run directory")
    group = parser.add_argument_group("multi-host (default: one process, or from the environment)")
    group.add_argument(
        "--coordinator",
        default=None,
        help="HOST:PORT of process 0, or 'auto': JAX detects the cluster (TPU pods, GKE, SLURM)",
    )
    group.add_argument("--num-processes", type=int, default=None, help="number of processes")
    group.add_argument("--process-id", type=int, default=None, help="this process's index")


class _Stderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a line is logged (a command run again in the
    same process, under another stderr, never logs to a closed stream)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        del value


def _setup_logging() -> None:
    log = logging.getLogger("v2f")
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def run(args: argparse.Namespace) -> int:
    _setup_logging()
    from v2f_jax.training import distributed

    # From the first moment: a signal while the run starts stops it cleanly (train.py).
    previous = distributed.catch_stop_signals()
    try:
        # Before any other JAX call.
        try:
            joined = distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        except distributed.DistributedError as err:
            print(f"v2f train: {err}", file=sys.stderr)
            return EXIT_USAGE
        if joined:
            # Several hosts agree on the stopping step through JAX's preemption notice
            # (SIGTERM); Ctrl-C on one host ends that host's process.
            distributed.restore_signals({k: v for k, v in previous.items() if k == signal.SIGINT})
        return _run(args)
    finally:
        distributed.restore_signals(previous)


def _run(args: argparse.Namespace) -> int:
    import jax

    from v2f_jax import checkpointing, config_checks, config_lib, files, train
    from v2f_jax.input_pipeline import errors
    from v2f_jax.training import distributed, nonfinite, workdir

    if os.path.lexists(args.workdir) and not os.path.isdir(args.workdir):
        print(f"v2f train: {os.path.abspath(args.workdir)}: exists and is not a directory",
              file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    try:
        workdir.check_not_in_use(args.workdir)
    except workdir.WorkdirError as err:
        print(f"v2f train: {err}", file=sys.stderr)
        return EXIT_USAGE
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
        errors.ServiceError,
        checkpointing.CheckpointError,
        workdir.WorkdirError,
        files.WriteError,
        # The reader's refusals of records it cannot batch (fewer shard files than hosts, a
        # host with less than one batch): input it cannot do without, named, not a traceback.
        ValueError,
    ) as err:
        print(f"v2f train: {err}", file=sys.stderr)
        return EXIT_USAGE
    if jax.process_index() == 0:
        shown = " ".join(f"{k}={v:.4f}" for k, v in result.items() if k.startswith("train/"))
        stopped_by = distributed.stop_signal_name() or "preemption"
        state = f"stopped ({stopped_by})" if result.get("preempted") else "done"
        print(f"v2f train: {state} at step {result['step']}: {shown}", file=sys.stderr)
    return EXIT_OK
