"""From a file's raw columns to a :class:`~trafficcast.data.speeds.SpeedData`: the checks every
reader shares, and the regular time grid (step inferred or given, gaps filled as missing).

Also the two parsers of the time options, ``--start`` and ``--freq``, for files without
timestamps.
"""

from __future__ import annotations

import datetime as dt
import warnings

import numpy as np
import numpy.typing as npt
import pandas as pd

from trafficcast.data.calendar import Calendar, calendar_index, parse_calendar
from trafficcast.data.errors import DataInputError, DataWarning, listing
from trafficcast.data.speeds import SpeedData, duplicates, observed_readings

__all__ = ["made_index", "parse_freq_minutes", "parse_start", "to_speed_data"]

_NS_PER_MINUTE = 60 * 1_000_000_000
# A file whose timestamps span far more steps than it has rows would be reindexed into a huge
# mostly-empty array; refuse instead of exhausting memory.
_MAX_CELLS = 2_000_000_000


def to_speed_data(
    raw_index: pd.Index,
    frame: pd.DataFrame,
    src: str,
    where: str,
    freq_minutes: int | None,
    missing: str,
    calendar: str | Calendar | None = None,
) -> SpeedData:
    """A loader's raw index and columns, checked and put on the regular time grid.

    Under a ``weekdays`` ``calendar`` the days it leaves out become rows of missing readings
    like any gap, without a warning (they are expected), and the data records the calendar so
    that no window spans them.

    ``where`` says where the timestamps came from (``index``, ``first column``, ``rows``), for
    messages. Warnings (rows sorted, gaps filled, sensors never observed) point at the caller of
    :func:`~trafficcast.data.io.read_speeds`, the one caller of this function.

    Shapes:
        frame (R, N) -> values/mask (T, N), T the grid's steps from the first timestamp to the
        last.
    """
    ids = _sensor_columns(frame, raw_index, src)
    stamps = _parse_timestamps(raw_index, src, where)
    _refuse_repeated(stamps, src)
    if not stamps.is_monotonic_increasing:
        _warn(f"{src}: rows were not in time order; sorted by timestamp")
        order = np.argsort(stamps.asi8, kind="stable")
        stamps = stamps[order]
        frame = frame.iloc[order].reset_index(drop=True)

    values = _numeric_values(frame, stamps, src)
    _refuse_impossible(values, stamps, ids, src)
    step_ns, positions = _grid_positions(stamps, src, freq_minutes, len(ids))
    total = int(positions[-1]) + 1
    observed = observed_readings(values, missing)
    full_values = np.zeros((total, len(ids)), dtype=np.float32)
    full_mask = np.zeros((total, len(ids)), dtype=bool)
    full_values[positions] = np.where(observed, values, 0.0)
    full_mask[positions] = observed
    cal = parse_calendar(calendar)
    freq = int(step_ns // _NS_PER_MINUTE)
    index = pd.date_range(start=stamps[0], periods=total, freq=f"{freq}min", unit="ns")
    filled = np.ones(total, dtype=bool)
    filled[positions] = False
    filled &= cal.covers(index)  # a day the calendar leaves out is no gap
    if filled.any():
        runs = int(np.count_nonzero(np.diff(filled.astype(np.int8), prepend=0) == 1))
        _warn(
            f"{src}: {int(filled.sum())} missing timestamps ({runs} "
            f"gap{'s' if runs != 1 else ''}) filled as missing"
        )

    dead = [
        sid
        for sid, seen in zip(ids, np.asarray(full_mask.any(axis=0), dtype=bool), strict=True)
        if not seen
    ]
    if dead:
        _warn(
            f"{src}: {len(dead)} sensor{'s' if len(dead) != 1 else ''} never observed "
            f"(all missing): {listing(dead)}"
        )

    return SpeedData(
        index=index,
        sensor_ids=ids,
        values=full_values,
        mask=full_mask,
        freq_minutes=freq,
        source=src,
        missing=missing,
        calendar=cal.spec,
    )


def _sensor_columns(frame: pd.DataFrame, raw_index: pd.Index, src: str) -> list[str]:
    """The sensor ids of the columns; refuses a table without columns or rows, or bad ids."""
    if frame.shape[1] == 0:
        raise DataInputError(f"{src}: no sensor columns")
    if len(raw_index) == 0:
        raise DataInputError(f"{src}: no rows")
    ids = [str(c) for c in frame.columns]
    if any(sid == "" for sid in ids):
        raise DataInputError(f"{src}: empty sensor id in column {ids.index('') + 2} of the header")
    duplicated = duplicates(ids)
    if duplicated:
        raise DataInputError(f"{src}: duplicate sensor column {listing(duplicated)}")
    return ids


def _refuse_repeated(stamps: pd.DatetimeIndex, src: str) -> None:
    dup = stamps.duplicated(keep="first")
    if dup.any():
        first = pd.unique(stamps[dup])
        shown = ", ".join(str(t) for t in first[:3])
        more = f" and {len(first) - 3} more" if len(first) > 3 else ""
        raise DataInputError(f"{src}: duplicated timestamps {shown}{more}")


def _refuse_impossible(
    values: npt.NDArray[np.float64], stamps: pd.DatetimeIndex, ids: list[str], src: str
) -> None:
    """Refuse an infinite or negative reading, naming the first (time, then sensor order)."""
    bad = np.isinf(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataInputError(
            f"{src}: infinite speed {values[row, col]} at {stamps[row]}, sensor {ids[col]}"
        )
    with np.errstate(invalid="ignore"):
        bad = values < 0
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataInputError(
            f"{src}: negative speed {values[row, col]:g} at {stamps[row]}, sensor {ids[col]}"
        )


def _grid_positions(
    stamps: pd.DatetimeIndex, src: str, freq_minutes: int | None, num_sensors: int
) -> tuple[int, npt.NDArray[np.int64]]:
    """The time step in nanoseconds and each sorted timestamp's row on the grid.

    Raises:
        DataInputError: a timestamp off the grid, or a grid too large to fill as missing.
    """
    step_ns = _step_ns(stamps, src, freq_minutes)
    offsets = stamps.asi8 - stamps.asi8[0]
    off_grid = offsets % step_ns != 0
    if off_grid.any():
        first = stamps[int(np.argmax(off_grid))]
        raise DataInputError(
            f"{src}: timestamp {first} is not on the {step_ns // _NS_PER_MINUTE}-minute grid "
            f"starting at {stamps[0]}"
        )
    positions: npt.NDArray[np.int64] = offsets // step_ns
    total = int(positions[-1]) + 1
    if total * num_sensors > _MAX_CELLS:
        raise DataInputError(
            f"{src}: timestamps from {stamps[0]} to {stamps[-1]} span {total} steps of "
            f"{step_ns // _NS_PER_MINUTE} minutes; too many to fill as missing"
        )
    return step_ns, positions


def _parse_timestamps(raw: pd.Index, src: str, where: str) -> pd.DatetimeIndex:
    """Timestamps as a naive nanosecond DatetimeIndex; the first unparseable value is named."""
    if isinstance(raw, pd.DatetimeIndex):
        stamps = raw
    else:
        series = pd.Series(np.asarray(raw, dtype=object))
        if pd.api.types.is_datetime64_any_dtype(raw.dtype):
            stamps = pd.DatetimeIndex(raw)
        else:
            # Numbers are refused rather than read as nanoseconds since 1970.
            is_text = series.map(lambda v: isinstance(v, str) and v.strip() != "")
            is_time = series.map(lambda v: isinstance(v, (dt.datetime, np.datetime64)))
            parsed = pd.Series(pd.NaT, index=series.index, dtype="datetime64[ns, UTC]")
            text = series[is_text].str.strip()
            if len(text):
                # ISO 8601 first (fast, what pandas writes); anything else through the slower
                # mixed-format parser before calling it bad.
                got = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
                retry = got.isna()
                if retry.any():
                    got[retry] = pd.to_datetime(
                        text[retry], errors="coerce", utc=True, format="mixed"
                    )
                parsed[is_text] = got.dt.as_unit("ns")
            if is_time.any():
                parsed[is_time] = pd.to_datetime(series[is_time], utc=True).dt.as_unit("ns")
            bad = parsed.isna().to_numpy()
            if bad.any():
                row = int(np.argmax(bad))
                value = series.iloc[row]
                empty = (isinstance(value, str) and not value.strip()) or (
                    not isinstance(value, str) and bool(pd.isna(value))
                )
                shown = "an empty value" if empty else repr(value)
                raise DataInputError(
                    f"{src}: cannot read timestamp {shown} in the {where} (row {row + 1})"
                )
            stamps = pd.DatetimeIndex(parsed)
    if stamps.hasnans:
        row = int(np.argmax(stamps.isna()))
        raise DataInputError(f"{src}: missing timestamp in the {where} (row {row + 1})")
    if stamps.tz is not None:
        stamps = stamps.tz_convert("UTC").tz_localize(None)
    naive: pd.DatetimeIndex = stamps.as_unit("ns")
    return naive


def _numeric_values(frame: pd.DataFrame, stamps: pd.DatetimeIndex, src: str) -> np.ndarray:
    """The table as float64; the earliest non-numeric cell is named (timestamp, sensor, value).

    Shapes:
        frame (T, N) -> (T, N) float64, NaN where the cell was empty.
    """
    first_bad: tuple[int, int, object] | None = None
    columns = {}
    for k in range(frame.shape[1]):
        col = frame.iloc[:, k]
        if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
            continue
        cleaned = col.map(lambda v: v.strip() if isinstance(v, str) else v)
        cleaned = cleaned.mask(cleaned.map(lambda v: isinstance(v, str) and v == ""))
        numbers = pd.to_numeric(cleaned, errors="coerce")
        bad = (numbers.isna() & cleaned.notna()).to_numpy()
        if bad.any():
            row = int(np.argmax(bad))
            if first_bad is None or row < first_bad[0]:
                first_bad = (row, k, col.iloc[row])
        columns[k] = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    if first_bad is not None:
        row, k, value = first_bad
        raise DataInputError(
            f"{src}: non-numeric value {value!r} at {stamps[row]}, sensor {frame.columns[k]}"
        )
    if not columns:
        return frame.to_numpy(dtype=np.float64, na_value=np.nan)
    values = np.empty(frame.shape, dtype=np.float64)
    for k in range(frame.shape[1]):
        if k in columns:
            values[:, k] = columns[k]
        else:
            values[:, k] = frame.iloc[:, k].to_numpy(dtype=np.float64, na_value=np.nan)
    return values


def _step_ns(stamps: pd.DatetimeIndex, src: str, freq_minutes: int | None) -> int:
    if freq_minutes is not None:
        if isinstance(freq_minutes, bool) or int(freq_minutes) != freq_minutes or freq_minutes < 1:
            raise DataInputError(
                f"freq_minutes must be a positive whole number, not {freq_minutes!r}"
            )
        return int(freq_minutes) * _NS_PER_MINUTE
    if len(stamps) < 2:
        raise DataInputError(
            f"{src}: cannot infer the time step from a single timestamp; give freq_minutes"
        )
    diffs, counts = np.unique(np.diff(stamps.asi8), return_counts=True)
    step = int(diffs[np.argmax(counts)])  # most common step; ties go to the smallest
    if step % _NS_PER_MINUTE != 0:
        raise DataInputError(
            f"{src}: the most common time step, {pd.Timedelta(step)}, is not a whole number of "
            "minutes"
        )
    return step


def parse_start(start: str | pd.Timestamp) -> pd.Timestamp:
    """``--start``: a timestamp (one with a zone becomes naive UTC), for files without any."""
    try:
        first = pd.Timestamp(start)
    except (ValueError, TypeError) as exc:
        raise DataInputError(f"--start {start!r} is not a timestamp") from exc
    if first is pd.NaT:
        raise DataInputError(f"--start {start!r} is not a timestamp")
    if first.tzinfo is not None:
        first = first.tz_convert("UTC").tz_localize(None)
    naive: pd.Timestamp = first.as_unit("ns")
    return naive


def parse_freq_minutes(text: str) -> int:
    """``--freq``: ``5min``, ``15min``, ``1h`` or a bare number of minutes, as whole minutes."""
    value = str(text).strip()
    try:
        step = pd.Timedelta(int(value), unit="min") if value.isdigit() else pd.Timedelta(value)
    except (ValueError, TypeError) as exc:
        raise DataInputError(f"--freq: cannot read time step {text!r} (e.g. 5min)") from exc
    minute = pd.Timedelta(minutes=1)
    if step is pd.NaT or step < minute or step % minute != pd.Timedelta(0):
        raise DataInputError(f"--freq {text!r} is not a whole number of minutes such as 5min")
    return int(step // minute)


def made_index(
    start: str | pd.Timestamp,
    rows: int,
    freq_minutes: int | None,
    src: str,
    calendar: str | Calendar | None = None,
) -> pd.DatetimeIndex:
    """``rows`` timestamps from ``start``, ``freq_minutes`` apart, for a file without any; under
    a ``weekdays`` calendar the rows skip the days it leaves out
    (:func:`~trafficcast.data.calendar.calendar_index`)."""
    first = parse_start(start)
    step = _step_ns(pd.DatetimeIndex([]), src, freq_minutes)
    return calendar_index(first, rows, pd.Timedelta(step), parse_calendar(calendar), src)


def _warn(message: str) -> None:
    # stacklevel=4: past this helper, to_speed_data and read_speeds, to read_speeds' caller.
    warnings.warn(message, DataWarning, stacklevel=4)
