"""Files written whole or not at all.

A reader sees the old file or the new one, never half of one: the bytes go to a hidden temporary
file beside the target, which replaces it only once complete and synced. A write that fails (a
full disk, a signal turned exception) removes the temporary file, so nothing half done is left.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def temporary_beside(path: str | os.PathLike) -> str:
    """The hidden temporary name this process writes `path` under (`.NAME.tmpPID`)."""
    path = os.fspath(path)
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp{os.getpid()}")


@contextlib.contextmanager
def replacing(path: str | os.PathLike, *, sync: bool = True) -> Iterator[str]:
    """`with replacing(path) as tmp:` write the new file at `tmp`; on a clean exit it replaces
    `path` (after an fsync where `sync`), on an exception it is removed and `path` is untouched.
    """
    tmp = temporary_beside(path)
    try:
        yield tmp
        if sync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, os.fspath(path))
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes, *, sync: bool = True) -> None:
    """`data` as the whole of `path`, atomically (see the module docstring)."""
    with replacing(path, sync=sync) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str, *, sync: bool = True) -> None:
    """`text` (UTF-8) as the whole of `path`, atomically."""
    write_bytes(path, text.encode("utf-8"), sync=sync)
