"""The training stream through tf.data service: the same batches, in the same order, computed on
input machines (`v2f data-service dispatcher` and `v2f data-service worker`).

A stream is `source`, a dataset of cheap elements that carry an int64 `batch_index` (consecutive
from `start`: serialized records already cut to batches), and `transform`, the CPU-heavy work on
one element (parse, crop, flip), a function of that element alone. Locally that is
`local_dataset(source, transform)`; `distribute` runs the same two on the service's workers.

Sharding: static, `ShardingPolicy.HINT`. The workers run `source.shard(SHARD_HINT, SHARD_HINT)
.map(transform)` and the dispatcher makes the hint `shard(W, w)` from its fixed list of W worker
addresses (static sharding requires that list): worker w transforms batches start + w,
start + w + W, ... Every worker reads the cheap source in full; the transform is split W ways.
The other policies do not keep the batches: OFF gives every worker every batch (duplicates),
DYNAMIC and FILE hand records to workers by timing or by file, so a batch would hold other
records, and DATA shards after the transform (every worker does all the work).

Order: the service passes on each worker's batches as they arrive. The iterator puts them back
in batch-index order with a bounded buffer; a duplicate, a gap at the end of the stream, or a
buffer past `reorder_limit` (a listed worker stopped, restarted, which restarts its shard from
the beginning, or far behind the others) is a `DataServiceError`, never a different batch.

Waiting, in bounded time: TensorFlow retries an unreachable dispatcher for an hour (registration)
or forever (creating the job), and a job started before every listed worker runs leaves their
shards out. So `distribute` connects to the address itself first (retrying while a dispatcher
starts), then runs a small roll-call job until every listed worker answers, bounds the
registration and each batch's wait, and names the address and how to start the servers.
"""

from __future__ import annotations

import itertools
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import tensorflow as tf

from v2f_jax.input_pipeline import errors

START_SERVERS = (
    "start the dispatcher (`v2f data-service dispatcher --port PORT --workers HOST:PORT,...`) "
    "and one `v2f data-service worker --dispatcher DISPATCHER_HOST:PORT --port PORT` per "
    "address of its --workers list"
)

Transform = Callable[[dict], dict]


class DataServiceError(errors.ServiceError, RuntimeError):
    """The service's batches cannot be put back in order: a batch missing or duplicated, the
    reorder buffer full, a batch too long in coming, or an error from the service."""


class DispatcherUnreachableError(errors.ServiceError, ConnectionError):
    """Nothing answers at the dispatcher's address; the message says how to start it."""


def local_dataset(source: tf.data.Dataset, transform: Transform | None = None) -> tf.data.Dataset:
    """`source` with `transform` applied here: the stream `distribute` reproduces.

    Args:
      source: elements are dicts with an int64 scalar `batch_index`, consecutive.
      transform: element -> dict, a function of the element alone (stateless randomness keyed by
        `batch_index`); its output gets the element's `batch_index` added. None: `source` as is.
    """
    _check_source(source)
    if transform is None:
        return source

    def apply(element):
        return {**transform(element), "batch_index": element["batch_index"]}

    return source.map(apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def distribute(
    source: tf.data.Dataset,
    address: str,
    *,
    job_name: str,
    start: int,
    transform: Transform | None = None,
    reorder_limit: int = 64,
    connect_timeout_s: float = 30.0,
    workers_timeout_s: float = 300.0,
    batch_timeout_s: float | None = 900.0,
) -> OrderedIterator:
    """Iterates `local_dataset(source, transform)` with the work done by tf.data service workers.

    Args:
      source: as for `local_dataset`, its first `batch_index` being `start`. It is serialized to
        the workers: the files it reads must exist at the same paths there.
      address: the dispatcher, `grpc://host:port` or `host:port`.
      job_name: unique per host, run and start (`unique_job_name`): a second consumer of a
        name would share the job's batches.
      start: the first batch index of `source`.
      transform: the per-batch work the workers split; None: every worker computes the whole of
        `source` and keeps its share (only the trainer host is relieved).
      reorder_limit: batches held while an earlier one is awaited (each batch's memory).
      connect_timeout_s: for the connection to the dispatcher and the dataset's registration.
      workers_timeout_s: longest wait for every worker of the dispatcher's list to serve.
      batch_timeout_s: longest wait for the next batch (the first includes filling the shuffle
        buffer and, on a resume, skipping into the epoch); None waits forever.

    Returns:
      An iterator of numpy dicts in batch-index order, equal to iterating `local_dataset`.

    Raises:
      DispatcherUnreachableError: nothing answers at `address` within `connect_timeout_s`.
      DataServiceError: a listed worker not serving within `workers_timeout_s`; (from `next`) a
        batch missing, duplicated or too long in coming.
    """
    _check_source(source)
    if not isinstance(job_name, str) or not job_name:
        raise ValueError(f"job_name must be a non-empty string, got {job_name!r}")
    if reorder_limit < 1:
        raise ValueError(f"reorder_limit must be at least 1, got {reorder_limit}")
    service = address if "://" in address else f"grpc://{address}"
    _check_reachable(service, connect_timeout_s)
    _wait_for_workers(service, job_name, connect_timeout_s, workers_timeout_s)

    sharded = source.shard(tf.data.experimental.SHARD_HINT, tf.data.experimental.SHARD_HINT)
    dataset = local_dataset(sharded, transform)
    dataset_id = _register(service, dataset, connect_timeout_s)
    distributed = tf.data.experimental.service.from_dataset_id(
        processing_mode=tf.data.experimental.service.ShardingPolicy.HINT,
        service=service,
        dataset_id=dataset_id,
        element_spec=dataset.element_spec,
        job_name=job_name,
    )
    cardinality = int(source.cardinality())
    return OrderedIterator(
        distributed,
        start=start,
        expected=cardinality if cardinality >= 0 else None,
        endless=cardinality == tf.data.INFINITE_CARDINALITY,
        reorder_limit=reorder_limit,
        batch_timeout_s=batch_timeout_s,
        where=f"the tf.data service at {service} (job {job_name})",
    )


def unique_job_name(run: str, process_index: int, start: int) -> str:
    """A job name no other host, run or restart uses: `v2f-RUN-pI-bSTART-RANDOM`."""
    return f"v2f-{run}-p{process_index}-b{start}-{uuid.uuid4().hex[:12]}"


def in_order(
    elements: Iterable[dict],
    *,
    start: int,
    reorder_limit: int,
    expected: int | None = None,
    endless: bool = False,
    where: str = "the tf.data service",
) -> Iterator[dict]:
    """`elements` (dicts with `batch_index`, each index from `start` on once, in any order whose
    lag stays under `reorder_limit`) in batch-index order.

    Raises:
      DataServiceError: an index repeated or below `start`, more than `reorder_limit` elements
        held, or the input ended with a gap, before `expected` elements, or at all if `endless`.
    """
    held: dict[int, dict] = {}
    want = start
    for element in elements:
        index = int(element["batch_index"])
        if index < start:
            raise DataServiceError(
                f"batch {index} came from {where}, before the start, {start}: `start` must be "
                f"the source's first batch_index"
            )
        if index < want or index in held:
            raise DataServiceError(
                f"batch {index} came twice from {where} (a worker restarted mid-job, or two "
                f"consumers share the job name): restart training, it resumes exactly"
            )
        held[index] = element
        while want in held:
            yield held.pop(want)
            want += 1
        if len(held) > reorder_limit:
            raise DataServiceError(
                f"batch {want} has not come from {where} while {len(held)} later ones have "
                f"(reorder_limit {reorder_limit}): a worker of the dispatcher's --workers list "
                f"is not running, was restarted, or is far slower than the others"
            )
    if held:
        raise DataServiceError(
            f"{where} ended without batch {want} (it sent up to {max(held)}): a worker of the "
            f"dispatcher's --workers list is not running"
        )
    if endless or (expected is not None and want - start < expected):
        raise DataServiceError(
            f"{where} ended after {want - start} batches"
            + (f" of {expected}" if expected is not None else "")
            + ": a worker of the dispatcher's --workers list is not running"
        )


class OrderedIterator:
    """Numpy batches of a tf.data service job in batch-index order (`in_order`), fetched by a
    background thread so that a lost worker or dispatcher times out instead of hanging.
    `next_batch` is the index of the next batch (the `start_batch` of a resume)."""

    def __init__(
        self,
        dataset: tf.data.Dataset,
        *,
        start: int,
        expected: int | None,
        endless: bool,
        reorder_limit: int,
        batch_timeout_s: float | None,
        where: str,
    ):
        self.next_batch = start
        self._where = where
        self._timeout = batch_timeout_s
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        # The thread holds neither self nor the iterator: dropping the iterator stops it.
        threading.Thread(
            target=_fetch,
            args=(dataset, self._queue, self._stop),
            name="v2f-data-service",
            daemon=True,
        ).start()
        self._ordered = in_order(
            self._received(),
            start=start,
            reorder_limit=reorder_limit,
            expected=expected,
            endless=endless,
            where=where,
        )

    def __iter__(self) -> OrderedIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        element = next(self._ordered)
        self.next_batch += 1
        return element

    def close(self) -> None:
        """Stops fetching (a fetch blocked inside TensorFlow ends with the job or the process)."""
        self._stop.set()

    def __del__(self) -> None:
        self.close()

    def _received(self) -> Iterator[dict]:
        while True:
            try:
                item = self._queue.get(timeout=self._timeout)
            except queue.Empty:
                raise DataServiceError(
                    f"no batch from {self._where} in {self._timeout:g} s (waiting for batch "
                    f"{self.next_batch}): are the workers of the dispatcher's --workers list "
                    f"running? To start them: {START_SERVERS}"
                ) from None
            if item is _END:
                return
            if isinstance(item, tf.errors.OpError):
                raise DataServiceError(f"{self._where}: {item.message.strip()}") from item
            if isinstance(item, BaseException):
                raise item
            yield item


_END = object()


def _fetch(dataset: tf.data.Dataset, out: queue.Queue, stop: threading.Event) -> None:
    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    try:
        for element in dataset.as_numpy_iterator():
            if not put(element):
                return
        put(_END)
    except Exception as err:  # handed to the consumer's thread, which raises it
        put(err)


def _check_source(source: tf.data.Dataset) -> None:
    spec = source.element_spec
    index = spec.get("batch_index") if isinstance(spec, dict) else None
    if not isinstance(index, tf.TensorSpec) or index.dtype != tf.int64 or index.shape.rank != 0:
        raise ValueError(
            f"the dataset's elements must be dicts with an int64 scalar 'batch_index', got {spec}"
        )


def _host_port(service: str) -> tuple[str, int]:
    target = service.split("://", 1)[1]
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"tf.data service address must be grpc://host:port, got {service!r}")
    return host.strip("[]"), int(port)


def _check_reachable(service: str, timeout_s: float) -> None:
    """Connects to the dispatcher, retrying a refused connection (a dispatcher still starting)
    until `timeout_s`."""
    host, port = _host_port(service)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            remaining = max(deadline - time.monotonic(), 0.1)
            socket.create_connection((host, port), timeout=remaining).close()
            return
        except OSError as err:
            if time.monotonic() + 0.5 >= deadline:
                raise DispatcherUnreachableError(
                    f"no tf.data service dispatcher answers at {service} ({err}, for "
                    f"{timeout_s:g} s); {START_SERVERS}. Input workers must see the records "
                    f"at the same paths as the trainer."
                ) from err
            time.sleep(0.5)


def _call(fn: Callable[[], object], timeout_s: float | None) -> tuple[bool, object]:
    """`fn()` in a daemon thread: (True, its result), its exception raised, or (False, None) when
    it is still running after `timeout_s` (TensorFlow's waits cannot be interrupted)."""
    result: list = []

    def target():
        try:
            result.append((True, fn()))
        except Exception as err:  # raised below, in the caller's thread
            result.append((False, err))

    thread = threading.Thread(target=target, name="v2f-data-service-call", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not result:
        return False, None
    done, value = result[0]
    if not done:
        raise value
    return True, value


def _register(service: str, dataset: tf.data.Dataset, timeout_s: float) -> tf.Tensor:
    """`register_dataset` with a deadline (TensorFlow's own is an hour)."""
    try:
        done, dataset_id = _call(
            lambda: tf.data.experimental.service.register_dataset(service, dataset), timeout_s
        )
    except Exception as err:
        raise DataServiceError(
            f"registering the dataset with the dispatcher at {service} failed: {err}"
        ) from err
    if not done:
        raise DispatcherUnreachableError(
            f"{service} accepted a connection but did not register the dataset in "
            f"{timeout_s:g} s: is it a tf.data service dispatcher? {START_SERVERS}"
        )
    return dataset_id


# Elements of the roll call: each listed worker (up to this many) answers with its residues.
_ROLL_CALL = 1024


def _wait_for_workers(
    service: str, job_name: str, connect_timeout_s: float, timeout_s: float
) -> None:
    """Returns once every worker of the dispatcher's list serves a statically sharded job.

    A job takes the workers registered when it starts: one started late joins with its shard
    from the beginning while the others' batches pile up in the reorder buffer, and a finite
    job ends without it. So a small job, `range(_ROLL_CALL)` sharded as the real one, is run
    until it comes back whole.
    """
    roll_call = tf.data.Dataset.range(_ROLL_CALL).shard(
        tf.data.experimental.SHARD_HINT, tf.data.experimental.SHARD_HINT
    )
    dataset_id = _register(service, roll_call, connect_timeout_s)
    deadline = time.monotonic() + timeout_s
    most = 0  # elements of the most complete roll call
    for attempt in itertools.count():
        job = tf.data.experimental.service.from_dataset_id(
            processing_mode=tf.data.experimental.service.ShardingPolicy.HINT,
            service=service,
            dataset_id=dataset_id,
            element_spec=roll_call.element_spec,
            job_name=f"{job_name}-roll-call-{attempt}",
        )
        remaining = max(deadline - time.monotonic(), 1.0)
        try:
            done, answered = _call(lambda job=job: list(job.as_numpy_iterator()), remaining)
        except tf.errors.OpError as err:
            raise DataServiceError(
                f"the tf.data service at {service}: {err.message.strip()} (the dispatcher's "
                f"--workers list must spell each worker as its --host:--port)"
            ) from err
        if done and len(answered) == _ROLL_CALL:
            return
        most = max(most, len(answered) if done else 0)
        if time.monotonic() >= deadline:
            raise DataServiceError(
                f"not every worker of the dispatcher at {service} answered in {timeout_s:g} s "
                f"({f'{most / _ROLL_CALL:.0%} of the shards did' if most else 'none did'}): "
                f"start those of its --workers list that are not running (`v2f data-service "
                f"worker --dispatcher HOST:PORT --port PORT --host HOST`)"
            )
        time.sleep(1.0)
