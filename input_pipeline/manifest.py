"""A prepared records directory, read once: its manifest, shards, label maps and front end.

`Records.open(path)` reads and checks `manifest.json` (what `v2f prepare` wrote last); the
training loop, its sample grid, the tf.data reader and evaluation all take the one object
instead of each re-reading the path. No TensorFlow here: the step and the model never need it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

from v2f_jax.input_pipeline import errors

FILENAME = "manifest.json"
FORMAT = "v2f-records"
# The record schema this code reads and writes (`records.py`); prepare stamps it in the manifest.
SCHEMA_VERSION = 1


class CorruptRecordsError(errors.BadInputError):
    """A shard that is missing, truncated, corrupt, or disagrees with the manifest."""


@dataclasses.dataclass(frozen=True)
class Records:
    """The output of one finished `v2f prepare`.

    Attributes:
      root: the records directory (absolute).
      manifest: the parsed `manifest.json` (counts per split and identity, label maps, genders,
        front end, face mode, rejects summary, shard list).
      manifest_sha256: hex digest of the manifest's bytes: equal digests, equal records.
    """

    root: str
    manifest: dict[str, Any]
    manifest_sha256: str

    @classmethod
    def open(cls, path: str | os.PathLike) -> Records:
        """Reads `path/manifest.json`.

        Raises:
          FileNotFoundError: no manifest (not a records directory, or prepare did not finish).
          errors.BadInputError: not a v2f manifest, or another schema version.
        """
        root = os.path.abspath(os.fspath(path))
        manifest_path = os.path.join(root, FILENAME)
        if not os.path.isfile(manifest_path):
            raise FileNotFoundError(
                f"{manifest_path}: no manifest; is {path} the --out of a finished `v2f prepare`?"
            )
        with open(manifest_path, "rb") as f:
            raw = f.read()
        try:
            manifest = json.loads(raw)
        except ValueError as err:
            raise errors.BadInputError(manifest_path, f"not valid JSON ({err})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise errors.BadInputError(manifest_path, "not a v2f records manifest")
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise errors.BadInputError(
                manifest_path,
                f"record schema {manifest.get('schema_version')}, this version of v2f reads "
                f"{SCHEMA_VERSION}; rerun `v2f prepare`",
            )
        if not isinstance(manifest.get("splits"), dict) or "train" not in manifest["splits"]:
            raise errors.BadInputError(manifest_path, "no train split: an incomplete manifest")
        problem = manifest_problem(manifest)
        if problem:
            raise errors.BadInputError(
                manifest_path,
                f"{problem} (edited by hand or damaged; rerun `v2f prepare` to write it anew)",
            )
        return cls(root, manifest, hashlib.sha256(raw).hexdigest())

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.root, FILENAME)

    @property
    def frontend(self) -> dict[str, Any]:
        """The audio front end's parameters the voices were computed with (`{"name": ...}`)."""
        return dict(self.manifest.get("frontend") or {})

    def split(self, name: str) -> dict[str, Any]:
        """The manifest's entry of split `name` (`num_identities`, `identities`, shards, ...)."""
        splits = self.manifest["splits"]
        if name not in splits:
            raise ValueError(f"no split {name!r} in {self.manifest_path}; have {sorted(splits)}")
        return splits[name]

    def has_split(self, name: str) -> bool:
        return name in self.manifest["splits"]

    @property
    def num_train_ids(self) -> int:
        """Identities of the training split: the identity classifier's classes."""
        return int(self.split("train")["num_identities"])

    def identities(self, split: str) -> dict[str, dict[str, Any]]:
        """`{name: {"label", "gender", "voices", "faces", ...}}` of a split."""
        return self.split(split)["identities"]

    def shards(
        self, split: str, kind: str, process_index: int = 0, process_count: int = 1
    ) -> list[dict[str, Any]]:
        """This host's shard entries `{"file" (full path), "records", "bytes"}`, checked on disk.

        Host `i` of `n` takes files `i, i + n, ...` of the split's `kind` ("voices" or "faces")
        in name order, so hosts are disjoint and together cover every file.

        Raises:
          ValueError: fewer shard files than hosts, or a bad process index.
          CorruptRecordsError: a shard missing, or its size not the manifest's.
        """
        entries = sorted(self.split(split)[f"{kind}_shards"], key=lambda e: e["file"])
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if len(entries) < process_count:
            raise ValueError(
                f"{split} {kind}: {len(entries)} shard file(s) for {process_count} hosts; every "
                f"host needs its own files: rerun `v2f prepare --shards-per-split N` with N >= "
                f"{process_count}"
            )
        mine = [dict(e, file=os.path.join(self.root, e["file"])) for e in entries]
        mine = mine[process_index::process_count]
        for e in mine:
            try:
                size = os.path.getsize(e["file"])
            except OSError:
                raise CorruptRecordsError(e["file"], "shard in the manifest is missing") from None
            if size != e["bytes"]:
                raise CorruptRecordsError(
                    e["file"],
                    f"shard has {size} bytes, the manifest says {e['bytes']} (truncated?)",
                )
            rewritten = _rewritten_since(e)
            if rewritten:
                raise CorruptRecordsError(e["file"], rewritten)
        return mine


def _rewritten_since(entry: dict[str, Any]) -> str | None:
    """Why the shard is no longer the one the manifest lists, going by its `.done` record
    (`v2f prepare` removes it before rewriting the shard, and writes it after): a later prepare
    that did not finish. None when they agree, or where there is no `.done` to go by."""
    want = entry.get("sha256")
    if not want:
        return None
    try:
        with open(entry["file"] + ".done") as f:
            done = json.load(f)
    except FileNotFoundError:
        if os.path.exists(os.path.join(os.path.dirname(entry["file"]), PREPARE_MARKER)):
            return (
                "shard is being rewritten by a later `v2f prepare` (no .done record beside "
                "it); let that prepare finish, or rerun it"
            )
        return None  # records copied without their .done files: the sizes were checked
    except (OSError, ValueError):
        return None
    have = done.get("sha256") if isinstance(done, dict) else None
    if have != want:
        return (
            "shard was rewritten by a later `v2f prepare` that did not finish (its .done "
            "digest is not the manifest's): rerun that `v2f prepare` to the end"
        )
    return None


# What `v2f prepare` leaves in every folder it writes records into (prepare.py).
PREPARE_MARKER = ".v2f-prepare"


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def manifest_problem(manifest: dict[str, Any]) -> str | None:
    """The first field of a parsed manifest that does not hold what `v2f prepare` writes
    there, as `KEY: what it must be, got VALUE`; None when every field the readers use is
    well formed."""

    def bad(key: str, want: str, value: Any) -> str:
        return f"{key}: must be {want}, got {value!r}"[:300]

    for key in ("n_mels", "image_size"):
        if key in manifest and not (_is_count(manifest[key]) and manifest[key] > 0):
            return bad(key, "a positive integer", manifest[key])
    frontend = manifest.get("frontend")
    if frontend is not None and not (
        isinstance(frontend, dict) and isinstance(frontend.get("name", ""), str)
    ):
        return bad("frontend", "null or an object with a 'name'", frontend)
    for split, entry in manifest["splits"].items():
        where = f"splits.{split}"
        if not isinstance(entry, dict):
            return bad(where, "an object", entry)
        for key in ("num_identities", "num_voices", "num_faces"):
            if not _is_count(entry.get(key)):
                return bad(f"{where}.{key}", "an integer >= 0", entry.get(key))
        identities = entry.get("identities")
        if not isinstance(identities, dict):
            return bad(f"{where}.identities", "an object", identities)
        labels = set()
        for name, info in identities.items():
            label = info.get("label") if isinstance(info, dict) else None
            if not _is_count(label) or label >= entry["num_identities"]:
                return bad(
                    f"{where}.identities.{name}.label",
                    f"an integer in [0, {entry['num_identities']})",
                    label,
                )
            if not isinstance(info.get("gender", ""), str):
                return bad(f"{where}.identities.{name}.gender", "a string", info.get("gender"))
            labels.add(label)
        if len(labels) != len(identities) or len(identities) != entry["num_identities"]:
            return (
                f"{where}.identities: {len(identities)} identities with {len(labels)} distinct "
                f"labels, num_identities says {entry['num_identities']}"
            )
        for kind in ("voices", "faces"):
            shards = entry.get(f"{kind}_shards")
            if not isinstance(shards, list):
                return bad(f"{where}.{kind}_shards", "a list", shards)
            total = 0
            for i, shard in enumerate(shards):
                at = f"{where}.{kind}_shards[{i}]"
                if not isinstance(shard, dict):
                    return bad(at, "an object", shard)
                name = shard.get("file")
                if not isinstance(name, str) or not name or os.path.basename(name) != name:
                    return bad(f"{at}.file", "a file name inside the records directory", name)
                for key in ("records", "bytes"):
                    if not _is_count(shard.get(key)):
                        return bad(f"{at}.{key}", "an integer >= 0", shard.get(key))
                if not isinstance(shard.get("sha256", ""), str):
                    return bad(f"{at}.sha256", "a hex digest", shard.get("sha256"))
                total += shard["records"]
            if total != entry[f"num_{kind}"]:
                return (
                    f"{where}.num_{kind}: {entry[f'num_{kind}']}, its shards hold {total} records"
                )
    return None
