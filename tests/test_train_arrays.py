"""input_pipeline.train_arrays: a host's training split written once, memory-mapped after."""

import json

import numpy as np
import pytest

from v2f_jax.input_pipeline import manifest, reader, train_arrays


@pytest.fixture(scope="module")
def records(tiny_records_dir):
    return manifest.Records.open(tiny_records_dir)


def _assert_same_arrays(got, want):
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize("process_index, process_count", [(0, 1), (1, 2)])
def test_mapped_arrays_equal_the_split_loaded_into_ram_and_are_built_once(
    records, tmp_path, process_index, process_count
):
    host = dict(process_index=process_index, process_count=process_count)
    builds = []
    first = train_arrays.open_train_arrays(records, tmp_path, log=builds.append, **host)
    _assert_same_arrays(first, reader.load_train_arrays(records, **host))
    assert isinstance(first["mel"], np.memmap) and isinstance(first["face"], np.memmap)
    again = train_arrays.open_train_arrays(records, tmp_path, log=builds.append, **host)
    _assert_same_arrays(again, first)
    assert len(builds) == 1  # the second run maps what the first wrote
    assert [p.name for p in tmp_path.iterdir()] == [f"train-host{process_index}of{process_count}"]


def test_arrays_of_other_records_or_a_build_cut_short_are_rebuilt(records, tmp_path):
    builds = []
    want = reader.load_train_arrays(records)
    train_arrays.open_train_arrays(records, tmp_path, log=builds.append)
    path = tmp_path / "train-host0of1"
    source = json.loads((path / train_arrays.SOURCE_FILE).read_text())
    source["source"]["manifest_sha256"] = "0" * 64  # made from other records
    (path / train_arrays.SOURCE_FILE).write_text(json.dumps(source))
    (path / train_arrays.MEL_FILE).write_bytes(b"\0" * 128)
    _assert_same_arrays(train_arrays.open_train_arrays(records, tmp_path, log=builds.append), want)
    # A build killed before its last file: no source.json, so never opened as it is.
    (path / train_arrays.SOURCE_FILE).unlink()
    _assert_same_arrays(train_arrays.open_train_arrays(records, tmp_path, log=builds.append), want)
    assert len(builds) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-host0of1"]
