"""glibc malloc settings under which XLA:CPU reuses host memory instead of faulting it in.

XLA:CPU allocates a step's temporaries as one block (2.4 GB for the wen2019 step at batch 128)
and frees it when the step ends. By default glibc maps such a block afresh each time and the
kernel zeroes it page by page: ~600k page faults per step, about 10% of a CPU step (PyTorch's
iteration allocates the same way and loses more). With one arena, no mmap'd blocks and no
trimming, freed blocks stay in the heap and the next step reuses them; the process keeps its
peak footprint instead of returning it between steps.

glibc reads these settings only at process start, so the `v2f` command re-executes itself once
with them (`reexec_with_memory_reuse`). Set any of them yourself, or `V2F_SYSTEM_MALLOC=1`, and
it leaves the environment alone.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence

SETTINGS = {
    "MALLOC_ARENA_MAX": "1",  # every thread allocates from the main heap (grown by brk) ...
    "MALLOC_MMAP_MAX_": "0",  # ... which also serves large blocks, never mmap ...
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),  # ... and keeps what is freed for reuse
}
OPT_OUT = "V2F_SYSTEM_MALLOC"


def settings_in_effect() -> dict[str, str | None]:
    """The malloc variables of this process's environment (None where unset)."""
    return {name: os.environ.get(name) for name in SETTINGS}


def should_reexec(environ=os.environ) -> bool:
    """True on Linux/glibc when neither the user nor an earlier exec chose malloc settings."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    if environ.get(OPT_OUT) == "1":
        return False
    return not any(name in environ for name in SETTINGS)


def reexec_with_memory_reuse(argv: Sequence[str]) -> None:
    """Replaces this process by `python argv...` with `SETTINGS` set, where `should_reexec`.

    The process id stays the same (signals and process managers see one process). Returns
    without doing anything otherwise.
    """
    if should_reexec():
        os.execve(sys.executable, [sys.executable, *argv], {**os.environ, **SETTINGS})
