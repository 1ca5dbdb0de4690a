"""`v2f`: one command-line tool, a thin subcommand per library entry point."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import os
import signal
import sys
import threading
from typing import NoReturn

from v2f_jax.training import host_memory

# name -> one-line help; the module v2f_jax.commands.<name, - as _> does the work.
COMMANDS = {
    "synth": "generate a built-in voice/face corpus in VoxCeleb/VGGFace layout",
    "prepare": "turn voices, faces and metadata into pre-sharded TFRecords",
    "features": "write the log-mel features of wav files as .npy",
    "train": "train the GAN (or pretrain the voice embedder) from records",
    "eval": "1:2 matching, retrieval and identity accuracy on the test split",
    "export": "write E and G parameters (or a PyTorch state dict) to one file",
    "generate": "draw a face PNG for each voice",
    "bench": "measure step, input-pipeline, prepare and generate throughput",
    "demo": "synthesise, prepare, train, evaluate and generate, end to end",
    "data-service": "run the tf.data service dispatcher or a worker on an input machine",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="v2f", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        try:
            module_name = f"v2f_jax.commands.{name.replace('-', '_')}"
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue  # tests/test_cli.py insists every command exists in a release
        sub = subparsers.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one command; its exit status. Ctrl-C or SIGTERM at any moment (outside `v2f train`
    and the servers, which handle them themselves) ends it with one line and 128 + the signal's
    number; every file it was writing is removed by the unwinding (`files.replacing`), not left
    half done."""
    argv = sys.argv[1:] if argv is None else argv
    previous = _terminate_as_interrupt()
    command = next((a for a in argv if a in COMMANDS), "")
    try:
        parser = build_parser()
        # `--config.a.b=value` overrides are collected by the commands that take a config.
        args, extra = parser.parse_known_args(argv)
        unknown = [a for a in extra if not a.startswith("--config.")]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.config_overrides = [a for a in extra if a.startswith("--config.")]
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        name = _interrupted_by[0] if _interrupted_by else "SIGINT"
        who = f"v2f {command}" if command else "v2f"
        print(f"{who}: interrupted ({name}); nothing half written is left", file=sys.stderr)
        return 128 + signal.Signals[name].value
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


_interrupted_by: list[str] = []


def _terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt (main thread only); returns the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None
    del _interrupted_by[:]

    def handler(signum, frame):
        _interrupted_by.append(signal.Signals(signum).name)
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def exit_after(code: int) -> NoReturn:
    """Ends the process with `code`, the status of a command whose work is done.

    The interpreter's teardown takes a second or more with TensorFlow and JAX loaded. A Ctrl-C or
    SIGTERM in it must not turn a finished run into death by a signal, nor raise
    KeyboardInterrupt inside the joins of its threads and processes, which can then wait
    forever: until the exit handlers are done, such a signal ends the process at once with
    `code`; after them, while the modules are torn down, it is ignored."""

    def now(signum, frame):
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)

    signal.signal(signal.SIGINT, now)  # the process's main thread: the only caller
    signal.signal(signal.SIGTERM, now)
    sys.exit(code)


def _ignore_stop_signals() -> None:
    # Python puts back the default (deadly) action for `now` before tearing the modules down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def run_and_exit() -> NoReturn:
    """`main` on the process's arguments, then `exit_after` its status."""
    # Registered before any command imports its libraries, so it runs after all their handlers.
    atexit.register(_ignore_stop_signals)
    exit_after(main())


def entry() -> None:
    """The `v2f` console script: `run_and_exit`, first re-executed under malloc settings that
    reuse host memory where `V2F_REUSE_HOST_MEMORY=1` (`host_memory`)."""
    host_memory.reexec_with_memory_reuse(sys.argv)
    run_and_exit()


if __name__ == "__main__":
    run_and_exit()
