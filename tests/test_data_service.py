"""input_pipeline.data_service: through a tf.data service of 2 workers (on 127.0.0.1), the same
batches in the same order as locally, from any start; errors instead of hangs or wrong batches;
`v2f data-service`."""

import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from v2f_jax import cli
from v2f_jax.input_pipeline import data_service

SERVICE = tf.data.experimental.service
WORKERS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _servers(listed: int, running: int):
    """A dispatcher on 127.0.0.1 with `listed` worker addresses, `running` of them started."""
    dispatcher = SERVICE.DispatchServer(
        SERVICE.DispatcherConfig(worker_addresses=["127.0.0.1:%port%"] * listed)
    )
    address = f"grpc://127.0.0.1:{dispatcher.target.rsplit(':', 1)[1]}"
    return address, dispatcher, [_worker(address) for _ in range(running)]


def _worker(address):
    return SERVICE.WorkerServer(
        SERVICE.WorkerConfig(
            dispatcher_address=address.split("://")[1],
            worker_address="127.0.0.1:%port%",
            heartbeat_interval_ms=100,
        )
    )


@pytest.fixture(scope="module")
def service():
    address, dispatcher, workers = _servers(WORKERS, WORKERS)
    yield address
    for w in workers:
        w.stop()
    dispatcher.stop()


def _job(start=0):
    return data_service.unique_job_name("test", 0, start)


def _assert_same(got, want):
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert sorted(g) == sorted(w)
        for key in w:
            np.testing.assert_array_equal(g[key], w[key], err_msg=key)
            assert g[key].dtype == w[key].dtype


# A stream like the reader's: cheap indexed elements, then per-batch work keyed by the index.
def _indices(start, n):
    return tf.data.Dataset.range(start, start + n).map(lambda i: {"batch_index": i})


def _batch_of(element):
    i = element["batch_index"]
    key = tf.stack([tf.constant(7, tf.int64), i])
    return {
        "x": tf.random.stateless_normal([4, 3], seed=key),
        "label": tf.random.stateless_uniform([4], seed=key + 1, maxval=100, dtype=tf.int32),
    }


@pytest.mark.parametrize("start", [0, 37])
def test_same_batches_in_the_same_order_as_locally(service, start):
    it = data_service.distribute(
        _indices(start, 40), service, job_name=_job(start), start=start, transform=_batch_of
    )
    got = list(it)
    want = list(data_service.local_dataset(_indices(start, 40), _batch_of).as_numpy_iterator())
    _assert_same(got, want)
    assert [int(g["batch_index"]) for g in got] == list(range(start, start + 40))
    assert it.next_batch == start + 40


def test_a_whole_dataset_without_a_transform(service):
    ds = _indices(5, 12).map(lambda e: {**e, **_batch_of(e)})
    got = list(data_service.distribute(ds, service, job_name=_job(5), start=5))
    _assert_same(got, list(ds.as_numpy_iterator()))


def _write_records(root, files=4, per_file=20):
    rng = np.random.default_rng(0)
    paths = []
    for f in range(files):
        path = str(root / f"part-{f}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for r in range(per_file):
                values = rng.standard_normal(16).astype(np.float32)
                example = tf.train.Example(
                    features=tf.train.Features(
                        feature={
                            "values": tf.train.Feature(
                                bytes_list=tf.train.BytesList(value=[values.tobytes()])
                            ),
                            "label": tf.train.Feature(
                                int64_list=tf.train.Int64List(value=[f * per_file + r])
                            ),
                        }
                    )
                )
                writer.write(example.SerializeToString())
        paths.append(path)
    return paths


def _record_batches(paths, start, batch=4):
    """Files interleaved and shuffled with fixed seeds, serialized records cut to batches, the
    first `start` batches skipped: the reader's shape of stream."""
    ds = tf.data.Dataset.from_tensor_slices(paths).interleave(
        tf.data.TFRecordDataset, cycle_length=2, num_parallel_calls=2, deterministic=True
    )
    ds = ds.shuffle(32, seed=5).batch(batch, drop_remainder=True).skip(start)
    return ds.enumerate(start=start).map(lambda i, r: {"batch_index": i, "records": r})


def _parse_and_crop(element):
    parsed = tf.io.parse_example(
        element["records"],
        {
            "values": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64),
        },
    )
    values = tf.io.decode_raw(parsed["values"], tf.float32)
    key = tf.stack([tf.constant(3, tf.int64), element["batch_index"]])
    offset = tf.random.stateless_uniform([], seed=key, maxval=8, dtype=tf.int32)
    return {"x": values[:, offset : offset + 8], "label": parsed["label"]}


def test_records_read_on_the_workers_resume_exactly(service, tmp_path):
    paths = _write_records(tmp_path)
    local = list(
        data_service.local_dataset(_record_batches(paths, 0), _parse_and_crop).as_numpy_iterator()
    )
    assert len(local) == 20
    labels = np.concatenate([b["label"] for b in local])
    assert sorted(labels) == list(range(80)) and list(labels) != sorted(labels)  # shuffled
    for start in (0, 7):
        got = list(
            data_service.distribute(
                _record_batches(paths, start),
                service,
                job_name=_job(start),
                start=start,
                transform=_parse_and_crop,
            )
        )
        _assert_same(got, local[start:])


def test_unreachable_dispatcher_is_named_quickly():
    port = _free_port()
    began = time.monotonic()
    with pytest.raises(data_service.DispatcherUnreachableError) as err:
        data_service.distribute(
            _indices(0, 4), f"127.0.0.1:{port}", job_name=_job(), start=0, connect_timeout_s=2
        )
    assert time.monotonic() - began < 10
    assert f"grpc://127.0.0.1:{port}" in str(err.value)
    assert "v2f data-service dispatcher" in str(err.value)
    assert "v2f data-service worker" in str(err.value)


def test_distribute_waits_for_a_listed_worker_started_late():
    address, dispatcher, workers = _servers(listed=2, running=1)
    late = threading.Timer(2.0, lambda: workers.append(_worker(address)))
    late.start()
    began = time.monotonic()
    it = data_service.distribute(
        _indices(0, 30), address, job_name=_job(), start=0, transform=_batch_of
    )
    assert time.monotonic() - began > 1.5 and len(workers) == 2
    want = data_service.local_dataset(_indices(0, 30), _batch_of).as_numpy_iterator()
    _assert_same(list(it), list(want))
    del dispatcher


def test_a_listed_worker_not_running_is_named_in_bounded_time():
    address, dispatcher, workers = _servers(listed=2, running=1)
    with pytest.raises(
        data_service.DataServiceError, match="not every worker.*50% of the shards did"
    ):
        data_service.distribute(
            _indices(0, 10), address, job_name=_job(), start=0, workers_timeout_s=3
        )
    del workers, dispatcher


def test_no_worker_is_named_in_bounded_time():
    address, dispatcher, _ = _servers(listed=1, running=0)
    began = time.monotonic()
    with pytest.raises(data_service.DataServiceError, match="not every worker.*none did"):
        data_service.distribute(
            _indices(0, 4), address, job_name=_job(), workers_timeout_s=3, start=0
        )
    assert time.monotonic() - began < 15
    del dispatcher


def test_workers_lost_mid_job_is_an_error_not_a_hang():
    address, dispatcher, workers = _servers(listed=2, running=2)
    it = data_service.distribute(
        _indices(0, 1000), address, job_name=_job(), start=0, batch_timeout_s=3
    )
    for w in workers:
        w.stop()
    with pytest.raises(data_service.DataServiceError, match=address):
        list(it)
    it.close()
    del dispatcher


def _stream(indices):
    return ({"batch_index": np.int64(i)} for i in indices)


def test_in_order_restores_the_order_within_the_limit():
    order = [1, 0, 3, 5, 2, 4, 7, 6]
    got = data_service.in_order(_stream(order), start=0, reorder_limit=3, expected=8)
    assert [int(e["batch_index"]) for e in got] == list(range(8))


@pytest.mark.parametrize(
    "indices, kwargs, message",
    [
        ([10, 11, 11], {}, "came twice"),
        ([10, 12, 10], {}, "came twice"),
        ([9], {}, "before the start"),
        ([11, 12, 13], {"reorder_limit": 2}, "has not come"),
        ([10, 12], {}, "without batch 11"),
        ([10, 11], {"expected": 3}, "after 2 batches of 3"),
        ([10, 11], {"endless": True}, "ended after 2"),
    ],
)
def test_in_order_refuses_gaps_and_duplicates(indices, kwargs, message):
    kwargs = {"start": 10, "reorder_limit": 8, **kwargs}
    with pytest.raises(data_service.DataServiceError, match=message):
        list(data_service.in_order(_stream(indices), **kwargs))


def test_a_source_without_batch_index_is_refused():
    with pytest.raises(ValueError, match="batch_index"):
        data_service.local_dataset(tf.data.Dataset.range(3))


def test_help():
    result = subprocess.run(
        [sys.executable, "-m", "v2f_jax.cli", "data-service", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "dispatcher" in result.stdout and "worker" in result.stdout
    assert "same path" in result.stdout


@pytest.mark.parametrize("role", ["dispatcher", "worker"])
def test_role_help(role, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["data-service", role, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: v2f data-service {role}" in capsys.readouterr().out


def test_bad_worker_list_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["data-service", "dispatcher", "--workers", "in1"])
    assert exit_info.value.code == 2
    assert "HOST:PORT" in capsys.readouterr().err


def test_a_port_in_use_is_an_error(capsys):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = ["data-service", "dispatcher", "--port", str(port), "--workers", "127.0.0.1:1"]
        assert cli.main(argv) == 2
    assert f"cannot serve on port {port}" in capsys.readouterr().err


def _wait_until_serving(proc, log, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while b"v2f data-service: " not in log.read_bytes():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"not serving after {timeout_s} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_servers_started_by_the_command_line(tmp_path):
    """`v2f data-service dispatcher` and `worker`, each its own process, and a second worker in
    this one: half the batches come over gRPC from another process."""
    ports = [_free_port() for _ in range(3)]
    dispatcher = f"127.0.0.1:{ports[0]}"
    command = [sys.executable, "-m", "v2f_jax.cli", "data-service"]
    roles = [
        [
            "dispatcher",
            "--port",
            str(ports[0]),
            "--workers",
            f"127.0.0.1:{ports[1]},127.0.0.1:{ports[2]}",
        ],
        ["worker", "--dispatcher", dispatcher, "--port", str(ports[1]), "--host", "127.0.0.1"],
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    logs = [tmp_path / f"{r[0]}.log" for r in roles]
    procs = []
    try:
        for role, log in zip(roles, logs):
            with open(log, "wb") as out:
                procs.append(
                    subprocess.Popen(command + role, env=env, stdout=out, stderr=subprocess.STDOUT)
                )
        _wait_until_serving(procs[0], logs[0])  # its process imports TensorFlow first
        here = SERVICE.WorkerServer(
            SERVICE.WorkerConfig(
                dispatcher_address=dispatcher, worker_address=f"127.0.0.1:{ports[2]}", port=ports[2]
            )
        )
        paths = _write_records(tmp_path)
        got = list(
            data_service.distribute(
                _record_batches(paths, 2),
                f"grpc://{dispatcher}",
                job_name=_job(2),
                start=2,
                transform=_parse_and_crop,
                workers_timeout_s=60,
                batch_timeout_s=60,
            )
        )
        want = data_service.local_dataset(_record_batches(paths, 2), _parse_and_crop)
        _assert_same(got, list(want.as_numpy_iterator()))
        assert b"v2f data-service: worker 127.0.0.1:" in logs[1].read_bytes()
        here.stop()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
