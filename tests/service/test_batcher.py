"""DynamicBatcher on its own, with a fake network: order, splitting, padding, limits."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.engine.batcher import DynamicBatcher, QueueFullError, batch_buckets


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
