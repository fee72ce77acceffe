"""Live accuracy: the forecasts the service made from its store, scored against later readings."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from trafficcast.app.accuracy import WINDOWS
from trafficcast.app.schemas import AccuracyResponse, ErrorBody
from trafficcast.app.service.deps import ReadyService, ServingModel
from trafficcast.app.service.errors import ApiError, responses

router = APIRouter(tags=["accuracy"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    **responses(422, 503),
    404: {"model": ErrorBody, "description": "no such model version in the record"},
    409: {"model": ErrorBody, "description": "live accuracy is off (accuracy_enabled)"},
}


@router.get("/v1/accuracy", response_model=AccuracyResponse, responses=_RESPONSES)
async def accuracy(
    service: ReadyService,
    m: ServingModel,
    version: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=64,
            description="model version (content hash or registry version; default: the serving one)",
        ),
    ] = None,
    window: Annotated[
        Literal["1h", "24h"] | None,
        Query(description="only this window (default: all), ending at the latest observation"),
    ] = None,
) -> AccuracyResponse:
    """MAE, RMSE and interval coverage per horizon of the forecasts the service recorded from its
    observation store (one from each new latest step), against the readings that came later: over
    the last hour and the last day before the latest stored observation. Scored in the
    background, so the figures may lag the newest readings by ``pending`` steps."""
    if service.recorder is None:
        raise ApiError(409, "live accuracy is off: set TRAFFICCAST_ACCURACY_ENABLED=true")
    windows: list[str] = list(WINDOWS) if window is None else [window]
    found = await service.live_accuracy(version, windows)
    if found is None:
        raise ApiError(
            404,
            f"version: no forecasts of model version {version!r} recorded",
            field="version",
            value=version,
        )
    summary, latest, serving = found
    metrics = m.report.get("metrics") if serving and m.report else None
    return AccuracyResponse(
        model_version=summary["model_version"],
        serving=serving,
        latest_observation=None if latest is None else latest.isoformat(),
        interval_level=service.settings.accuracy_interval_level,
        forecasts=summary["forecasts"],
        last_made_from=summary["last_made_from"],
        pending=service.recorder.pending,
        windows=summary["windows"],
        test_metrics=metrics if isinstance(metrics, dict) else None,
    )
