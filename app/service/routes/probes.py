"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter

from trafficcast.app.schemas import Status
from trafficcast.app.service.deps import ServiceDep
from trafficcast.app.service.errors import ApiError, responses, retry_after

router = APIRouter(tags=["probes"])


@router.get("/healthz", response_model=Status)
async def healthz() -> Status:
    """200 while the process runs."""
    return Status(status="ok")


@router.get("/readyz", response_model=Status, responses=responses(503))
async def readyz(service: ServiceDep) -> Status:
    """200 once a model is loaded and the database answers, else 503: a load balancer then sends
    requests to the other replicas until this one's database is back."""
    if not service.ready:
        raise ApiError(503, f"not ready: {service.status}", headers=retry_after())
    problem = await service.database_problem()
    if problem is not None:
        raise ApiError(503, f"not ready: {problem}", headers=retry_after())
    return Status(status="ready")
