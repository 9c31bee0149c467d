"""Every error answer of the service: one shape, `{"detail": str, "error": str}`.

Domain errors map to 4xx in one handler (`STATUS`); request validation (422) and HTTP
errors (401, 404, 405, 503...) get the same shape. Error bodies never echo the request's
values and are encoded as ASCII JSON, so no input (NaN, lone surrogates, bytes) can make
the handler itself fail. Anything unexpected is a logged, generic 500 answered by
`CatchAllMiddleware`, which does not re-raise (the connection stays usable).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from index.errors import (
    BundleError,
    CancelledError,
    CatalogueError,
    ConfigurationError,
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


class QueryError(PricematchError):
    """A request whose fields are each valid but do not make a usable query."""


#: Status code of each domain error; the first matching class (in order) wins.
STATUS: list[tuple[type[PricematchError], int]] = [
    (NotFoundError, 404),
    (PayloadTooLargeError, 413),
    (UnsupportedMediaError, 415),
    (QueryError, 422),
    (CancelledError, 503),
    (ImageError, 400),
    (CatalogueError, 400),
    # the server's own artifacts and settings (model, bundle, write-ahead log, snapshots,
    # vector store): never the request's fault, so never a 4xx
    (EncoderError, 503),
    (BundleError, 503),
    (ConfigurationError, 503),
    (StoreError, 503),
    (PricematchError, 400),
]

#: Longest `detail` sent back (a message naming many bad fields is cut there).
MAX_DETAIL = 2000


def status_of(exc: PricematchError) -> int:
    return next(code for cls, code in STATUS if isinstance(exc, cls))


def error_body(detail: object, error: str) -> bytes:
    """The JSON error body; ASCII-only and NaN-free, so it always encodes."""
    text = str(detail)
    if len(text) > MAX_DETAIL:
        text = text[: MAX_DETAIL - 3] + "..."
    return json.dumps({"detail": text, "error": error}, ensure_ascii=True).encode("ascii")


def error_response(
    status: int, detail: object, error: str, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        error_body(detail, error),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def reason(status: int) -> str:
    """`NotFound`, `MethodNotAllowed`... from the status code."""
    try:
        return HTTPStatus(status).phrase.title().replace(" ", "").replace("-", "")
    except ValueError:
        return "HTTPError"


def describe_validation(errors: Any) -> str:
    """One line naming each invalid field and why, without the submitted values."""
    parts = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path", "header")]
        where = ".".join(loc) or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def domain_error(request: Request, exc: Exception) -> Response:
    """A user-caused error: its status and its own message (it names the problem)."""
    assert isinstance(exc, PricematchError)
    return error_response(status_of(exc), exc, type(exc).__name__)


async def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, describe_validation(exc.errors()), "ValidationError")


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    cause = exc.__cause__
    if isinstance(cause, PricematchError):  # e.g. a body limit hit while FastAPI parsed a form
        return await domain_error(request, cause)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:  # every method of the path, not only the first route's
        headers["Allow"] = ", ".join(allowed_methods(request))
    return error_response(exc.status_code, exc.detail, reason(exc.status_code), headers)


def allowed_methods(request: Request) -> list[str]:
    """The methods some route takes at this path (each tried through `Route.matches`)."""
    methods = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
    return [
        m
        for m in methods
        if any(
            r.matches({**request.scope, "method": m})[0] == Match.FULL
            for r in request.app.router.routes
        )
    ]


async def send_error(send: Send, status: int, detail: object, error: str) -> None:
    """Send a whole error answer from ASGI middleware (outside FastAPI's handlers)."""
    body = error_body(detail, error)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class CatchAllMiddleware:
    """Answers an unexpected exception with a generic, logged 500 instead of dropping the
    connection; a client that went away gets nothing (it is not an error of ours)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_)
        except ClientDisconnect:
            log.info("client went away during %s %s", scope.get("method"), scope.get("path"))
        except Exception as exc:
            log.error(
                "unhandled error on %s %s", scope.get("method"), scope.get("path"), exc_info=exc
            )
            if started:  # half a response is out: only closing the connection is left
                raise
            await send_error(send, 500, "internal server error", "InternalError")


def install(app: FastAPI) -> None:
    """Register the handlers; call before adding the outer middlewares."""
    app.add_exception_handler(PricematchError, domain_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_middleware(CatchAllMiddleware)
