"""Mapping of domain errors to HTTP responses (one handler), and a generic 500."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from index.errors import (
    BundleError,
    CatalogueError,
    EncoderError,
    ImageError,
    NotFoundError,
    PricematchError,
    StoreError,
)

log = logging.getLogger("pricematch.service")


class PayloadTooLargeError(PricematchError):
    """An upload or an image over the configured limit."""


class UnsupportedMediaError(PricematchError):
    """A request body in a format the route does not take."""


#: Status code of each domain error; the first matching class (in order) wins.
STATUS: list[tuple[type[PricematchError], int]] = [
    (NotFoundError, 404),
    (PayloadTooLargeError, 413),
    (UnsupportedMediaError, 415),
    (ImageError, 400),
    (CatalogueError, 400),
    (EncoderError, 422),
    (BundleError, 422),
    (StoreError, 503),
    (PricematchError, 400),
]


def status_of(exc: PricematchError) -> int:
    return next(code for cls, code in STATUS if isinstance(exc, cls))


async def domain_error(request: Request, exc: Exception) -> JSONResponse:
    """A user-caused error: its status and its own message (it names the problem)."""
    assert isinstance(exc, PricematchError)
    return JSONResponse(
        {"detail": str(exc), "error": type(exc).__name__}, status_code=status_of(exc)
    )


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Anything else: logged with its traceback, answered without internals."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"detail": "internal server error", "error": "InternalError"}, status_code=500
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(PricematchError, domain_error)
    app.add_exception_handler(Exception, internal_error)
