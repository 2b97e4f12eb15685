"""Dynamic batching: network inputs from all concurrent requests share `session.run` calls.

Requests `await submit(rows)`; one worker thread (so the event loop never blocks on
inference) takes rows in arrival order until `max_batch_size` rows are gathered or the
oldest waiting row has waited `batch_timeout_ms`, runs them, and scatters the outputs back.
A request larger than one batch is split across batches. The queue is bounded in rows.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

log = logging.getLogger("service.batcher")


class QueueFullError(RuntimeError):
    """The queue holds `max_queue` rows already; the caller should shed load (503)."""


class BatcherStoppedError(RuntimeError):
    pass


def batch_buckets(max_batch_size: int) -> list[int]:
    """Powers of two up to max_batch_size, plus max_batch_size: few shapes to warm up."""
    sizes = {max_batch_size}
    size = 1
    while size < max_batch_size:
        sizes.add(size)
        size *= 2
    return sorted(sizes)


# eq=False: jobs compare by identity; field-wise equality would compare numpy arrays
# (and raise) when `job in self._jobs` runs on a timeout with other jobs queued ahead.
@dataclass(eq=False)
class _Job:
    rows: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued_at: float
    next_row: int = 0  # first row not yet taken by the worker
    done_rows: int = 0
    output: np.ndarray | None = None
    started_at: float | None = None
    inference_s: float = 0.0
    cancelled: bool = False
    batch_sizes: list[int] = field(default_factory=list)


@dataclass
class BatchTiming:
    queue_s: float
    inference_s: float
    batch_sizes: list[int]


class DynamicBatcher:
    def __init__(self, run: Callable[[np.ndarray], np.ndarray], max_batch_size: int,
                 batch_timeout_ms: float, max_queue: int, pad_to_buckets: bool = False,
                 on_batch: Callable[[int], None] | None = None,
                 on_depth: Callable[[int], None] | None = None):
        self._run = run
        self.max_batch_size = max_batch_size
        self.timeout_s = batch_timeout_ms / 1000.0
        self.max_queue = max_queue
        self.buckets = batch_buckets(max_batch_size)
        self.pad_to_buckets = pad_to_buckets
        self._on_batch = on_batch or (lambda n: None)
        self._on_depth = on_depth or (lambda n: None)
        self._jobs: deque[_Job] = deque()
        self._depth = 0  # rows queued and not yet taken
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="landmarks-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then stop the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def depth(self) -> int:
        return self._depth

    def warm_up(self, row_shape: tuple[int, ...]) -> list[int]:
        """Run each bucket size once. With padding these are the only shapes the batcher emits
        (cuDNN/TensorRT tune per shape); without it (CPU) they are representative sizes."""
        for size in self.buckets:
            self._run(np.zeros((size, *row_shape), np.float32))
        return list(self.buckets)

    # -- request side ----------------------------------------------------------------
    async def submit(self, rows: np.ndarray, timeout_s: float | None = None) -> tuple[np.ndarray, BatchTiming]:
        """rows `[M, C, H, W]` float32 -> outputs `[M, ...]` in the same order."""
        if len(rows) == 0:
            raise ValueError("no rows to run")
        loop = asyncio.get_running_loop()
        job = _Job(rows=rows, future=loop.create_future(), loop=loop, enqueued_at=time.perf_counter())
        with self._cond:
            if self._stopping:
                raise BatcherStoppedError("the service is shutting down")
            # An empty queue always accepts, so one large request cannot be refused forever.
            if self._depth and self._depth + len(rows) > self.max_queue:
                raise QueueFullError(f"queue full ({self._depth} inputs waiting, limit {self.max_queue})")
            self._jobs.append(job)
            self._depth += len(rows)
            self._on_depth(self._depth)
            self._cond.notify()
        try:
            output = await asyncio.wait_for(asyncio.shield(job.future), timeout_s)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._cancel(job)
            raise
        queue_s = (job.started_at or job.enqueued_at) - job.enqueued_at
        return output, BatchTiming(queue_s, job.inference_s, job.batch_sizes)

    def _cancel(self, job: _Job) -> None:
        with self._cond:
            if job.cancelled:
                return
            job.cancelled = True
            untaken = len(job.rows) - job.next_row
            if untaken and job in self._jobs:
                self._jobs.remove(job)
                self._depth -= untaken
                self._on_depth(self._depth)

    # -- worker side -----------------------------------------------------------------
    def _take_batch(self) -> list[tuple[_Job, int, int]] | None:
        """Block until a batch is due; return (job, start, stop) slices, or None to exit."""
        with self._cond:
            while not self._jobs:
                if self._stopping:
                    return None
                self._cond.wait()
            deadline = self._jobs[0].enqueued_at + self.timeout_s
            while self._depth < self.max_batch_size and not self._stopping:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            slices, taken = [], 0
            while self._jobs and taken < self.max_batch_size:
                job = self._jobs[0]
                count = min(len(job.rows) - job.next_row, self.max_batch_size - taken)
                slices.append((job, job.next_row, job.next_row + count))
                job.next_row += count
                taken += count
                if job.next_row == len(job.rows):
                    self._jobs.popleft()
            self._depth -= taken
            self._on_depth(self._depth)
            return slices

    def _work(self) -> None:
        while (slices := self._take_batch()) is not None:
            started = time.perf_counter()
            for job, start, _ in slices:
                if start == 0:
                    job.started_at = started
            batch = np.concatenate([job.rows[a:b] for job, a, b in slices])
            real = len(batch)
            if self.pad_to_buckets:
                size = next(b for b in self.buckets if b >= real)
                if size > real:  # pad with zeros to a warmed-up shape
                    pad = np.zeros((size - real, *batch.shape[1:]), batch.dtype)
                    batch = np.concatenate([batch, pad])
            try:
                output = self._run(batch)[:real]
            except Exception as exc:  # deliver the failure to every waiting request
                log.exception("inference failed for a batch of %d", real)
                for job, _, _ in slices:
                    self._deliver_error(job, exc)
                continue
            elapsed = time.perf_counter() - started
            self._on_batch(real)
            offset = 0
            for job, a, b in slices:
                n = b - a
                if job.output is None:
                    job.output = np.empty((len(job.rows), *output.shape[1:]), output.dtype)
                job.output[a:b] = output[offset:offset + n]
                offset += n
                job.inference_s += elapsed
                job.batch_sizes.append(real)
                job.done_rows += n
                if job.done_rows == len(job.rows) and not job.cancelled:
                    job.loop.call_soon_threadsafe(_set_result, job.future, job.output)

    def _deliver_error(self, job: _Job, exc: Exception) -> None:
        if job.cancelled:
            return
        self._cancel(job)  # drop its rows still queued: the request has failed
        job.loop.call_soon_threadsafe(_set_exception, job.future, exc)


def _set_result(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
