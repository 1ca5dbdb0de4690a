"""Helpers of the hostile-input tests (tests/test_bad_inputs*.py): odd files made on the spot, a
disk that refuses writes, a look for leftovers, and functions the worker-pool tests run in other
processes (they must be importable there, hence a module of their own)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import resource
import signal
import struct
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


# --- a disk that refuses writes ------------------------------------------------------------------


@contextlib.contextmanager
def file_size_limit(max_bytes: int):
    """Within the block, this process cannot write a file past `max_bytes`: a write there fails
    with EFBIG, as one to a full disk fails with ENOSPC (SIGXFSZ, which would end the process
    instead, is ignored). Every writer is hit, the real code path, nothing patched."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


# Runs the rest of argv under a file-size limit (a subprocess's view of a full disk).
LIMITED = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def v2f(*argv, limit: int | None = None, timeout: float = 300, **kwargs):
    """`python -m v2f_jax.cli ARGV` in a subprocess (under a file-size limit where given)."""
    prefix = [sys.executable] if limit is None else [sys.executable, "-c", LIMITED, str(limit)]
    return subprocess.run(
        [*prefix, "-m", "v2f_jax.cli", *map(str, argv)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


# Python source that prints, on stderr's last line, this process's own peak resident memory in
# KB. Not getrusage's ru_maxrss: it survives exec, so a child forked from a big pytest process
# would report the parent's peak.
PRINT_PEAK_RSS_KB = (
    "import re as _re, sys as _sys; "
    "print(_re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read())[1], "
    "file=_sys.stderr)"
)


def peak_rss_kb(stderr: str) -> int:
    """The figure `PRINT_PEAK_RSS_KB` printed: the last line of a child's stderr."""
    return int(stderr.strip().splitlines()[-1])


def leftovers(root: pathlib.Path) -> list[str]:
    """Temporary files under `root` (`.NAME.tmpPID`, `NAME.tmpPID`): what a write that failed or
    was cut short must not leave behind."""
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if ".tmp" in p.name and p.is_file()
    )


def snapshot(root: pathlib.Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# --- odd audio ----------------------------------------------------------------------------------


def speech(seconds: float = 2.0, rate: int = 16_000, seed: int = 0) -> np.ndarray:
    """A voiced signal webrtcvad takes for speech (a buzzy tone with a moving pitch and some
    noise): float64 `[N]` in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t) ** 2
    return np.clip(0.25 * voiced * envelope + 0.01 * rng.standard_normal(t.size), -1, 1)


def write_wav(path: pathlib.Path, data: np.ndarray, rate: int, subtype: str) -> pathlib.Path:
    import soundfile

    soundfile.write(str(path), data, rate, subtype=subtype)
    return path


def sparse_wav(path: pathlib.Path, seconds: float, rate: int = 16_000) -> pathlib.Path:
    """A 16-bit mono WAV of `seconds` of silence, written as a header and a hole: hours of audio
    in a blink and no disk space."""
    n_bytes = int(seconds * rate) * 2
    header = b"RIFF" + struct.pack("<I", 36 + n_bytes) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    header += b"data" + struct.pack("<I", n_bytes)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + n_bytes)
    return path


def wav_header_with(path: pathlib.Path, out: pathlib.Path, **fields) -> pathlib.Path:
    """A copy of a canonical 44-byte-header WAV with header fields replaced: `riff_size`,
    `rate`, `channels`, `data_size`."""
    data = bytearray(path.read_bytes())
    assert data[:4] == b"RIFF" and data[36:40] == b"data", "a canonical WAV header"
    at = {"riff_size": (4, "<I"), "channels": (22, "<H"), "rate": (24, "<I"),
          "data_size": (40, "<I")}  # fmt: skip
    for name, value in fields.items():
        offset, fmt = at[name]
        data[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    out.write_bytes(bytes(data))
    return out


# --- run in worker processes --------------------------------------------------------------------


def die_on(task):
    """For `prepare._map_ordered`: `(value, mode, marker)`. mode "once": the first process to
    see this task is killed (SIGKILL, as the OOM killer does), a second decodes it; "always":
    every process that tries is killed; "": no harm."""
    value, mode, marker = task
    if mode == "always" or (mode == "once" and not os.path.exists(marker)):
        if mode == "once":
            open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return ("ok", value * 10, 0.0, 0.0)


def sigint_handler(task):
    """For `prepare._map_ordered`: what Ctrl-C does in this process (`signal.getsignal`)."""
    return ("ok", repr(signal.getsignal(signal.SIGINT)), 0.0, 0.0)


def half_a_result(task):
    """For `prepare._map_ordered`: `(value, marker)`. With a marker, this process starts sending a
    1 MiB result, stops after its first bytes (touching `marker`) and waits to be killed: as a
    decoder is when the pool is abandoned while it sends a big spectrogram back."""
    import gc
    import multiprocessing.queues

    value, marker = task
    if not marker:
        return ("ok", value * 10, 0.0, 0.0)
    results = next(o for o in gc.get_objects() if type(o) is multiprocessing.queues.SimpleQueue)
    os.write(results._writer.fileno(), struct.pack("!i", 1 << 20) + b"x" * 16)
    open(marker, "w").close()
    time.sleep(600)
