"""The FastAPI app: `create_app()` builds it; its lifespan loads the models once.

Run with `pricematch serve` or `uvicorn --factory service.main:create_app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI

import index
from service import errors
from service.api.main import api_router
from service.batching import BatcherFactory, MicroBatcher
from service.config import Settings, get_settings
from service.engine import Engine
from service.limits import BodyLimitMiddleware
from service.metrics import Metrics, MetricsMiddleware

log = logging.getLogger("pricematch.service")

DESCRIPTION = """
Which listings are the same product? Match one listing against a catalogue (`/match`),
a whole CSV among itself (`/batch-match`, Kaggle submission format), and keep the catalogue
up to date (`/listings`). Errors are JSON `{"detail": ..., "error": ...}`.
"""


def create_app(
    settings: Settings | None = None, batcher: BatcherFactory = MicroBatcher
) -> FastAPI:
    """The service app.

    Args:
        settings: defaults to `get_settings()` (the environment).
        batcher: makes the `/match` encoders' batchers (Ray Serve passes its own).
    """
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = await anyio.to_thread.run_sync(Engine.load, settings, metrics, batcher)
        app.state.engine = engine
        await engine.start()
        warm = asyncio.create_task(anyio.to_thread.run_sync(engine.warm_up))
        warm.add_done_callback(_log_failure)
        try:
            yield
        finally:
            warm.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await warm
            await engine.stop()

    app = FastAPI(
        title="pricematch",
        version=index.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    errors.install(app)
    app.include_router(api_router)
    app.openapi = _openapi(app, settings)  # type: ignore[method-assign]
    batch_limit = settings.limit(settings.max_upload_mb)
    other_limit = settings.limit(settings.max_request_mb)
    app.add_middleware(
        BodyLimitMiddleware,
        limit_for=lambda path: batch_limit if path == "/batch-match" else other_limit,
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _openapi(app: FastAPI, settings: Settings) -> Callable[[], dict[str, Any]]:
    """`app.openapi` as a generated client needs it: multipart fields without FastAPI's
    `null` alternative (a form cannot send null), and, with no key configured, without the
    X-API-Key scheme and the 401s."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for name, body in schema.get("components", {}).get("schemas", {}).items():
                if name.startswith("Body_"):
                    for prop in body.get("properties", {}).values():
                        alts = prop.get("anyOf", [])
                        rest = [a for a in alts if a.get("type") != "null"]
                        if len(rest) == 1 and len(alts) == 2:  # X | None
                            del prop["anyOf"]
                            prop.update(rest[0])
            if settings.api_key is None:
                schema.get("components", {}).pop("securitySchemes", None)
                for ops in schema["paths"].values():
                    for op in ops.values():
                        op.pop("security", None)
                        op.get("responses", {}).pop("401", None)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("encoder warm-up failed; /readyz stays 503", exc_info=task.exception())
