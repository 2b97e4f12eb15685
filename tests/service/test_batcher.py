"""DynamicBatcher on its own, with a fake network: order, splitting, padding, limits."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.engine.batcher import (
    BatcherStoppedError,
    DynamicBatcher,
    QueueFullError,
    batch_buckets,
)


class FakeNet:
    """Doubles its input; records the batch sizes it was given; can be made slow."""

    def __init__(self, delay: float = 0.0):
        self.sizes: list[int] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            self.sizes.append(len(batch))
        time.sleep(self.delay)
        return batch * 2.0


def rows(tag: int, count: int) -> np.ndarray:
    return np.full((count, 1, 2, 2), tag, np.float32) + np.arange(count, dtype=np.float32)[:, None, None, None]


def test_buckets_are_powers_of_two_plus_the_maximum():
    assert batch_buckets(1) == [1]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(12) == [1, 2, 4, 8, 12]


@pytest.mark.parametrize("pad", [False, True])
def test_concurrent_jobs_get_their_own_rows_back_in_order(pad):
    net = FakeNet()
    batcher = DynamicBatcher(net, max_batch_size=8, batch_timeout_ms=20, max_queue=1000, pad_to_buckets=pad)
    batcher.start()
    sizes = [1, 3, 5, 2, 11, 7, 1, 4]

    async def main():
        return await asyncio.gather(*(batcher.submit(rows(10 * i, n)) for i, n in enumerate(sizes)))

    try:
        results = asyncio.run(main())
    finally:
        batcher.stop()
    for i, (n, (output, timing)) in enumerate(zip(sizes, results)):
        np.testing.assert_array_equal(output, rows(10 * i, n) * 2.0)
        assert timing.queue_s >= 0 and timing.inference_s > 0
    assert max(net.sizes) <= 8
    assert sum(sizes) <= sum(net.sizes)
    assert len(net.sizes) < len(sizes) + 2  # jobs shared runs (11 rows alone need two)
    if pad:
        assert set(net.sizes) <= set(batch_buckets(8))


def test_queue_limit_raises_queue_full():
    net = FakeNet(delay=0.2)
    batcher = DynamicBatcher(net, max_batch_size=2, batch_timeout_ms=0, max_queue=3)
    batcher.start()

    async def main():
        first = asyncio.create_task(batcher.submit(rows(1, 2)))  # taken by the worker
        await asyncio.sleep(0.05)
        second = asyncio.create_task(batcher.submit(rows(2, 3)))  # waits in the queue
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError):
            await batcher.submit(rows(3, 1))
        assert batcher.depth == 3
        await asyncio.gather(first, second)

    try:
        asyncio.run(main())
    finally:
        batcher.stop()


def test_a_timed_out_job_leaves_the_queue_and_others_proceed():
    net = FakeNet(delay=0.2)
    batcher = DynamicBatcher(net, max_batch_size=1, batch_timeout_ms=0, max_queue=100)
    batcher.start()

    async def main():
        blocker = asyncio.create_task(batcher.submit(rows(1, 1)))
        await asyncio.sleep(0.05)
        with pytest.raises(asyncio.TimeoutError):
            await batcher.submit(rows(2, 3), timeout_s=0.05)
        assert batcher.depth == 0  # its untaken rows were withdrawn
        out, _ = await batcher.submit(rows(3, 1))
        await blocker
        return out

    try:
        out = asyncio.run(main())
    finally:
        batcher.stop()
    np.testing.assert_array_equal(out, rows(3, 1) * 2.0)
    assert sum(net.sizes) == 2  # the withdrawn job never ran


def test_a_failing_run_fails_only_its_requests():
    calls = {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("device lost")
        return batch * 2.0

    batcher = DynamicBatcher(flaky, max_batch_size=4, batch_timeout_ms=0, max_queue=100)
    batcher.start()

    async def main():
        with pytest.raises(RuntimeError, match="device lost"):
            await batcher.submit(rows(1, 2))
        return await batcher.submit(rows(2, 2))

    try:
        out, _ = asyncio.run(main())
    finally:
        batcher.stop()
    np.testing.assert_array_equal(out, rows(2, 2) * 2.0)


def test_timeouts_behind_other_queued_jobs_withdraw_cleanly():
    """Several waiting jobs time out in turn: each gets TimeoutError (never a ValueError from
    comparing jobs' arrays) and none of their rows stays queued or runs."""
    net = FakeNet(delay=0.3)
    batcher = DynamicBatcher(net, max_batch_size=1, batch_timeout_ms=0, max_queue=100)
    batcher.start()

    async def main():
        blocker = asyncio.create_task(batcher.submit(rows(0, 1)))
        await asyncio.sleep(0.05)
        waiting = [asyncio.create_task(batcher.submit(rows(i, 2), timeout_s=0.05 + 0.02 * (5 - i)))
                   for i in range(1, 6)]
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        depth = batcher.depth
        await blocker
        return outcomes, depth

    try:
        outcomes, depth = asyncio.run(main())
    finally:
        batcher.stop()
    assert all(isinstance(o, asyncio.TimeoutError) for o in outcomes), outcomes
    assert depth == 0 and sum(net.sizes) == 1


# -- dispatch policy: no wait when idle, full batches under load ------------------------


class StampedNet(FakeNet):
    """FakeNet that also records when each call started and the batches it got."""

    def __init__(self, delay: float = 0.0, factor: float = 2.0):
        super().__init__(delay)
        self.factor = factor
        self.started: list[float] = []
        self.batches: list[np.ndarray] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            self.started.append(time.perf_counter())
            self.sizes.append(len(batch))
            self.batches.append(batch.copy())
        time.sleep(self.delay)
        return batch * self.factor


def run_with(batcher: DynamicBatcher, coroutine_fn):
    batcher.start()
    try:
        return asyncio.run(coroutine_fn())
    finally:
        batcher.stop()


def test_an_idle_model_runs_a_lone_job_at_once():
    """batch_timeout_ms=0: no waiting for company at concurrency 1, even with room for 64."""
    net = StampedNet()
    batcher = DynamicBatcher(net, max_batch_size=64, batch_timeout_ms=0, max_queue=1000)
    submitted = []

    async def main():
        for i in range(20):
            submitted.append(time.perf_counter())
            out, _ = await batcher.submit(rows(i, 1))
            np.testing.assert_array_equal(out, rows(i, 1) * 2.0)

    run_with(batcher, main)
    delays = np.array(net.started) - np.array(submitted)
    assert net.sizes == [1] * 20
    assert np.median(delays) < 0.002, delays  # a thread wake-up, not a batching delay


def test_a_batch_timeout_is_an_optional_extra_delay():
    """The reverse check: a configured delay is honoured for a lone job."""
    net = StampedNet()
    batcher = DynamicBatcher(net, max_batch_size=64, batch_timeout_ms=30, max_queue=1000)
    submitted = []

    async def main():
        for i in range(3):
            submitted.append(time.perf_counter())
            await batcher.submit(rows(i, 1))

    run_with(batcher, main)
    delays = np.array(net.started) - np.array(submitted)
    assert (delays >= 0.029).all(), delays


@pytest.mark.parametrize("max_batch, expected", [(16, [1, 10]), (4, [1, 4, 4, 2])])
def test_arrivals_during_a_run_form_the_next_batches(max_batch, expected):
    """While a slow batch runs, 10 one-row jobs queue up and run together afterwards (full
    batches, oldest first), with no batch timeout configured."""
    net = StampedNet(delay=0.2)
    batcher = DynamicBatcher(net, max_batch_size=max_batch, batch_timeout_ms=0, max_queue=1000)

    async def main():
        busy = asyncio.create_task(batcher.submit(rows(100, 1)))
        await asyncio.sleep(0.05)  # the worker is inside the slow run now
        results = await asyncio.gather(*(batcher.submit(rows(i, 1)) for i in range(10)))
        await busy
        return results

    results = run_with(batcher, main)
    assert net.sizes == expected
    for i, (out, timing) in enumerate(results):
        np.testing.assert_array_equal(out, rows(i, 1) * 2.0)
        assert timing.batch_sizes == [expected[1 + i // max_batch]]
    # Arrival order is kept across the batches.
    firsts = np.concatenate(net.batches[1:])[:, 0, 0, 0]
    np.testing.assert_array_equal(firsts, np.arange(10))


def test_variants_are_never_mixed_and_the_oldest_goes_first():
    net_a = StampedNet(delay=0.1, factor=2.0)
    net_b = StampedNet(delay=0.1, factor=3.0)
    batcher = DynamicBatcher({"a": net_a, "b": net_b}, max_batch_size=16, batch_timeout_ms=0,
                             max_queue=1000)
    assert batcher.variants == ("a", "b")
    # Row values carry the variant: a-jobs positive, b-jobs negative.
    plan = [("b", -1), ("a", 1), ("b", -2), ("a", 2), ("a", 3), ("b", -3)]

    async def main():
        busy = asyncio.create_task(batcher.submit(rows(50, 2), variant="a"))
        await asyncio.sleep(0.03)
        tasks = [asyncio.create_task(batcher.submit(rows(10 * tag, 2), variant=v)) for v, tag in plan]
        results = await asyncio.gather(*tasks)
        await busy
        with pytest.raises(KeyError):
            await batcher.submit(rows(1, 1), variant="c")
        return results

    results = run_with(batcher, main)
    for (variant, tag), (out, _) in zip(plan, results):
        factor = 2.0 if variant == "a" else 3.0
        np.testing.assert_array_equal(out, rows(10 * tag, 2) * factor)
    assert all((batch > 0).all() for batch in net_a.batches)
    assert all((batch < 0).all() for batch in net_b.batches)
    # One busy a-batch, then b (its first job queued first), then the a-jobs together.
    assert net_a.sizes == [2, 6] and net_b.sizes == [6]
    assert net_a.started[0] < net_b.started[0] < net_a.started[1]


def test_one_event_loop_wake_up_per_batch():
    """Results of a batch reach the event loop in one call_soon_threadsafe, not one per job."""
    net = StampedNet(delay=0.2)
    batcher = DynamicBatcher(net, max_batch_size=16, batch_timeout_ms=0, max_queue=1000)
    wakeups = []

    async def main():
        loop = asyncio.get_running_loop()
        original = loop.call_soon_threadsafe

        def counting(*args, **kwargs):
            if threading.current_thread().name == "landmarks-batcher":
                wakeups.append(1)
            return original(*args, **kwargs)

        loop.call_soon_threadsafe = counting
        busy = asyncio.create_task(batcher.submit(rows(100, 1)))
        await asyncio.sleep(0.05)
        await asyncio.gather(*(batcher.submit(rows(i, 1)) for i in range(10)))
        await busy

    run_with(batcher, main)
    assert net.sizes == [1, 10]
    assert len(wakeups) == 2


def test_stop_drains_every_queued_job_and_then_refuses():
    net = StampedNet(delay=0.05)
    batcher = DynamicBatcher(net, max_batch_size=2, batch_timeout_ms=0, max_queue=1000)
    sizes = [1, 3, 2, 5, 1, 1, 4]

    async def main():
        loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(batcher.submit(rows(10 * i, n))) for i, n in enumerate(sizes)]
        await asyncio.sleep(0.02)
        await loop.run_in_executor(None, batcher.stop)  # returns when the queue is drained
        assert all(task.done() or batcher.depth == 0 for task in tasks)
        results = await asyncio.gather(*tasks)
        with pytest.raises(BatcherStoppedError):
            await batcher.submit(rows(1, 1))
        return results

    batcher.start()
    results = asyncio.run(main())
    for i, (n, (out, _)) in enumerate(zip(sizes, results)):
        np.testing.assert_array_equal(out, rows(10 * i, n) * 2.0)
    assert sum(net.sizes) == sum(sizes) and batcher.depth == 0


def test_warm_up_runs_every_bucket_of_every_variant_with_the_row_dtype():
    seen = {"flip": [], "plain": []}

    def recorder(key):
        def run(batch):
            seen[key].append((batch.shape, batch.dtype))
            return batch
        return run

    batcher = DynamicBatcher({k: recorder(k) for k in seen}, max_batch_size=6, max_queue=10)
    assert batcher.warm_up((4, 4, 3), np.uint8) == [1, 2, 4, 6]
    for calls in seen.values():
        assert calls == [((n, 4, 4, 3), np.dtype(np.uint8)) for n in (1, 2, 4, 6)]


def test_padding_keeps_the_row_dtype_and_pads_with_zeros():
    net = StampedNet()
    batcher = DynamicBatcher(net, max_batch_size=8, max_queue=100, pad_to_buckets=True)
    crops = np.arange(3 * 2 * 2 * 3, dtype=np.uint8).reshape(3, 2, 2, 3) + 1

    async def main():
        return await batcher.submit(crops)

    (out, _) = run_with(batcher, main)
    assert net.sizes == [4] and net.batches[0].dtype == np.uint8
    np.testing.assert_array_equal(net.batches[0][:3], crops)
    assert not net.batches[0][3].any()
    np.testing.assert_array_equal(out, crops * 2.0)


def test_callbacks_see_every_batch_and_the_queue_depth():
    batch_calls, depth_calls = [], []
    net = StampedNet(delay=0.1)
    batcher = DynamicBatcher(net, max_batch_size=4, max_queue=100,
                             on_batch=batch_calls.append, on_depth=depth_calls.append)

    async def main():
        busy = asyncio.create_task(batcher.submit(rows(0, 1)))
        await asyncio.sleep(0.03)
        await asyncio.gather(*(batcher.submit(rows(i, 2)) for i in range(3)))
        await busy

    run_with(batcher, main)
    assert batch_calls == net.sizes == [1, 4, 2]
    assert max(depth_calls) == 6 and depth_calls[-1] == 0
