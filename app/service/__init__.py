"""The forecast service: ``create_app(settings)`` builds the FastAPI app of interface.md.

The routes (``trafficcast.app.service.routes``, one module per resource) reach the serving core
(``trafficcast.app.serving``: the loaded model, the observation store, the forecast cache) through the
dependencies in ``trafficcast.app.service.deps``. The app's lifespan starts the core: it loads the model (or,
for the bundled run without a checkpoint, trains it in a background thread first: ``/readyz``
answers 503 until then).

Every error is JSON ``{"detail": "...", "field": ..., "value": ...}`` naming the problem
(``trafficcast.app.service.errors``); a body over ``max_body_bytes`` is refused with 413 before it is parsed
(``trafficcast.app.service.middleware``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from trafficcast.app.service.docs import add_docs
from trafficcast.app.service.errors import add_error_handlers
from trafficcast.app.service.middleware import BodyLimitMiddleware, MetricsMiddleware
from trafficcast.app.service.openapi import openapi_builder
from trafficcast.app.service.routes import (
    accuracy,
    dashboard,
    forecasts,
    model,
    observations,
    probes,
)
from trafficcast.app.serving import Service
from trafficcast.app.settings import Settings, load_settings

__all__ = ["app_from_env", "create_app", "lifespan"]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Run the serving core for the app's lifetime: model loaded (or training) before requests."""
    service: Service = app.state.service
    await service.start()
    try:
        yield
    finally:
        await service.stop()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service, configured by ``settings`` (``Settings()`` reads the environment)."""
    settings = settings if settings is not None else load_settings()
    service = Service(settings)
    app = FastAPI(
        title="trafficcast",
        summary="Traffic speed forecasts with DCRNN (Li et al., ICLR 2018)",
        version=_package_version(),
        lifespan=lifespan,
        # FastAPI's pages load from a CDN; add_docs serves the same pages from local files.
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.settings = settings
    add_error_handlers(app)
    # In this order the OpenAPI document lists the paths as it always has.
    for routes in (probes, model, dashboard, forecasts, observations, accuracy):
        app.include_router(routes.router)
    add_docs(app, app.title)
    app.mount("/static", StaticFiles(directory=dashboard.STATIC_DIR), name="static")
    # Order matters: the metrics see every response, the 413 included.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    app.openapi = openapi_builder(app, service)  # type: ignore[method-assign]
    return app


def _package_version() -> str:
    try:
        return version("trafficcast")
    except PackageNotFoundError:
        return "0"


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory trafficcast.app.service:app_from_env``: settings from the environment
    (an invalid one is one line naming it, a database URL without its password)."""
    return create_app(load_settings())
