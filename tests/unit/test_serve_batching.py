"""The micro-batcher: concurrent requests share forward passes, each gets its own results, in order."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from automl_vision.serving.batching import MicroBatcher


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_are_batched_and_answered_in_order():
    calls = []

    def fn(items):
        calls.append(list(items))
        time.sleep(0.02)  # a forward pass: later requests queue up meanwhile
        return [x * 10 for x in items]

    async def main():
        b = MicroBatcher(fn, max_batch_size=8, max_latency_s=0.05)
        requests = [list(range(i * 3, i * 3 + 3)) for i in range(10)]
        results = await asyncio.gather(*(b.submit(r) for r in requests))
        b.close()
        return requests, results, b.stats

    requests, results, stats = run(main())
    assert results == [[x * 10 for x in r] for r in requests]
    assert all(len(c) <= 8 for c in calls)
    assert sum(len(c) for c in calls) == 30
    assert len(calls) < 10  # 10 requests of 3 images fit in 4 batches of 8
    assert stats.largest == 8 and stats.items == 30


def test_a_lone_request_waits_at_most_the_latency_window():
    async def main():
        b = MicroBatcher(lambda items: list(items), max_batch_size=64, max_latency_s=0.05)
        t0 = time.monotonic()
        out = await b.submit([1])
        b.close()
        return out, time.monotonic() - t0

    out, elapsed = run(main())
    assert out == [1] and elapsed < 2.0


def test_an_error_fails_every_request_of_its_batch_and_the_batcher_goes_on():
    def fn(items):
        if "bad" in items:
            raise RuntimeError("forward failed")
        return [x.upper() for x in items]

    async def main():
        b = MicroBatcher(fn, max_batch_size=4, max_latency_s=0.05)
        first = await asyncio.gather(b.submit(["a"]), b.submit(["bad"]), return_exceptions=True)
        after = await b.submit(["c"])
        b.close()
        return first, after

    first, after = run(main())
    assert all(isinstance(r, RuntimeError) and "forward failed" in str(r) for r in first)
    assert after == ["C"]


def test_one_forward_pass_at_a_time():
    active, peak = [0], [0]
    lock = threading.Lock()

    def fn(items):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.01)
        with lock:
            active[0] -= 1
        return list(items)

    async def main():
        b = MicroBatcher(fn, max_batch_size=2, max_latency_s=0.0)
        await asyncio.gather(*(b.submit([i]) for i in range(12)))
        b.close()

    run(main())
    assert peak[0] == 1


def test_max_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="max_batch_size=0 must be >= 1"):
        MicroBatcher(lambda x: x, 0, 0.0)
