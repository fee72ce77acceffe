"""Reading and writing METR-LA-style speed tables.

A speed table has one row per timestamp and one column per sensor. The table may hold speed,
flow or occupancy; the name "speed" stays for all three. What counts as missing is a rule of the
data, decided once here and kept in the mask (:data:`MISSING_RULES`): ``"zero"`` (the default,
METR-LA's convention) makes a reading of 0, NaN or an empty cell missing; ``"nan"`` makes only NaN
and empty cells missing, so that a flow of 0 at 3 am is a real reading. Every reader turns the
file into a :class:`SpeedData`: a regular, sorted time index, sensor ids as strings, float32
values with missing readings set to 0.0 and a boolean mask of what was actually observed.

Supported formats, chosen by extension:

- ``.h5`` / ``.hdf5``: pandas HDF, key ``df`` (the METR-LA layout; other keys are ignored).
- ``.csv``: first column timestamps, header row = sensor ids.
- ``.parquet``: a DatetimeIndex, or a first column of timestamps.

A file without timestamps (the T-GCN / STGCN layout: one column per sensor, nothing else) is read
with ``start`` and ``freq_minutes``: row ``k`` is ``start + k * freq``. Its CSV may have a header
row of sensor ids or none (ids ``0 .. N-1``); see :func:`read_speeds` for how a header is told
from a first row of readings.
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

from trafficcast.data.errors import DataInputError, DataWarning
from trafficcast.graph.io import atomic_write

__all__ = [
    "MISSING_RULES",
    "SpeedData",
    "observed_readings",
    "parse_freq_minutes",
    "parse_start",
    "read_speeds",
    "write_speeds",
]

# How a reading counts as missing: "zero" (0, NaN or empty) or "nan" (only NaN or empty).
MISSING_RULES = ("zero", "nan")

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
        missing: the rule the mask was made with (:data:`MISSING_RULES`); a writer follows it.

    Shapes:
        index: (T,); values: (T, N) float32; mask: (T, N) bool.
    """

    index: pd.DatetimeIndex
    sensor_ids: list[str]
    values: np.ndarray
    mask: np.ndarray
    freq_minutes: int
    source: str = "<memory>"
    missing: str = "zero"

    def __post_init__(self) -> None:
        _check_missing_rule(self.missing)
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
            missing=self.missing,
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
            missing=self.missing,
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


def read_speeds(
    path: str | os.PathLike,
    *,
    freq_minutes: int | None = None,
    start: str | pd.Timestamp | None = None,
    missing: str = "zero",
) -> SpeedData:
    """Read a speed table (``.h5``/``.hdf5`` key ``df``, ``.csv`` or ``.parquet``).

    Args:
        path: the file; its extension selects the format.
        freq_minutes: the time step; inferred as the most common difference between consecutive
            timestamps when not given. Required with ``start``.
        start: the time of the first row of a file without timestamps; every column is then a
            sensor. Not given, the file must have timestamps (a file whose first column holds
            numbers is refused with a message naming ``--start`` and ``--freq``).
        missing: ``"zero"`` or ``"nan"`` (:data:`MISSING_RULES`), what counts as missing.

    A CSV read with ``start`` has a header row of sensor ids when its first row holds text, or
    distinct whole numbers that cannot be readings: all above every later value, or whole where
    later rows have fractions, or exactly ``0 .. N-1`` / ``1 .. N``. Otherwise the first row is
    readings and the sensors are named ``0 .. N-1``.

    Missing readings (by ``missing``) get ``mask`` False and value 0.0. An unsorted index is
    sorted, and gaps in the time grid are filled with missing rows (both with a
    :class:`~trafficcast.data.errors.DataWarning`), as are sensors that are never observed. Time-zone-aware
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
    _check_missing_rule(missing)
    if start is not None and freq_minutes is None:
        raise DataInputError(f"{src}: --start needs --freq (the time step, e.g. 5min)")
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
    timestamps = start is None
    if suffix in _HDF_SUFFIXES:
        raw_index, frame, where = _load_hdf(path, src, timestamps)
    elif suffix == ".csv":
        raw_index, frame, where = _load_csv(path, src, timestamps)
    else:
        raw_index, frame, where = _load_parquet(path, src, timestamps)
    if not timestamps:
        raw_index = _made_index(start, len(frame), freq_minutes, src)
    return _to_speed_data(raw_index, frame, src, where, freq_minutes, missing)


def write_speeds(data: SpeedData, path: str | os.PathLike) -> None:
    """Write ``data`` atomically in the format named by the extension.

    ``.h5``/``.hdf5`` gets key ``df`` with float64 speeds, the METR-LA layout. Missing readings
    are written as 0 under the ``"zero"`` rule and as empty (NaN) under ``"nan"``, where a 0 is a
    real reading.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise DataInputError(
            f"{path}: unknown speed file type {path.suffix!r} (use .h5, .hdf5, .csv or .parquet)"
        )
    # float64 like METR-LA; float32 -> float64 is exact, so reading back gives the same values.
    values = data.values.astype(np.float64)
    if data.missing == "nan":
        values = np.where(data.mask, values, np.nan)
    frame = pd.DataFrame(values, index=data.index.copy(), columns=list(data.sensor_ids))
    frame.index.name = "timestamp"
    if suffix in _HDF_SUFFIXES:
        atomic_write(path, lambda tmp: frame.to_hdf(tmp, key="df", mode="w"))
    elif suffix == ".csv":
        atomic_write(path, lambda tmp: frame.to_csv(tmp))
    else:
        atomic_write(path, lambda tmp: frame.to_parquet(tmp))


# --- loaders: each returns (raw index, raw values frame with str columns, what the index is) ---


def _load_hdf(path: Path, src: str, timestamps: bool) -> tuple[pd.Index, pd.DataFrame, str]:
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
    if not timestamps and isinstance(obj.index, pd.DatetimeIndex):
        raise DataInputError(f"{src}: the file has timestamps; leave out --start and --freq")
    frame = obj.reset_index(drop=True)
    frame.columns = [_clean_id(c) for c in obj.columns]
    return obj.index, frame, "index"


def _load_csv(path: Path, src: str, timestamps: bool) -> tuple[pd.Index, pd.DataFrame, str]:
    # The header is read by hand: pandas would rename a duplicated "773869" to "773869.1"
    # and hide the duplicate we must report.
    with open(path, newline="", encoding="utf-8-sig") as fh:
        try:
            header = [cell.strip() for cell in next(csv.reader(fh), [])]
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataInputError(f"{src}: cannot read the CSV header ({_reason(exc)})") from exc
    if not any(header):
        raise DataInputError(f"{src}: empty file (no header row)")
    if not timestamps:
        return _load_csv_without_timestamps(path, src, header)
    if len(header) < 2:
        raise DataInputError(f"{src}: no sensor columns (the header has only {header[0]!r})")
    raw = _read_csv_rows(path, src, len(header), skip=1, text_first_column=True)
    first = raw.iloc[0, 0] if len(raw) else None
    if isinstance(first, str) and _is_number(first):
        raise DataInputError(
            f"{src}: cannot read timestamp {first.strip()!r} in the first column (row 1); for a "
            "file without timestamps give --start TIMESTAMP and --freq (e.g. 5min)"
        )
    frame = raw.iloc[:, 1:].reset_index(drop=True)
    frame.columns = [_clean_id(c) for c in header[1:]]
    return pd.Index(raw.iloc[:, 0].to_numpy(dtype=object)), frame, "first column"


def _load_csv_without_timestamps(
    path: Path, src: str, first_row: list[str]
) -> tuple[pd.Index, pd.DataFrame, str]:
    """Every column a sensor; the first row a header of ids or readings (see :func:`read_speeds`)."""
    # An empty cell is a missing reading, not text: a first row with gaps is still readings.
    text_header = any(cell and not _is_number(cell) for cell in first_row)
    raw = _read_csv_rows(path, src, len(first_row), skip=1 if text_header else 0)
    for cell in (first_row[0], raw.iat[0, 0] if len(raw) else None):
        if isinstance(cell, str) and cell.strip() and not _is_number(cell) and _is_timestamp(cell):
            raise DataInputError(
                f"{src}: the file has timestamps (first column {cell.strip()!r}); leave out "
                "--start and --freq"
            )
    if text_header:
        ids = first_row
    else:
        numbers = raw.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        if len(numbers) > 1 and _numeric_header(numbers[0], numbers[1:]):
            ids, raw = first_row, raw.iloc[1:]
        else:
            ids = [str(k) for k in range(len(first_row))]
    frame = raw.reset_index(drop=True)
    frame.columns = [_clean_id(c) for c in ids]
    return pd.RangeIndex(len(frame)), frame, "rows"


def _read_csv_rows(
    path: Path, src: str, width: int, skip: int, text_first_column: bool = False
) -> pd.DataFrame:
    """The CSV's rows after ``skip`` as ``width`` columns; a row with more fields is refused.

    Shapes: returns ``(rows, width)``, short rows padded with NaN.
    """
    # One spare column catches rows with an extra field, which pandas would otherwise drop.
    names = [f"c{i}" for i in range(width + 1)]
    try:
        raw = pd.read_csv(
            path,
            names=names,
            skiprows=skip,
            header=None,
            index_col=False,
            dtype={names[0]: str} if text_first_column else None,
            encoding="utf-8-sig",
            low_memory=False,
        )
    except pd.errors.EmptyDataError:
        raw = pd.DataFrame(columns=names)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataInputError(f"{src}: cannot parse CSV ({_reason(exc)})") from exc
    extra = raw[names[-1]].notna().to_numpy()
    if extra.any():
        row = int(np.argmax(extra))
        raise DataInputError(
            f"{src}: line {row + skip + 1} has more fields than the header ({width} columns)"
        )
    return raw.iloc[:, :-1]


def _numeric_header(first: np.ndarray, rest: np.ndarray) -> bool:
    """Whether a first row of numbers is a header of numeric sensor ids (:func:`read_speeds`).

    Shapes: ``first (N,)``, ``rest (T - 1, N)`` with NaN for empty cells.
    """
    if not np.isfinite(first).all() or (first != np.round(first)).any():
        return False
    if len(np.unique(first)) != len(first):
        return False
    count = len(first)
    if np.array_equal(first, np.arange(count)) or np.array_equal(first, np.arange(1, count + 1)):
        return True
    later = rest[np.isfinite(rest)]
    if later.size == 0:
        return False
    return bool(first.min() > later.max() or (later != np.round(later)).any())


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
    return first.as_unit("ns")


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


def _made_index(
    start: str | pd.Timestamp, rows: int, freq_minutes: int | None, src: str
) -> pd.DatetimeIndex:
    """``rows`` timestamps from ``start``, ``freq_minutes`` apart, for a file without any."""
    first = parse_start(start)
    step = _step_ns(pd.DatetimeIndex([]), src, freq_minutes)
    return pd.date_range(first, periods=rows, freq=pd.Timedelta(step), unit="ns")


def _load_parquet(path: Path, src: str, timestamps: bool) -> tuple[pd.Index, pd.DataFrame, str]:
    try:
        obj = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises its own error types for a broken file
        raise DataInputError(f"{src}: not a readable Parquet file ({_reason(exc)})") from exc
    if not timestamps:
        if isinstance(obj.index, pd.DatetimeIndex) or (
            obj.shape[1] and pd.api.types.is_datetime64_any_dtype(obj.iloc[:, 0].dtype)
        ):
            raise DataInputError(f"{src}: the file has timestamps; leave out --start and --freq")
        raw_index, values, where = obj.index, obj, "index"
    elif isinstance(obj.index, pd.RangeIndex):
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
    missing: str,
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

    observed = observed_readings(values, missing)
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
        missing=missing,
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


def observed_readings(values: np.ndarray, missing: str) -> np.ndarray:
    """Which raw readings are real under the missing-value rule (:data:`MISSING_RULES`): not NaN,
    and not 0 under ``"zero"``. The one place the rule is applied, to a file as it is read and to
    readings as the service receives them; everything downstream goes by the mask it gives.

    Shapes: any -> a bool array of the same shape.
    """
    observed = np.isfinite(values)
    if missing == "zero":
        observed &= values != 0
    return observed


def _check_missing_rule(rule: str) -> None:
    if rule not in MISSING_RULES:
        raise DataInputError(
            f"missing-value rule {rule!r} is not one of {', '.join(MISSING_RULES)}"
        )


def _is_number(text: object) -> bool:
    try:
        float(str(text))
    except ValueError:
        return False
    return True


def _is_timestamp(text: str) -> bool:
    try:
        return pd.Timestamp(text) is not pd.NaT
    except (ValueError, TypeError):
        return False


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
