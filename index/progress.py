"""Progress bars on stderr (tqdm), one place to configure them, and cooperative
cancellation: long loops go through `progress`, which stops them when the job's event is
set (`cancellable`), so a server can stop work whose client went away."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

from tqdm.auto import tqdm

from index.errors import CancelledError

T = TypeVar("T")

_cancel: ContextVar[threading.Event | None] = ContextVar("pricematch_cancel", default=None)


@contextmanager
def cancellable(event: threading.Event) -> Iterator[None]:
    """Within this block (this thread or task), `check_cancelled` and every `progress` loop
    raise `CancelledError` once `event` is set."""
    token = _cancel.set(event)
    try:
        yield
    finally:
        _cancel.reset(token)


def check_cancelled() -> None:
    """Raise `CancelledError` if the current job was cancelled."""
    event = _cancel.get()
    if event is not None and event.is_set():
        raise CancelledError("the job was cancelled")


def progress(it: Iterable[T], desc: str, disable: bool = False, **kw: object) -> Iterable[T]:
    """Wrap `it` in a tqdm bar unless disabled or `PRICEMATCH_NO_PROGRESS` is set; inside
    `cancellable`, each step first checks for cancellation."""
    off = disable or bool(os.environ.get("PRICEMATCH_NO_PROGRESS"))
    bar = tqdm(it, desc=desc, disable=off, leave=False, dynamic_ncols=True, **kw)
    return bar if _cancel.get() is None else _checked(bar)


def _checked(it: Iterable[T]) -> Iterator[T]:
    for x in it:
        check_cancelled()
        yield x
