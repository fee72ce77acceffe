"""Reading and writing METR-LA-style speed tables.

A speed table has one row per timestamp and one column per sensor; a reading of 0, NaN or an
empty cell means "missing" (METR-LA stores missing readings as 0). Every reader turns the file
into a :class:`SpeedData`: a regular, sorted time index, sensor ids as strings, float32 speeds with
missing readings set to 0.0 and a boolean mask of what was actually observed.

Supported formats, chosen by extension:

- ``.h5`` / ``.hdf5``: pandas HDF, key ``df`` (the METR-LA layout; other keys are ignored).
- ``.csv``: first column timestamps, header row = sensor ids.
- ``.parquet``: a DatetimeIndex, or a first column of timestamps.
"""

from __future__ import annotations

import csv
import datetime as dt
import errno
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data.errors import DataInputError, DataWarning
from graph.io import atomic_write

__all__ = ["SpeedData", "read_speeds", "write_speeds"]

_HDF_SUFFIXES = (".h5", ".hdf5")
_SUFFIXES = (*_HDF_SUFFIXES, ".csv", ".parquet")
_NS_PER_MINUTE = 60 * 1_000_000_000
# A file whose timestamps span far more steps than it has rows would be reindexed into a huge
# mostly-empty array; refuse instead of exhausting memory.
_MAX_CELLS = 2_000_000_000
_LIST_LIMIT = 5


@dataclass
class SpeedData:
    """Speeds of ``N`` sensors at ``T`` regular timestamps, with a mask of observed readings.

    Attributes:
        index: sorted, unique, regular timestamps (naive, nanosecond resolution).
        sensor_ids: sensor ids as strings, in column order.
        values: speeds; missing readings are 0.0.
        mask: True where a reading was observed.
        freq_minutes: the time step in minutes.
        source: the file the data came from, or a label.

    Shapes:
        index: (T,); values: (T, N) float32; mask: (T, N) bool.
    """

    index: pd.DatetimeIndex
    sensor_ids: list[str]
    values: np.ndarray
    mask: np.ndarray
    freq_minutes: int
    source: str = "<memory>"

    def __post_init__(self) -> None:
        self.sensor_ids = [str(s) for s in self.sensor_ids]
        self.values = np.asarray(self.values, dtype=np.float32)
        self.mask = np.asarray(self.mask, dtype=bool)
        expected = (len(self.index), len(self.sensor_ids))
        if self.values.shape != expected or self.mask.shape != expected:
            raise ValueError(
                f"SpeedData: values {self.values.shape} and mask {self.mask.shape} must both be "
                f"(timestamps, sensors) = {expected}"
            )

    @property
    def num_steps(self) -> int:
        return int(self.values.shape[0])

    @property
    def num_sensors(self) -> int:
        return int(self.values.shape[1])

    def to_frame(self) -> pd.DataFrame:
        """The speeds as a DataFrame (missing as 0.0), the METR-LA layout.

        Shapes:
            returns (T, N): DatetimeIndex rows, sensor-id columns.
        """
        return pd.DataFrame(self.values.copy(), index=self.index.copy(), columns=self.sensor_ids)

    def select_sensors(self, ids: Sequence[str]) -> SpeedData:
        """The same data restricted to ``ids``, in the order given.

        Shapes:
            returns values/mask (T, len(ids)).
        """
        ids = [str(i) for i in ids]
        position = {sid: k for k, sid in enumerate(self.sensor_ids)}
        unknown = [i for i in ids if i not in position]
        if unknown:
            raise DataInputError(
                f"{self.source}: sensor {_listing(unknown)} not in the data "
                f"({self.num_sensors} sensors)"
            )
        duplicated = _duplicates(ids)
        if duplicated:
            raise DataInputError(f"sensor {_listing(duplicated)} selected more than once")
        cols = np.array([position[i] for i in ids], dtype=np.int64)
        return SpeedData(
            index=self.index,
            sensor_ids=ids,
            values=self.values[:, cols],
            mask=self.mask[:, cols],
            freq_minutes=self.freq_minutes,
            source=self.source,
        )

    def slice_steps(self, start: int | None, stop: int | None) -> SpeedData:
        """Rows ``start:stop`` (Python slice semantics), as a copy.

        Shapes:
            returns values/mask (stop - start, N).
        """
        rows = slice(start, stop)
        return SpeedData(
            index=self.index[rows],
            sensor_ids=list(self.sensor_ids),
            values=self.values[rows].copy(),
            mask=self.mask[rows].copy(),
            freq_minutes=self.freq_minutes,
            source=self.source,
        )

    def summary(self) -> dict:
        """Plain-Python facts about the data (JSON-serialisable)."""
        observed = self.mask.any(axis=0)
        cells = self.mask.size
        missing_pct = 100.0 * (1.0 - self.mask.sum() / cells) if cells else 0.0
        return {
            "steps": self.num_steps,
            "sensors": self.num_sensors,
            "start": self.index[0].isoformat() if self.num_steps else None,
            "end": self.index[-1].isoformat() if self.num_steps else None,
            "freq_minutes": self.freq_minutes,
            "missing_pct": float(missing_pct),
            "always_missing": [
                sid for sid, seen in zip(self.sensor_ids, observed, strict=True) if not seen
            ],
        }


def read_speeds(path: str | os.PathLike, *, freq_minutes: int | None = None) -> SpeedData:
    """Read a speed table (``.h5``/``.hdf5`` key ``df``, ``.csv`` or ``.parquet``).

    Args:
        path: the file; its extension selects the format.
        freq_minutes: the time step; inferred as the most common difference between consecutive
            timestamps when not given.

    Missing readings (0, NaN, empty cells) get ``mask`` False and value 0.0. An unsorted index is
    sorted, and gaps in the time grid are filled with missing rows (both with a
    :class:`~data.errors.DataWarning`), as are sensors that are never observed. Time-zone-aware
    timestamps are converted to UTC and the zone dropped, so a file written in local time with
    offsets comes back as naive UTC; naive timestamps are kept as they are.

    Raises:
        FileNotFoundError: the file does not exist.
        DataInputError: anything about the content that makes it unusable; the one-line message
            names the file and the offending value.

    Shapes:
        returns values/mask (T, N): T the regular time steps, N the sensor columns.
    """
    path = Path(path)
    src = str(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), src)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), src)
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise DataInputError(
            f"{src}: unknown speed file type {path.suffix!r} (use .h5, .hdf5, .csv or .parquet)"
        )
    if path.stat().st_size == 0:
        raise DataInputError(f"{src}: empty file")
    if suffix in _HDF_SUFFIXES:
        raw_index, frame, where = _load_hdf(path, src)
    elif suffix == ".csv":
        raw_index, frame, where = _load_csv(path, src)
    else:
        raw_index, frame, where = _load_parquet(path, src)
    return _to_speed_data(raw_index, frame, src, where, freq_minutes)


def write_speeds(data: SpeedData, path: str | os.PathLike) -> None:
    """Write ``data`` atomically in the format named by the extension (missing readings as 0).

    ``.h5``/``.hdf5`` gets key ``df`` with float64 speeds, the METR-LA layout.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise DataInputError(
            f"{path}: unknown speed file type {path.suffix!r} (use .h5, .hdf5, .csv or .parquet)"
        )
    # float64 like METR-LA; float32 -> float64 is exact, so reading back gives the same values.
    frame = pd.DataFrame(
        data.values.astype(np.float64), index=data.index.copy(), columns=list(data.sensor_ids)
    )
    frame.index.name = "timestamp"
    if suffix in _HDF_SUFFIXES:
        atomic_write(path, lambda tmp: frame.to_hdf(tmp, key="df", mode="w"))
    elif suffix == ".csv":
        atomic_write(path, lambda tmp: frame.to_csv(tmp))
    else:
        atomic_write(path, lambda tmp: frame.to_parquet(tmp))


# --- loaders: each returns (raw index, raw values frame with str columns, what the index is) ---


def _load_hdf(path: Path, src: str) -> tuple[pd.Index, pd.DataFrame, str]:
    try:
        store = pd.HDFStore(path, mode="r")
    except Exception as exc:  # PyTables raises several unrelated types for a non-HDF file
        # PyTables' message is a multi-line HDF5 back trace; it adds nothing for a user.
        raise DataInputError(f"{src}: not a readable HDF5 file") from exc
    try:
        keys = [k.lstrip("/") for k in store]
        if "df" not in keys:
            found = ", ".join(keys) if keys else "none"
            raise DataInputError(f"{src}: no key 'df' in the HDF file (keys: {found})")
        try:
            obj = store["df"]
        except Exception as exc:
            raise DataInputError(f"{src}: cannot read key 'df' ({_reason(exc)})") from exc
    finally:
        store.close()
    if isinstance(obj, pd.Series):
        obj = obj.to_frame()
    if not isinstance(obj, pd.DataFrame):
        raise DataInputError(f"{src}: key 'df' holds a {type(obj).__name__}, not a table")
    frame = obj.reset_index(drop=True)
    frame.columns = [_clean_id(c) for c in obj.columns]
    return obj.index, frame, "index"


def _load_csv(path: Path, src: str) -> tuple[pd.Index, pd.DataFrame, str]:
    # The header is read by hand: pandas would rename a duplicated "773869" to "773869.1"
    # and hide the duplicate we must report.
    with open(path, newline="", encoding="utf-8-sig") as fh:
        try:
            header = next(csv.reader(fh), [])
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataInputError(f"{src}: cannot read the CSV header ({_reason(exc)})") from exc
    if not any(cell.strip() for cell in header):
        raise DataInputError(f"{src}: empty file (no header row)")
    if len(header) < 2:
        raise DataInputError(f"{src}: no sensor columns (the header has only {header[0]!r})")
    # One spare column catches rows with an extra field, which pandas would otherwise drop.
    names = [f"c{i}" for i in range(len(header) + 1)]
    try:
        raw = pd.read_csv(
            path,
            names=names,
            skiprows=1,
            header=None,
            index_col=False,
            dtype={names[0]: str},
            encoding="utf-8-sig",
            low_memory=False,
        )
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataInputError(f"{src}: cannot parse CSV ({_reason(exc)})") from exc
    extra = raw[names[-1]].notna().to_numpy()
    if extra.any():
        row = int(np.argmax(extra))
        raise DataInputError(
            f"{src}: line {row + 2} has more fields than the header ({len(header)} columns)"
        )
    frame = raw.iloc[:, 1:-1].reset_index(drop=True)
    frame.columns = [_clean_id(c) for c in header[1:]]
    return pd.Index(raw.iloc[:, 0].to_numpy(dtype=object)), frame, "first column"


def _load_parquet(path: Path, src: str) -> tuple[pd.Index, pd.DataFrame, str]:
    try:
        obj = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises its own error types for a broken file
        raise DataInputError(f"{src}: not a readable Parquet file ({_reason(exc)})") from exc
    if isinstance(obj.index, pd.RangeIndex):
        # No stored index: the timestamps are the first column.
        if obj.shape[1] < 1:
            raise DataInputError(f"{src}: no columns")
        raw_index = pd.Index(obj.iloc[:, 0])
        values = obj.iloc[:, 1:]
        where = "first column"
    else:
        raw_index = obj.index
        values = obj
        where = "index"
    frame = values.reset_index(drop=True)
    frame.columns = [_clean_id(c) for c in values.columns]
    return raw_index, frame, where


# --- shared validation ---


def _to_speed_data(
    raw_index: pd.Index,
    frame: pd.DataFrame,
    src: str,
    where: str,
    freq_minutes: int | None,
) -> SpeedData:
    if frame.shape[1] == 0:
        raise DataInputError(f"{src}: no sensor columns")
    if len(raw_index) == 0:
        raise DataInputError(f"{src}: no rows")
    ids = list(frame.columns)
    if any(sid == "" for sid in ids):
        raise DataInputError(f"{src}: empty sensor id in column {ids.index('') + 2} of the header")
    duplicated = _duplicates(ids)
    if duplicated:
        raise DataInputError(f"{src}: duplicate sensor column {_listing(duplicated)}")

    stamps = _parse_timestamps(raw_index, src, where)
    dup = stamps.duplicated(keep="first")
    if dup.any():
        first = pd.unique(stamps[dup])
        shown = ", ".join(str(t) for t in first[:3])
        more = f" and {len(first) - 3} more" if len(first) > 3 else ""
        raise DataInputError(f"{src}: duplicated timestamps {shown}{more}")

    if not stamps.is_monotonic_increasing:
        _warn(f"{src}: rows were not in time order; sorted by timestamp")
        order = np.argsort(stamps.asi8, kind="stable")
        stamps = stamps[order]
        frame = frame.iloc[order].reset_index(drop=True)

    values = _numeric_values(frame, stamps, src)
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

    step_ns = _step_ns(stamps, src, freq_minutes)
    offsets = stamps.asi8 - stamps.asi8[0]
    off_grid = offsets % step_ns != 0
    if off_grid.any():
        first = stamps[int(np.argmax(off_grid))]
        raise DataInputError(
            f"{src}: timestamp {first} is not on the {step_ns // _NS_PER_MINUTE}-minute grid "
            f"starting at {stamps[0]}"
        )
    positions = offsets // step_ns
    total = int(positions[-1]) + 1
    if total * len(ids) > _MAX_CELLS:
        raise DataInputError(
            f"{src}: timestamps from {stamps[0]} to {stamps[-1]} span {total} steps of "
            f"{step_ns // _NS_PER_MINUTE} minutes; too many to fill as missing"
        )

    observed = np.isfinite(values) & (values != 0)
    full_values = np.zeros((total, len(ids)), dtype=np.float32)
    full_mask = np.zeros((total, len(ids)), dtype=bool)
    full_values[positions] = np.where(observed, values, 0.0)
    full_mask[positions] = observed
    if total > len(stamps):
        gaps = int(np.count_nonzero(np.diff(positions) > 1))
        _warn(
            f"{src}: {total - len(stamps)} missing timestamps ({gaps} "
            f"gap{'s' if gaps != 1 else ''}) filled as missing"
        )

    dead = [sid for sid, seen in zip(ids, full_mask.any(axis=0), strict=True) if not seen]
    if dead:
        _warn(
            f"{src}: {len(dead)} sensor{'s' if len(dead) != 1 else ''} never observed "
            f"(all missing): {_listing(dead)}"
        )

    freq = int(step_ns // _NS_PER_MINUTE)
    index = pd.date_range(start=stamps[0], periods=total, freq=f"{freq}min", unit="ns")
    return SpeedData(
        index=index,
        sensor_ids=ids,
        values=full_values,
        mask=full_mask,
        freq_minutes=freq,
        source=src,
    )


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
    return stamps.as_unit("ns")


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


def _clean_id(label: object) -> str:
    if isinstance(label, (float, np.floating)) and float(label).is_integer():
        label = int(label)  # a numeric header read as 773869.0 still names sensor 773869
    return str(label).strip()


def _duplicates(items: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    dups: list[str] = []
    for item in items:
        if item in seen and item not in dups:
            dups.append(item)
        seen.add(item)
    return dups


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(str(i) for i in items[:_LIST_LIMIT])
    if len(items) > _LIST_LIMIT:
        shown += f" and {len(items) - _LIST_LIMIT} more"
    return shown


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def _warn(message: str) -> None:
    # stacklevel=4: past this helper, _to_speed_data and read_speeds, to read_speeds' caller.
    warnings.warn(message, DataWarning, stacklevel=4)
