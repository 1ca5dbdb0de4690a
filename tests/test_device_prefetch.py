"""device_prefetch: batches reach the devices ahead of the loop, in order, errors where due."""

import itertools
import threading

import jax
import numpy as np
import pytest

from v2f_jax import parallel, train
from v2f_jax.feed import device_prefetch


def _host_batches(n=None, fail_at=None):
    i = 0
    while n is None or i < n:
        if i == fail_at:
            raise OSError(f"shard broken at batch {i}")
        yield {"x": np.full((8, 3), i, np.float32)}
        i += 1


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_chunks_arrive_in_order_on_the_devices(depth):
    dp = parallel.DataParallel(lambda axis: lambda s, b: (s, {}), "jit")
    chunks = list(train.chunk_sizes(3, 14, 4))
    assert chunks == [4, 4, 1, 1, 1]  # K while K steps remain, then single steps
    feed = device_prefetch.DevicePrefetch(_host_batches(), dp.put, chunks, depth)
    seen = []
    for k, batch in feed:
        assert isinstance(batch["x"], jax.Array)
        assert batch["x"].sharding == (dp.stacked_sharding if k > 1 else dp.batch_sharding)
        x = np.asarray(batch["x"])
        seen += list(x[:, 0, 0]) if k > 1 else [x[0, 0]]
    assert seen == list(range(11))
    feed.close()


def test_a_reader_error_is_raised_when_its_batch_is_due():
    feed = device_prefetch.DevicePrefetch(_host_batches(fail_at=3), lambda bs: bs, [1] * 6, depth=2)
    assert [next(feed)[1][0]["x"][0, 0] for _ in range(3)] == [0, 1, 2]
    with pytest.raises(OSError, match="batch 3"):
        next(feed)
    feed.close()


def test_close_stops_the_thread_even_with_a_full_queue():
    feed = device_prefetch.DevicePrefetch(_host_batches(), lambda bs: bs, iter(int, 1), depth=2)
    next(feed)
    feed.close()
    assert not [t for t in threading.enumerate() if t.name == "v2f-prefetch" and t.is_alive()]


@pytest.mark.parametrize("depth", [0, 2])
def test_close_closes_the_host_batches_source_at_once(depth):
    """The reader's resources (tf.data's threads) end inside `close`, not at some later
    collection."""
    closed = []

    def source():
        try:
            yield from _host_batches()
        finally:
            closed.append(True)

    host = source()
    feed = device_prefetch.DevicePrefetch(host, lambda bs: bs, itertools.repeat(1), depth=depth)
    next(feed)
    feed.close()
    assert closed == [True]
    assert host.gi_frame is None  # finished: its frame and what it held are released


def test_the_end_of_the_host_batches_ends_the_iteration():
    feed = device_prefetch.DevicePrefetch(_host_batches(n=2), lambda bs: bs, [1] * 5, depth=2)
    assert len(list(feed)) == 2
    feed.close()
