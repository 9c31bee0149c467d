"""POST /match: one listing (JSON or multipart) against the catalogue."""

from __future__ import annotations

import json
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from index.data.listings import POSTING_ID_PATTERN
from index.errors import ImageError
from index.features.images import compute_phash
from service.api.uploads import decode_base64_image, decode_image, media_type
from service.deps import EngineDep, SettingsDep
from service.engine import Listing
from service.errors import QueryError, UnsupportedMediaError
from service.limits import read_upload
from service.schemas import MatchItem, MatchRequest, MatchResponse, errors

router = APIRouter(tags=["matching"])

#: A query needs at least one of these (JSON Schema for both bodies; `parse_match_request`).
NEEDS_ONE = [
    {"required": ["title"], "properties": {"title": {"pattern": "\\S"}}},
    {"required": ["image"], "properties": {"image": {"type": "string"}}},
    {"required": ["image_phash"], "properties": {"image_phash": {"type": "string"}}},
]
_MULTIPART: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "at least one of title, image and image_phash; an empty posting_id, "
    "image_phash or threshold counts as not sent",
    "anyOf": [
        NEEDS_ONE[0],
        {"required": ["image"], "properties": {"image": {"minLength": 1}}},
        {"required": ["image_phash"], "properties": {"image_phash": {"minLength": 16}}},
    ],
    "properties": {
        "title": {"type": "string", "maxLength": 5000},
        "posting_id": {"type": "string", "maxLength": 200, "pattern": f"^$|{POSTING_ID_PATTERN}"},
        "image": {"type": "string", "format": "binary", "description": "the photo file"},
        "image_phash": {"type": "string", "pattern": "^([0-9a-fA-F]{16})?$"},
        "threshold": {"type": "string", "description": 'JSON object, e.g. {"tfidf": 0.5}'},
        "max_matches": {"type": "integer", "minimum": 1, "maximum": 50, "default": 50},
    },
}
#: Form fields that, sent empty, count as not sent (an empty text box).
_EMPTY_IS_ABSENT = {"posting_id", "image_phash", "threshold"}
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {**MatchRequest.model_json_schema(), "anyOf": NEEDS_ONE},
                "examples": {
                    "title and phash": {
                        "value": {
                            "title": "Paper Bag Victoria Secret",
                            "image_phash": "94974f937d4c2433",
                            "max_matches": 10,
                        }
                    },
                    "with a lower TF-IDF threshold": {
                        "value": {"title": "paper bag victoria", "threshold": {"tfidf": 0.4}}
                    },
                },
            },
            "multipart/form-data": {"schema": _MULTIPART},
        },
    }
}


def _invalid(e: ValidationError) -> RequestValidationError:
    return RequestValidationError(e.errors(include_url=False, include_context=False))


async def parse_match_request(
    request: Request, image_limit: int
) -> tuple[MatchRequest, bytes | None]:
    """The request as a `MatchRequest` and its image bytes (None when none was sent).

    Raises:
        QueryError: neither a title, an image nor an image_phash.
        ImageError: an image part or field that is empty.
    """
    req, image = await _parse(request, image_limit)
    if image is not None and not image:
        raise ImageError("image: empty (send the photo's bytes, or leave the field out)")
    if not req.title.strip() and image is None and not req.image_phash:
        raise QueryError("a /match query needs a title, an image or an image_phash")
    return req, image


async def _parse(request: Request, image_limit: int) -> tuple[MatchRequest, bytes | None]:
    ctype = media_type(request)
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=len(_MULTIPART["properties"]))
        fields: dict[str, Any] = {}
        image: bytes | None = None
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "image":
                    raise RequestValidationError(
                        [{"loc": ("body", key), "msg": "unexpected file", "type": "value_error"}]
                    )
                image = await read_upload(value, image_limit, "image")
            elif value or key not in _EMPTY_IS_ABSENT:
                fields[key] = value
        if "threshold" in fields:
            try:
                fields["threshold"] = json.loads(fields["threshold"])
            except json.JSONDecodeError as e:
                msg = f"not a JSON object ({e.msg} at character {e.pos})"
                raise RequestValidationError(
                    [{"loc": ("body", "threshold"), "msg": msg, "type": "json_invalid"}]
                ) from e
        try:
            req = MatchRequest.model_validate(fields)
        except ValidationError as e:
            raise _invalid(e) from e
        if image is None and req.image is not None:  # the photo as a base64 text field
            image = decode_base64_image(req.image, image_limit)
        return req, image
    if ctype in ("application/json", ""):
        body = await request.body()
        try:
            req = MatchRequest.model_validate_json(body or b"null", strict=True)
        except ValidationError as e:
            raise _invalid(e) from e
        if req.image is not None:
            return req, decode_base64_image(req.image, image_limit)
        return req, None
    raise UnsupportedMediaError(
        f"content-type {ctype!r} not supported; send application/json or multipart/form-data"
    )


@router.post(
    "/match",
    response_model=MatchResponse,
    responses=errors(400, 413, 415, 422, 500, 503),
    openapi_extra=_BODY,
    summary="catalogue listings that are the same product as this one",
    description="Send the listing as JSON (image as base64) or as multipart form fields with "
    "the image as a file; a query needs at least one of title, image and image_phash. Each "
    "match carries its score and the signals that matched. The query itself is listed only "
    "if its posting_id is in the catalogue.",
)
async def match(request: Request, engine: EngineDep, settings: SettingsDep) -> MatchResponse:
    limit = settings.limit(settings.max_image_mb)
    req, image = await parse_match_request(request, limit)
    img = await anyio.to_thread.run_sync(decode_image, image, limit) if image else None
    phash = (req.image_phash or "").lower()
    if not phash and img is not None:
        phash = await anyio.to_thread.run_sync(compute_phash, img)
    listing = Listing(req.posting_id, " ".join(req.title.split()), img, phash)
    threshold = dict(req.threshold or {})
    matches, config = await engine.match(listing, threshold, req.max_matches)
    return MatchResponse(
        posting_id=req.posting_id,
        count=len(matches),
        matches=[MatchItem(**vars(m)) for m in matches],
        thresholds={str(k): v for k, v in config.thresholds.items()},
    )
