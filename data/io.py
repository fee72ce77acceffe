"""Reading and writing METR-LA-style speed tables.

Every reader turns the file into a :class:`~trafficcast.data.speeds.SpeedData`: a regular,
sorted time index, sensor ids as strings, float32 values with missing readings (by the rule in
:data:`~trafficcast.data.speeds.MISSING_RULES`) set to 0.0 and a boolean mask of what was
actually observed. This module reads the formats; :mod:`~trafficcast.data.grid` checks the
columns and puts them on the time grid. The names callers import from here (``SpeedData``,
``MISSING_RULES``, ``observed_readings``, ``parse_start``, ``parse_freq_minutes``) are those
modules', re-exported.

Supported formats, chosen by extension:

- ``.h5`` / ``.hdf5``: pandas HDF, key ``df`` (the METR-LA layout; other keys are ignored).
- ``.csv``: first column timestamps, header row = sensor ids.
- ``.parquet``: a DatetimeIndex, or a first column of timestamps.

A file without timestamps (the T-GCN / STGCN layout: one column per sensor, nothing else) is read
with ``start`` and ``freq_minutes``: row ``k`` is ``start + k * freq``, or, under a ``weekdays``
``calendar`` (a weekdays-only release such as PeMSD7(M)), the k-th such time on a weekday. Its
CSV may have a header row of sensor ids or none (ids ``0 .. N-1``); see :func:`read_speeds` for
how a header is told from a first row of readings.
"""

from __future__ import annotations

import csv
import errno
import os
from pathlib import Path

import numpy as np
import pandas as pd

from trafficcast.data.calendar import Calendar, parse_calendar
from trafficcast.data.errors import DataInputError, reason
from trafficcast.data.grid import made_index, parse_freq_minutes, parse_start, to_speed_data
from trafficcast.data.speeds import (
    MISSING_RULES,
    SpeedData,
    check_missing_rule,
    observed_readings,
)
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

_HDF_SUFFIXES = (".h5", ".hdf5")
_SUFFIXES = (*_HDF_SUFFIXES, ".csv", ".parquet")


def read_speeds(
    path: str | os.PathLike[str],
    *,
    freq_minutes: int | None = None,
    start: str | pd.Timestamp | None = None,
    missing: str = "zero",
    calendar: str | Calendar | None = None,
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
        calendar: the days the data covers (:mod:`~trafficcast.data.calendar`): ``all`` (None)
            or ``weekdays`` (``weekdays:DATE,...`` to leave out holidays). With ``start``, the
            rows are dated on those days only, a weekdays-only file's rows after a Friday
            landing on the Monday; the days left out become rows of missing readings (no
            warning), recorded in the data's ``calendar`` so that no window spans them.

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
    check_missing_rule(missing)
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
    cal = parse_calendar(calendar)
    if start is not None:
        raw_index = made_index(start, len(frame), freq_minutes, src, cal)
    return to_speed_data(raw_index, frame, src, where, freq_minutes, missing, cal)


def write_speeds(data: SpeedData, path: str | os.PathLike[str]) -> None:
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
            raise DataInputError(f"{src}: cannot read key 'df' ({reason(exc)})") from exc
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
            raise DataInputError(f"{src}: cannot read the CSV header ({reason(exc)})") from exc
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
        raise DataInputError(f"{src}: cannot parse CSV ({reason(exc)})") from exc
    extra = raw[names[-1]].notna().to_numpy()
    if extra.any():
        row = int(np.argmax(extra))
        raise DataInputError(
            f"{src}: line {row + skip + 1} has more fields than the header ({width} columns)"
        )
    rows: pd.DataFrame = raw.iloc[:, :-1]
    return rows


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


def _load_parquet(path: Path, src: str, timestamps: bool) -> tuple[pd.Index, pd.DataFrame, str]:
    try:
        obj = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises its own error types for a broken file
        raise DataInputError(f"{src}: not a readable Parquet file ({reason(exc)})") from exc
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
