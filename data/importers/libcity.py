"""LibCity atomic files: ``NAME.geo``, ``NAME.rel``, ``NAME.dyna`` and ``config.json``.

All three are CSV with a header:

- ``.geo``: ``geo_id, type, coordinates, ...``; for a ``Point`` the coordinates are GeoJSON,
  ``"[longitude, latitude]"``.
- ``.rel``: ``rel_id, type, origin_id, destination_id, cost``: a directed edge between two
  ``geo_id``; the weight column may have another name (``config.json``'s ``info.weight_col``).
- ``.dyna``: ``dyna_id, type, time, entity_id, <data columns>``, e.g. ``traffic_speed`` or
  ``traffic_flow``; ``time`` is ISO 8601 (``2012-03-01T00:00:00Z``), ``entity_id`` a ``geo_id``.

``config.json`` says what the ``.rel`` cost means (``info.set_weight_link_or_dist``: ``link``,
edges of weight 1, or ``dist``; with ``dist``, ``info.calculate_weight_adj`` true means a
distance to turn into weights, false a weight as it is), which column to forecast
(``info.data_col``) and the step in seconds (``info.time_intervals``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd
from pandas.io.parsers import TextFileReader

from trafficcast.data.errors import DataInputError
from trafficcast.data.importers.common import (
    QUANTITIES,
    ImportResult,
    Readings,
    finish_import,
    finite_readings,
    first_repeat,
    grid_positions,
    listing,
    progress_bar,
)
from trafficcast.data.speeds import (
    MissingRule,
    Quantity,
    default_missing_rule,
    observed_readings,
)
from trafficcast.graph.links import check_repeated_links, count_links

__all__ = ["find_atomic_files", "import_libcity"]

_GEO_COLUMNS = ("geo_id", "type", "coordinates")
_REL_COLUMNS = ("origin_id", "destination_id")
_DYNA_COLUMNS = ("time", "entity_id")
_DYNA_FIXED = ("dyna_id", "type", "time", "entity_id")
_CHUNK_ROWS = 1_000_000
_T = TypeVar("_T")


def find_atomic_files(directory: str | os.PathLike[str]) -> dict[str, Path | None]:
    """The ``.geo``, ``.rel``, ``.dyna`` and ``config.json`` of a LibCity dataset folder.

    Returns:
        ``{"geo": ..., "rel": ..., "dyna": ..., "config": ...}``; ``config`` is None when the
        folder has no ``config.json``.

    Raises:
        DataInputError: a file type missing, or several of one type.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise DataInputError(f"{folder}: not a directory")
    found: dict[str, Path | None] = {}
    for kind in ("geo", "rel", "dyna"):
        matches = sorted(folder.glob(f"*.{kind}"))
        if len(matches) != 1:
            what = "no" if not matches else f"{len(matches)}"
            raise DataInputError(
                f"{folder}: {what} .{kind} file{'s' if len(matches) != 1 else ''}; expected one "
                f"(or give --geo, --rel and --dyna)"
            )
        found[kind] = matches[0]
    config = folder / "config.json"
    found["config"] = config if config.is_file() else None
    return found


def import_libcity(
    geo: str | os.PathLike[str],
    rel: str | os.PathLike[str],
    dyna: str | os.PathLike[str],
    *,
    config: str | os.PathLike[str] | None = None,
    column: str | None = None,
    progress: bool = False,
) -> ImportResult:
    """LibCity atomic files -> the table of one ``.dyna`` column, locations and the graph.

    Args:
        column: the ``.dyna`` column to import; default the config's ``data_col`` (a string,
            as LibCity's ``metr_la.py`` writes it, or the first of a list), else
            ``traffic_speed`` when present, else the first data column.

    The ``.rel`` costs become ``distances.csv`` when they are distances and ``adjacency.npz``
    when they are weights (see the module docstring); without ``config.json`` they are taken
    as distances. Sensors are the ``.geo`` points in file order; a reading that is empty,
    non-finite or negative is missing, and so is a 0 when the column is a speed (the speed
    rule of :data:`~trafficcast.data.speeds.MISSING_RULES`: LibCity's METR_LA and PEMS_BAY
    write a missing speed as 0); a 0 flow or occupancy stays a reading.

    Raises:
        DataInputError: a missing column, a line with too many fields, an unreadable time,
            coordinate or number, an ``entity_id`` or ``.rel`` end that is not a ``geo_id``,
            a column that does not exist, or a reading given twice.
    """
    info = _read_config(config)
    geo_ids, locations, geo_rows = _read_geo(geo)
    position = {sid: k for k, sid in enumerate(geo_ids)}

    src = os.fspath(dyna)
    name, stamps, cols, values = _read_dyna(dyna, geo, info, column, position, progress)
    index, positions, freq_minutes = _grid(stamps, src, info)
    repeat = first_repeat(positions, cols, len(geo_ids))
    if repeat is not None:
        line = repeat + 2
        raise DataInputError(
            f"{src}: line {line}: a second reading of {geo_ids[cols[repeat]]} at {stamps[repeat]}"
        )
    usable, negative = finite_readings(values)
    edges, cost_kind = _read_rel(rel, info, position)
    quantity = _quantity(name)
    # The quantity's missing-value rule, the one training applies (speed: a 0 is no reading, as
    # LibCity's METR_LA and PEMS_BAY write missing speeds; flow and occupancy: only empty).
    rule = default_missing_rule(quantity or "speed")
    zeros = usable & ~observed_readings(values, rule)
    usable &= ~zeros
    notes = [f"column {name}; .rel cost read as {cost_kind}", *_notes(name, rule, quantity)]
    if len(locations) < len(geo_ids):
        notes.append(f"{len(geo_ids) - len(locations)} sensors have no coordinates")
    readings = Readings(
        quantity=quantity or "speed",
        index=index,
        sensor_ids=geo_ids,
        freq_minutes=freq_minutes,
        source=src,
        rows=positions,
        cols=cols,
        values=values,
        usable=usable,
        locations=locations,
        inputs=[os.fspath(p) for p in (geo, rel, dyna, config) if p is not None],
        read={".geo rows": geo_rows, ".rel rows": len(edges), ".dyna rows": len(values)},
        dropped={
            f"readings missing ({name} empty or not finite)": int((~np.isfinite(values)).sum()),
            f"readings with a negative {name}": negative,
            f"readings of 0 {name} (missing under the {rule} rule)": int(zeros.sum()),
            "timestamps without any reading": len(index) - len(np.unique(positions)),
        },
        notes=notes,
    )
    links = edges.rename(columns={"origin_id": "from", "destination_id": "to"})
    if cost_kind == "distance":
        readings.distances = links
    else:
        readings.adjacency = _weights(edges, position)
        readings.graph = count_links(readings.adjacency, geo_ids, links)
    return finish_import("libcity", readings)


def _grid(
    stamps: pd.DatetimeIndex, src: str, info: dict[str, Any]
) -> tuple[pd.DatetimeIndex, np.ndarray, int]:
    """:func:`grid_positions` at the config's ``time_intervals`` when the grid can hold it
    (whole minutes); anything else is inferred from the times."""
    interval = info.get("time_intervals")
    whole = isinstance(interval, int) and interval >= 60 and interval % 60 == 0
    return grid_positions(
        stamps, src, interval // 60 if isinstance(interval, int) and whole else None
    )


def _notes(name: str, rule: MissingRule, quantity: Quantity | None) -> list[str]:
    """What the import says of its column: the missing-value rule applied, and a column that
    names no known quantity."""
    meaning = "a 0 is missing" if rule == "zero" else "a 0 is a reading, only empty is missing"
    notes = [f"missing-value rule {rule} for {quantity or 'speed'}: {meaning}"]
    if quantity is None:
        notes.append(
            f"column {name} names no speed, flow or occupancy: imported as speed-like values"
        )
    return notes


def _weights(edges: pd.DataFrame, position: dict[str, int]) -> npt.NDArray[np.float32]:
    """The ``.rel`` costs as edge weights ``adj[origin, destination]`` in ``.geo`` order.

    Shapes:
        edges (E,) -> (N, N), N = len(position).
    """
    adj = np.zeros((len(position), len(position)), dtype=np.float32)
    rows = edges["origin_id"].map(position).to_numpy(dtype=np.int64)
    cols = edges["destination_id"].map(position).to_numpy(dtype=np.int64)
    adj[rows, cols] = edges["cost"].to_numpy(dtype=np.float32)
    return adj


def _read_dyna(
    path: str | os.PathLike[str],
    geo: str | os.PathLike[str],
    info: dict[str, Any],
    column: str | None,
    position: dict[str, int],
    progress: bool,
) -> tuple[str, pd.DatetimeIndex, np.ndarray, np.ndarray]:
    """The ``.dyna`` column to import, and per row its time, sensor position and value.

    Read in chunks, each reduced to those three arrays before the next, since a ``.dyna``
    holds one text row per sensor and time step (millions of rows).

    Shapes:
        returns stamps, cols (int64), values (float64, NaN where empty), all (rows,).
    """
    src = os.fspath(path)
    stamps, cols, values = [], [], []
    name = None
    for chunk in progress_bar(
        _read_csv_chunks(path, _DYNA_COLUMNS), "LibCity .dyna", progress, unit="M rows"
    ):
        name = name or _data_column(list(chunk.columns), column, info, src)
        entity = chunk["entity_id"].fillna("").str.strip()
        unknown = ~entity.isin(position)
        if unknown.any():
            line = int(entity.index[int(np.argmax(unknown.to_numpy()))]) + 2
            raise DataInputError(
                f"{src}: line {line}: entity_id {entity[unknown].iloc[0]!r} is not a geo_id of "
                f"{os.fspath(geo)}"
            )
        stamps.append(_parse_times(chunk["time"], src).asi8)
        cols.append(entity.map(position).to_numpy(dtype=np.int64))
        values.append(_numbers(chunk[name], src, name))
    if name is None:
        raise DataInputError(f"{src}: no rows after the header")
    stamps_ns = pd.DatetimeIndex(np.concatenate(stamps).view("datetime64[ns]"))
    return name, stamps_ns, np.concatenate(cols), np.concatenate(values)


def _read_config(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """``config.json``'s ``info`` section (empty without a config)."""
    if path is None:
        return {}
    src = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            config = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataInputError(f"{src}: not valid JSON ({exc})") from exc
    info = config.get("info", {}) if isinstance(config, dict) else None
    if not isinstance(info, dict):
        raise DataInputError(f"{src}: 'info' must be an object")
    return info


def _read_csv(path: str | os.PathLike[str], required: tuple[str, ...]) -> pd.DataFrame:
    """A LibCity CSV (ids and text as str, empty cells NaN); a missing column or a line with
    more fields than the header is an error naming the file."""
    src, options = _csv_options(path, required)
    table: pd.DataFrame = _checked(lambda: pd.read_csv(path, **options), src)
    return table


def _read_csv_chunks(
    path: str | os.PathLike[str], required: tuple[str, ...]
) -> Iterator[pd.DataFrame]:
    """:func:`_read_csv` as chunks of rows; the header is checked before the first is read."""
    src, options = _csv_options(path, required)
    reader = _checked(lambda: pd.read_csv(path, chunksize=_CHUNK_ROWS, **options), src)
    return _checked_chunks(reader, src)


def _csv_options(
    path: str | os.PathLike[str], required: tuple[str, ...]
) -> tuple[str, dict[str, Any]]:
    """The file's name and the ``read_csv`` options that read it, once its header has every
    ``required`` column."""
    src = os.fspath(path)
    if not os.path.exists(src):
        raise FileNotFoundError(2, "No such file or directory", src)
    try:
        header = [str(c).strip() for c in pd.read_csv(path, nrows=0).columns]
    except pd.errors.EmptyDataError as exc:
        raise DataInputError(f"{src}: empty file") from exc
    missing = [c for c in required if c not in header]
    if missing:
        raise DataInputError(f"{src}: missing column {missing[0]!r} (found: {listing(header, 8)})")
    text = {c: str for c in header if c in (*_GEO_COLUMNS, *_REL_COLUMNS, *_DYNA_FIXED)}
    return src, {
        "names": header,
        "header": 0,
        "dtype": text,
        "keep_default_na": False,
        "na_values": [""],
    }


def _checked(read: Callable[[], _T], src: str) -> _T:
    """``read()``, a parser error turned into a one-line error naming the file."""
    try:
        return read()
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataInputError(f"{src}: cannot parse ({' '.join(str(exc).split())})") from exc


def _checked_chunks(reader: TextFileReader, src: str) -> Iterator[pd.DataFrame]:
    with reader:
        while True:
            chunk = _checked(lambda: next(reader, None), src)
            if chunk is None:
                return
            yield chunk


def _read_geo(path: str | os.PathLike[str]) -> tuple[list[str], pd.DataFrame, int]:
    """Point ids in file order, the coordinates of those that have them, and the number of rows
    read."""
    src = os.fspath(path)
    table = _read_csv(path, _GEO_COLUMNS)
    ids = table["geo_id"].fillna("").str.strip()
    if (ids == "").any():
        raise DataInputError(
            f"{src}: line {int(np.argmax((ids == '').to_numpy())) + 2}: empty geo_id"
        )
    repeated = ids[ids.duplicated()]
    if len(repeated):
        raise DataInputError(f"{src}: geo_id {repeated.iloc[0]} appears more than once")
    kinds = table["type"].fillna("").str.strip()
    if not (kinds == "Point").all():
        other = kinds[kinds != "Point"].iloc[0]
        raise DataInputError(
            f"{src}: geo type {other!r}: only sensors (type Point) can be imported"
        )
    latitude = np.full(len(ids), np.nan)
    longitude = np.full(len(ids), np.nan)
    for k, text in enumerate(table["coordinates"].fillna("")):
        if text.strip() in ("", "[]"):
            continue  # releases without coordinates (LibCity's PEMSD4, PEMSD8) write "[]"
        try:
            point = json.loads(text)
            lon, lat = float(point[0]), float(point[1])
            if len(point) != 2 or not (abs(lat) <= 90 and abs(lon) <= 180):
                raise ValueError
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            raise DataInputError(
                f"{src}: line {k + 2}: coordinates {text!r} are not [longitude, latitude]"
            ) from exc
        latitude[k], longitude[k] = lat, lon
    located = np.isfinite(latitude)
    locations = pd.DataFrame(
        {"sensor_id": ids.to_numpy(), "latitude": latitude, "longitude": longitude}
    )[located]
    return ids.tolist(), locations, len(table)


def _read_rel(
    path: str | os.PathLike[str], info: dict[str, Any], position: dict[str, int]
) -> tuple[pd.DataFrame, str]:
    """Edges ``origin_id, destination_id, cost`` and whether cost is a ``distance`` or a
    ``weight``."""
    src = os.fspath(path)
    weight_col = info.get("weight_col") or "cost"
    link = info.get("set_weight_link_or_dist", "dist") == "link"
    table = _read_csv(path, _REL_COLUMNS if link else (*_REL_COLUMNS, weight_col))
    edges = pd.DataFrame({c: table[c].fillna("").str.strip() for c in _REL_COLUMNS})
    for column in _REL_COLUMNS:
        unknown = ~edges[column].isin(position)
        if unknown.any():
            line = int(np.argmax(unknown.to_numpy()))
            raise DataInputError(
                f"{src}: line {line + 2}: {column} {edges[column].iloc[line]!r} is not a geo_id"
            )
    if link:
        edges["cost"] = 1.0
        return edges, "weight"
    cost = _numbers(table[weight_col], src, weight_col)
    # A link listed twice with two costs is refused, naming both lines (header is line 1).
    named = edges.rename(columns={"origin_id": "from", "destination_id": "to"}).assign(cost=cost)
    check_repeated_links(named, src, (edges.index + 2).to_list())
    bad = ~np.isfinite(cost) | (cost < 0)
    if bad.any():
        line = int(np.argmax(bad))
        raise DataInputError(
            f"{src}: line {line + 2}: {weight_col} {table[weight_col].iloc[line]!r} is not a "
            "finite number >= 0"
        )
    edges["cost"] = cost
    calculate = info.get("calculate_weight_adj")
    return edges, "weight" if calculate is False else "distance"


def _data_column(header: list[str], column: str | None, info: dict[str, Any], src: str) -> str:
    data_columns = [c for c in header if c not in _DYNA_FIXED]
    if not data_columns:
        raise DataInputError(f"{src}: no data column after {', '.join(_DYNA_FIXED)}")
    if column is None:
        configured = info.get("data_col")
        # LibCity's own converters write it as a list or, as metr_la.py does, a bare string.
        if isinstance(configured, str) and configured.strip():
            column = configured.strip()
        elif isinstance(configured, list) and configured:
            column = str(configured[0])
        elif "traffic_speed" in data_columns:
            column = "traffic_speed"
        else:
            column = data_columns[0]
    if column not in data_columns:
        raise DataInputError(
            f"{src}: no column {column!r} (data columns: {', '.join(data_columns)})"
        )
    return column


def _parse_times(text: pd.Series, src: str) -> pd.DatetimeIndex:
    stamps = pd.to_datetime(text.str.strip(), errors="coerce", utc=True, format="ISO8601")
    if stamps.isna().any():
        row = int(np.argmax(stamps.isna().to_numpy()))
        raise DataInputError(
            f"{src}: line {int(text.index[row]) + 2}: cannot read time {text.iloc[row]!r} "
            "(expected ISO 8601, e.g. 2012-03-01T00:00:00Z)"
        )
    naive: pd.DatetimeIndex = (
        pd.DatetimeIndex(stamps).tz_convert("UTC").tz_localize(None).as_unit("ns")
    )
    return naive


def _numbers(values: pd.Series, src: str, name: str) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() & values.notna()
    if bad.any():
        row = int(np.argmax(bad.to_numpy()))
        raise DataInputError(
            f"{src}: line {int(values.index[row]) + 2}: {name} {values.iloc[row]!r} is not a number"
        )
    return numbers.to_numpy(dtype=np.float64)


def _quantity(column: str) -> Quantity | None:
    """``speed``, ``flow`` or ``occupancy`` when the column's name says which, else None."""
    for quantity in QUANTITIES:
        if quantity in column.lower():
            return quantity
    return None
