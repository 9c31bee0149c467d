"""All routers of the API."""

from fastapi import APIRouter

from service.api.routes import batch, health, listings, match

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(match.router)
api_router.include_router(batch.router)
api_router.include_router(listings.router)
