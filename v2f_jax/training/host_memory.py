"""glibc malloc settings under which XLA:CPU reuses host memory instead of faulting it in.

XLA:CPU allocates a step's temporaries as one block (2.4 GB for the wen2019 step at batch 128)
and frees it when the step ends. By default glibc maps such a block afresh each time and the
kernel zeroes it page by page: ~600k page faults per step, about 10% of a CPU step (PyTorch's
iteration allocates the same way and loses more). With one arena, no mmap'd blocks and no
trimming, freed blocks stay in the heap and the next step reuses them; the process keeps its
peak footprint instead of returning it between steps.

They pay for large steps and cost small ones: with a single arena every thread, tf.data's
included, shares one heap lock, and `v2f demo`'s voice-embedder pretraining (batch 32, ~150
steps/s) ran 14 -> 22 s. So they are opt-in: `V2F_REUSE_HOST_MEMORY=1 v2f train ...`. glibc
reads them only at process start, so the `v2f` command then re-executes itself once with them
(`reexec_with_memory_reuse`); any of them already set is left as the user set it.
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
OPT_IN = "V2F_REUSE_HOST_MEMORY"


def settings_in_effect() -> dict[str, str | None]:
    """The malloc variables of this process's environment (None where unset)."""
    return {name: os.environ.get(name) for name in SETTINGS}


def should_reexec(environ=os.environ) -> bool:
    """True on Linux/glibc when asked for (`OPT_IN=1`) and neither the user nor an earlier exec
    chose malloc settings."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    if environ.get(OPT_IN) != "1":
        return False
    return not any(name in environ for name in SETTINGS)


def reexec_with_memory_reuse(argv: Sequence[str]) -> None:
    """Replaces this process by `python argv...` with `SETTINGS` added, where `should_reexec`.

    The process id stays the same (signals and process managers see one process). Returns
    without doing anything otherwise.
    """
    if should_reexec():
        os.execve(sys.executable, [sys.executable, *argv], {**os.environ, **SETTINGS})
