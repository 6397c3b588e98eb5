"""MicroBatcher: concurrent requests share model calls, each gets its own rows back, errors reach every caller."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from frugalvision.serve import MicroBatcher


class _Model:
    """``x -> 2x + 1`` with a delay, recording the size of each call and that calls never overlap."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay, self.calls, self.active, self.overlap = delay, [], 0, False
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.lock:
            self.active += 1
            self.overlap |= self.active > 1
        time.sleep(self.delay)
        self.calls.append(x.shape[0])
        with self.lock:
            self.active -= 1
        return 2 * x + 1


def test_concurrent_requests_are_batched() -> None:
    model = _Model()

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(model, max_batch=8, max_wait_ms=20)
        inputs = [np.full((1 + i % 3, 2), float(i)) for i in range(12)]
        outs = await asyncio.gather(*(batcher.submit(x) for x in inputs))
        await batcher.close()
        for x, y in zip(inputs, outs, strict=True):
            np.testing.assert_array_equal(y, 2 * x + 1)
        return outs

    asyncio.run(main())
    assert sum(model.calls) == sum(1 + i % 3 for i in range(12))
    assert max(model.calls) <= 8 and len(model.calls) < 12 and not model.overlap


def test_large_request_is_split_and_errors_propagate() -> None:
    model = _Model(delay=0.0)

    async def main() -> None:
        batcher = MicroBatcher(model, max_batch=4, max_wait_ms=0)
        x = np.arange(22, dtype=float).reshape(11, 2)
        np.testing.assert_array_equal(await batcher.submit(x), 2 * x + 1)
        assert max(model.calls) <= 4

        def broken(_: np.ndarray) -> np.ndarray:
            raise RuntimeError("model failed")

        failing = MicroBatcher(broken, max_batch=4)
        with pytest.raises(RuntimeError, match="model failed"):
            await failing.submit(x[:2])
        with pytest.raises(RuntimeError, match="model failed"):  # the worker survives and answers again
            await failing.submit(x[:1])
        await failing.close()
        await batcher.close()

    asyncio.run(main())


def test_arguments() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lambda x: x, max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        MicroBatcher(lambda x: x, max_wait_ms=-1)


def test_overload_is_refused_not_queued() -> None:
    from frugalvision.serve import BatcherFullError

    model = _Model(delay=0.05)

    async def main() -> list:
        batcher = MicroBatcher(model, max_batch=2, max_wait_ms=0, max_pending=3)
        outcomes = await asyncio.gather(
            *(batcher.submit(np.ones((1, 2))) for _ in range(5)), return_exceptions=True
        )
        assert batcher.pending == 0
        after = await batcher.submit(np.ones((2, 2)))  # room again once the backlog is done
        await batcher.close()
        return [*outcomes, after]

    outcomes = asyncio.run(main())
    refused = [o for o in outcomes if isinstance(o, BatcherFullError)]
    assert len(refused) == 2 and "busy" in str(refused[0])
    assert all(isinstance(o, np.ndarray) for o in outcomes if not isinstance(o, BatcherFullError))


def test_admission_by_estimated_delay() -> None:
    from frugalvision.serve import BatcherFullError

    model = _Model(delay=0.05)

    async def main() -> None:
        batcher = MicroBatcher(model, max_batch=4, max_wait_ms=0, max_pending=100, max_delay_s=0.5)
        assert batcher.seconds_per_image is None
        held = [batcher.admit(30)]  # no estimate yet: only max_pending applies
        held[0].release()
        await batcher.submit(np.ones((2, 2)))
        assert batcher.seconds_per_image is not None and batcher.seconds_per_image >= 0.05 / 2
        batcher.seconds_per_image = 0.1  # fixed, so the arithmetic below does not depend on this machine
        held = [batcher.admit(3), batcher.admit(2)]  # 3 images ahead: 0.3 s <= 0.5 s; then 5 pending
        assert batcher.pending == 5 and batcher.estimated_delay() == pytest.approx(0.5)
        held.append(batcher.admit(1))  # exactly at the limit ahead: still admitted
        with pytest.raises(BatcherFullError, match=r"about 0\.6 s") as refused:
            batcher.admit(1)
        assert refused.value.retry_after == 1
        held.pop().release()
        held.pop().release()
        held[0].release()
        held[0].release()  # twice is harmless
        assert batcher.pending == 0
        with batcher.admit(8) as admission:  # a large request on an idle service is always admitted
            out = await batcher.submit(np.ones((8, 2)), admission)
            assert out.shape == (8, 2) and batcher.pending == 8
        assert batcher.pending == 0
        await batcher.close()

    asyncio.run(main())
    with pytest.raises(ValueError, match="max_delay_s"):
        MicroBatcher(lambda x: x, max_delay_s=0)


def test_cancelled_request_is_not_computed() -> None:
    gate = threading.Event()
    calls: list[int] = []

    def model(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape[0])
        gate.wait(10)
        return x

    async def main() -> None:
        batcher = MicroBatcher(model, max_batch=1, max_wait_ms=0)
        first = asyncio.create_task(batcher.submit(np.ones((1, 2))))
        while not calls:
            await asyncio.sleep(0.01)
        second = asyncio.create_task(batcher.submit(np.ones((3, 2))))  # 3 parts of 1 image, queued
        await asyncio.sleep(0.05)
        assert batcher.pending == 4
        second.cancel()  # its client went away
        await asyncio.gather(second, return_exceptions=True)
        assert batcher.pending == 1
        gate.set()
        await first
        await asyncio.sleep(0.1)
        await batcher.close()

    asyncio.run(main())
    assert calls == [1]  # none of the cancelled request's parts reached the model
