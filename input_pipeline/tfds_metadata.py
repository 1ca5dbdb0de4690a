"""TFDS metadata for a finished records directory, so TFDS reads the shards where they lie.

Layout, TFDS's own `<data_dir>/<name>/<version>/` (version = `<schema_version>.0.0`):

  OUT/tfds/v2f_voices/1.0.0/{dataset_info.json,features.json}   splits train, test
  OUT/tfds/v2f_faces/1.0.0/{dataset_info.json,features.json}

Voices and faces have different features, hence two datasets. Each split's `filepathTemplate`
is `../../../<kind>-{SPLIT}-{SHARD_X_OF_Y}.tfrecord`, relative to the version folder: TFDS joins it
to the folder it loads from, so it names the shards `v2f prepare` wrote (no copy, no symlink) and
the directory can move as a whole. Then
`tfds.builder_from_directory("OUT/tfds/v2f_voices/1.0.0")` or
`tfds.load("v2f_voices", data_dir="OUT/tfds", split="train")` work without v2f installed.

Features, `records.py`'s schema decoded (tests/test_tfds.py checks the two agree): voices `mel`
float16 `[frames, 64]` (TFDS's raw-bytes `Tensor` encoding is the stored form, little-endian),
`frames`, `label`, `gender` int64, `speaker`, `name`, `path` strings; faces `image` uint8
`[64, 64, 3]`, `label`, `gender`, `name`, `path`. The files hold no time and no absolute path:
same records, same bytes. A split with no records is left out (TFDS cannot read an empty split).
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any

from v2f_jax import files

TFDS_DIR = "tfds"  # under the records directory
DATASETS = {"voices": "v2f_voices", "faces": "v2f_faces"}
SPLITS = ("train", "test")

_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")

_DESCRIPTION = (
    "{what} of a `v2f prepare` records directory (v2f-jax, record schema {schema}), read in place "
    "from its TFRecord shards. `label` numbers the identities of its own split, train and test "
    "each from 0: `splits.<split>.label_map` in the records' manifest.json. TFDS interleaves the "
    "shards; `tfds.ReadConfig(interleave_cycle_length=1)` reads them one after another, in the "
    "order v2f's own reader does."
)


def _features(kind: str, manifest: dict[str, Any]):
    """The `tfds.features.FeaturesDict` of one kind's records (keys as in `records.py`)."""
    import numpy as np
    import tensorflow_datasets as tfds

    f = tfds.features
    common = {
        "label": f.Scalar(np.int64, doc="identity label within this split's label map"),
        "gender": f.Scalar(np.int64, doc="0 male, 1 female, -1 unknown"),
        "name": f.Text(doc="identity name (VGGFace name)"),
    }
    if kind == "voices":
        n_mels = int(manifest["n_mels"])
        return f.FeaturesDict(
            {
                "mel": f.Tensor(
                    shape=(None, n_mels),
                    dtype=np.float16,
                    encoding=f.Encoding.BYTES,
                    doc=f"log-mel [frames, {n_mels}], float16",
                ),
                "frames": f.Scalar(np.int64, doc="frames T of `mel` (10 ms each)"),
                "speaker": f.Text(doc="VoxCeleb id"),
                "path": f.Text(doc="source file relative to the voices directory"),
                **common,
            }
        )
    size = int(manifest["image_size"])
    return f.FeaturesDict(
        {
            "image": f.Tensor(
                shape=(size, size, 3),
                dtype=np.uint8,
                encoding=f.Encoding.BYTES,
                doc=f"aligned face [{size}, {size}, 3] RGB, uint8",
            ),
            "path": f.Text(doc="source file relative to the faces directory"),
            **common,
        }
    )


def _info(kind: str, manifest: dict[str, Any], version_dir: str, version: str):
    """The `tfds.core.DatasetInfo` of one kind, its splits pointing at the existing shards."""
    import tensorflow_datasets as tfds

    name = DATASETS[kind]
    template = tfds.core.ShardedFileTemplate(
        data_dir=version_dir,
        template=f"../../../{kind}-{{SPLIT}}-{{SHARD_X_OF_Y}}.tfrecord",
        dataset_name=name,
        filetype_suffix="tfrecord",
    )
    splits = []
    for split in SPLITS:
        shards = manifest["splits"].get(split, {}).get(f"{kind}_shards", [])
        if not sum(e["records"] for e in shards):
            continue
        split_template = template.replace(split=split)
        for i, e in enumerate(shards):
            path = split_template.relative_filepath(shard_index=i, num_shards=len(shards))
            if os.path.basename(path) != e["file"]:
                raise RuntimeError(f"TFDS would name {split} shard {i} {path}, not {e['file']}")
        splits.append(
            tfds.core.SplitInfo(
                name=split,
                shard_lengths=[int(e["records"]) for e in shards],
                num_bytes=sum(int(e["bytes"]) for e in shards),
                filename_template=split_template,
            )
        )
    info = tfds.core.DatasetInfo(
        builder=tfds.core.DatasetIdentity(
            name=name, version=tfds.core.Version(version), data_dir=version_dir, module_name=""
        ),
        description=_DESCRIPTION.format(
            what="Voices (log-mels)" if kind == "voices" else "Faces (aligned crops)",
            schema=manifest["schema_version"],
        ),
        features=_features(kind, manifest),
        supervised_keys=("mel" if kind == "voices" else "image", "label"),
    )
    info.set_file_format(tfds.core.FileFormat.TFRECORD)
    info.set_splits(tfds.core.SplitDict(splits))
    return info


def _write_if_changed(path: str, data: bytes) -> None:
    """Writes `data` atomically (temp file, fsync, rename) unless `path` already holds it."""
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return
    except OSError:
        pass
    files.write_bytes(path, data)


def write(records_dir: str | os.PathLike, manifest: dict[str, Any]) -> dict[str, str]:
    """Writes (or leaves, when unchanged) the TFDS metadata of a finished records directory.

    Args:
      records_dir: the `--out` of `v2f prepare`, holding the shards `manifest` lists.
      manifest: its parsed `manifest.json` (split shard lists with record counts and bytes,
        `schema_version`, `n_mels`, `image_size`).

    Returns:
      `{"voices": dir, "faces": dir}`: the folders to pass to `tfds.builder_from_directory`.
    """
    records_dir = os.fspath(records_dir)
    version = f"{int(manifest['schema_version'])}.0.0"
    out = {}
    for kind, name in DATASETS.items():
        dataset_dir = os.path.join(records_dir, TFDS_DIR, name)
        version_dir = os.path.join(dataset_dir, version)
        os.makedirs(version_dir, exist_ok=True)
        # TFDS writes non-atomically and unconditionally: let it write to a scratch folder, then
        # put in place only what changed, so a rerun touches nothing and a reader never sees half.
        with tempfile.TemporaryDirectory(prefix="v2f-tfds-") as scratch:
            _info(kind, manifest, version_dir, version).write_to_directory(scratch)
            names = sorted(os.listdir(scratch), key=lambda n: n == "dataset_info.json")
            for filename in names:  # dataset_info.json last: it is what a reader opens first
                with open(os.path.join(scratch, filename), "rb") as f:
                    _write_if_changed(os.path.join(version_dir, filename), f.read())
        # Metadata of another record schema would describe these shards wrongly.
        for entry in os.listdir(dataset_dir):
            other = os.path.join(dataset_dir, entry)
            if entry != version and _VERSION_RE.match(entry) and os.path.isdir(other):
                for filename in names:
                    if os.path.isfile(os.path.join(other, filename)):
                        os.remove(os.path.join(other, filename))
                if not os.listdir(other):
                    os.rmdir(other)
        out[kind] = version_dir
    return out
