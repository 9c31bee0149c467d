"""Long jobs (`/batch-match`): a worker thread under a cancel event, a temporary folder,
and a registry that stops them all when the server stops.

A job is cancelled when its client disconnects (`cancel_on_disconnect`), when its request
task is cancelled (uvicorn's graceful-shutdown timeout), or by `Jobs.stop` at shutdown;
the thread stops at its next step (`index.progress.cancellable`). Its folder is removed
when the job ends and, at the latest, by `Jobs.stop`.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread
from starlette.requests import Request

from index.errors import CancelledError
from index.progress import cancellable

T = TypeVar("T")


@dataclass(eq=False)
class Job:
    """One running job: its cancel event, its end, its temporary folder."""

    folder: Path
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


class Jobs:
    """The jobs running now (`Engine.jobs`)."""

    def __init__(self, prefix: str = "pricematch-batch-") -> None:
        self.prefix = prefix
        self._jobs: set[Job] = set()
        self._lock = threading.Lock()

    @contextmanager
    def open(self, cancel: threading.Event | None = None) -> Iterator[Job]:
        """A registered job with a new temporary folder, removed on exit."""
        job = Job(Path(tempfile.mkdtemp(prefix=self.prefix)), cancel or threading.Event())
        with self._lock:
            self._jobs.add(job)
        try:
            yield job
        finally:
            with self._lock:
                self._jobs.discard(job)
            shutil.rmtree(job.folder, ignore_errors=True)

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel every job, wait up to `timeout` s for their threads, remove their folders."""
        with self._lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.cancel.set()
        for job in jobs:
            job.done.wait(timeout)
            shutil.rmtree(job.folder, ignore_errors=True)

    async def run(self, job: Job, fn: Callable[[], T]) -> T:
        """`fn()` in a worker thread under `cancellable(job.cancel)`; if this task is
        cancelled, the event is set and the thread waited for (at most 60 s)."""

        def work() -> T:
            try:
                with cancellable(job.cancel):
                    return fn()
            finally:
                job.done.set()

        try:
            return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            job.cancel.set()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(job.done.wait, 60.0)
            raise


@asynccontextmanager
async def cancel_on_disconnect(request: Request) -> AsyncIterator[threading.Event]:
    """An event set when the client disconnects; the block is cancelled then too.

    Raises:
        CancelledError: after the block, if the client went away (nobody reads the answer).
    """
    cancel = threading.Event()
    error: Exception | None = None
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            cancel.set()
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        try:
            yield cancel
        except Exception as e:  # raised below, not wrapped in the task group's ExceptionGroup
            error = e
        finally:
            tg.cancel_scope.cancel()
    if error is not None:
        raise error
    if cancel.is_set():
        raise CancelledError("the client went away; the batch was cancelled")
