"""Request and response bodies of the REST API (pydantic). ``models`` is the DCRNN package's name.

Timestamps in requests are ISO 8601; one with an offset is converted to UTC and the offset dropped
(as ``read_speeds`` does for files), a naive one is taken as the data's own wall-clock time.
Timestamps in responses are naive ISO 8601 strings in the same clock as the data.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import pandas as pd
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from trafficcast.data.speeds import MissingRule, Quantity

# Far above any road speed in mph or km/h, and small enough that float32 inputs stay finite.
MAX_SPEED = 1000.0


def _naive_in_range(value: dt.datetime) -> dt.datetime:
    # pandas' nanosecond timestamps cover 1677-09-21 .. 2262-04-11; keep well inside. Checked
    # before the UTC conversion too, which overflows at year 1 or 9999 with an offset.
    if not (1678 <= value.year <= 2261):
        raise ValueError("timestamp outside the supported years 1678..2261")
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


def _iso_text(value: object) -> object:
    # pydantic would also take a number as Unix time; the API documents ISO 8601 strings only.
    if not isinstance(value, str | dt.datetime):
        raise ValueError("timestamps are ISO 8601 strings, e.g. 2012-03-07T22:00:00")
    return value


Timestamp = Annotated[dt.datetime, BeforeValidator(_iso_text), AfterValidator(_naive_in_range)]
SensorId = Annotated[str, Field(min_length=1, max_length=64)]
# strict: true and "55" are not speeds (lax mode would read them as 1.0 and 55.0).
Speed = Annotated[float, Field(strict=True, ge=0.0, le=MAX_SPEED, allow_inf_nan=False)]
INTERVAL_DESCRIPTION = (
    "central coverage of a prediction interval, e.g. 0.8: the answer then carries lower and upper "
    "bounds (calibrated on data the model did not train on); 0.5 <= interval < 1"
)
# The same bounds as the GET query parameter of the same name (trafficcast.app.service.routes.forecasts).
Interval = Annotated[float, Field(strict=True, ge=0.5, lt=1.0, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ForecastRequest(_Strict):
    """History the client sends: ``seq_len`` timestamps, a row of speeds per timestamp."""

    timestamps: list[Timestamp] = Field(
        ..., min_length=1, description="seq_len timestamps, the model's frequency apart"
    )
    sensors: list[SensorId] = Field(
        ..., min_length=1, description="sensor ids: any subset of the model's, in any order"
    )
    speeds: list[list[Speed | None]] = Field(
        ...,
        min_length=1,
        description="one row per timestamp, one value per sensor; null or 0 is a missing reading",
    )
    interval: Interval | None = Field(None, description=INTERVAL_DESCRIPTION)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "timestamps": ["2012-03-07T22:00:00", "2012-03-07T22:05:00"],
                    "sensors": ["773869", "767541"],
                    "speeds": [[64.2, None], [63.0, 61.0]],
                }
            ]
        },
    )


class ForecastResponse(_Strict):
    model_version: str
    sensors: list[str]
    timestamps: list[str] = Field(..., description="the horizon's future timestamps")
    forecast: list[list[float]] = Field(
        ..., description="one row per future timestamp, one value per sensor (request order)"
    )
    # Present only when the request asked for an interval: answers without one are unchanged.
    interval: float | None = Field(None, description="the central coverage of lower..upper")
    lower: list[list[float]] | None = Field(
        None, description="lower bound of the interval, the shape of forecast"
    )
    upper: list[list[float]] | None = Field(
        None, description="upper bound of the interval, the shape of forecast"
    )


class StoredForecastResponse(ForecastResponse):
    last_observation: str = Field(..., description="the latest stored time the forecast is from")
    coverage: float = Field(..., description="fraction of the window's readings that were present")
    cached: bool


class ObservationBatch(_Strict):
    """Readings to store: a row per timestamp, a value per sensor (null or 0 = no reading)."""

    timestamps: list[Timestamp] = Field(
        ..., min_length=1, description="distinct timestamps on the model's time grid"
    )
    sensors: list[SensorId] = Field(..., min_length=1)
    speeds: list[list[Speed | None]] = Field(..., min_length=1)


class ObservationResult(_Strict):
    written: int = Field(..., description="readings stored (a re-sent reading replaces itself)")
    timestamps: int
    sensors: int
    latest_timestamp: str | None = Field(..., description="the latest time with a reading")


class HistoryResponse(_Strict):
    sensor: str
    timestamps: list[str]
    speeds: list[float | None]


class SensorInfo(_Strict):
    id: str
    latitude: float | None
    longitude: float | None


class SensorList(_Strict):
    sensors: list[SensorInfo]


class RegistryInfo(_Strict):
    path: str
    version: str | None = Field(..., description="the registry version being served")
    promoted_at: str | None
    reason: str | None
    poll_s: float
    checked_at: str | None = Field(..., description="when the service last read current.json")


class SwapError(_Strict):
    version: str
    error: str
    at: str


class ModelInfo(_Strict):
    version: str = Field(..., description="content hash of the checkpoint")
    trained_at: str | None
    sensors: int
    seq_len: int
    horizon: int
    freq_minutes: int
    metrics: dict[str, dict[str, dict[str, float | None]]] | None = Field(
        ..., description="test metrics from the run's report.json, when present"
    )
    training: dict[str, Any] | None
    loaded_at: str | None = None
    registry: RegistryInfo | None = Field(
        None, description="where the model came from, when serving a registry"
    )
    last_swap_error: SwapError | None = Field(
        None,
        description="the last promoted version that could not be served, and why (the "
        "previous model kept serving)",
    )
    quantity: Quantity = Field(
        "speed", description="what the model forecasts (the field names say speeds for all)"
    )
    unit: str = Field("mph", description="the unit of the readings and forecasts")
    missing: MissingRule = Field(
        "zero",
        description="what is a missing reading: zero (null or 0) or nan (only null; 0 is real)",
    )
    intervals: bool = Field(
        False,
        description="whether the model carries a calibration, so forecasts can be asked for "
        "their band (`interval`)",
    )


class Status(_Strict):
    status: str


class FieldError(_Strict):
    field: str
    message: str


class ErrorBody(BaseModel):
    """Every error: ``detail`` is one line naming the problem, ``field`` where one is at fault."""

    detail: str
    field: str | None = None
    value: str | None = Field(None, description="the offending value, abbreviated")
    errors: list[FieldError] | None = None


def iso(stamps: pd.DatetimeIndex) -> list[str]:
    return [t.isoformat() for t in stamps]


class HorizonAccuracy(_Strict):
    step: int = Field(..., description="the horizon step (15min is step 3 of 5-minute data)")
    mae: float | None = Field(..., description="mean absolute error; null where none scored")
    rmse: float | None
    coverage: float | None = Field(
        ...,
        description="fraction of the scored targets inside the recorded bounds; null where no "
        "forecast had bounds",
    )
    scored: int = Field(..., description="targets (one sensor at one time) scored")
    forecasts: int = Field(..., description="recorded forecasts with a scored target here")


class AccuracyWindow(_Strict):
    start: str | None = Field(..., description="targets after this time count (exclusive)")
    end: str | None = Field(..., description="the latest stored observation (inclusive)")
    horizons: dict[str, HorizonAccuracy] = Field(..., description="by horizon: 15min, 30min, 60min")


class AccuracyResponse(_Strict):
    """Live accuracy: the recorded forecasts of one model version scored against the readings
    that arrived later, beside the test-split figures the model shipped with."""

    model_version: str = Field(..., description="content hash of the checkpoint")
    serving: bool = Field(..., description="whether this version is the one serving now")
    latest_observation: str | None = Field(..., description="where the windows end")
    interval_level: float = Field(..., description="central coverage of the recorded bounds")
    forecasts: int = Field(..., description="forecasts of this version in the record")
    last_made_from: str | None = Field(
        ..., description="the last time of the window the newest of them was made from"
    )
    pending: int = Field(
        ..., description="time steps written that the record has not caught up with yet"
    )
    windows: dict[str, AccuracyWindow] = Field(..., description="by window: 1h, 24h")
    test_metrics: dict[str, dict[str, dict[str, float | None]]] | None = Field(
        ..., description="the serving model's test-split metrics (report.json), when present"
    )
