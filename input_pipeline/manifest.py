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
        return mine
