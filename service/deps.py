"""Typed dependencies the routes take (tests override `get_engine` / `get_settings`)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from service.config import Settings
from service.engine import Engine

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="write routes")


def get_engine(request: Request) -> Engine:
    engine: Engine | None = getattr(request.app.state, "engine", None)
    if engine is None:
        raise HTTPException(503, "the service is starting")
    return engine


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def require_api_key(
    settings: SettingsDep, key: Annotated[str | None, Security(_api_key)] = None
) -> None:
    """With `PRICEMATCH_API_KEY` set, the X-API-Key header must carry it."""
    expected = settings.api_key
    if expected is None:
        return
    # Header values arrive as latin-1 text: compare bytes (compare_digest refuses non-ASCII
    # str), the configured key as UTF-8 as a client would send it.
    want = expected.get_secret_value().encode("utf-8")
    if key is None or not secrets.compare_digest(key.encode("latin-1", "replace"), want):
        raise HTTPException(401, "missing or wrong X-API-Key header")


WriteAccess = Depends(require_api_key)
