"""argparse types shared by the subcommands: a value out of range is a usage error (exit 2)
that names the flag, before any work starts."""

from __future__ import annotations

import argparse
import math
import os
import pathlib


def positive_int(text: str) -> int:
    """An integer >= 1 (`--workers`, `--shards-per-split`, counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


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
