"""Request-body limits, enforced before a body is read, and bounded reading of uploads."""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLargeError, send_error


class BodyLimitMiddleware:
    """Answers 413 when Content-Length is over the path's limit; stops longer streams too."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            detail = f"request body over the {limit / (1 << 20):g} MB limit"
            await send_error(send, 413, detail, "PayloadTooLargeError")
            return
        seen = 0

        async def receive_() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLargeError(
                        f"request body over the {limit / (1 << 20):g} MB limit"
                    )
            return message

        await self.app(scope, receive_, send)


async def read_upload(upload: UploadFile, limit: int, what: str) -> bytes:
    """All bytes of an uploaded file, refusing more than `limit`."""
    chunks, total = [], 0
    while chunk := await upload.read(1 << 20):
        total += len(chunk)
        if total > limit:
            raise PayloadTooLargeError(f"{what} is over the {limit / (1 << 20):g} MB limit")
        chunks.append(chunk)
    return b"".join(chunks)
