"""The serving model and its sensors."""

from __future__ import annotations

from fastapi import APIRouter

from trafficcast.app.schemas import ModelInfo, RegistryInfo, SensorInfo, SensorList, SwapError
from trafficcast.app.service.deps import ReadyService, ServingModel
from trafficcast.app.service.errors import responses
from trafficcast.app.serving.swap import RegistryWatcher

router = APIRouter(tags=["model"], responses=responses(503))


@router.get("/v1/model", response_model=ModelInfo)
async def model_info(service: ReadyService, m: ServingModel) -> ModelInfo:
    """The serving model: version, training time, size, its test metrics; with a registry,
    the registry version, and the last promoted version that could not be served."""
    f = m.forecaster
    metrics = m.report.get("metrics") if m.report else None
    registry = None
    if service.swap is not None:
        registry = RegistryInfo(
            path=str(service.settings.registry),
            version=m.registry_version,
            promoted_at=m.promoted_at,
            reason=m.reason,
            poll_s=service.settings.registry_poll_s,
            checked_at=service.swap.checked_at,
        )
    return ModelInfo(
        version=m.version,
        trained_at=f.payload.get("trained_at"),
        sensors=len(f.sensor_ids),
        seq_len=f.seq_len,
        horizon=f.horizon,
        freq_minutes=f.freq_minutes,
        metrics=metrics if isinstance(metrics, dict) else None,
        training=f.payload.get("training"),
        loaded_at=m.loaded_at,
        registry=registry,
        last_swap_error=_swap_error(service.swap),
        quantity=f.quantity,
        unit=f.unit,
        missing=f.missing,
        intervals=f.intervals,
    )


def _swap_error(swap: RegistryWatcher | None) -> SwapError | None:
    failure = None if swap is None else swap.swap_error
    if failure is None:
        return None
    return SwapError(version=failure.version, error=failure.error, at=failure.at)


@router.get("/v1/sensors", response_model=SensorList)
async def sensors(m: ServingModel) -> SensorList:
    """The model's sensors, in its order, with coordinates when known."""
    out = []
    for sid in m.forecaster.sensor_ids:
        lat, lon = m.locations.get(sid, (None, None))
        out.append(SensorInfo(id=sid, latitude=lat, longitude=lon))
    return SensorList(sensors=out)
