"""A training run's workdir: one run at a time, and a resumed run held to the config its
checkpoints were trained with.

- `Lock`: an exclusive `flock` on `WORKDIR/train.lock`, which names its holder (pid, host, start
  time). The kernel drops the lock when its process ends, however it ends (SIGKILL included),
  so a killed run never blocks the next; a second live run is refused with the holder's name.
- `resume_changes`: the differences between the config a workdir's checkpoints were trained
  with (`config.json`) and the one a new command resolves. Settings that would change the state's
  shapes or what its numbers mean are refused, by key; the rest (`RESUMABLE`) are allowed and
  appended to `WORKDIR/config_changes.jsonl`.
- `start_run`: both, a check of the saved `config.json` (its values against
  `config_checks.RULES`) and of `records.json` (the records the run trains on: a resume on other
  records is refused), then `config.json`; what `train.train` calls before anything else.
- `write_failure`: the errno, when an exception was the disk refusing a write (full, quota);
  `held_errors`: the background threads' reports of it, held back so it is reported once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

import ml_collections

from v2f_jax import checkpointing, config_lib, files

LOCK = "train.lock"
CHANGES = "config_changes.jsonl"
# What a resumed run may change: how long it trains and how often it logs, samples and saves,
# how the same numbers are computed (parallel mode and conv forms give the same numbers), and the
# evaluation settings. Anything else changes the state's shapes or what it means.
RESUMABLE = (
    "train.steps",
    "train.log_every",
    "train.sample_every",
    "train.on_nonfinite",
    "train.max_nonfinite_skips",
    "train.parallel",
    "train.steps_per_call",
    "train.compilation_cache",
    "train.profile_steps",
    "checkpoint.every",
    "checkpoint.keep",
    "model.impl",
    "eval.",
    # How batches reach the devices, not which: the same batches either way.
    "data.prefetch_to_device",
    "data.on_device",
    "data.in_host_memory",
    "data.arrays_dir",
    "data.service_address",
)

logger = logging.getLogger("v2f.workdir")


class WorkdirError(RuntimeError):
    """A workdir that cannot be used for this run (held by another run, or not writable)."""


class Lock:
    """An exclusive lock on `workdir`, held from `acquire` until `release` or process exit."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.path = os.path.join(self.workdir, LOCK)
        self._fd: int | None = None

    def acquire(self) -> Lock:
        """Takes the lock and writes this process's pid and host into the lock file.

        Raises:
          WorkdirError: another process holds it (its pid and host named), or the workdir
            cannot be written.
        """
        if os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
            raise WorkdirError(f"{self.workdir}: exists and is not a directory")
        try:
            os.makedirs(self.workdir, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise WorkdirError(f"{self.workdir}: cannot write here ({err.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise WorkdirError(
                f"{self.workdir} is in use by another `v2f train` ({holder}); wait for it to "
                f"finish or stop it, or train into another --workdir"
            ) from None
        except OSError as err:  # a filesystem without locks (some network or FUSE mounts)
            logger.warning(
                "cannot lock %s (%s): a second run on this workdir would not be stopped",
                self.workdir,
                err.strerror,
            )
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # no stale holder named in a free lock file
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __del__(self) -> None:
        self.release()  # a run that failed before its `finally` still frees the workdir

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_not_in_use(workdir: str | os.PathLike) -> None:
    """Refuses a workdir another live run holds, creating nothing (`v2f train` asks this first,
    so "in use" is what such a run hears, whatever else is wrong with its command).

    Raises:
      WorkdirError: naming the holder's pid and host.
    """
    path = os.path.join(os.path.abspath(os.fspath(workdir)), LOCK)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no lock file: nobody holds it (or the workdir is new)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise WorkdirError(
            f"{os.path.dirname(path)} is in use by another `v2f train` ({_read_holder(fd)}); "
            f"wait for it to finish or stop it, or train into another --workdir"
        ) from None
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"]))
        return f"pid {holder['pid']} on host {holder['host']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown: it is still starting"


# --- resuming ---------------------------------------------------------------------------------


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
    """The complete checkpoint steps on disk (orbax names them by the step; a save in progress
    is a `<step>.orbax-checkpoint-tmp*` directory)."""
    directory = os.path.join(os.fspath(workdir), checkpointing.CHECKPOINTS)
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(f"{directory}/{n}"))


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _resumable(key: str) -> bool:
    return any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE)


def resume_changes(saved: dict, new: dict, where: str) -> dict[str, list]:
    """`{key: [saved, new]}` of the settings a resumed run changes, all of them allowed.

    Keys only one side has (a setting added or dropped by another v2f version) are allowed: the
    checkpoint's state decides the shapes, and a changed shape fails its restore anyway.

    Raises:
      ConfigError: a change outside `RESUMABLE`, naming every such key with both values.
    """
    old, cur = _leaves(saved), _leaves(new)
    changed = {
        k: [old.get(k), cur.get(k)]
        for k in sorted(old.keys() | cur.keys())
        if k in old and k in cur and json.dumps(old[k]) != json.dumps(cur[k])
    }
    changed |= {k: [old.get(k), cur.get(k)] for k in sorted(old.keys() ^ cur.keys())}
    refused = [k for k in changed if k in old and k in cur and not _resumable(k)]
    if refused:
        shown = "; ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in refused)
        raise config_lib.ConfigError(
            f"the checkpoints in {where} were trained with other settings, which a resumed run "
            f"cannot change: {shown}. Resume with the saved values (they are in "
            f"{os.path.join(where, checkpointing.CONFIG)}), or train into a new --workdir. A "
            f"resumed run may change only: {', '.join(r.rstrip('.') for r in RESUMABLE)}."
        )
    return dict(sorted(changed.items()))


def _check_resume(workdir: str, config: ml_collections.ConfigDict) -> dict[str, list]:
    steps = checkpoint_steps(workdir)
    if not steps:
        return {}  # nothing trained yet: any config starts afresh
    path = os.path.join(workdir, checkpointing.CONFIG)
    try:
        with open(path) as f:
            saved = json.load(f)
    except FileNotFoundError:
        raise config_lib.ConfigError(
            f"{workdir} has checkpoints (steps {steps}) but no {checkpointing.CONFIG}: the "
            f"settings they were trained with are unknown; train into a new --workdir"
        ) from None
    except (OSError, ValueError) as err:
        raise config_lib.ConfigError(f"{path}: unreadable ({err})") from None
    _check_saved_config(saved, path)
    # Where E started is history once there is a checkpoint: keep the record of it, whatever
    # this command says (the same command resumes with or without the flag).
    started_from = saved.get("train", {}).get("embedder_init")
    if isinstance(started_from, str) and "embedder_init" in config.train:
        config.train.embedder_init = started_from
    return resume_changes(saved, config_lib.to_dict(config), workdir)


def _check_saved_config(saved, path: str) -> None:
    """A `config.json` that holds what `write_config` wrote: a JSON object of sections whose
    settings have the types and ranges `config_checks.RULES` asks (one edited by hand, or
    damaged, is named before anything is compared or written).

    Raises:
      ConfigError: naming the file and the first wrong setting.
    """
    from v2f_jax import config_checks
    from v2f_jax.configs import wen2019

    hint = (
        "it was edited by hand or damaged; put back the values this run was trained with, or "
        "train into a new --workdir"
    )
    sections = [
        k for k, v in wen2019.get_config().items() if isinstance(v, ml_collections.ConfigDict)
    ]
    if not isinstance(saved, dict):
        raise config_lib.ConfigError(f"{path}: not a v2f config (a JSON object); {hint}")
    for key in sections:
        if key in saved and not isinstance(saved[key], dict):
            raise config_lib.ConfigError(
                f"{path}: config.{key}={saved[key]!r}: must be a section of settings; {hint}"
            )
    leaves = _leaves(saved)
    known = [k for k in leaves if k in config_checks.RULES]  # other versions' settings aside
    found = config_checks.value_problems(saved, known)
    if found:
        raise config_lib.ConfigError(f"{path}: {found[0]}; {hint}")


RECORDS = "records.json"


def records_identity(records) -> dict:
    """What `WORKDIR/records.json` says of the records a run trains on."""
    return {
        "dir": records.root,
        "manifest_sha256": records.manifest_sha256,
        "train_identities": records.num_train_ids,
    }


def _check_records(workdir: str, records, resumed: bool) -> dict | None:
    """The records identity to write, or None. A resumed run must read the records it started
    with (the same manifest, wherever the directory now is).

    Raises:
      ConfigError: a workdir trained on other records.
    """
    if records is None:
        return None
    path = os.path.join(workdir, RECORDS)
    new = records_identity(records)
    try:
        with open(path) as f:
            saved = json.load(f)
    except FileNotFoundError:
        return new  # a new run, or one from before runs recorded their records
    except (OSError, ValueError) as err:
        raise config_lib.ConfigError(
            f"{path}: unreadable ({err}); train into a new --workdir"
        ) from None
    if not isinstance(saved, dict) or not isinstance(saved.get("manifest_sha256"), str):
        raise config_lib.ConfigError(
            f"{path}: not what `v2f train` wrote (edited by hand?); train into a new --workdir"
        )
    if resumed and saved["manifest_sha256"] != new["manifest_sha256"]:
        raise config_lib.ConfigError(
            f"{workdir} was trained on the records in {saved.get('dir')} (manifest sha256 "
            f"{saved['manifest_sha256'][:12]}), not on those in {records.root} (manifest "
            f"sha256 {new['manifest_sha256'][:12]}): a resumed run must read the records it "
            f"started with ({path}). Pass those --records, or train into a new --workdir."
        )
    return new


def start_run(
    workdir: str | os.PathLike,
    config: ml_collections.ConfigDict,
    is_chief: bool = True,
    records=None,
) -> Lock | None:
    """Claims `workdir` for a run of `config` (resolved) on `records` (a `manifest.Records`,
    or None): the lock (process 0 only), the resume checks (every process, so all of them
    refuse alike: the saved config.json is well formed, the settings carry over, the records
    are the ones it trained on), then `config.json` and `records.json`. A resumed run's
    `config.train.embedder_init` is set to the saved one (where its E came from).

    Returns:
      The held lock (None on other processes); release it when the run ends.

    Raises:
      WorkdirError: another run holds the workdir, or it cannot be written.
      ConfigError: a resumed run changes settings its checkpoints cannot carry over, a
        config.json edited into something else, or other records.
    """
    workdir = os.path.abspath(os.fspath(workdir))
    lock = Lock(workdir).acquire() if is_chief else None
    try:
        changes = _check_resume(workdir, config)
        identity = _check_records(workdir, records, bool(checkpoint_steps(workdir)))
        if changes and is_chief:
            shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
            logger.warning("resuming %s with changed settings: %s", workdir, shown)
            entry = {"time": time.time(), "step": checkpoint_steps(workdir)[-1], "changes": changes}
            with open(os.path.join(workdir, CHANGES), "a") as f:
                f.write(json.dumps(entry) + "\n")
        checkpointing.write_config(workdir, config)
        if identity is not None and is_chief:
            files.write_text(os.path.join(workdir, RECORDS), json.dumps(identity, indent=1) + "\n")
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock


# --- a disk that refuses writes ---------------------------------------------------------------

_WRITE_ERRNOS = files.REFUSED_WRITE_ERRNOS
# tensorstore (orbax's writer) reports the OS error as text: `... [os_error_code='28']`.
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def write_failure(err: BaseException) -> int | None:
    """The errno of a full disk, exhausted quota or file-size limit anywhere in `err`'s chain
    (Python's OSError, or orbax's wrapped tensorstore error); None for anything else."""
    if isinstance(err, (WorkdirError, config_lib.ConfigError)):
        return None  # refused before training: named as such (exit 2), not a full disk
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _WRITE_ERRNOS:
            return err.errno
        match = _OS_ERROR_CODE.search(str(err))
        if match and int(match.group(1)) in _WRITE_ERRNOS:
            return int(match.group(1))
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return None


def write_failure_message(workdir: str | os.PathLike, code: int) -> str:
    """One paragraph for a run stopped by `write_failure`: what, what is kept, what to do."""
    steps = checkpoint_steps(workdir)
    kept = f"the last complete checkpoint (step {steps[-1]})" if steps else "no checkpoint"
    remedy = {
        errno.EFBIG: "Raise the file-size limit (ulimit -f)",
        errno.EROFS: "Make it writable",
        errno.EACCES: "Make it writable",
        errno.EPERM: "Make it writable",
    }.get(code, "Free space")
    return (
        f"could not write to {workdir}: {os.strerror(code)}. Training stopped; {kept} is kept. "
        f"{remedy} and run the same command again to resume."
    )


class HeldErrors:
    """What `held_errors` holds back; `discard` drops it and whatever comes later."""

    def __init__(self) -> None:
        self.reports: list[Callable[[], None]] = []
        self.discarded = False

    def hold(self, report: Callable[[], None]) -> None:
        if not self.discarded:
            self.reports.append(report)

    def discard(self) -> None:
        self.reports.clear()
        self.discarded = True


@contextlib.contextmanager
def held_errors(logger_names: tuple[str, ...] = ("absl", "asyncio")) -> Iterator[HeldErrors]:
    """Holds back what background threads report while the block runs: error records of
    `logger_names` (orbax logs a failed save once per thread, each with a traceback; asyncio, a
    failed write task of orbax's that nobody awaited) and exceptions reported through
    `sys.excepthook`, `threading.excepthook` or `sys.unraisablehook` (tensorstore's callbacks
    into orbax's closed event loops). They are replayed when the block ends, unless the caller
    discarded them: it reports the failure once itself, and the hooks then stay muted for the
    rest of the process, whose threads still echo it while it exits."""
    held = HeldErrors()
    targets = [logging.getLogger(name) for name in logger_names]

    def hold_record(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            held.hold(functools.partial(logging.getLogger(record.name).handle, record))
            return False
        return True

    hooks = (sys.excepthook, threading.excepthook, sys.unraisablehook)
    sys.excepthook = lambda *exc: held.hold(functools.partial(hooks[0], *exc))
    threading.excepthook = lambda args: held.hold(functools.partial(hooks[1], args))
    sys.unraisablehook = lambda args: held.hold(functools.partial(hooks[2], args))
    for target in targets:
        target.addFilter(hold_record)
    try:
        yield held
    finally:
        if not held.discarded:
            for target in targets:
                target.removeFilter(hold_record)
            sys.excepthook, threading.excepthook, sys.unraisablehook = hooks
            for report in held.reports:
                report()
