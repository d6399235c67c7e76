"""The ASGI app: `uvicorn service.main:app`, or `create_app(settings)` for a configured instance.

This module only wires: settings, state, middleware, error handlers, routers and static files.
Nothing heavy happens at import; the lifespan loads the model and the index.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from service.api.routes import health, localize, metrics, tiles, ui
from service.api.routes.ui import STATIC_DIR
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
    # Added last = outermost: metrics also count the 413s of the upload limit.
    app.add_middleware(UploadLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestMetricsMiddleware, metrics=app.state.cvm.metrics)
    for module in (localize, tiles, health, metrics, ui):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    install_openapi(app, settings)
    return app


app = create_app()
