"""Dynamic batching: network inputs from all concurrent requests share `session.run` calls.

Requests `await submit(rows, variant=...)`; one worker thread (so the event loop never
blocks on inference) runs batches one after another. Dispatch is Triton-style: when the
model is free and rows are queued, the worker takes them at once (up to `max_batch_size`);
while a batch runs, new arrivals queue up and form the next batch, so batches fill up by
themselves under load and a lone request at concurrency 1 never waits for company.
`batch_timeout_ms` > 0 adds an optional delay: the worker then waits until a full batch is
queued or the oldest queued row has waited that long.

Several model variants (e.g. the flip-test graph and the plain one) share one worker and one
queue bound: `run` is a mapping variant -> run function, each job names its variant, and a
batch never mixes variants (the variant of the oldest queued job goes first).

A request larger than one batch is split across batches. The queue is bounded in rows.
Results go back to the event loop with one `call_soon_threadsafe` per batch (not per job).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("service.batcher")

_NOTHING = object()  # "no variant has queued jobs" (None is a valid variant key)
RunFn = Callable[[np.ndarray], np.ndarray]  # rows [B, ...] -> outputs [B, ...]


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
# (and raise) when `job in queue` runs on a timeout with other jobs queued ahead.
@dataclass(eq=False)
class _Job:
    rows: np.ndarray
    variant: Hashable
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
    """Batches rows from concurrent requests onto one worker thread.

    run: one function `rows [B, ...] -> outputs [B, ...]` (a single variant, key None), or a
        mapping `variant key -> function` (e.g. {"flip": ..., "plain": ...}).
    max_batch_size: most rows per call. batch_timeout_ms: 0 (default) dispatches as soon as
        the model is free; > 0 waits up to that long for a full batch.
    max_queue: most rows queued (all variants together) before QueueFullError.
    pad_to_buckets: pad each batch with zero rows to the next `batch_buckets` size (GPU: only
        warmed-up shapes reach the device).
    on_batch(rows): called after each successful batch with its real row count.
    on_depth(rows): called whenever the number of queued rows changes.
    """

    def __init__(self, run: RunFn | Mapping[Hashable, RunFn], max_batch_size: int,
                 batch_timeout_ms: float = 0.0, max_queue: int = 1024,
                 pad_to_buckets: bool = False,
                 on_batch: Callable[[int], None] | None = None,
                 on_depth: Callable[[int], None] | None = None):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._runs: dict[Hashable, RunFn] = dict(run) if isinstance(run, Mapping) else {None: run}
        if not self._runs:
            raise ValueError("no run function given")
        self.max_batch_size = max_batch_size
        self.timeout_s = max(float(batch_timeout_ms), 0.0) / 1000.0
        self.max_queue = max_queue
        self.buckets = batch_buckets(max_batch_size)
        self.pad_to_buckets = pad_to_buckets
        self._on_batch = on_batch or (lambda n: None)
        self._on_depth = on_depth or (lambda n: None)
        self._queues: dict[Hashable, deque[_Job]] = {key: deque() for key in self._runs}
        self._queued_rows: dict[Hashable, int] = dict.fromkeys(self._runs, 0)
        self._depth = 0  # rows queued and not yet taken, all variants
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def variants(self) -> tuple[Hashable, ...]:
        return tuple(self._runs)

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._work, name="landmarks-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new jobs, finish every queued one (no batch delay), then stop the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def depth(self) -> int:
        return self._depth

    def warm_up(self, row_shape: tuple[int, ...], dtype=np.float32) -> list[int]:
        """Run each bucket size once per variant, rows of zeros `[size, *row_shape]` of dtype.

        With padding these are the only shapes the batcher emits (cuDNN/TensorRT tune per
        shape); without it (CPU) they are representative sizes. Call before start().
        """
        for run in self._runs.values():
            for size in self.buckets:
                run(np.zeros((size, *row_shape), dtype))
        return list(self.buckets)

    # -- request side ----------------------------------------------------------------
    async def submit(self, rows: np.ndarray, timeout_s: float | None = None,
                     variant: Hashable = None) -> tuple[np.ndarray, BatchTiming]:
        """rows `[M, ...]` for `variant` -> outputs `[M, ...]` in the same order.

        Raises QueueFullError (shed load), BatcherStoppedError (shutting down),
        asyncio.TimeoutError after timeout_s (the job's untaken rows leave the queue),
        KeyError for an unknown variant, or whatever the run function raised.
        """
        if len(rows) == 0:
            raise ValueError("no rows to run")
        if variant not in self._runs:
            raise KeyError(f"unknown model variant {variant!r} (have {list(self._runs)})")
        loop = asyncio.get_running_loop()
        job = _Job(rows=rows, variant=variant, future=loop.create_future(), loop=loop,
                   enqueued_at=time.perf_counter())
        with self._cond:
            if self._stopping:
                raise BatcherStoppedError("the service is shutting down")
            # An empty queue always accepts, so one large request cannot be refused forever.
            if self._depth and self._depth + len(rows) > self.max_queue:
                raise QueueFullError(f"queue full ({self._depth} inputs waiting, limit {self.max_queue})")
            self._queues[variant].append(job)
            self._queued_rows[variant] += len(rows)
            self._depth += len(rows)
            self._on_depth(self._depth)
            self._cond.notify()
        try:
            if timeout_s is None:
                output = await job.future
            else:
                # No shield: on timeout the future is cancelled, and the worker's result for
                # rows it already took is dropped (a done future is never set again).
                output = await asyncio.wait_for(job.future, timeout_s)
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
            queue = self._queues[job.variant]
            if untaken and job in queue:
                queue.remove(job)
                self._queued_rows[job.variant] -= untaken
                self._depth -= untaken
                self._on_depth(self._depth)
                self._cond.notify()  # the worker may be waiting on this job's deadline

    # -- worker side -----------------------------------------------------------------
    def _oldest_variant(self) -> Hashable:
        """The variant whose first queued job arrived first; _NOTHING if nothing is queued."""
        best, best_at = _NOTHING, None
        for key, queue in self._queues.items():
            if queue and (best_at is None or queue[0].enqueued_at < best_at):
                best, best_at = key, queue[0].enqueued_at
        return best

    def _take_batch(self) -> tuple[Hashable, list[tuple[_Job, int, int]]] | None:
        """Block until a batch is due; return (variant, [(job, start, stop)]), or None to exit."""
        with self._cond:
            while True:
                variant = self._oldest_variant()
                if variant is _NOTHING:
                    if self._stopping:
                        return None
                    self._cond.wait()
                    continue
                if (self._stopping or self.timeout_s <= 0
                        or self._queued_rows[variant] >= self.max_batch_size):
                    break
                remaining = self._queues[variant][0].enqueued_at + self.timeout_s - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            queue = self._queues[variant]
            slices, taken = [], 0
            while queue and taken < self.max_batch_size:
                job = queue[0]
                count = min(len(job.rows) - job.next_row, self.max_batch_size - taken)
                slices.append((job, job.next_row, job.next_row + count))
                job.next_row += count
                taken += count
                if job.next_row == len(job.rows):
                    queue.popleft()
            self._queued_rows[variant] -= taken
            self._depth -= taken
            self._on_depth(self._depth)
            return variant, slices

    def _assemble(self, slices: list[tuple[_Job, int, int]]) -> tuple[np.ndarray, int]:
        """The batch array (padded to a bucket if asked) and its real row count."""
        real = sum(b - a for _, a, b in slices)
        size = next(s for s in self.buckets if s >= real) if self.pad_to_buckets else real
        if len(slices) == 1 and size == real:
            job, a, b = slices[0]
            return job.rows[a:b], real  # a view: no copy for a lone job
        first = slices[0][0].rows
        batch = np.empty((size, *first.shape[1:]), first.dtype)
        offset = 0
        for job, a, b in slices:
            batch[offset:offset + b - a] = job.rows[a:b]
            offset += b - a
        batch[real:] = 0  # padding rows: zeros, outputs discarded
        return batch, real

    def _work(self) -> None:
        while (taken := self._take_batch()) is not None:
            variant, slices = taken
            started = time.perf_counter()
            for job, start, _ in slices:
                if start == 0:
                    job.started_at = started
            try:
                batch, real = self._assemble(slices)
                output = self._runs[variant](batch)[:real]
            except Exception as exc:  # deliver the failure to every waiting request
                log.exception("inference failed for a batch of %d", sum(b - a for _, a, b in slices))
                self._deliver([(job, None, exc) for job, _, _ in slices if self._fail(job)])
                continue
            elapsed = time.perf_counter() - started
            self._on_batch(real)
            finished, offset = [], 0
            for job, a, b in slices:
                n = b - a
                if a == 0 and n == len(job.rows):
                    job.output = output[offset:offset + n]  # the whole job in this batch
                else:
                    if job.output is None:
                        job.output = np.empty((len(job.rows), *output.shape[1:]), output.dtype)
                    job.output[a:b] = output[offset:offset + n]
                offset += n
                job.inference_s += elapsed
                job.batch_sizes.append(real)
                job.done_rows += n
                if job.done_rows == len(job.rows) and not job.cancelled:
                    finished.append((job, job.output, None))
            self._deliver(finished)

    def _fail(self, job: _Job) -> bool:
        """Withdraw a failed job's queued rows; True if its request is still waiting."""
        if job.cancelled:
            return False
        self._cancel(job)  # drop its rows still queued: the request has failed
        return True

    @staticmethod
    def _deliver(outcomes: list[tuple[_Job, np.ndarray | None, Exception | None]]) -> None:
        """Resolve the futures of one batch: one event-loop wake-up per loop, not per job."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for job, value, exc in outcomes:
            by_loop.setdefault(job.loop, []).append((job.future, value, exc))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # the loop was closed: nobody is waiting any more
                pass


def _resolve(items: list[tuple[asyncio.Future, np.ndarray | None, Exception | None]]) -> None:
    for future, value, exc in items:
        if future.done():  # timed out or cancelled meanwhile
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(value)
