"""Micro-batching: concurrent requests share one model call.

Requests put their preprocessed images on an asyncio queue and await a future. One worker task takes the
first waiting request, then keeps collecting until ``max_batch`` images are gathered or ``max_wait_ms`` has
passed since it took the first one, and runs the model once on the concatenated batch in a worker thread
(so the event loop keeps accepting requests while ONNX Runtime computes). Requests that arrive during a
model call wait in the queue and form the next batch, so under load batches fill by themselves and the
waiting time only matters when the service is nearly idle.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

__all__ = ["BatchStats", "BatcherFullError", "MicroBatcher"]


class BatcherFullError(RuntimeError):
    """More images are waiting than ``max_pending`` allows (the service answers 503: retry later)."""


@dataclass
class BatchStats:
    """Counters of a :class:`MicroBatcher` (for ``/info``)."""

    batches: int = 0
    images: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)

    def add(self, size: int) -> None:
        self.batches += 1
        self.images += size
        self.largest = max(self.largest, size)
        self.sizes[size] = self.sizes.get(size, 0) + 1

    def to_dict(self) -> dict[str, float]:
        mean = self.images / self.batches if self.batches else 0.0
        return {
            "batches": self.batches,
            "images": self.images,
            "largest": self.largest,
            "mean_batch": round(mean, 2),
        }


@dataclass
class _Job:
    batch: np.ndarray
    future: asyncio.Future[np.ndarray]


class MicroBatcher:
    """Gathers ``(n, ...)`` arrays from concurrent callers into batches for ``run`` (one call at a time).

    Args:
        run: ``(B, ...) -> (B, ...)`` function, e.g. :meth:`frugalvision.runtime.Predictor.run`; called in a
            dedicated thread, never concurrently with itself.
        max_batch: most images per call. A request with more images is run in several calls.
        max_wait_ms: how long the first request of a batch may wait for company.
        max_pending: most images waiting or running at once (``None``: no limit); a request that would exceed it
            raises :class:`BatcherFullError` at once, so memory stays bounded under overload.

    Use ``await batcher.submit(x)`` from coroutines of one event loop; ``await batcher.close()`` at shutdown.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        max_pending: int | None = None,
    ) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
        if not max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if max_pending is not None and (
            isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1
        ):
            raise ValueError(f"max_pending must be a positive int or None, got {max_pending!r}")
        self._run = run
        self.max_pending = max_pending
        self.pending = 0
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._carry: _Job | None = None  # taken from the queue but did not fit in the last batch
        self._owner: asyncio.AbstractEventLoop | None = None

    def _start(self) -> asyncio.Queue[_Job]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.done() or self._owner is not loop:
            # first use, or a new event loop (e.g. the app restarted in tests): start afresh on this loop
            self._queue, self._carry, self._owner = asyncio.Queue(), None, loop
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frugalvision-model")
            self._worker = loop.create_task(self._loop(self._queue))
        return self._queue

    async def submit(self, batch: np.ndarray) -> np.ndarray:
        """Run ``batch (n, ...)`` as part of a shared batch; returns its ``n`` output rows."""
        if not isinstance(batch, np.ndarray) or batch.ndim < 1:
            raise TypeError("batch must be a numpy array with a leading batch axis")
        n = batch.shape[0]
        if n == 0:
            return self._run(batch)
        if self.max_pending is not None and self.pending + n > self.max_pending:
            raise BatcherFullError(
                f"the service is busy: {self.pending} images are waiting (limit {self.max_pending}); retry later"
            )
        queue = self._start()
        self.pending += n
        try:
            parts = []
            for i in range(0, n, self.max_batch):
                future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
                await queue.put(_Job(batch[i : i + self.max_batch], future))
                parts.append(future)
            results = [await f for f in parts]
        finally:
            self.pending -= n
        return results[0] if len(results) == 1 else np.concatenate(results)

    async def _collect(self, queue: asyncio.Queue[_Job]) -> list[_Job]:
        loop = asyncio.get_running_loop()
        first = self._carry if self._carry is not None else await queue.get()
        self._carry = None
        jobs, count = [first], first.batch.shape[0]
        deadline = loop.time() + self.max_wait
        while count < self.max_batch:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if count + job.batch.shape[0] > self.max_batch:
                self._carry = job
                break
            jobs.append(job)
            count += job.batch.shape[0]
        return jobs

    async def _loop(self, queue: asyncio.Queue[_Job]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect(queue)
            live = [j for j in jobs if not j.future.done()]  # a cancelled request needs no compute
            if not live:
                continue
            batch = live[0].batch if len(live) == 1 else np.concatenate([j.batch for j in live])
            try:
                out = await loop.run_in_executor(self._executor, self._run, batch)
            except Exception as e:  # handed to every waiting request; the worker keeps serving
                for j in live:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            self.stats.add(batch.shape[0])
            start = 0
            for j in live:
                n = j.batch.shape[0]
                if not j.future.done():
                    j.future.set_result(out[start : start + n])
                start += n

    async def close(self) -> None:
        """Stop the worker and its thread; waiting requests get ``CancelledError``."""
        worker, self._worker = self._worker, None
        if worker is not None and self._owner is asyncio.get_running_loop():
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        pending = [self._carry] if self._carry else []
        self._carry = None
        if self._queue is not None:
            while not self._queue.empty():
                pending.append(self._queue.get_nowait())
        for job in pending:
            if not job.future.done():
                job.future.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        self._queue = None
