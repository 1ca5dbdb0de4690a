"""The `v2f prepare` job as a library: voices, faces and metadata -> sharded TFRecords.

Plain TFRecords, not a TFDS builder. A TFDS builder (manual_dir = the user's data) cannot skip a
bad file with a reason per file, runs in one process unless Apache Beam is set up, rewrites the
whole dataset rather than resuming finished shards, and names/orders shards itself; here every
one of those is a requirement. The records stay readable by plain `tf.data` (see `reader.py`).

Output in OUT: `{voices,faces}-{train,test}-NNNNN-of-MMMMM.tfrecord` (schema in `records.py`),
one `<shard>.done` JSON per finished shard (its input key, record count, size, sha256, rejects),
`manifest.json`, `rejects.jsonl`, and `tfds/`: TFDS metadata naming the same shards, so
`tfds.builder_from_directory` reads them in place (`tfds_metadata.py`). Same inputs ->
byte-identical shards and metadata for any worker count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import multiprocessing
import os
import re
import stat
import time
from collections.abc import Callable, Iterator, Sequence

import v2f_jax
from v2f_jax import files
from v2f_jax.input_pipeline import audio, constants, errors, faces, tfds_metadata
from v2f_jax.input_pipeline import manifest as manifest_lib
from v2f_jax.input_pipeline.constants import META_COLUMNS, TEST_INITIALS

AUDIO_EXTS = (".wav", ".wave", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".aac", ".mp4", ".webm")
FBANK_EXT = ".npy"
FBANK_FRONTEND = "wen2019"  # the front end that computed the reference's .npy log-mels
FACE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FACE_MODES = ("aligned", "detect")
SPLIT_RULES = ("names", "meta")
SPLITS = ("train", "test")
KINDS = ("voices", "faces")
# Auto shard counts aim at ~50-60 MB shards (an 8 s utterance is ~100 KB as float16 log-mel).
VOICES_PER_SHARD = 512
FACES_PER_SHARD = 4096

_SHARD_RE = re.compile(r"^(voices|faces)-(train|test)-\d{5}-of-\d{5}\.tfrecord(\.done)?$")


@dataclasses.dataclass(frozen=True)
class MetaRow:
    voxceleb_id: str
    name: str
    gender: str
    set: str
    line: int


@dataclasses.dataclass(frozen=True)
class Item:
    """One input file bound for one shard."""

    kind: str  # "voices" | "faces"
    path: str  # as found under the user's directory
    rel: str  # relative to the voices/faces directory, '/'-separated; stored in the record
    label: int
    gender: int
    name: str
    speaker: str  # VoxCeleb id ("" for faces)


def reject(path: str, reason: str, kind: str) -> dict:
    """One `rejects.jsonl` line."""
    return {"path": os.fspath(path), "reason": reason, "kind": kind}


# ------------------------------------------------------------------------------------ scanning


@dataclasses.dataclass
class Meta:
    """A parsed `vox1_meta.csv`."""

    rows: dict[str, MetaRow]  # VoxCeleb id -> its row
    rejects: list[dict]  # `kind="meta"` rejects of lines that cannot be used
    refused: dict[str, str]  # VoxCeleb id -> why its voices are rejected (a conflicting row)
    columns: tuple[str, ...]  # the header's columns

    def __iter__(self):  # `rows, rejects = read_meta(...)`, as before
        return iter((self.rows, self.rejects))


def read_meta(meta_file: str | os.PathLike) -> Meta:
    """Parses `vox1_meta.csv`: tab-separated, with a header naming at least the `VoxCeleb1 ID`
    and `VGGFace1 ID` columns (any order; others ignored). UTF-8 with or without a BOM, LF or
    CRLF line ends.

    A line that cannot be used is a `kind="meta"` reject naming `FILE:LINE` and the reason (not
    valid UTF-8, a field count other than the header's, an empty ID, a VoxCeleb1 ID seen before).
    A face folder (`VGGFace1 ID`) claimed by two or more VoxCeleb1 IDs cannot say whose face it
    is: every one of those rows is refused, and their voices are rejects naming both lines and
    how they differ (Gender, Set).

    Returns:
      A `Meta` (iterates as `rows, rejects`).

    Raises:
      errors.BadInputError: the file is unreadable, empty, or lacks the id/name columns.
    """
    meta_file = os.fspath(meta_file)
    try:
        with open(meta_file, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise errors.BadInputError(meta_file, f"unreadable meta file ({err.strerror})") from None
    # Bytes that are not UTF-8 stay as surrogates, so one bad name costs its line, not the file.
    lines = raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "surrogateescape").splitlines()
    if not lines or not lines[0].strip():
        raise errors.BadInputError(meta_file, "empty meta file (no header line)")
    header = [h.strip() for h in lines[0].split("\t")]
    missing = [c for c in META_COLUMNS[:2] if c not in header]
    if missing:
        how = " (it looks comma-separated)" if "," in lines[0] and "\t" not in lines[0] else ""
        raise errors.BadInputError(
            meta_file,
            f"meta header lacks {missing}{how}; expected tab-separated {list(META_COLUMNS)}",
        )
    col = {c: header.index(c) for c in META_COLUMNS if c in header}
    rows: dict[str, MetaRow] = {}
    rejects: list[dict] = []
    refused: dict[str, str] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        where = f"{meta_file}:{lineno}"
        if _has_surrogates(line):
            bad = line.encode("utf-8", "surrogateescape")
            byte = "a byte"
            try:
                bad.decode("utf-8")
            except UnicodeDecodeError as err:
                byte = f"byte 0x{bad[err.start]:02x} at column {err.start + 1}"
            reason = f"not valid UTF-8 ({byte}); save {os.path.basename(meta_file)} as UTF-8"
            rejects.append(reject(where, reason, "meta"))
            fields = line.split("\t")
            if len(fields) == len(header) and not _has_surrogates(fields[col["VoxCeleb1 ID"]]):
                refused[fields[col["VoxCeleb1 ID"]].strip()] = f"meta line {lineno} is {reason}"
            continue
        fields = [x.strip() for x in line.split("\t")]
        if len(fields) != len(header):
            reason = f"{len(fields)} tab-separated fields, the header has {len(header)}"
            rejects.append(reject(where, reason, "meta"))
            continue
        row = MetaRow(
            voxceleb_id=fields[col["VoxCeleb1 ID"]],
            name=fields[col["VGGFace1 ID"]],
            gender=fields[col["Gender"]] if "Gender" in col else "",
            set=fields[col["Set"]] if "Set" in col else "",
            line=lineno,
        )
        if not row.voxceleb_id or not row.name:
            rejects.append(reject(where, "empty VoxCeleb1 ID or VGGFace1 ID", "meta"))
        elif row.voxceleb_id in rows:
            first = rows[row.voxceleb_id].line
            reason = f"duplicate VoxCeleb1 ID {row.voxceleb_id} (line {first} is kept)"
            rejects.append(reject(where, reason, "meta"))
        else:
            rows[row.voxceleb_id] = row

    # One face folder, one speaker.
    by_name: dict[str, list[MetaRow]] = {}
    for row in rows.values():
        by_name.setdefault(row.name, []).append(row)
    for name, claims in sorted(by_name.items()):
        if len(claims) < 2:
            continue
        claims.sort(key=lambda r: r.line)
        shown = ", ".join(f"{r.voxceleb_id} (line {r.line})" for r in claims)
        differ = [
            f"{what} {' vs '.join(repr(v) for v in values)}"
            for what, values in (
                ("Gender", sorted({r.gender for r in claims})),
                ("Set", sorted({r.set for r in claims})),
            )
            if len(values) > 1
        ]
        reason = (
            f"face folder {name} is claimed by {len(claims)} VoxCeleb1 IDs: {shown}"
            + (f", which differ in {' and '.join(differ)}" if differ else "")
            + f"; a face folder is one speaker's: fix {os.path.basename(meta_file)}"
        )
        for r in claims:
            del rows[r.voxceleb_id]
            refused[r.voxceleb_id] = reason
            rejects.append(reject(f"{meta_file}:{r.line}", reason, "meta"))
    return Meta(rows, rejects, refused, tuple(header))


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def list_files(
    root: str | os.PathLike, exts: Sequence[str], kind: str
) -> tuple[list[str], list[dict]]:
    """Files under `root` with one of `exts` (case-insensitive), following symlinks.

    Hidden files and folders are skipped. Everything else that is not such a file is a reject
    of `kind` ("voice"/"face") with its reason: another file type, a directory named like a
    file, a broken symlink, a symlink that loops back to a folder above it, an unreadable folder.

    Returns:
      The files as sorted '/'-separated paths relative to `root`, and the rejects.

    Raises:
      errors.BadInputError: `root` is not a directory.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise errors.BadInputError(root, "not a directory")
    exts = tuple(e.lower() for e in exts)
    found, rejects = [], []
    st = os.stat(root)
    # (folder, its path relative to root, the (device, inode) of it and every folder above it)
    stack = [(root, "", frozenset({(st.st_dev, st.st_ino)}))]
    while stack:
        folder, rel_folder, above = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            rejects.append(reject(folder, f"unreadable folder ({err.strerror})", kind))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                st = os.stat(entry.path)  # follows symlinks
            except OSError as err:
                if err.errno == errno.ENOENT and entry.is_symlink():
                    reason = f"a broken symlink (to {os.readlink(entry.path)})"
                elif err.errno == errno.ELOOP:
                    reason = "a symlink loop"
                else:
                    reason = f"unreadable ({err.strerror})"
                rejects.append(reject(entry.path, reason, kind))
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in above:
                    rejects.append(reject(entry.path, "a symlink loop (to a folder above)", kind))
                elif entry.name.lower().endswith(exts):
                    rejects.append(reject(entry.path, "a directory, not a file", kind))
                else:
                    stack.append((entry.path, f"{rel_folder}{entry.name}/", above | {key}))
            elif not stat.S_ISREG(st.st_mode):
                rejects.append(reject(entry.path, "not a regular file", kind))
            elif entry.name.lower().endswith(exts):
                found.append(f"{rel_folder}{entry.name}")
            else:
                ext = os.path.splitext(entry.name)[1] or "no extension"
                reason = f"not a supported file type ({ext}; want {', '.join(exts)})"
                rejects.append(reject(entry.path, reason, kind))
    return sorted(found), rejects


def split_of(name: str, row: MetaRow, rule: str) -> str | None:
    """`"train"`, `"test"`, or None when the meta Set column names neither."""
    if rule == "names":
        return "test" if name[:1] in TEST_INITIALS else "train"
    return {"dev": "train", "train": "train", "test": "test"}.get(row.set.lower())


@dataclasses.dataclass
class Plan:
    """What to write: items per (split, kind), identities, label maps, scan-time rejects."""

    items: dict[tuple[str, str], list[Item]]
    identities: dict[str, dict[str, dict]]  # split -> name -> info
    label_maps: dict[str, dict[str, int]]
    rejects: list[dict]
    unpaired: dict[str, object]
    voice_sources: list[str]


def plan(
    voices_dir, faces_dir, meta_file, split_rule: str = "names", frontend: str = "wen2019"
) -> Plan:
    """Scans the three inputs and decides identities, splits, labels and items (no decoding).

    With a `frontend` other than the reference's, its precomputed `.npy` log-mels are rejects.

    Labels follow the file listing, not decoding success, so one bad file never renumbers
    identities; an identity whose files all fail keeps its label with zero records.
    """
    from v2f_jax.input_pipeline import records

    if split_rule not in SPLIT_RULES:
        raise ValueError(f"split must be one of {SPLIT_RULES}, got {split_rule!r}")
    voices_dir, faces_dir = os.fspath(voices_dir), os.fspath(faces_dir)
    parsed = read_meta(meta_file)
    if split_rule == "meta" and "Set" not in parsed.columns:
        raise errors.BadInputError(
            meta_file,
            "--split meta follows the meta file's Set column, and this one has none (its "
            f"columns: {', '.join(parsed.columns)}); add it, or use --split names",
        )
    meta, rejects = parsed.rows, list(parsed.rejects)
    voice_files, bad = list_files(voices_dir, AUDIO_EXTS + (FBANK_EXT,), "voice")
    rejects += bad
    face_files, bad = list_files(faces_dir, FACE_EXTS, "face")
    rejects += bad
    if frontend != FBANK_FRONTEND:
        # The reference's .npy log-mels come from its own front end: mixed with another one's
        # features they would be a second, incompatible kind of input.
        keep = []
        for rel in voice_files:
            if rel.lower().endswith(FBANK_EXT):
                reason = (
                    f"a precomputed log-mel (.npy, the reference's {FBANK_FRONTEND} front end) "
                    f"cannot go into --frontend {frontend} records; give the audio instead, or "
                    f"prepare with --frontend {FBANK_FRONTEND}"
                )
                rejects.append(reject(os.path.join(voices_dir, rel), reason, "voice"))
            else:
                keep.append(rel)
        voice_files = keep

    voices_by_name: dict[str, list[tuple[str, MetaRow]]] = {}
    for rel in voice_files:
        path = os.path.join(voices_dir, rel)
        parts = rel.split("/")
        if len(parts) < 2:
            rejects.append(reject(path, "not inside a <voxceleb id>/ folder", "voice"))
            continue
        row = meta.get(parts[0])
        if row is None:
            reason = parsed.refused.get(parts[0], f"voice id {parts[0]} not in the meta file")
            rejects.append(reject(path, reason, "meta"))
            continue
        voices_by_name.setdefault(row.name, []).append((rel, row))

    faces_by_name: dict[str, list[str]] = {}
    for rel in face_files:
        parts = rel.split("/")
        if len(parts) < 2:
            path = os.path.join(faces_dir, rel)
            rejects.append(reject(path, "not inside a <VGGFace name>/ folder", "face"))
            continue
        faces_by_name.setdefault(parts[0], []).append(rel)

    identities: dict[str, dict[str, dict]] = {s: {} for s in SPLITS}
    for name in sorted(voices_by_name.keys() & faces_by_name.keys()):
        row = voices_by_name[name][0][1]
        split = split_of(name, row, split_rule)
        if split is None:
            for rel, _ in voices_by_name[name]:
                rejects.append(
                    reject(
                        os.path.join(voices_dir, rel),
                        f"meta Set {row.set!r} of {row.voxceleb_id} is neither dev nor test",
                        "meta",
                    )
                )
            continue
        identities[split][name] = {
            "voxceleb_ids": sorted({r.voxceleb_id for _, r in voices_by_name[name]}),
            "gender": row.gender.lower()[:1],
        }
    label_maps = {s: {n: i for i, n in enumerate(sorted(identities[s]))} for s in SPLITS}
    for split in SPLITS:
        for name, info in identities[split].items():
            info["label"] = label_maps[split][name]

    items: dict[tuple[str, str], list[Item]] = {(s, k): [] for s in SPLITS for k in KINDS}
    for split in SPLITS:
        for name, info in identities[split].items():
            gender = records.gender_code(info["gender"])
            common = dict(label=info["label"], gender=gender, name=name)
            for rel, row in voices_by_name[name]:
                path = os.path.join(voices_dir, rel)
                items[(split, "voices")].append(
                    Item("voices", path, rel, speaker=row.voxceleb_id, **common)
                )
            for rel in faces_by_name[name]:
                path = os.path.join(faces_dir, rel)
                items[(split, "faces")].append(Item("faces", path, rel, speaker="", **common))
    for key in items:
        items[key].sort(key=lambda it: it.rel)

    voice_items = [it for s in SPLITS for it in items[(s, "voices")]]
    sources = {"fbank_npy" if it.rel.lower().endswith(FBANK_EXT) else "audio" for it in voice_items}
    unpaired = {
        "voice_names_without_faces": sorted(voices_by_name.keys() - faces_by_name.keys()),
        # VGGFace has ~2600 names and VoxCeleb1 ~1250, so most face folders are unused: count only.
        "face_names_without_voices": len(faces_by_name.keys() - voices_by_name.keys()),
    }
    return Plan(items, identities, label_maps, rejects, unpaired, sorted(sources))


def shard_count(n_items: int, requested: int | None, per_shard: int) -> int:
    """Shards for `n_items`: `requested` (at most one per item), or enough for ~`per_shard`."""
    if n_items == 0:
        return 0
    want = requested if requested else -(-n_items // per_shard)
    return max(1, min(want, n_items))


def assign_shards(items: Sequence[Item], count: int) -> list[list[Item]]:
    """Round-robin over the sorted items: each shard gets every identity, in sorted order."""
    return [list(items[i::count]) for i in range(count)]


# ------------------------------------------------------------------------------------ workers


def _process(task: tuple[str, str, str, str]) -> tuple[str, object, float, float]:
    """Decodes one file in a worker: (status, array or reason, audio seconds, CPU seconds).

    Workers import this module but never TensorFlow: that is why `records` (which needs TF) is
    imported inside the parent-only functions of this module rather than at the top.
    """
    kind, path, face_mode, frontend = task
    start = time.process_time()
    seconds = 0.0
    try:
        if kind == "voices":
            if path.lower().endswith(FBANK_EXT):
                out = audio.load_fbank_npy(path)
            else:
                seconds = _audio_seconds(path)
                out = audio.voice_features(path, frontend=frontend)
        else:
            out = faces.load_face(path, mode=face_mode, size=constants.IMAGE_SIZE)
        status = "ok"
    except errors.BadInputError as err:
        status, out = "reject", err.reason
    except Exception as err:  # one undecodable file must not stop a 150k-file job
        status, out = "reject", f"unexpected {type(err).__name__}: {' '.join(str(err).split())}"
    return status, out, seconds, time.process_time() - start


def _audio_seconds(path: str) -> float:
    try:
        import soundfile

        return float(soundfile.info(path).duration)
    except Exception:
        return 0.0  # formats soundfile cannot open only lose their share of the throughput stat


def _died(task: tuple, exitcode: int | None) -> tuple[str, object, float, float]:
    """The reject of a file whose decoding process died twice (the OOM killer, a crash)."""
    if exitcode is None:
        return "reject", "no decoding process could be started for it", 0.0, 0.0
    if exitcode < 0:
        how = f"killed by {_signal_name(-exitcode)}"
        how += ": out of memory?" if -exitcode == 9 else ""
    else:
        how = f"exit status {exitcode}"
    return "reject", f"the decoding process died while reading it, twice ({how})", 0.0, 0.0


def _signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _run_child(fn: Callable, task, conn) -> None:
    """In a process of its own: `fn(task)`, sent back through `conn`."""
    _leave_interrupts_to_the_parent()
    conn.send(fn(task))
    conn.close()


def _leave_interrupts_to_the_parent() -> None:
    """In a decoding process: Ctrl-C in a terminal reaches the whole process group, and the
    parent, which stops the job, kills its decoders; one interrupted on its own would print
    a traceback, or break the pool, first."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


_START_TRIES = 6  # a fork server killed a moment ago is noticed (and restarted) within ~2 s


def _run_alone(fn: Callable, task, ctx) -> tuple[object, int | None]:
    """`fn(task)` in a process of its own: `(result, None)`, or `(None, exit code)` when that
    process died before answering (None: none could be started)."""
    for attempt in range(_START_TRIES):
        receive, send = ctx.Pipe(duplex=False)
        try:
            proc = ctx.Process(target=_run_child, args=(fn, task, send), daemon=True)
            proc.start()  # a dead fork server is started anew by a later try
        except (EOFError, OSError):
            receive.close()
            send.close()
            time.sleep(0.1 * (attempt + 1))  # until the dead one is reaped
            continue
        send.close()
        try:
            result = receive.recv()
        except EOFError:
            proc.join()
            return None, proc.exitcode
        finally:
            receive.close()
        proc.join()
        return result, None
    return None, None


def _pool_pids(pool) -> set[int]:
    return set(getattr(pool, "_processes", None) or {})


def _abandon(pool, pids: set[int]) -> None:
    """Stops a process pool now: pending work cancelled, and every process it ever had (`pids`:
    the pool forgets a dead one's siblings) killed. A pool that lost a process may have others
    blocked on its queues, which would otherwise hang the interpreter's exit, or outlive it."""
    import signal

    manager = getattr(pool, "_executor_manager_thread", None)  # shutdown() forgets it
    results = getattr(pool, "_result_queue", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for pid in pids | _pool_pids(pool):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    # A process killed while sending a result leaves half a message in the results pipe, and the
    # pool's thread waits for the rest as long as a write end is open: this process's is the
    # last one (it never writes there), so closing it ends that wait with an EOF.
    if results is not None:
        with contextlib.suppress(OSError):
            results._writer.close()
    # Its processes dead, the pool's thread ends at once; wait for it (bounded), since it imports
    # as it ends and must not do so while this thread imports TFDS, whose lazy imports swap
    # `builtins.__import__` for every thread (a TypeError traceback from the pool's thread).
    if manager is not None:
        manager.join(timeout=30)


def _map_ordered(
    fn: Callable,
    tasks: list,
    workers: int,
    on_death: Callable[[object, int | None], object] = _died,
    log: Callable[[str], None] | None = None,
) -> Iterator:
    """`map(fn, tasks)` over `workers` processes, in task order, memory bounded by a window of
    tasks in flight.

    A process that dies (the OOM killer, a crash in a decoder; the fork server too) does not
    hang the job: the tasks in flight are run again one at a time, each in a process of its
    own, and then a new pool goes on; a task that kills its own process too gives
    `on_death(task, exit code)` as its result.
    """
    if workers <= 1 or len(tasks) <= 1:
        yield from map(fn, tasks)
        return
    import collections
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # forkserver: the parent has TensorFlow loaded (threads), so forking it is unsafe. The server
    # imports __main__ and this module once; workers fork from it instead of re-importing both.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", "v2f_jax.input_pipeline.prepare"])
    workers = min(workers, len(tasks))
    window = workers * 8
    pending: collections.deque = collections.deque()  # futures of tasks next..next+len-1
    next_task, submitted = 0, 0
    pool = None
    finished = False
    fruitless = 0  # pools in a row that broke before taking a task
    try:
        while next_task < len(tasks):
            try:
                if pool is None:
                    pool = ProcessPoolExecutor(
                        workers, mp_context=ctx, initializer=_leave_interrupts_to_the_parent
                    )
                    pids: set[int] = set()
                while submitted < len(tasks) and len(pending) < window:
                    pending.append(pool.submit(fn, tasks[submitted]))
                    submitted += 1
                    pids |= _pool_pids(pool)
                result = pending[0].result()
            except (BrokenProcessPool, EOFError, OSError):
                if pool is not None:
                    _abandon(pool, pids)
                pool = None
                in_flight = submitted - next_task
                fruitless = 0 if in_flight else fruitless + 1
                if fruitless >= 3:  # no process will start: decode the rest here, one by one
                    if log is not None:
                        log("decoding processes cannot be started; decoding in this one")
                    yield from map(fn, tasks[next_task:])
                    next_task = len(tasks)
                    break
                if log is not None and in_flight:
                    log(
                        f"a decoding process died (out of memory?) with {in_flight} file(s) "
                        "in flight; decoding them again, one process each"
                    )
                futures = list(pending) + [None] * (submitted - next_task - len(pending))
                for future, task in zip(futures, tasks[next_task:submitted]):
                    if (
                        future is not None
                        and future.done()
                        and not future.cancelled()
                        and (future.exception() is None)
                    ):
                        yield future.result()
                    else:
                        result, exitcode = _run_alone(fn, task, ctx)
                        yield (
                            result
                            if exitcode is None and result is not None
                            else on_death(task, exitcode)
                        )
                    next_task += 1
                pending.clear()
                continue
            pending.popleft()
            next_task += 1
            yield result
        finished = True
    finally:
        if pool is not None:
            if finished:
                pool.shutdown(wait=True)
            else:
                _abandon(pool, pids)


# ------------------------------------------------------------------------------------ writing


def _file_key(path: str) -> list:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def shard_key(items: Sequence[Item], options: dict) -> str:
    """Hash of all that decides a shard's bytes: inputs (path, size, mtime), labels, options."""
    h = hashlib.sha256()
    h.update(json.dumps(options, sort_keys=True).encode())
    for it in items:
        h.update(json.dumps([dataclasses.astuple(it), _file_key(it.path)]).encode())
    return h.hexdigest()


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_done(out_dir: str, shard: str, key: str, why: list | None = None) -> dict | None:
    """The `.done` record of a finished shard whose inputs are unchanged and whose bytes are
    still the ones it lists (size and sha256), else None; `why` gets the reason a finished
    shard is not kept (missing, or its bytes changed)."""
    path = os.path.join(out_dir, shard)
    try:
        with open(path + ".done") as f:
            done = json.load(f)
    except (OSError, ValueError):
        if why is not None and os.path.exists(path):
            why.append(f"{path}: no readable .done record (a run cut short?); rebuilt")
        return None
    if not isinstance(done, dict) or done.get("key") != key:
        return None
    try:
        size = os.path.getsize(path)
    except OSError:
        if why is not None:
            why.append(f"{path}: missing; rebuilt")
        return None
    if done.get("bytes") != size or done.get("sha256") != _sha256(path):
        if why is not None:
            why.append(f"{path}: its bytes are not those its .done lists (damaged?); rebuilt")
        return None
    return done


def write_shard(out_dir: str, shard: str, key: str, items, results) -> dict:
    """Serialises one shard's decoded items, writes it under a temp name, renames, then `.done`."""
    from v2f_jax.input_pipeline import records

    serialized, rejects, counts, frames = [], [], {}, 0
    for it, (status, out, _, _) in zip(items, results, strict=True):
        if status == "ok":
            try:
                common = dict(label=it.label, gender=it.gender, name=it.name, path=it.rel)
                if it.kind == "voices":
                    rec = records.voice_example(out, speaker=it.speaker, **common)
                    frames += int(out.shape[0])
                else:
                    rec = records.face_example(out, **common)
            except ValueError as err:
                status, out = "reject", str(err)
        if status == "ok":
            serialized.append(rec)
            counts[it.name] = counts.get(it.name, 0) + 1
        else:
            rejects.append(reject(it.path, out, "voice" if it.kind == "voices" else "face"))
    final = os.path.join(out_dir, shard)
    data = records.tfrecord_bytes(serialized)
    # No .done while the shard is rewritten: readers of an older manifest see it is changing.
    with contextlib.suppress(FileNotFoundError):
        os.remove(final + ".done")
    files.write_bytes(final, data)
    done = {
        "shard": shard,
        "key": key,
        "items": len(items),
        "records": len(serialized),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "frames": frames,
        "counts": counts,
        "rejects": rejects,
    }
    files.write_bytes(final + ".done", json.dumps(done, indent=1, sort_keys=True).encode())
    return done


def prepare(
    voices_dir: str | os.PathLike,
    faces_dir: str | os.PathLike,
    meta_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    face_mode: str = "aligned",
    split_rule: str = "names",
    frontend: str = "wen2019",
    workers: int | None = None,
    shards_per_split: int | None = None,
    progress: bool = True,
    require_test_split: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Writes the records, `manifest.json` and `rejects.jsonl` into `out_dir`.

    `out_dir` must be missing, empty, or a folder `v2f prepare` writes into (its own hidden
    `.v2f-prepare` marker, or a v2f manifest): one that holds another tool's `manifest.json`,
    `rejects.jsonl`, `tfds/` or shard-like names is refused, and files prepare did not write
    are never touched. It may not lie inside the voices or faces directory (prepare would read
    its own output). A finished shard is kept only while its inputs are unchanged and its bytes
    are still those its `.done` record lists; a damaged or deleted one is rebuilt (and `log`
    says so). Rewriting a shard first removes its `.done`, so the readers of the manifest of an
    earlier run refuse the records until this run writes its own manifest: records of two runs
    (another --frontend, say) are never read together.

    Args:
      voices_dir: `<voxceleb id>/<video>/<utt>.wav|.m4a|...` or the reference's `.npy` log-mels.
      faces_dir: `<VGGFace name>/<image>.jpg|png`.
      meta_file: `vox1_meta.csv` (tab-separated: VoxCeleb1 ID, VGGFace1 ID, Gender, ..., Set).
      out_dir: created if missing; finished shards from an earlier run with the same inputs
        are kept.
      face_mode: "aligned" (resize) or "detect" (Haar detection + eye alignment).
      split_rule: "names" (A-E test, as the reference) or "meta" (Set column: dev/test).
      frontend: an `audio.FRONTENDS` log-mel front end for audio inputs.
      workers: decoding processes; default `os.cpu_count()`. They import the caller's main
        module, as any multiprocessing code does: a script calling this with workers > 1 keeps
        its top level under `if __name__ == "__main__":`.
      shards_per_split: shards per (split, kind); default ~512 voices / ~4096 faces per shard.
      progress: show a tqdm bar.
      require_test_split: refuse records without test identities (`v2f prepare` does: eval and
        the sample grid need held-out people); records to train on need training ones always.
      log: gets a line for each finished shard that is rebuilt, and each decoding process
        that died (None: silent).

    Returns:
      `{"manifest", "rejects", "shards_written", "shards_skipped", "stats"}`; stats holds
      `files`, `wall_s`, and per kind `{voices,faces}_files`, `{voices,faces}_cpu_s` (worker CPU
      seconds) and `audio_s` (seconds of audio decoded) of the files decoded in this run.

    Raises:
      errors.BadInputError: a missing input directory, an unusable meta file, or an `out_dir`
        that is not prepare's to write (inside an input, or holding another tool's files).
      files.WriteError: a write failed (a full disk): named; the finished shards are kept.
      ValueError: bad options; no identity has both voices and faces; a required split without
        identities, or whose voices or faces were all rejected (then no manifest is written;
        the finished shards stay for the next run).
    """
    if face_mode not in FACE_MODES:
        raise ValueError(f"face_mode must be one of {FACE_MODES}, got {face_mode!r}")
    frontend_params = audio.frontend_params(frontend)
    out_dir = os.fspath(out_dir)
    check_out_dir(out_dir, voices_dir, faces_dir)
    p = plan(voices_dir, faces_dir, meta_file, split_rule, frontend)
    if not any(p.identities[s] for s in SPLITS):
        raise ValueError(
            f"no identity has both voices (in {voices_dir}, named via {meta_file}) and faces "
            f"(in {faces_dir})"
        )
    for split in ("train", "test") if require_test_split else ("train",):
        if not p.identities[split]:
            raise ValueError(_empty_split_reason(split, split_rule, meta_file))
    options = {
        "schema": manifest_lib.SCHEMA_VERSION,
        "tool_version": v2f_jax.__version__,
        "frontend": frontend_params if "audio" in p.voice_sources else None,
        "face_mode": face_mode,
        "image_size": constants.IMAGE_SIZE,
    }

    claim_out_dir(out_dir)
    lock = OutLock(out_dir)
    try:
        return _prepare(p, out_dir, options, face_mode, split_rule, frontend, workers,
                        shards_per_split, progress, require_test_split, log)  # fmt: skip
    finally:
        lock.release()


def _prepare(
    p: Plan,
    out_dir: str,
    options: dict,
    face_mode,
    split_rule,
    frontend,
    workers,
    shards_per_split,
    progress,
    require_test_split,
    log,
) -> dict:
    from v2f_jax.input_pipeline import records

    # Every shard, its items and key; which are already finished.
    shards: dict[tuple[str, str], list[str]] = {}
    done: dict[str, dict] = {}
    pending: list[tuple[str, str, list[Item]]] = []
    for (split, kind), items in p.items.items():
        per = VOICES_PER_SHARD if kind == "voices" else FACES_PER_SHARD
        n = shard_count(len(items), shards_per_split, per)
        shards[(split, kind)] = []
        for i, shard_items in enumerate(assign_shards(items, n)):
            name = records.shard_name(kind, split, i, n)
            # Voices do not depend on the face mode, nor faces on the front end.
            drop = "face_mode" if kind == "voices" else "frontend"
            key = shard_key(shard_items, {k: v for k, v in options.items() if k != drop})
            shards[(split, kind)].append(name)
            why: list[str] = []
            prior = read_done(out_dir, name, key, why)
            for line in why if log is not None else ():
                log(line)
            if prior is not None:
                done[name] = prior
            else:
                pending.append((name, key, shard_items))

    tasks = [(it.kind, it.path, face_mode, frontend) for _, _, its in pending for it in its]
    workers = max(1, workers or os.cpu_count() or 1)
    start = time.perf_counter()
    stats = {"files": len(tasks), "voices_files": 0, "faces_files": 0, "voices_cpu_s": 0.0,
             "faces_cpu_s": 0.0, "audio_s": 0.0}  # fmt: skip
    from tqdm import tqdm

    results = _map_ordered(_process, tasks, workers, log=log)
    bar = tqdm(total=len(tasks), disable=not progress, unit="file", desc="prepare")
    try:
        # Results come back in task order, so each shard is written as soon as it is complete.
        for name, key, shard_items in pending:
            got = []
            for _ in shard_items:
                got.append(next(results))
                bar.update()
            kind = shard_items[0].kind
            stats[f"{kind}_files"] += len(got)
            stats[f"{kind}_cpu_s"] += sum(r[3] for r in got)
            stats["audio_s"] += sum(r[2] for r in got)
            done[name] = write_shard(out_dir, name, key, shard_items, got)
    finally:
        results.close()  # stops the pool, also on an error or Ctrl-C
        bar.close()
    stats["wall_s"] = time.perf_counter() - start

    # A split to train (or test) on whose files were all rejected: no records worth a manifest.
    empty = [
        (split, kind)
        for split in (("train", "test") if require_test_split else ("train",))
        for kind in KINDS
        if not sum(done[n]["records"] for n in shards[(split, kind)])
    ]
    if not empty:
        _remove_stale(out_dir, {n for names in shards.values() for n in names})
    all_rejects = sorted(
        p.rejects + [r for d in done.values() for r in d["rejects"]],
        key=lambda r: (r["kind"], r["path"]),
    )
    files.write_text(
        os.path.join(out_dir, "rejects.jsonl"),
        "".join(json.dumps(r, sort_keys=True) + "\n" for r in all_rejects),
    )
    manifest = _manifest(p, shards, done, options, split_rule, all_rejects)
    if empty:
        split, kind = empty[0]
        raise ValueError(
            f"every one of the {split} split's {kind} was rejected; the reasons are in "
            f"{os.path.join(out_dir, 'rejects.jsonl')} (no manifest written; the finished "
            f"shards are kept for the next run)"
        )
    manifest["gender_codes"] = {**constants.GENDER_CODES, "unknown": constants.UNKNOWN_GENDER}
    files.write_bytes(
        os.path.join(out_dir, manifest_lib.FILENAME),
        json.dumps(manifest, indent=1).encode() + b"\n",
    )
    tfds_metadata.write(out_dir, manifest)
    return {
        "manifest": manifest,
        "rejects": all_rejects,
        "shards_written": len(pending),
        "shards_skipped": len(done) - len(pending),
        "stats": stats,
    }


def _empty_split_reason(split: str, split_rule: str, meta_file) -> str:
    if split_rule == "names":
        rule = "--split names holds out names starting with A-E for testing and trains on F-Z"
    else:
        rule = f"--split meta follows the Set column of {meta_file} (dev: train, test: test)"
    return (
        f"no {split} identities: of the people with both voices and faces, none falls in the "
        f"{split} split ({rule}); add people for it, or choose the other --split"
    )


# The names prepare writes in --out (besides shards, their .done records and hidden temporaries).
OWN_NAMES = (manifest_lib.FILENAME, "rejects.jsonl", "tfds", "face_embedder")


def check_out_dir(out_dir: str, *inputs) -> None:
    """Refuses an --out that is a file, or lies inside (or is) one of the input directories.

    Raises:
      errors.BadInputError: naming --out and the reason.
    """
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise errors.BadInputError(out_dir, "exists and is not a directory")
    out = os.path.realpath(out_dir)
    for given in inputs:
        folder = os.path.realpath(os.fspath(given))
        if out == folder or out.startswith(folder.rstrip(os.sep) + os.sep):
            raise errors.BadInputError(
                out_dir,
                f"is inside the input directory {os.fspath(given)}: prepare would read its own "
                "output as input on the next run; choose an --out outside the inputs",
            )


def _ours(out_dir: str, names: list[str]) -> bool:
    """Whether `out_dir` is prepare's: its marker, a v2f manifest, or a `.done` record of ours
    (a first run that was interrupted before this version wrote markers)."""
    if manifest_lib.PREPARE_MARKER in names:
        return True
    try:
        with open(os.path.join(out_dir, manifest_lib.FILENAME), "rb") as f:
            if json.loads(f.read()).get("format") == manifest_lib.FORMAT:
                return True
    except (OSError, ValueError, AttributeError):
        pass
    for name in names:
        if name.endswith(".done") and _SHARD_RE.match(name):
            try:
                with open(os.path.join(out_dir, name)) as f:
                    done = json.load(f)
                if isinstance(done, dict) and done.get("shard") == name[: -len(".done")]:
                    return True
            except (OSError, ValueError):
                pass
    return False


def claim_out_dir(out_dir: str) -> None:
    """Makes `out_dir` prepare's (creating it, and its hidden marker) unless it holds files of
    the names prepare writes that another tool wrote: then refused, nothing touched.

    Raises:
      errors.BadInputError: naming the files that are not prepare's.
    """
    try:
        names = sorted(os.listdir(out_dir))
    except FileNotFoundError:
        names = []
    if names and not _ours(out_dir, names):
        clash = [n for n in names if n in OWN_NAMES or _SHARD_RE.match(n)]
        if clash:
            shown = ", ".join(clash[:5]) + (f" and {len(clash) - 5} more" if len(clash) > 5 else "")
            raise errors.BadInputError(
                out_dir,
                f"holds files that `v2f prepare` did not write ({shown}); it would overwrite or "
                "delete them: choose a new or empty --out (other files in --out are left alone)",
            )
    os.makedirs(out_dir, exist_ok=True)
    marker = os.path.join(out_dir, manifest_lib.PREPARE_MARKER)
    if not os.path.exists(marker):
        files.write_text(marker, json.dumps({"written_by": "v2f prepare"}) + "\n")


class OutLock:
    """An exclusive `flock` on `OUT/.v2f-prepare.lock` for the run: two prepares never write
    into one folder at once (the kernel drops it when the process ends, however it ends)."""

    def __init__(self, out_dir: str):
        import fcntl

        self._fd = os.open(os.path.join(out_dir, ".v2f-prepare.lock"), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise errors.BadInputError(
                out_dir, "another `v2f prepare` is writing into it; wait for it to finish"
            ) from None
        except OSError:
            pass  # a filesystem without locks: nothing to hold

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _remove_stale(out_dir: str, keep: set[str]) -> None:
    """Removes shards of an earlier run with other shard counts, and leftover temp files."""
    for entry in os.listdir(out_dir):
        base = entry.removesuffix(".done")
        if (_SHARD_RE.match(entry) and base not in keep) or (
            entry.startswith(".") and ".tfrecord" in entry and ".tmp" in entry
        ):
            os.remove(os.path.join(out_dir, entry))


def _manifest(p: Plan, shards, done, options, split_rule, rejects) -> dict:
    splits = {}
    for split in SPLITS:
        idents = {}
        for name, info in sorted(p.identities[split].items()):
            idents[name] = {
                "label": info["label"],
                "gender": info["gender"],
                "voxceleb_ids": info["voxceleb_ids"],
                **{
                    kind: sum(done[s]["counts"].get(name, 0) for s in shards[(split, kind)])
                    for kind in KINDS
                },
            }
        entry = {
            "num_identities": len(idents),
            "label_map": p.label_maps[split],
            "identities": idents,
        }
        for kind in KINDS:
            names = shards[(split, kind)]
            entry[f"num_{kind}"] = sum(done[s]["records"] for s in names)
            entry[f"{kind}_shards"] = [
                {"file": s, **{k: done[s][k] for k in ("records", "bytes", "sha256")}}
                for s in names
            ]
        entry["voice_frames"] = sum(done[s]["frames"] for s in shards[(split, "voices")])
        splits[split] = entry
    by_kind = {k: sum(r["kind"] == k for r in rejects) for k in ("voice", "face", "meta")}
    return {
        "format": manifest_lib.FORMAT,
        "schema_version": options["schema"],
        "tool_version": options["tool_version"],
        "frontend": options["frontend"],
        "voice_sources": p.voice_sources,
        "face_mode": options["face_mode"],
        "image_size": options["image_size"],
        "n_mels": constants.N_MELS,
        "split_rule": split_rule,
        "splits": splits,
        "rejects": {"total": len(rejects), **by_kind},
        "unpaired": p.unpaired,
    }
