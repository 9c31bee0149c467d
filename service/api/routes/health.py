"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.schemas import Health, Ready

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="the process is alive")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Ready,
    summary="models and catalogue loaded, encoders warmed",
    responses={503: {"model": Ready, "description": "still loading or warming up"}},
)
async def readyz(request: Request) -> JSONResponse:
    engine = getattr(request.app.state, "engine", None)
    if engine is None or not engine.ready:
        return JSONResponse(Ready(ready=False).model_dump(), status_code=503)
    return JSONResponse(Ready(ready=True, detail=engine.describe()).model_dump())


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    engine = getattr(request.app.state, "engine", None)
    if engine is not None:
        m.catalogue_size.set(len(engine.catalogue))
    return Response(m.render(), media_type=m.content_type)
