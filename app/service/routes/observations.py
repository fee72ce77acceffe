"""Observations: clients write readings (with an API key) and read a sensor's stored history."""

from __future__ import annotations

import math
from typing import Annotated

import pandas as pd
from fastapi import APIRouter, Query

from trafficcast.app.schemas import HistoryResponse, ObservationBatch, ObservationResult, iso
from trafficcast.app.service.checks import check_grid, check_matrix, check_sensors
from trafficcast.app.service.deps import ReadyService, ServingModel, WriterService
from trafficcast.app.service.errors import ApiError, responses

router = APIRouter(tags=["observations"])


@router.post(
    "/v1/observations",
    response_model=ObservationResult,
    responses=responses(401, 403, 413, 422, 503),
)
async def post_observations(
    body: ObservationBatch, service: WriterService, m: ServingModel
) -> ObservationResult:
    """Store readings (needs X-API-Key). A re-sent reading replaces itself: retries are safe."""
    f = m.forecaster
    check_sensors(service, m, body.sensors)
    values = check_matrix(service, body)
    # pandas 3 keeps datetime's microseconds unit; the checks below work in nanoseconds.
    stamps = pd.DatetimeIndex(body.timestamps).as_unit("ns")
    check_grid(stamps, f.freq_minutes, service.settings.max_future_minutes)
    # The core applies the model's missing-value rule (what the store keeps as no reading).
    written, latest = await service.record(m, list(body.sensors), stamps, values)
    return ObservationResult(
        written=written,
        timestamps=len(stamps),
        sensors=len(body.sensors),
        latest_timestamp=None if latest is None else latest.isoformat(),
    )


@router.get("/v1/history", response_model=HistoryResponse, responses=responses(409, 422, 503))
async def history(
    service: ReadyService,
    m: ServingModel,
    sensor: Annotated[str, Query(min_length=1, max_length=64, description="a sensor id")],
    steps: Annotated[int, Query(ge=1, description="steps back from the latest data")] = 36,
) -> HistoryResponse:
    """The stored readings of one sensor: the ``steps`` steps ending at the latest data."""
    check_sensors(service, m, [sensor], field="sensor")
    cap = service.settings.max_history_steps
    if steps > cap:
        raise ApiError(422, f"steps: {steps} asked, at most {cap}", field="steps", value=steps)
    stamps, values = await service.history(m, sensor, steps)
    return HistoryResponse(
        sensor=sensor,
        timestamps=iso(stamps),
        speeds=[None if not math.isfinite(v) else float(v) for v in values[:, 0]],
    )
