"""Catalogue updates: add or replace (batch), get, delete."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Depends, Request

from index.features.images import compute_phash
from service.api.uploads import decode_base64_image, decode_image, media_type
from service.deps import EngineDep, SettingsDep, WriteAccess
from service.engine import Listing
from service.errors import PayloadTooLargeError, UnsupportedMediaError
from service.schemas import (
    Deleted,
    ListingCreate,
    ListingOut,
    ListingsCreate,
    ListingsWritten,
    errors,
)

router = APIRouter(prefix="/listings", tags=["catalogue"])


def require_json(request: Request) -> None:
    """415 unless the body is JSON (checked before the body is validated)."""
    ctype = media_type(request)
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise UnsupportedMediaError(
            f"content-type {ctype!r} not supported; send the listings as application/json"
        )


def to_listing(x: ListingCreate, image_limit: int) -> Listing:
    img = None
    what = f"image of listing {x.posting_id!r}"
    if x.image is not None:
        img = decode_image(decode_base64_image(x.image, image_limit, what), image_limit, what)
    phash = (x.image_phash or "").lower() or (compute_phash(img) if img is not None else "")
    return Listing(x.posting_id, " ".join(x.title.split()), img, phash, "")


@router.post(
    "",
    response_model=ListingsWritten,
    dependencies=[WriteAccess, Depends(require_json)],
    responses=errors(400, 401, 413, 415, 422, 500, 503),
    summary="add listings, replacing those with the same posting_id",
)
async def add_listings(
    body: ListingsCreate, engine: EngineDep, settings: SettingsDep
) -> ListingsWritten:
    if len(body.listings) > settings.max_listings:
        raise PayloadTooLargeError(
            f"{len(body.listings)} listings in one request; the limit is {settings.max_listings}"
        )
    limit = settings.limit(settings.max_image_mb)

    def decode() -> list[Listing]:
        return [to_listing(x, limit) for x in body.listings]

    listings = await anyio.to_thread.run_sync(decode)
    added, replaced, total = await engine.upsert(listings)
    return ListingsWritten(added=added, replaced=replaced, total=total)


@router.get(
    "/{posting_id}",
    response_model=ListingOut,
    responses=errors(404, 500, 503),
)
async def get_listing(posting_id: str, engine: EngineDep) -> ListingOut:
    return ListingOut.model_validate(await engine.get(posting_id))


@router.delete(
    "/{posting_id}",
    response_model=Deleted,
    dependencies=[WriteAccess],
    responses=errors(401, 404, 500, 503),
)
async def delete_listing(posting_id: str, engine: EngineDep) -> Deleted:
    total = await engine.delete(posting_id)
    return Deleted(posting_id=posting_id, total=total)
