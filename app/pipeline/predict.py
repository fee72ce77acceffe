"""``trafficcast predict``: a run's forecast from a data file's window ending at a given time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from trafficcast.app.forecaster import Forecaster
from trafficcast.app.fsutil import atomic_write_text
from trafficcast.app.pipeline.data import checkpoint_speeds
from trafficcast.data.errors import DataInputError
from trafficcast.models.intervals import check_level


def predict_run(
    run_dir: str | Path,
    data: str | Path,
    at: str,
    output: str | Path,
    start: str | None = None,
    freq_minutes: int | None = None,
    interval: float | None = None,
    calendar: str | None = None,
) -> pd.DataFrame:
    """Forecast the ``horizon`` steps after ``at`` from the ``seq_len`` steps ending at ``at``
    (``start``/``freq_minutes``/``calendar``: the times of a ``data`` file without timestamps,
    and the days it covers).

    ``interval``: also the calibrated band at that central coverage, as columns
    ``<sensor>_lower`` and ``<sensor>_upper`` after the forecast's (which stay as without it).
    """
    run_dir = Path(run_dir)
    forecaster = Forecaster.from_run(run_dir)
    if interval is not None:
        _check_interval(forecaster, interval)
    speeds = checkpoint_speeds(forecaster.payload, data, None, start, freq_minutes, calendar)
    try:
        when = pd.Timestamp(at)
    except (ValueError, TypeError) as exc:
        raise DataInputError(f"--at {at!r} is not a timestamp") from exc
    if when.tzinfo is not None:
        when = when.tz_convert("UTC").tz_localize(None)
    positions = speeds.index.get_indexer(pd.DatetimeIndex([when]))
    if positions[0] < 0:
        raise DataInputError(
            f"--at {at}: not a time step of {speeds.source} (it runs from {speeds.index[0]} to "
            f"{speeds.index[-1]} every {speeds.freq_minutes} min)"
        )
    end = int(positions[0]) + 1
    first = end - forecaster.seq_len
    if first < 0:
        raise DataInputError(
            f"--at {at}: needs {forecaster.seq_len} steps of history, but {speeds.source} starts at "
            f"{speeds.index[0]} (earliest --at is {speeds.index[forecaster.seq_len - 1]})"
        )
    window = np.where(speeds.mask[first:end], speeds.values[first:end], np.nan)
    forecast, future = forecaster.forecast(speeds.index[first:end], window)
    ids = list(forecaster.sensor_ids)
    columns, values = ids, forecast  # (H, N)
    if interval is not None:
        stamps = np.asarray(speeds.index[first:end], dtype="datetime64[ns]")[None]
        lower, upper = forecaster.bands(window[None], stamps, forecast[None], interval)
        columns = ids + [f"{s}_lower" for s in ids] + [f"{s}_upper" for s in ids]
        values = np.concatenate([forecast, lower[0], upper[0]], axis=1)  # (H, 3N)
    frame = pd.DataFrame(values, index=pd.DatetimeIndex(future, name="timestamp"), columns=columns)
    atomic_write_text(output, frame.to_csv(float_format="%.4f"))
    return frame


def _check_interval(forecaster: Forecaster, interval: float) -> None:
    try:
        check_level(interval)
    except ValueError as exc:
        raise DataInputError(f"--interval {interval}: {exc}") from None
    if not forecaster.intervals:
        raise DataInputError(
            "--interval: this model has no calibration: run trafficcast calibrate --run RUN_DIR"
        )
