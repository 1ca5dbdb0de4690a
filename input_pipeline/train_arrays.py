"""A host's training split as flat files, written once and memory-mapped: the host-memory feed
(`data.in_host_memory`) for corpora larger than RAM.

`reader.load_train_arrays` holds the split in RAM. With `data.arrays_dir` set, the same arrays
are written once to `ARRAYS_DIR/<split>-host<i>of<n>/` (the log-mels and faces as raw little-endian
files, the small per-record arrays as .npy) and every later run memory-maps them: a crop is then
a slice of a file in the page cache, and the kernel pages the split in and out as it needs, so it
may exceed RAM (read from disk at the disk's speed). The folder records the manifest's digest
and the host's share; a folder of other records or another share is rebuilt. A build is written
beside the folder and renamed into place, so a build killed halfway leaves nothing usable behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable

import numpy as np

from v2f_jax.input_pipeline import manifest as manifest_lib
from v2f_jax.input_pipeline import reader
from v2f_jax.input_pipeline.constants import IMAGE_SIZE, N_MELS

logger = logging.getLogger(__name__)

FORMAT = 1
SOURCE_FILE = "source.json"
MEL_FILE, FACE_FILE = "mel.f16", "face.u8"
SMALL = ("voice_frames", "voice_label", "face_label")


def folder(directory: str | os.PathLike, split: str, process_index: int, process_count: int) -> str:
    return os.path.join(os.fspath(directory), f"{split}-host{process_index}of{process_count}")


def open_train_arrays(
    records: manifest_lib.Records,
    directory: str | os.PathLike,
    split: str = "train",
    process_index: int = 0,
    process_count: int = 1,
    log: Callable[[str], None] = logger.info,
) -> dict[str, np.ndarray]:
    """`reader.load_train_arrays`'s arrays, memory-mapped from `directory` (built there first
    if missing or made from other records).

    Returns:
      The same keys, dtypes and values as `reader.load_train_arrays`; `mel` and `face` are
      read-only `np.memmap`s.

    Raises:
      CorruptRecordsError: as `reader.load_train_arrays` (while building).
      OSError: `directory` cannot be written.
    """
    path = folder(directory, split, process_index, process_count)
    source = {
        "format": FORMAT,
        "manifest_sha256": records.manifest_sha256,
        "split": split,
        "process_index": process_index,
        "process_count": process_count,
    }
    if _source(path) != source:
        log(f"writing the {split} split's arrays to {path} (once; later runs map them)")
        _build(records, path, source)
    return _open(path)


def host_split(
    records: manifest_lib.Records,
    arrays_dir: str | os.PathLike = "",
    split: str = "train",
    process_index: int = 0,
    process_count: int = 1,
) -> dict[str, np.ndarray]:
    """This host's split for the host- and device-memory feeds: memory-mapped from `arrays_dir`
    when given (`open_train_arrays`), else loaded into RAM (`reader.load_train_arrays`)."""
    if arrays_dir:
        return open_train_arrays(records, arrays_dir, split, process_index, process_count)
    return reader.load_train_arrays(records, split, process_index, process_count)


def _source(path: str) -> dict | None:
    try:
        with open(os.path.join(path, SOURCE_FILE)) as f:
            return json.load(f)["source"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _build(records: manifest_lib.Records, path: str, source: dict) -> None:
    split, host = source["split"], (source["process_index"], source["process_count"])
    building = f"{path}.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    os.makedirs(building)
    frames, voice_labels, face_labels = [], [], []
    with open(os.path.join(building, MEL_FILE), "wb") as f:
        for mel, label in reader.train_voices(records, split, *host):
            f.write(np.ascontiguousarray(mel, "<f2").tobytes())
            frames.append(mel.shape[0])
            voice_labels.append(label)
    with open(os.path.join(building, FACE_FILE), "wb") as f:
        for batch in reader.face_batches(records, split, *host):
            f.write(np.ascontiguousarray(batch["image"], np.uint8).tobytes())
            face_labels.extend(batch["label"].tolist())
    small = {
        "voice_frames": np.asarray(frames, np.int64),
        "voice_label": np.asarray(voice_labels, np.int32),
        "face_label": np.asarray(face_labels, np.int32),
    }
    for name, value in small.items():
        np.save(os.path.join(building, f"{name}.npy"), value)
    counts = {"mel_rows": int(sum(frames)), "faces": len(face_labels)}
    # Written last: a folder without it is never opened.
    with open(os.path.join(building, SOURCE_FILE), "w") as f:
        json.dump({"source": source, **counts}, f, indent=1)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(building, path)


def _map(path: str, dtype, shape: tuple[int, ...]) -> np.ndarray:
    if shape[0] == 0:  # np.memmap cannot map an empty file
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


def _open(path: str) -> dict[str, np.ndarray]:
    with open(os.path.join(path, SOURCE_FILE)) as f:
        counts = json.load(f)
    arrays = {name: np.load(os.path.join(path, f"{name}.npy")) for name in SMALL}
    arrays["voice_offset"] = reader.offsets(arrays["voice_frames"])
    arrays["mel"] = _map(os.path.join(path, MEL_FILE), "<f2", (counts["mel_rows"], N_MELS))
    arrays["face"] = _map(
        os.path.join(path, FACE_FILE), np.uint8, (counts["faces"], IMAGE_SIZE, IMAGE_SIZE, 3)
    )
    return arrays
