"""Dynamic batching for a scoring server: requests that arrive together are scored in one forward pass.

`Batcher(score, max_batch, max_wait_s)` owns one worker thread, the only one that calls `score` (so JAX
work stays off the web server's event loop and one model is never driven from two threads). `submit(rows)`
queues a request's rows and returns a `concurrent.futures.Future` of their rewards, in order (await it with
`asyncio.wrap_future`). The worker takes the oldest waiting request, then adds waiting ones while they fit
in `max_batch` rows, until the batch is full or `max_wait_s` has passed since that first request arrived;
one `score` call covers them all and each future gets its own slice back. A request larger than
`max_batch` goes alone (the scorer cuts it into passes of its batch size).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

_STOP = object()


@dataclasses.dataclass
class BatchStats:
    """Counters of what the worker did: `batches` score calls, `multi_request_batches` of them holding more
    than one request (the evidence that batching happens), the most requests and rows one call held."""

    batches: int = 0
    requests: int = 0
    rows: int = 0
    multi_request_batches: int = 0
    max_requests_per_batch: int = 0
    max_rows_per_batch: int = 0
    errors: int = 0


@dataclasses.dataclass
class _Pending:
    rows: Sequence
    future: concurrent.futures.Future
    arrived: float


class Batcher:
    def __init__(self, score: Callable[[list], np.ndarray], max_batch: int, max_wait_s: float):
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch} must be >= 1")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s={max_wait_s} must be >= 0")
        self._score, self.max_batch, self.max_wait_s = score, int(max_batch), float(max_wait_s)
        self._queue: queue.Queue = queue.Queue()
        self._held: _Pending | None = None  # taken from the queue but did not fit: first of the next batch
        self.stats = BatchStats()
        self._lock = threading.Lock()  # stats are read from other threads (/health)
        self._thread = threading.Thread(target=self._run, name="rm-batcher", daemon=True)
        self._thread.start()

    def submit(self, rows: Sequence) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        if not self._thread.is_alive():
            future.set_exception(RuntimeError("the scoring worker has stopped"))
        elif not rows:
            future.set_result(np.zeros(0, np.float32))
        else:
            self._queue.put(_Pending(list(rows), future, time.monotonic()))
        return future

    def snapshot(self) -> dict:
        with self._lock:
            return dataclasses.asdict(self.stats)

    def close(self, timeout: float = 10.0) -> None:
        """Scores what is already queued, then stops the worker."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _next(self, timeout: float | None):
        if self._held is not None:
            item, self._held = self._held, None
            return item
        return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()

    def _gather(self, first: _Pending) -> tuple[list[_Pending], bool]:
        batch, size, deadline = [first], len(first.rows), first.arrived + self.max_wait_s
        while size < self.max_batch:
            try:
                item = self._next(deadline - time.monotonic())
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            if size + len(item.rows) > self.max_batch:
                self._held = item
                break
            batch.append(item)
            size += len(item.rows)
        return batch, False

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._next(None)
            if first is _STOP:
                break
            batch, stop = self._gather(first)
            self._score_batch(batch)
        if self._held is not None:
            self._score_batch([self._held])
        while not self._queue.empty():  # submitted after close: answered, never left hanging
            item = self._queue.get_nowait()
            if item is not _STOP:
                item.future.set_exception(RuntimeError("the scoring worker has stopped"))

    def _score_batch(self, batch: list[_Pending]) -> None:
        # Requests whose client went away are dropped; the rest can no longer be cancelled.
        batch = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if not batch:
            return
        rows = [row for item in batch for row in item.rows]
        try:
            rewards = np.asarray(self._score(rows), np.float32)
            if rewards.shape != (len(rows),):
                raise RuntimeError(f"scorer returned shape {rewards.shape} for {len(rows)} rows")
        except Exception as e:  # noqa: BLE001 - every waiting request gets the error; the worker lives on
            with self._lock:
                self.stats.errors += 1
            for item in batch:
                item.future.set_exception(e)
            return
        with self._lock:
            s = self.stats
            s.batches, s.requests, s.rows = s.batches + 1, s.requests + len(batch), s.rows + len(rows)
            s.multi_request_batches += len(batch) > 1
            s.max_requests_per_batch = max(s.max_requests_per_batch, len(batch))
            s.max_rows_per_batch = max(s.max_rows_per_batch, len(rows))
        start = 0
        for item in batch:
            item.future.set_result(rewards[start:start + len(item.rows)])
            start += len(item.rows)
