"""Forecasts: from the history a client sends, or from the latest stored window (cached)."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi import APIRouter, Query, Response

from trafficcast.app.forecaster import Forecaster
from trafficcast.app.schemas import (
    INTERVAL_DESCRIPTION,
    ForecastRequest,
    ForecastResponse,
    StoredForecastResponse,
    iso,
)
from trafficcast.app.service.checks import check_matrix, check_sensors, check_spacing
from trafficcast.app.service.deps import ReadyService, ServingModel
from trafficcast.app.service.errors import ApiError, responses

router = APIRouter(tags=["forecast"])


def _check_intervals(f: Forecaster, level: float | None) -> None:
    if level is not None and not f.intervals:
        raise ApiError(
            422,
            "interval: this model has no calibration: run trafficcast calibrate",
            field="interval",
            value=level,
        )


def _band_fields(
    level: float | None,
    bands: tuple[np.ndarray, np.ndarray] | None,
    rows: slice,
    columns: list[int],
) -> dict[str, Any]:
    """``interval``, ``lower`` and ``upper`` of an answer (``bands`` in the model's sensor
    order); none of them without an interval, so that such answers stay as they were."""
    if level is None or bands is None:
        return {}
    lower, upper = (b[rows][:, columns].astype(np.float64).tolist() for b in bands)
    return {"interval": level, "lower": lower, "upper": upper}


@router.post(
    "/v1/forecast",
    response_model=ForecastResponse,
    response_model_exclude_none=True,
    responses=responses(413, 422, 503),
)
async def post_forecast(
    body: ForecastRequest, service: ReadyService, m: ServingModel
) -> ForecastResponse:
    """Forecast the horizon after the history the client sends."""
    f = m.forecaster
    if len(body.timestamps) != f.seq_len:
        raise ApiError(
            422,
            f"timestamps: {len(body.timestamps)} given, the model needs {f.seq_len} "
            f"(every {f.freq_minutes} minutes)",
            field="timestamps",
        )
    _check_intervals(f, body.interval)
    columns = check_sensors(service, m, body.sensors)
    values = check_matrix(service, body)  # (seq_len, n)
    # pandas 3 keeps datetime's microseconds unit; the checks below work in nanoseconds.
    stamps = pd.DatetimeIndex(body.timestamps).as_unit("ns")
    check_spacing(stamps, f.freq_minutes)
    window = np.full((f.seq_len, len(f.sensor_ids)), np.nan, dtype=np.float32)
    window[:, columns] = values  # others stay missing
    forecast = await service.infer(m, window, stamps)  # (H, N)
    bands = None
    if body.interval is not None:
        bands = service.bands(m, window, stamps, forecast, body.interval)
    service.metrics.forecasts.labels(endpoint="post").inc()
    return ForecastResponse(
        model_version=m.version,
        sensors=list(body.sensors),
        timestamps=iso(f.future_timestamps(stamps[-1])),
        forecast=forecast[:, columns].astype(np.float64).tolist(),
        **_band_fields(body.interval, bands, slice(None), columns),
    )


@router.get(
    "/v1/forecast", response_model=StoredForecastResponse, responses=responses(409, 422, 503)
)
async def get_forecast(
    service: ReadyService,
    m: ServingModel,
    sensors: Annotated[
        str | None,
        Query(description="comma-separated sensor ids (default: all)", max_length=100_000),
    ] = None,
    horizon: Annotated[
        int | None, Query(ge=1, description="steps ahead to return (default: all)")
    ] = None,
    interval: Annotated[
        float | None,
        Query(ge=0.5, lt=1.0, allow_inf_nan=False, description=INTERVAL_DESCRIPTION),
    ] = None,
) -> Response:
    """Forecast from the latest stored window; computed once per data state, then cached."""
    f = m.forecaster
    if sensors is None:
        ids = list(f.sensor_ids)
    else:
        ids = [s.strip() for s in sensors.split(",")]
        if any(not s for s in ids):
            raise ApiError(
                422, "sensors: empty sensor id in the list", field="sensors", value=sensors
            )
    _check_intervals(f, interval)
    columns = check_sensors(service, m, ids)
    steps = f.horizon if horizon is None else horizon
    if steps > f.horizon:
        raise ApiError(
            422,
            f"horizon: {steps} steps asked, the model forecasts {f.horizon}",
            field="horizon",
            value=horizon,
        )
    entry, hit = await service.stored_forecast(m)
    service.metrics.cache.labels(result="hit" if hit else "miss").inc()
    service.metrics.forecasts.labels(endpoint="get").inc()
    key = (tuple(ids), steps, interval)
    body = entry.rendered.get(key) if hit else None
    if body is None:
        bands = None if interval is None else service.stored_bands(entry, interval)
        body = (
            StoredForecastResponse(
                model_version=m.version,
                sensors=ids,
                timestamps=iso(entry.future[:steps]),
                forecast=entry.forecast[:steps][:, columns].astype(np.float64).tolist(),
                last_observation=entry.last_observation.isoformat(),
                coverage=round(entry.coverage, 4),
                cached=hit,
                **_band_fields(interval, bands, slice(steps), columns),
            )
            .model_dump_json(exclude_none=True)
            .encode()
        )
        if hit and len(entry.rendered) < 256:  # bounded: queries may name any subset
            entry.rendered[key] = body
    return Response(
        body,
        media_type="application/json",
        headers={"X-Forecast-Cache": "hit" if hit else "miss"},
    )
