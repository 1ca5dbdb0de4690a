"""What the subcommands share: argparse types (a value out of range is a usage error, exit 2,
that names the flag, before any work starts), the flags several commands take, and the one way
a command reports a usage error."""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys
from collections.abc import Callable

EXIT_USAGE = 2  # a bad argument, config or input the command cannot do without


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `low`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = "positive_int" if low == 1 else f"int_at_least_{low}"
    return parse


positive_int = int_at_least(1)  # `--workers`, `--shards-per-split`, counts
non_negative_int = int_at_least(0)


def seconds(text: str) -> float:
    """A finite number of seconds >= 0 (`--min-seconds`)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def out_dir(text: str) -> pathlib.Path:
    """An output directory: missing (it is created) or a directory, never an existing file."""
    path = pathlib.Path(text)
    if os.path.lexists(path) and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a directory")
    return path


def add_count(
    parser: argparse.ArgumentParser, flag: str, default: int | None, what: str, at_least: int = 1
) -> None:
    """`flag N`: an integer >= `at_least`; its help is `what` and the default."""
    shown = "" if default is None else f" (default {default})"
    parser.add_argument(flag, type=int_at_least(at_least), default=default, help=what + shown)


def add_out_dir(
    parser: argparse.ArgumentParser, what: str = "output directory", required: bool = True
) -> None:
    """`--out DIR`: created where missing; an existing file there is a usage error."""
    parser.add_argument("--out", required=required, default=None, type=out_dir, help=what)


def add_audio_files(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """`--audio FILE [FILE ...]`: audio files any decoder reads."""
    parser.add_argument(
        "--audio", nargs="+", required=required, default=None, metavar="FILE", help="audio files"
    )


def add_min_seconds(parser: argparse.ArgumentParser, action: str) -> None:
    """`--min-seconds S`: speech a file must have after VAD; `action` says what happens to one
    with less ("reject", "skip")."""
    parser.add_argument(
        "--min-seconds",
        type=seconds,
        default=0.5,
        help=f"{action} a file with less speech than this after VAD (default 0.5)",
    )


def add_config(parser: argparse.ArgumentParser) -> None:
    """`--config FILE[:ARG]`; `--config.key=value` overrides are collected by `cli.main`."""
    parser.add_argument(
        "--config", required=True, type=pathlib.Path, help="configs/*.py file (FILE:ARG too)"
    )


def usage_error(command: str, err: object) -> int:
    """Prints `v2f COMMAND: error: ERR` on stderr; returns the exit status 2."""
    print(f"v2f {command}: error: {err}", file=sys.stderr)
    return EXIT_USAGE


def add_corpus_flags(parser: argparse.ArgumentParser, durations_default: str) -> None:
    """`--corpus a|b` and `--durations short|voxceleb`: which built-in corpus, and how long its
    utterances are (`v2f synth`, `v2f demo`)."""
    parser.add_argument(
        "--corpus",
        choices=("a", "b"),
        default="a",
        help="a: the built-in corpus (default); b: built otherwise (FOF voices, shaded faces, "
        "other voice-face links), to confirm on it what was tuned on a",
    )
    parser.add_argument(
        "--durations",
        choices=("short", "voxceleb"),
        default=durations_default,
        help=f"utterance lengths (default {durations_default}): short, 2.5-4.5 s files; "
        "voxceleb, like VoxCeleb1's after VAD: at least 4 s of speech, mean ~8.2 s, median "
        "~6.9 s, up to 30 s",
    )
