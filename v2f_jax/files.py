"""Files written whole or not at all, and a failed write that names its file.

A reader sees the old file or the new one, never half of one: the bytes go to a hidden temporary
file beside the target, which replaces it only once complete and synced. A write that fails (a
full disk, a signal turned exception) removes the temporary file, so nothing half done is left,
and is raised as `WriteError`, an OSError (errno kept) whose message names the target:
`cannot write PATH: No space left on device`. A temporary file left by a process that was killed
(SIGKILL, the OOM killer, a power cut) is removed by the next write of the same target.

Every file a command writes whole goes through `replacing` (or `write_bytes`/`write_text`,
`write_all` for a set of files that belong together).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator, Mapping

# A disk that refuses a write: full, over quota, past the file-size limit, read-only, no right.
REFUSED_WRITE_ERRNOS = (
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
)


class WriteError(OSError):
    """A write that failed: `str()` is `cannot write PATH: REASON`; `errno` is the OS's."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def named(err: OSError, path: str | os.PathLike) -> WriteError:
    """`err` (a failed write of `path`, or of its temporary file) as a WriteError naming `path`."""
    if isinstance(err, WriteError):
        return err
    reason = err.strerror or str(err) or type(err).__name__
    return WriteError(err.errno or errno.EIO, reason, os.fspath(path))


def temporary_beside(path: str | os.PathLike) -> str:
    """The hidden temporary name this process writes `path` under (`.NAME.tmpPID`)."""
    path = os.fspath(path)
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process: alive
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[str]:
    """Removes the temporary files of `path` that processes no longer running left behind
    (killed mid-write); returns their names. Another live process's temporary is kept."""
    path = os.fspath(path)
    folder, base = os.path.split(path)
    pattern = re.compile(rf"^\.{re.escape(base)}\.tmp(\d+)$")
    removed = []
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return removed
    for name in names:
        match = pattern.match(name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, name))
                removed.append(name)
    return removed


@contextlib.contextmanager
def replacing(path: str | os.PathLike, *, sync: bool = True) -> Iterator[str]:
    """`with replacing(path) as tmp:` write the new file at `tmp`; on a clean exit it replaces
    `path` (after an fsync where `sync`), on an exception it is removed and `path` is untouched.

    Raises:
      WriteError: the write, sync or rename failed (the OS error, with `path` named).
    """
    remove_stale_temporaries(path)
    tmp = temporary_beside(path)
    try:
        yield tmp
        if sync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, os.fspath(path))
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise named(err, path) from err
        raise


def write_bytes(path: str | os.PathLike, data: bytes, *, sync: bool = True) -> None:
    """`data` as the whole of `path`, atomically (see the module docstring).

    Raises:
      WriteError: naming `path`.
    """
    with replacing(path, sync=sync) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str, *, sync: bool = True) -> None:
    """`text` (UTF-8) as the whole of `path`, atomically."""
    write_bytes(path, text.encode("utf-8"), sync=sync)


def write_all(contents: Mapping[str | os.PathLike, bytes], *, sync: bool = True) -> None:
    """Files that belong together (a report and its picture): every temporary is written
    first, then all replace their targets. A failed write leaves every target as it was.

    Raises:
      WriteError: naming the file that could not be written.
    """
    # The renames happen only once every temporary is complete (a rename needs no space).
    with contextlib.ExitStack() as stack:
        for path, data in contents.items():
            tmp = stack.enter_context(replacing(path, sync=sync))
            with open(tmp, "wb") as f:
                f.write(data)
