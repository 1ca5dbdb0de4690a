"""Batches on the devices before the step asks for them.

A background thread reads the host batches and starts their copies to the devices (or, with the
split in device memory, the gathers there), `depth` dispatches ahead of the loop, so neither the
reader's `next` nor the host-to-device copy sits between two steps. The loop still consumes
batch n at step n: a checkpoint's `next_batch` is the loop's count, not the thread's.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_DONE = object()
SLOW_CLOSE_S = 5.0
logger = logging.getLogger(__name__)


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class DevicePrefetch:
    """`(k, device_batch)` for each k of `chunk_sizes`, from `host_batches`.

    Args:
      host_batches: this host's batches, in order.
      to_device: a list of k host batches -> what the step takes (one batch, or k stacked).
      chunk_sizes: the steps of each dispatch, in order (1 or `steps_per_call`).
      depth: dispatches prepared ahead; 0 prepares each on the caller's thread when asked.

    An error of the reader (a corrupt shard) is raised by the `next` that would have returned
    its batch.
    """

    def __init__(
        self,
        host_batches: Iterator[Any],
        to_device: Callable[[list], Any],
        chunk_sizes: Iterable[int],
        depth: int = 2,
    ):
        self._host = host_batches
        self._to_device = to_device
        self._chunks = iter(chunk_sizes)
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread = None
        if depth > 0:
            self._queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._fill, name="v2f-prefetch", daemon=True)
            self._thread.start()

    def _prepare(self, k: int) -> tuple[int, Any]:
        return k, self._to_device([next(self._host) for _ in range(k)])

    def _put(self, item: Any) -> bool:
        """Queues `item`, waiting for room; False if closed meanwhile."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self) -> None:
        try:
            for k in self._chunks:
                if self._stop.is_set() or not self._put(self._prepare(k)):
                    return
        except StopIteration:
            pass  # the host batches ended
        except BaseException as err:  # noqa: BLE001 - handed to the loop, raised there
            self._put(_Failed(err))
            return
        self._put(_DONE)

    def __iter__(self) -> DevicePrefetch:
        return self

    def __next__(self) -> tuple[int, Any]:
        if self._queue is None:
            return self._prepare(next(self._chunks))
        item = self._queue.get()
        if item is _DONE:
            self._queue.put(_DONE)
            raise StopIteration
        if isinstance(item, _Failed):
            self._queue.put(item)
            raise item.error
        return item

    def close(self) -> dict[str, float]:
        """Stops the thread (what it prepared is dropped) and closes the host batches' source.

        Returns the seconds spent `{"thread": joining the thread, "source": closing the source}`;
        a thread still busy after `SLOW_CLOSE_S` has its stack logged (what it waits for).
        """
        start = time.perf_counter()
        self._stop.set()
        if self._thread is not None:
            logged = False
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.1)
                except queue.Empty:
                    pass
                if not logged and time.perf_counter() - start > SLOW_CLOSE_S:
                    logged = True
                    frame = sys._current_frames().get(self._thread.ident)
                    if frame is not None:
                        logger.warning(
                            "the prefetch thread is still busy at close:\n%s",
                            "".join(traceback.format_stack(frame)),
                        )
            self._thread.join()
        joined = time.perf_counter()
        # The reader's threads end here, where the caller waits for them, rather than at some
        # later garbage collection.
        close = getattr(self._host, "close", None)
        if callable(close):
            close()
        self._host = iter(())
        return {"thread": joined - start, "source": time.perf_counter() - joined}
