"""What people and monitoring look at: the dashboard page and the Prometheus metrics.

The dashboard's scripts and styles are served from ``STATIC_DIR`` under ``/static``, mounted by
``create_app`` (a router cannot carry a mount).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse

from trafficcast.app.service.deps import ServiceDep
from trafficcast.app.telemetry import CONTENT_TYPE_LATEST

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"

router = APIRouter()


@router.get("/", include_in_schema=False)
async def dashboard() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> FileResponse:
    """The icon browsers ask for on every page: without it, each visit logs a 404."""
    return FileResponse(STATIC_DIR / "favicon.ico", media_type="image/vnd.microsoft.icon")


@router.get(
    "/metrics",
    tags=["probes"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(service: ServiceDep) -> Response:
    """Prometheus text format."""
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)
