"""Request checks shared by ``POST /v1/forecast`` and ``POST /v1/observations`` (and the sensor
lists of the GET routes): each raises :class:`ApiError` naming the field at fault."""

from __future__ import annotations

import numpy as np
import pandas as pd

from trafficcast.app.schemas import ForecastRequest, ObservationBatch
from trafficcast.app.service.errors import ApiError
from trafficcast.app.serving import LoadedModel, Service


def _listing(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def _minutes(delta: pd.Timedelta) -> str:
    minutes = delta.total_seconds() / 60
    return f"{minutes:g} minutes"


def check_sensors(
    service: Service, model: LoadedModel, sensors: list[str], field: str = "sensors"
) -> list[int]:
    """Positions of ``sensors`` in the model's order, refusing too many, duplicates and unknowns;
    the errors name ``field``, the parameter as the client sent it."""
    cap = service.settings.max_sensors_per_request
    if len(sensors) > cap:
        raise ApiError(
            422, f"{field}: {len(sensors)} given, at most {cap} per request", field=field
        )
    seen: set[str] = set()
    dups: list[str] = []
    for sid in sensors:
        if sid in seen and sid not in dups:
            dups.append(sid)
        seen.add(sid)
    if dups:
        raise ApiError(
            422, f"{field}: listed more than once: {_listing(dups)}", field=field, value=dups
        )
    index = model.sensor_index
    unknown = [s for s in sensors if s not in index]
    if unknown:
        raise ApiError(
            422,
            f"{field}: unknown to the model: {_listing(unknown)} "
            f"(GET /v1/sensors lists the {len(index)} it knows)",
            field=field,
            value=unknown,
        )
    return [index[s] for s in sensors]


def check_matrix(service: Service, body: ForecastRequest | ObservationBatch) -> np.ndarray:
    """The speeds as a float array with NaN for missing. Shapes: ``(T, len(sensors))``."""
    cap = service.settings.max_timestamps_per_request
    if len(body.timestamps) > cap:
        raise ApiError(
            422,
            f"timestamps: {len(body.timestamps)} given, at most {cap} per request",
            field="timestamps",
        )
    if len(body.speeds) != len(body.timestamps):
        raise ApiError(
            422,
            f"speeds: {len(body.speeds)} rows but {len(body.timestamps)} timestamps "
            "(one row per timestamp)",
            field="speeds",
        )
    for t, row in enumerate(body.speeds):
        if len(row) != len(body.sensors):
            raise ApiError(
                422,
                f"speeds[{t}]: {len(row)} values but {len(body.sensors)} sensors "
                "(one value per sensor)",
                field=f"speeds[{t}]",
            )
    values = np.array(
        [[np.nan if v is None else v for v in row] for row in body.speeds], dtype=np.float64
    ).reshape(len(body.timestamps), len(body.sensors))  # (T, n)
    return values


def check_spacing(stamps: pd.DatetimeIndex, freq_minutes: int) -> None:
    """Refuse timestamps that are not ``freq_minutes`` apart, naming the first bad one."""
    steps = np.diff(stamps.asi8)
    expected = pd.Timedelta(minutes=freq_minutes).value
    bad = np.flatnonzero(steps != expected)
    if len(bad):
        k = int(bad[0]) + 1
        gap = pd.Timedelta(int(steps[k - 1]))
        raise ApiError(
            422,
            f"timestamps must be {freq_minutes} minutes apart: timestamps[{k}] "
            f"({stamps[k].isoformat()}) is {_minutes(gap)} after timestamps[{k - 1}]",
            field=f"timestamps[{k}]",
            value=stamps[k].isoformat(),
        )


def _bad_timestamp(stamps: pd.DatetimeIndex, k: int, why: str) -> ApiError:
    return ApiError(
        422,
        f"timestamps[{k}] ({stamps[k].isoformat()}) {why}",
        field=f"timestamps[{k}]",
        value=stamps[k].isoformat(),
    )


def check_grid(stamps: pd.DatetimeIndex, freq_minutes: int, max_future_minutes: int) -> None:
    """Refuse timestamps off the model's grid, repeated, or later than ``max_future_minutes``
    from now."""
    freq = pd.Timedelta(minutes=freq_minutes).value
    off = np.flatnonzero(stamps.asi8 % freq != 0)
    if len(off):
        raise _bad_timestamp(
            stamps, int(off[0]), f"is not on the model's {freq_minutes}-minute grid"
        )
    dup = stamps[stamps.duplicated()]
    if len(dup):
        raise ApiError(
            422,
            f"timestamps: {dup[0].isoformat()} given more than once",
            field="timestamps",
            value=dup[0].isoformat(),
        )
    limit = pd.Timestamp.now(tz="UTC").tz_localize(None) + pd.Timedelta(minutes=max_future_minutes)
    future = np.flatnonzero(stamps > limit)
    if len(future):
        raise _bad_timestamp(
            stamps,
            int(future[0]),
            f"is in the future (later than {limit.floor('min').isoformat()})",
        )
