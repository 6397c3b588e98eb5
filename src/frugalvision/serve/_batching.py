"""Micro-batching: concurrent requests share one model call.

Requests put their preprocessed images on an asyncio queue and await a future. One worker task takes the
first waiting request, then keeps collecting until ``max_batch`` images are gathered or ``max_wait_ms`` has
passed since it took the first one, and runs the model once on the concatenated batch in a worker thread
(so the event loop keeps accepting requests while ONNX Runtime computes). Requests that arrive during a
model call wait in the queue and form the next batch, so under load batches fill by themselves and the
waiting time only matters when the service is nearly idle.

Admission is decided before any work is spent on a request: :meth:`MicroBatcher.admit` reserves room for its
``n`` images *before they are decoded* and refuses at once (:class:`BatcherFullError`, HTTP 503) when

* ``pending + n > max_pending`` (memory bound: images decoding, waiting or running), or
* the images already ahead would keep the model busy for more than ``max_delay_s`` (latency bound)::

      delay = pending * t_image,   t_image = running mean of (model call seconds / images in the call)

  ``t_image`` is an exponential mean over images (each image of a call weighs ``1 - 0.98``), so under load it
  follows the full batches; before the first call there is no estimate and only ``max_pending`` applies.

An admitted request that is cancelled (its client went away) takes its images out of the next batches: queued
jobs whose future is cancelled are skipped, and its reservation is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Admission", "BatchStats", "BatcherFullError", "MicroBatcher"]

_IMAGE_WEIGHT = 0.02  # weight of one image in the running mean of seconds per image


class BatcherFullError(RuntimeError):
    """No room for a request now (the service answers 503 with ``Retry-After: retry_after``).

    Raised when more images than ``max_pending`` would be in flight, or when the images ahead would take more
    than ``max_delay_s`` to compute.
    """

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


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


class Admission:
    """Room reserved for ``n`` images in a :class:`MicroBatcher` (from :meth:`MicroBatcher.admit`).

    Hold it while the images are decoded and computed; :meth:`release` (or leaving the ``with`` block) gives
    the room back. Releasing twice is harmless.
    """

    def __init__(self, batcher: MicroBatcher, n: int) -> None:
        self._batcher: MicroBatcher | None = batcher
        self.n = n

    def release(self) -> None:
        if self._batcher is not None:
            self._batcher.pending -= self.n
            self._batcher = None

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


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
        max_pending: most images admitted at once -- decoding, waiting or running (``None``: no limit); a
            request that would exceed it raises :class:`BatcherFullError` at once, so memory stays bounded.
        max_delay_s: refuse a request when the images already admitted would take longer than this to compute
            (estimated from recent model calls; ``None``: no limit), so admitted requests keep a short wait
            under overload instead of queueing behind a long backlog.

    Use ``with batcher.admit(n) as a: ... await batcher.submit(x, a)`` (or plain ``await batcher.submit(x)``)
    from coroutines of one event loop; ``await batcher.close()`` at shutdown.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        max_pending: int | None = None,
        max_delay_s: float | None = None,
    ) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
        if not max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if max_pending is not None and (
            isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1
        ):
            raise ValueError(f"max_pending must be a positive int or None, got {max_pending!r}")
        if max_delay_s is not None and not max_delay_s > 0:
            raise ValueError(f"max_delay_s must be > 0 or None, got {max_delay_s}")
        self._run = run
        self.max_pending = max_pending
        self.max_delay_s = max_delay_s
        self.seconds_per_image: float | None = None  # running mean, from the model calls
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

    def estimated_delay(self) -> float:
        """Seconds the images admitted now would keep the model busy (0 before the first model call)."""
        return self.pending * (self.seconds_per_image or 0.0)

    def check(self, n: int) -> None:
        """Raise :class:`BatcherFullError` if a request of ``n`` images would be refused now; reserves nothing."""
        if self.max_pending is not None and self.pending + n > self.max_pending:
            raise BatcherFullError(
                f"the service is busy: {self.pending} images are in progress (limit {self.max_pending}); "
                "retry later",
                retry_after=max(1, math.ceil(self.estimated_delay())),
            )
        delay = self.estimated_delay()
        if self.max_delay_s is not None and self.pending and delay > self.max_delay_s:
            raise BatcherFullError(
                f"the service is busy: the {self.pending} images ahead need about {delay:.1f} s "
                f"(limit {self.max_delay_s:g} s); retry later",
                retry_after=max(1, math.ceil(delay - self.max_delay_s)),
            )

    def admit(self, n: int) -> Admission:
        """Reserve room for ``n`` images before decoding them, or raise :class:`BatcherFullError` at once."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        self.check(n)
        self.pending += n
        return Admission(self, n)

    async def submit(self, batch: np.ndarray, admission: Admission | None = None) -> np.ndarray:
        """Run ``batch (n, ...)`` as part of a shared batch; returns its ``n`` output rows.

        Args:
            batch: ``(n, ...)`` array.
            admission: room reserved with :meth:`admit` (the caller releases it); ``None`` admits the batch
                here (raising :class:`BatcherFullError` when there is no room) and releases it when done.
        """
        if not isinstance(batch, np.ndarray) or batch.ndim < 1:
            raise TypeError("batch must be a numpy array with a leading batch axis")
        n = batch.shape[0]
        if n == 0:
            return self._run(batch)
        with contextlib.ExitStack() as stack:
            if admission is None:
                stack.enter_context(self.admit(n))
            queue = self._start()
            parts: list[asyncio.Future[np.ndarray]] = []
            try:
                for i in range(0, n, self.max_batch):
                    future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
                    queue.put_nowait(_Job(batch[i : i + self.max_batch], future))
                    parts.append(future)
                results = [await f for f in parts]
            except BaseException:  # cancelled (the client left) or failed: its queued parts need no compute
                for f in parts:
                    f.cancel()
                raise
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
            start = time.perf_counter()
            try:
                out = await loop.run_in_executor(self._executor, self._run, batch)
            except Exception as e:  # handed to every waiting request; the worker keeps serving
                for j in live:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            self._measure(batch.shape[0], time.perf_counter() - start)
            row = 0
            for j in live:
                n = j.batch.shape[0]
                if not j.future.done():
                    j.future.set_result(out[row : row + n])
                row += n

    def _measure(self, n: int, seconds: float) -> None:
        self.stats.add(n)
        per_image = seconds / n
        if self.seconds_per_image is None:
            self.seconds_per_image = per_image
        else:
            w = 1.0 - (1.0 - _IMAGE_WEIGHT) ** n
            self.seconds_per_image += w * (per_image - self.seconds_per_image)

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
