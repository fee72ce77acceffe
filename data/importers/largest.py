"""LargeST (California, up to 8,600 sensors): yearly flow tables and the sensor metadata.

``ca_his_raw_YYYY.h5`` is a pandas HDF table: a ``DatetimeIndex`` of 5-minute timestamps, one
column per sensor (the sensor id as the column name), traffic flow as the values, NaN where
missing. ``ca_meta.csv`` has a header ``ID,Lat,Lng,District,County,Fwy,Lanes,Type,Direction,ID2``,
one row per sensor. LargeST's subsets are districts of it: GBA is district 4, SD district 11,
GLA districts 7, 8 and 12. The table is read a block of rows at a time, keeping only the chosen
sensors' columns, so a district of the 8,600 sensors never holds the whole year in memory.

LargeST's processed files (``generate_data_for_training.py``'s output) fill missing readings
with 0. Flow's missing-value rule keeps a 0 as a reading, so such zeros stay readings; a table
with zeros and no empty reading is imported with a warning that says so.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from trafficcast.data.errors import DataInputError, DataWarning
from trafficcast.data.importers.common import (
    ImportResult,
    Readings,
    finish_import,
    finite_readings,
    grid_positions,
    listing,
    located,
    no_distances_note,
)

__all__ = ["import_largest", "read_largest_meta"]

_META_COLUMNS = ("ID", "Lat", "Lng", "District")
# The smallest block of rows read at once: fewer, larger reads for a small selection.
_MIN_BLOCK_BYTES = 1 << 20


def read_largest_meta(path: str | os.PathLike[str]) -> pd.DataFrame:
    """``ca_meta.csv`` -> ``ID`` (str), ``Lat``, ``Lng`` (float), ``District`` (str), in file
    order.

    Raises:
        DataInputError: a missing column, an empty or repeated id, or coordinates that are not
            numbers.
    """
    src = os.fspath(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as exc:
        raise DataInputError(f"{src}: empty file, expected the LargeST metadata") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataInputError(f"{src}: cannot parse CSV ({' '.join(str(exc).split())})") from exc
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in _META_COLUMNS if c not in raw.columns]
    if missing:
        raise DataInputError(
            f"{src}: missing column {missing[0]!r} (found: {listing(list(raw.columns), 10)})"
        )
    ids = raw["ID"].str.strip()
    if (ids == "").any():
        raise DataInputError(f"{src}: line {int(np.argmax((ids == '').to_numpy())) + 2}: empty ID")
    repeated = ids[ids.duplicated()]
    if len(repeated):
        raise DataInputError(f"{src}: ID {repeated.iloc[0]} appears more than once")
    meta: pd.DataFrame = pd.DataFrame({"ID": ids, "District": raw["District"].str.strip()})
    for column in ("Lat", "Lng"):
        numbers = pd.to_numeric(raw[column].str.strip(), errors="coerce")
        if numbers.isna().any():
            row = int(np.argmax(numbers.isna().to_numpy()))
            raise DataInputError(
                f"{src}: line {row + 2}: {column} {raw[column].iloc[row]!r} is not a number"
            )
        meta[column] = numbers.to_numpy(dtype=np.float64)
    return meta


def import_largest(
    hdf: str | os.PathLike[str],
    meta: str | os.PathLike[str],
    *,
    num_sensors: int | None = None,
    districts: Sequence[str] | None = None,
    key: str | None = None,
) -> ImportResult:
    """A LargeST flow table -> the project's table, for the sensors chosen from the metadata.

    Sensors are taken in the metadata's order: those in ``districts`` (all when None), then the
    first ``num_sensors`` of them (all when None). Table columns without a metadata row are
    dropped; NaN and negative flows are missing, a 0 is a reading (flow's rule; a
    :class:`~trafficcast.data.errors.DataWarning` when the table looks zero-filled). Only the
    chosen columns are read: the import holds about twice their size as float64.

    Args:
        key: the table's HDF key; needed only when the file holds several.

    Raises:
        DataInputError: an unreadable HDF file, several keys and no ``key``, an index that is
            not timestamps, or no sensor left.
    """
    src = os.fspath(hdf)
    with _SensorTable(src, key) as table:
        table_ids = table.sensor_ids
        info = read_largest_meta(meta)
        if len(set(table_ids)) != len(table_ids):
            repeated = pd.Series(table_ids)[pd.Series(table_ids).duplicated()].iloc[0]
            raise DataInputError(f"{src}: sensor column {repeated} appears more than once")
        chosen, absent = _choose_sensors(info, set(table_ids), districts, num_sensors)
        if chosen.empty:
            where = f" in district {', '.join(districts)}" if districts else ""
            raise DataInputError(f"{os.fspath(meta)}: no sensor{where} is a column of {src}")
        position = {sid: k for k, sid in enumerate(table_ids)}
        cols = np.array([position[sid] for sid in chosen["ID"]], dtype=np.int64)
        raw_index, values = table.read_columns(cols)  # (rows,), (rows, N)
    stamps = _timestamps(raw_index, src)
    order = np.argsort(stamps.asi8, kind="stable")
    repeated = stamps.duplicated()
    if repeated.any():
        raise DataInputError(f"{src}: timestamp {stamps[int(np.argmax(repeated))]} appears twice")
    index, positions, freq_minutes = grid_positions(stamps[order], src)
    if not np.array_equal(order, np.arange(len(order))):
        values = values[order]
    usable, negative = finite_readings(values)
    notes = [no_distances_note("LargeST")]
    zero_filled = _zero_fill_warning(values, src)
    if zero_filled:
        warnings.warn(zero_filled, DataWarning, stacklevel=2)
        notes.append(zero_filled)
    if len(index) > len(stamps):
        notes.append(f"{len(index) - len(stamps)} missing timestamps filled as missing")
    readings = Readings(
        quantity="flow",
        index=index,
        sensor_ids=chosen["ID"].tolist(),
        freq_minutes=freq_minutes,
        source=src,
        rows=positions,
        values=values,
        usable=usable,
        locations=located(
            chosen["ID"].tolist(), chosen["Lat"].to_numpy(), chosen["Lng"].to_numpy()
        ),
        inputs=[src, os.fspath(meta)],
        read={
            "rows": len(stamps),
            "sensors in the table": len(table_ids),
            "sensors in the metadata": len(info),
        },
        dropped={
            "table columns without a metadata row": len(set(table_ids) - set(info["ID"])),
            "chosen metadata sensors not in the table": absent,
            "readings missing (empty)": int((~np.isfinite(values)).sum()),
            "readings with a negative flow": negative,
        },
        notes=notes,
    )
    return finish_import("largest", readings)


def _choose_sensors(
    info: pd.DataFrame,
    in_table: set[str],
    districts: Sequence[str] | None,
    num_sensors: int | None,
) -> tuple[pd.DataFrame, int]:
    """The metadata rows of the sensors to import, in metadata order: those in ``districts``
    (all when None) that are columns of the table, then the first ``num_sensors`` of them.
    Also how many chosen by district are not in the table."""
    chosen = info
    if districts:
        wanted = {d.strip() for d in districts}
        chosen = chosen[chosen["District"].isin(wanted)]
    absent = int((~chosen["ID"].isin(in_table)).sum())
    chosen = chosen[chosen["ID"].isin(in_table)]
    if num_sensors is not None:
        if num_sensors < 1:
            raise DataInputError(f"--sensors must be at least 1, not {num_sensors}")
        chosen = chosen.iloc[:num_sensors]
    return chosen, absent


class _SensorTable:
    """A LargeST table in an HDF file, open for reading some of its sensor columns.

    The yearly tables are large (8,600 sensors x 105,120 steps is 7 GB as float64), so only the
    header is read on opening, and :meth:`read_columns` reads the rows in blocks, keeping of
    each block only the columns asked for. This works for both layouts pandas writes, ``fixed``
    (LargeST's own, ``to_hdf`` without ``format``) and ``table``, as both read row ranges.
    """

    def __init__(self, src: str, key: str | None) -> None:
        if not os.path.exists(src):
            raise FileNotFoundError(2, "No such file or directory", src)
        try:
            self.store = pd.HDFStore(src, mode="r")
        except Exception as exc:  # PyTables raises several unrelated types for a non-HDF file
            raise DataInputError(f"{src}: not a readable HDF5 file") from exc
        self.src = src
        try:
            self.key, self.num_rows, header = self._header(key)
        except BaseException:
            self.store.close()
            raise
        self.sensor_ids = [_clean_id(c) for c in header.columns]

    def __enter__(self) -> _SensorTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.close()

    def _header(self, key: str | None) -> tuple[str, int, pd.DataFrame]:
        """The key read, the number of rows, and the table with its columns but no rows."""
        src, store = self.src, self.store
        keys = [k.lstrip("/") for k in store]
        if key is None:
            if len(keys) != 1:
                found = ", ".join(keys) if keys else "none"
                raise DataInputError(f"{src}: give --key: the file holds {found}")
            key = keys[0]
        elif key.lstrip("/") not in keys:
            raise DataInputError(f"{src}: no key {key!r} (found: {', '.join(keys) or 'none'})")
        try:
            # pandas-stubs omit get_storer (it resolves to HDFStore.__getattr__, a stored key).
            storer: Any = store.get_storer(key)  # type: ignore[operator]
            kind = str(storer.pandas_type)
            if kind not in ("frame", "frame_table"):
                raise DataInputError(f"{src}: key {key!r} holds a {kind}, not a table")
            header = store.select(key, start=0, stop=0)
            if not isinstance(header, pd.DataFrame):
                raise DataInputError(f"{src}: key {key!r} holds a {kind}, not a table")
            # A table knows its rows; a fixed frame's shape is (rows, columns).
            num_rows = int(storer.nrows if kind == "frame_table" else storer.shape[0])
        except DataInputError:
            raise
        except Exception as exc:
            raise DataInputError(f"{src}: cannot read key {key!r} ({exc})") from exc
        if num_rows == 0 or header.shape[1] == 0:
            raise DataInputError(f"{src}: the table is empty ({num_rows}x{header.shape[1]})")
        non_numeric = [
            c for c in header.columns if not pd.api.types.is_numeric_dtype(header[c].dtype)
        ]
        if non_numeric:
            bad = non_numeric[0]
            raise DataInputError(f"{src}: column {bad} holds {header[bad].dtype}")
        return key, num_rows, header

    def read_columns(self, cols: np.ndarray) -> tuple[pd.Index, np.ndarray]:
        """The index and the columns at positions ``cols``, as float64 (NaN where empty).

        Rows are read in blocks of at most a quarter of the result's size (at least
        :data:`_MIN_BLOCK_BYTES`), so the read holds little beyond the result.

        Shapes:
            cols (N,) -> index (T,), values (T, N).
        """
        num_columns = len(self.sensor_ids)
        wanted = self.num_rows * len(cols) * 8
        block_bytes = max(wanted // 4, _MIN_BLOCK_BYTES)
        block_rows = max(1, block_bytes // (num_columns * 8))
        values = np.empty((self.num_rows, len(cols)), dtype=np.float64)
        pieces = []
        for start in range(0, self.num_rows, block_rows):
            stop = min(start + block_rows, self.num_rows)
            try:
                part = self.store.select(self.key, start=start, stop=stop)
            except Exception as exc:
                raise DataInputError(f"{self.src}: cannot read key {self.key!r} ({exc})") from exc
            if not isinstance(part, pd.DataFrame):
                raise DataInputError(f"{self.src}: key {self.key!r} is not a table")
            values[start:stop] = part.iloc[:, cols].to_numpy(dtype=np.float64, na_value=np.nan)
            pieces.append(part.index)
            del part
        index = pieces[0].append(pieces[1:]) if len(pieces) > 1 else pieces[0]
        return index, values


def _zero_fill_warning(values: np.ndarray, src: str) -> str | None:
    """The warning for a table that looks zero-filled: no empty reading but some zeros.

    LargeST's processed files (made by its ``generate_data_for_training.py``) fill missing
    readings with 0; the raw ``ca_his_raw_YYYY.h5`` leave them empty. A flow of 0 is a reading
    by the flow rule, so such zeros stay readings, and the user should know.

    Shapes:
        values (T, N).
    """
    if np.isnan(values).any():
        return None
    zeros = int(np.count_nonzero(values == 0))
    if not zeros:
        return None
    return (
        f"{src} has no empty reading but {zeros} zeros ({100 * zeros / values.size:.2f}%): "
        "LargeST's processed files fill missing readings with 0; by the flow rule a 0 is a "
        "reading, so they are kept as readings (import the raw ca_his_raw_YYYY.h5, which leaves "
        "missing readings empty, to keep them missing)"
    )


def _timestamps(index: pd.Index, src: str) -> pd.DatetimeIndex:
    if isinstance(index, pd.DatetimeIndex):
        stamps = index
    else:
        stamps = pd.to_datetime(pd.Index(index).astype(str), errors="coerce", format="ISO8601")
        if stamps.isna().any():
            row = int(np.argmax(stamps.isna()))
            raise DataInputError(f"{src}: cannot read timestamp {index[row]!r} in the index")
    if stamps.hasnans:
        raise DataInputError(
            f"{src}: missing timestamp in the index (row {stamps.isna().argmax() + 1})"
        )
    if stamps.tz is not None:
        stamps = stamps.tz_convert("UTC").tz_localize(None)
    naive: pd.DatetimeIndex = stamps.as_unit("ns")
    return naive


def _clean_id(label: object) -> str:
    if isinstance(label, (float, np.floating)) and float(label).is_integer():
        label = int(label)  # a numeric column name read as 1234.0 still names sensor 1234
    return str(label).strip()
