"""Batching concurrent requests into one forward pass.

Requests put their prepared images on a queue. One worker takes the first waiting image, then
gathers more until it has ``max_batch_size`` or ``max_latency_s`` has passed since it took the first,
and runs the batch in a single thread (one forward pass at a time: a second one would only compete
for the same cores or GPU). While a batch runs, new requests queue up and form the next batch, so
under load batches fill without anyone waiting for the latency window.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0


class MicroBatcher:
    """``await batcher.submit(items)`` returns ``fn(batch)``'s results for ``items``, in order, where
    the batch may hold other requests' items too. An exception of ``fn`` fails every request of its batch."""

    def __init__(self, fn: Callable[[Sequence[Any]], list[Any]], max_batch_size: int, max_latency_s: float):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size} must be >= 1")
        self.fn, self.max_batch_size, self.max_latency_s = fn, max_batch_size, max(0.0, max_latency_s)
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        if not items:
            return []
        self._ensure_worker()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, fut in zip(items, futures):
            self._queue.put_nowait((item, fut))
        return list(await asyncio.gather(*futures))

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._queue = self._queue or asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            batch = [await queue.get()]
            deadline = time.monotonic() + self.max_latency_s
            while len(batch) < self.max_batch_size:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            live = [(item, fut) for item, fut in batch if not fut.cancelled()]
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self.fn, [item for item, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} inputs")
            except Exception as e:  # handed to every waiting request, which re-raises it
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.stats.batches += 1
            self.stats.items += len(live)
            self.stats.largest = max(self.stats.largest, len(live))
            for (_, fut), result in zip(live, results):
                if not fut.done():
                    fut.set_result(result)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
