"""LargeST (California, up to 8,600 sensors): yearly flow tables and the sensor metadata.

``ca_his_raw_YYYY.h5`` is a pandas HDF table: a ``DatetimeIndex`` of 5-minute timestamps, one
column per sensor (the sensor id as the column name), traffic flow as the values, NaN where
missing. ``ca_meta.csv`` has a header ``ID,Lat,Lng,District,County,Fwy,Lanes,Type,Direction,ID2``,
one row per sensor. LargeST's subsets are districts of it: GBA is district 4, SD district 11,
GLA districts 7, 8 and 12.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from trafficcast.data.errors import DataInputError
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
    dropped; NaN and negative flows are missing.

    Args:
        key: the table's HDF key; needed only when the file holds several.

    Raises:
        DataInputError: an unreadable HDF file, several keys and no ``key``, an index that is
            not timestamps, or no sensor left.
    """
    src = os.fspath(hdf)
    frame = _load_table(src, key)
    table_ids = [_clean_id(c) for c in frame.columns]
    if len(set(table_ids)) != len(table_ids):
        repeated = pd.Series(table_ids)[pd.Series(table_ids).duplicated()].iloc[0]
        raise DataInputError(f"{src}: sensor column {repeated} appears more than once")
    info = read_largest_meta(meta)
    chosen, absent = _choose_sensors(info, set(table_ids), districts, num_sensors)
    if chosen.empty:
        where = f" in district {', '.join(districts)}" if districts else ""
        raise DataInputError(f"{os.fspath(meta)}: no sensor{where} is a column of {src}")

    position = {sid: k for k, sid in enumerate(table_ids)}
    cols = np.array([position[sid] for sid in chosen["ID"]], dtype=np.int64)
    stamps = _timestamps(frame.index, src)
    order = np.argsort(stamps.asi8, kind="stable")
    repeated = stamps.duplicated()
    if repeated.any():
        raise DataInputError(f"{src}: timestamp {stamps[int(np.argmax(repeated))]} appears twice")
    index, positions, freq_minutes = grid_positions(stamps[order], src)
    values = frame.iloc[:, cols].to_numpy(dtype=np.float64, na_value=np.nan)[order]  # (rows, N)
    usable, negative = finite_readings(values)
    notes = [no_distances_note("LargeST")]
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
            "rows": len(frame),
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


def _load_table(src: str, key: str | None) -> pd.DataFrame:
    if not os.path.exists(src):
        raise FileNotFoundError(2, "No such file or directory", src)
    try:
        store = pd.HDFStore(src, mode="r")
    except Exception as exc:  # PyTables raises several unrelated types for a non-HDF file
        raise DataInputError(f"{src}: not a readable HDF5 file") from exc
    try:
        keys = [k.lstrip("/") for k in store]
        if key is None:
            if len(keys) != 1:
                found = ", ".join(keys) if keys else "none"
                raise DataInputError(f"{src}: give --key: the file holds {found}")
            key = keys[0]
        elif key.lstrip("/") not in keys:
            raise DataInputError(f"{src}: no key {key!r} (found: {', '.join(keys) or 'none'})")
        try:
            obj = store[key]
        except Exception as exc:
            raise DataInputError(f"{src}: cannot read key {key!r} ({exc})") from exc
    finally:
        store.close()
    if not isinstance(obj, pd.DataFrame):
        raise DataInputError(f"{src}: key {key!r} holds a {type(obj).__name__}, not a table")
    if obj.shape[0] == 0 or obj.shape[1] == 0:
        raise DataInputError(f"{src}: the table is empty ({obj.shape[0]}x{obj.shape[1]})")
    non_numeric = [c for c in obj.columns if not pd.api.types.is_numeric_dtype(obj[c].dtype)]
    if non_numeric:
        raise DataInputError(f"{src}: column {non_numeric[0]} holds {obj[non_numeric[0]].dtype}")
    return obj


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
