"""The ASGI app: `uvicorn service.main:app`, or `create_app(settings)` for a configured instance.

This module only wires: settings, state, middleware, error handlers, routers and static files.
Nothing heavy happens at import; the lifespan loads the model and the index.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from service.api.routes import builds, health, localize, metrics, tiles, ui
from service.api.routes.ui import STATIC_DIR
from service.api_key import ApiKeyMiddleware
from service.core.config import ServiceSettings
from service.core.state import AppState, shutdown, startup
from service.errors import install_error_handlers
from service.metrics import RequestMetricsMiddleware
from service.schemas import install_openapi
from service.upload_limit import UploadLimitMiddleware


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: AppState = app.state.cvm
    try:
        await startup(state)
        yield
    finally:
        await shutdown(state)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """A new app; `settings` default to the `CVM_*` environment."""
    settings = settings or ServiceSettings()
    app = FastAPI(
        title="cvm-geoloc",
        summary="Find where a ground photo was taken by matching it against satellite tiles (CVM-Net).",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.cvm = AppState(settings=settings)
    install_error_handlers(app)
    # Added last = outermost: the key is checked before any body is read, and metrics count
    # every answer, the 401s and the 413s included; CORS wraps them all so that browsers see
    # its headers on error answers too.
    app.add_middleware(
        UploadLimitMiddleware, max_bytes=settings.max_upload_bytes, body_timeout_s=settings.body_timeout_s
    )
    if settings.api_key is not None and settings.api_key.get_secret_value():
        app.add_middleware(ApiKeyMiddleware, key=settings.api_key.get_secret_value())
    app.add_middleware(RequestMetricsMiddleware, metrics=app.state.cvm.metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type"],
        )
    for module in (localize, tiles, builds, health, metrics, ui):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    install_openapi(app, settings)
    return app


app = create_app()
