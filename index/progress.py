"""Progress bars on stderr (tqdm), one place to configure them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(it: Iterable[T], desc: str, disable: bool = False, **kw: object) -> Iterable[T]:
    """Wrap `it` in a tqdm bar unless disabled or `PRICEMATCH_NO_PROGRESS` is set."""
    off = disable or bool(os.environ.get("PRICEMATCH_NO_PROGRESS"))
    return tqdm(it, desc=desc, disable=off, leave=False, dynamic_ncols=True, **kw)
