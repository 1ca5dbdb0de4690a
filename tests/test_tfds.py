"""TFDS reads `v2f prepare`'s shards in place: `records/tfds/` gives the examples the project's
own readers give, and reruns leave it byte-identical."""

import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from v2f_jax.input_pipeline import manifest as manifest_lib
from v2f_jax.input_pipeline import prepare, reader, records

SPLITS = ("train", "test")
KINDS = ("voices", "faces")


def _builder_dir(records_dir, kind) -> pathlib.Path:
    return pathlib.Path(records_dir) / "tfds" / f"v2f_{kind}" / "1.0.0"


def _tfds_examples(records_dir, kind, split) -> list[dict]:
    """The split through TFDS, shard after shard (TFDS interleaves 16 shards by default)."""
    builder = tfds.builder_from_directory(_builder_dir(records_dir, kind))
    config = tfds.ReadConfig(interleave_cycle_length=1)
    return list(tfds.as_numpy(builder.as_dataset(split=split, read_config=config)))


def _parsed(recs, kind, split) -> list[dict]:
    """Every field of every record of the split, parsed by the schema module, in shard order."""
    parse = records.parse_voice if kind == "voices" else records.parse_face
    return [
        ex
        for e in recs.shards(split, kind)
        for ex in tf.data.TFRecordDataset(e["file"]).map(parse).as_numpy_iterator()
    ]


def _metadata_files(records_dir) -> dict[str, bytes]:
    root = pathlib.Path(records_dir) / "tfds"
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def _prepare(corpus: pathlib.Path, out) -> None:
    """As `runs.make_records` prepared the corpus."""
    prepare.prepare(corpus / "fbank", corpus / "faces", corpus / "meta.csv", out, workers=1,
                    shards_per_split=2, progress=False)  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_splits_and_shard_lengths_are_the_manifests(tiny_records_dir, kind):
    recs = manifest_lib.Records.open(tiny_records_dir)
    info = tfds.builder_from_directory(_builder_dir(tiny_records_dir, kind)).info
    assert info.name == f"v2f_{kind}" and sorted(info.splits) == sorted(SPLITS)
    for split in SPLITS:
        shards = recs.split(split)[f"{kind}_shards"]
        assert info.splits[split].num_examples == recs.split(split)[f"num_{kind}"] > 0
        assert info.splits[split].shard_lengths == [e["records"] for e in shards]
        assert info.splits[split].num_bytes == sum(e["bytes"] for e in shards)
    # TFDS's features are the schema's: every field a record has, and no other.
    assert set(info.features) == set(_parsed(recs, kind, "test")[0])


@pytest.mark.parametrize("split", SPLITS)
def test_voices_through_tfds_are_the_readers(tiny_records_dir, split):
    recs = manifest_lib.Records.open(tiny_records_dir)
    got = _tfds_examples(tiny_records_dir, "voices", split)
    ours = list(reader.make_eval_voices(recs, split))
    parsed = _parsed(recs, "voices", split)
    assert len(got) == len(ours) == len(parsed) == recs.split(split)["num_voices"]
    for ex, (mel, label, gender), raw in zip(got, ours, parsed, strict=True):
        assert ex["mel"].dtype == np.float16 and ex["mel"].shape == (ex["frames"], 64)
        assert np.array_equal(ex["mel"].view(np.uint16), raw["mel"].view(np.uint16))  # bitwise
        assert np.array_equal(ex["mel"].astype(np.float32), mel)
        assert (ex["label"], ex["gender"]) == (label, gender)
        for key in ("frames", "label", "gender", "speaker", "name", "path"):
            assert ex[key] == raw[key], key


@pytest.mark.parametrize("split", SPLITS)
def test_faces_through_tfds_are_the_readers(tiny_records_dir, split):
    recs = manifest_lib.Records.open(tiny_records_dir)
    got = _tfds_examples(tiny_records_dir, "faces", split)
    images, labels, genders = reader.load_faces(recs, split)
    parsed = _parsed(recs, "faces", split)
    assert len(got) == len(images) == len(parsed) == recs.split(split)["num_faces"]
    assert np.array_equal(np.stack([ex["image"] for ex in got]), images)
    assert [ex["label"] for ex in got] == labels.tolist()
    assert [ex["gender"] for ex in got] == genders.tolist()
    for ex, raw in zip(got, parsed, strict=True):
        assert ex["image"].dtype == np.uint8 and ex["image"].shape == (64, 64, 3)
        for key in ("label", "gender", "name", "path"):
            assert ex[key] == raw[key], key


def test_tfds_load_by_name_as_the_readme_shows(tiny_records_dir):
    recs = manifest_lib.Records.open(tiny_records_dir)
    data_dir = os.path.join(tiny_records_dir, "tfds")
    for kind in KINDS:
        # TFDS's default read interleaves the shards: the same records, in another order.
        ds = tfds.load(f"v2f_{kind}", data_dir=data_dir, split="train")
        paths = sorted(ex["path"] for ex in tfds.as_numpy(ds))
        assert paths == sorted(ex["path"] for ex in _parsed(recs, kind, "train"))
    mel, label = next(iter(tfds.load("v2f_voices", data_dir=data_dir, split="test",
                                     as_supervised=True)))  # fmt: skip
    assert mel.shape[1] == 64 and label.dtype == tf.int64


def test_reruns_leave_the_metadata_byte_identical(tiny_records_dir, tmp_path):
    corpus = pathlib.Path(tiny_records_dir).parent
    first = _metadata_files(tiny_records_dir)
    names = ("dataset_info.json", "features.json")
    assert sorted(first) == sorted(f"v2f_{k}/1.0.0/{n}" for k in KINDS for n in names)
    assert not any(str(corpus).encode() in data for data in first.values())  # no absolute path

    # A resumed prepare (finished shards kept) whose metadata was lost, beside metadata of another
    # record schema: the metadata comes back the same, the stale one goes.
    out = tmp_path / "resumed"
    shutil.copytree(tiny_records_dir, out)
    shutil.rmtree(out / "tfds")
    stale = out / "tfds" / "v2f_voices" / "0.0.0"
    stale.mkdir(parents=True)
    (stale / "dataset_info.json").write_text("{}")
    _prepare(corpus, out)
    assert _metadata_files(out) == first and not stale.exists()

    # Again: nothing rewritten.
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "tfds").rglob("*.json")}
    _prepare(corpus, out)
    assert {p: p.stat().st_mtime_ns for p in (out / "tfds").rglob("*.json")} == mtimes
    assert _metadata_files(out) == first

    # From scratch into another directory.
    _prepare(corpus, tmp_path / "fresh")
    assert _metadata_files(tmp_path / "fresh") == first
