"""Micro-batching: concurrent requests' items are collected for a few ms and run together.

`Batcher` is the interface the engine uses for `/match` encodings; `MicroBatcher` is the
in-process implementation (the default uvicorn engine), `service.ray_serve.ServeBatcher`
the one built on Ray Serve's `serve.batch` (`pricematch serve --engine ray`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import anyio.to_thread
import numpy as np

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)
log = logging.getLogger("pricematch.service")


class Batcher(Protocol[T_contra]):
    """Batches concurrent `submit` calls into calls of one batch function.

    Attributes:
        kind: what batches (shown by `/readyz`).
    """

    kind: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def submit(self, item: T_contra) -> np.ndarray:
        """The result row of `item`; raises what the batch function raised."""
        ...


class BatcherFactory(Protocol):
    """Makes a `Batcher` for a batch function (`MicroBatcher` itself is one)."""

    def __call__(
        self,
        fn: Callable[[Sequence[Any]], np.ndarray],
        max_batch: int = ...,
        wait_ms: float = ...,
        observe: Callable[[int, float], None] | None = ...,
    ) -> Batcher[Any]: ...


class MicroBatcher(Generic[T]):
    """Runs `fn(items) -> (n, d) array` on batches gathered from concurrent `submit` calls.

    The first item of a batch waits at most `wait_ms` for others (up to `max_batch`); `fn`
    runs in a worker thread, one batch at a time, so the event loop stays free and an
    accelerator sees full batches.

    Args:
        fn: the batch function (an encoder's `encode`).
        max_batch: most items per call.
        wait_ms: how long to wait for more items.
        observe: called with (batch size, seconds) after each call (metrics).
    """

    kind = "micro-batcher"

    def __init__(
        self,
        fn: Callable[[Sequence[T]], np.ndarray],
        max_batch: int = 64,
        wait_ms: float = 3.0,
        observe: Callable[[int, float], None] | None = None,
    ) -> None:
        self.fn = fn
        self.max_batch = max_batch
        self.wait = wait_ms / 1000
        self.observe = observe
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[np.ndarray]]] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def submit(self, item: T) -> np.ndarray:
        """The result row of `item` (shape (d,)); raises what `fn` raised for its batch."""
        if self._task is None or self._queue is None:  # not started: run alone
            return (await anyio.to_thread.run_sync(self.fn, [item]))[0]
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, fut))
        return await fut

    async def _run(self) -> None:
        assert self._queue is not None
        q = self._queue
        loop = asyncio.get_running_loop()
        while True:
            batch = [await q.get()]
            deadline = loop.time() + self.wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(q.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(q.get(), left))
                except TimeoutError:
                    break
            live = [(item, fut) for item, fut in batch if not fut.done()]  # skip cancelled
            if not live:
                continue
            t = time.perf_counter()
            try:
                out = await anyio.to_thread.run_sync(self.fn, [item for item, _ in live])
            except Exception as e:  # delivered to every waiter of this batch
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            if self.observe is not None:
                self.observe(len(live), time.perf_counter() - t)
            for i, (_, fut) in enumerate(live):
                if not fut.done():
                    fut.set_result(out[i])


def run_batches(fn: Callable[[list[Any]], np.ndarray], items: list[Any], size: int) -> np.ndarray:
    """`fn` over `items` in chunks of `size`, stacked (for bulk work outside the batcher)."""
    parts = [fn(items[s : s + size]) for s in range(0, len(items), size)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
