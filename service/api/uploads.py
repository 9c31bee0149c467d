"""Reading what a request uploads: its media type, base64 images and image bytes, with the
size limits and the decompression-bomb guard (the routes' part; the engine takes decoded
listings)."""

from __future__ import annotations

import base64
import binascii

from PIL import Image
from starlette.requests import Request

from index.errors import ImageError
from index.features.images import open_image
from service.errors import PayloadTooLargeError


def media_type(request: Request) -> str:
    """The request body's media type, lower-case, without parameters ("" when none)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def decode_base64_image(data: str, limit: int, what: str = "image") -> bytes:
    """Bytes of a base64 image (a `data:` URL prefix is accepted).

    Raises:
        PayloadTooLargeError: over `limit` bytes once decoded.
        ImageError: not valid base64.
    """
    if data.startswith("data:") and "," in data:
        data = data.split(",", 1)[1]
    data = "".join(data.split())
    if len(data) * 3 // 4 > limit:
        raise PayloadTooLargeError(f"{what} is over the {limit / (1 << 20):g} MB limit")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageError(f"{what}: not valid base64 ({e})") from e


def decode_image(data: bytes, limit: int, what: str = "image") -> Image.Image:
    """Decode image bytes to RGB, with the size limit and the decompression-bomb guard."""
    if len(data) > limit:
        raise PayloadTooLargeError(f"{what} is over the {limit / (1 << 20):g} MB limit")
    if not data:
        raise ImageError(f"{what}: empty file")
    try:
        return open_image(data)
    except ImageError as e:
        raise ImageError(f"{what}: {str(e).removeprefix('<bytes>: ')}") from e
