"""Caltrans PeMS Data Clearinghouse: station 5-minute files and station metadata.

Station 5-minute files (``dNN_text_station_5min_YYYY_MM_DD.txt``, optionally ``.gz``) are
comma-separated without a header; each row is one station and one 5-minute interval:

====  =====================  ===============================================================
 #    field                  notes
====  =====================  ===============================================================
 1    Timestamp              ``MM/DD/YYYY HH24:MI:SS``, the start of the interval
 2    Station                station id
 3    District
 4    Freeway
 5    Direction of travel    N, S, E, W
 6    Lane type              ML mainline, HV HOV, OR on-ramp, FR off-ramp, CD, CH, FF
 7    Station length
 8    Samples
 9    % Observed             share of the lane readings that were observed, not imputed
 10   Total flow             vehicles per 5 minutes, all lanes
 11   Avg occupancy          0..1
 12   Avg speed              mph, flow-weighted over the lanes
 13+  per lane, 5 fields     samples, flow, avg occupancy, avg speed, observed
====  =====================  ===============================================================

Station metadata files (``dNN_text_meta_YYYY_MM_DD.txt``) are tab-separated with a header:
``ID Fwy Dir District County City State_PM Abs_PM Latitude Longitude Length Type Lanes Name
User_ID_1 .. User_ID_4``. Copies republished elsewhere are often comma-separated; the header line
tells which.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

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
    located,
    no_distances_note,
    progress_bar,
)

__all__ = ["import_pems", "read_pems_meta"]

_FIXED_FIELDS = 12
_LANE_FIELDS = 5
_COLUMN = {"flow": 9, "occupancy": 10, "speed": 11}
_TIME_FORMAT = "%m/%d/%Y %H:%M:%S"
_META_COLUMNS = ("ID", "Latitude", "Longitude", "Type")
_FREQ_MINUTES = 5


def read_pems_meta(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Station metadata: ``ID`` (str), ``Type`` (str), ``Latitude``, ``Longitude`` (float,
    NaN where empty), one row per station; a station in several files keeps its last row.

    Raises:
        DataInputError: a file without a header naming the columns above, or coordinates that
            are not numbers.
    """
    tables = []
    for path in paths:
        src = os.fspath(path)
        sep = _meta_delimiter(path, src)
        try:
            raw = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError as exc:
            raise DataInputError(f"{src}: empty file, expected the station metadata") from exc
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            what = "tab" if sep == "\t" else "comma"
            raise DataInputError(
                f"{src}: not a {what}-separated metadata file ({' '.join(str(exc).split())})"
            ) from exc
        raw.columns = [str(c).strip() for c in raw.columns]
        missing = [c for c in _META_COLUMNS if c not in raw.columns]
        if missing:
            raise DataInputError(
                f"{src}: missing column {missing[0]!r} (a PeMS metadata file has a header, "
                f"tab- or comma-separated; found: {listing(list(raw.columns), 8)})"
            )
        table = pd.DataFrame({"ID": raw["ID"].str.strip(), "Type": raw["Type"].str.strip()})
        for column in ("Latitude", "Longitude"):
            text = raw[column].str.strip()
            numbers = pd.to_numeric(text, errors="coerce")
            bad = numbers.isna() & (text != "")
            if bad.any():
                row = int(np.argmax(bad.to_numpy()))
                raise DataInputError(
                    f"{src}: line {row + 2}: {column} {text.iloc[row]!r} is not a number"
                )
            table[column] = numbers.to_numpy(dtype=np.float64)
        tables.append(table[table["ID"] != ""])
    meta = pd.concat(tables, ignore_index=True)
    unique: pd.DataFrame = meta.drop_duplicates("ID", keep="last").reset_index(drop=True)
    return unique


def _meta_delimiter(path: str | os.PathLike[str], src: str) -> str:
    """The metadata file's delimiter, told by its header line: a tab when the line holds one (the
    Clearinghouse's files), else a comma (the copies other repositories republish).

    The header alone decides: its names hold neither character, whereas a station's ``Name``
    in a later line may hold commas.
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            header = fh.readline()
    except UnicodeDecodeError as exc:
        raise DataInputError(f"{src}: not a text metadata file ({exc.reason})") from exc
    return "\t" if "\t" in header or "," not in header else ","


def import_pems(
    station_files: Sequence[str | os.PathLike[str]],
    meta_files: Sequence[str | os.PathLike[str]],
    *,
    quantity: str = "speed",
    min_observed: float = 50.0,
    lane_types: Sequence[str] = ("ML",),
    progress: bool = False,
) -> ImportResult:
    """Station 5-minute files of any number of days -> one table of ``quantity``.

    A reading becomes missing when its field is empty, negative, or when the row's "% observed"
    is below ``min_observed`` (the rest of the lane readings were imputed by PeMS). Only
    stations whose lane type is in ``lane_types`` are kept, and of those only the ones with
    coordinates in the metadata and at least one reading. Intervals a station did not report
    are missing. Columns are in station-id order.

    Raises:
        DataInputError: a line with a wrong number of fields (12 plus 5 per lane), an
            unreadable timestamp or number, a station reported twice for one interval, or no
            station left.
    """
    if quantity not in QUANTITIES:
        raise DataInputError(f"quantity must be one of {', '.join(QUANTITIES)}, not {quantity!r}")
    if not 0.0 <= min_observed <= 100.0:
        raise DataInputError(f"--min-observed must be between 0 and 100, not {min_observed:g}")
    wanted_types = {t.strip().upper() for t in lane_types}
    located_meta = read_pems_meta(meta_files).dropna(subset=["Latitude", "Longitude"])
    rows, counts = _read_rows(
        station_files, quantity, wanted_types, set(located_meta["ID"]), progress=progress
    )
    values = rows["value"].to_numpy(dtype=np.float64)
    usable, negative = finite_readings(values)
    # An empty "% observed" counts as nothing observed.
    low = usable & ~(rows["observed_pct"].to_numpy(dtype=np.float64) >= min_observed)
    keep = usable & ~low
    stations = sorted(pd.unique(rows["station"]), key=_station_order)
    observed_stations = set(rows.loc[keep, "station"])
    never = [s for s in stations if s not in observed_stations]
    stations = [s for s in stations if s in observed_stations]
    if not stations:
        raise DataInputError(
            f"no station left: {counts['stations']} read, {counts['other_type']} of another "
            f"lane type than {', '.join(sorted(wanted_types))}, {counts['unlocated']} without "
            f"coordinates in the metadata, {len(never)} with no usable {quantity} reading"
        )
    kept = rows["station"].isin(stations).to_numpy()
    index, positions, cols = _grid_cells(rows[kept], stations, station_files)
    coordinates = located_meta.set_index("ID").loc[stations, ["Latitude", "Longitude"]]
    lanes = "/".join(sorted(wanted_types))
    readings = Readings(
        quantity=quantity,
        index=index,
        sensor_ids=stations,
        freq_minutes=_FREQ_MINUTES,
        source="PeMS station files",
        rows=positions,
        cols=cols,
        values=values[kept],
        usable=keep[kept],
        locations=located(
            stations, coordinates["Latitude"].to_numpy(), coordinates["Longitude"].to_numpy()
        ),
        inputs=[os.fspath(p) for p in (*station_files, *meta_files)],
        read={"files": len(station_files), "rows": counts["rows"], "stations": counts["stations"]},
        dropped={
            f"stations of another lane type than {lanes}": counts["other_type"],
            "stations without coordinates in the metadata": counts["unlocated"],
            f"stations with no usable {quantity} reading": len(never),
            f"readings below {min_observed:g}% observed": int(low.sum()),
            f"readings with an empty {quantity}": int((~np.isfinite(values)).sum()),
            f"readings with a negative {quantity}": negative,
        },
        notes=[no_distances_note("PeMS")],
    )
    return finish_import("pems", readings)


def _grid_cells(
    rows: pd.DataFrame, stations: list[str], station_files: Sequence[str | os.PathLike[str]]
) -> tuple[pd.DatetimeIndex, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The 5-minute grid, and each row's cell on it: its grid row and its station's column.

    Raises:
        DataInputError: a station reported twice for one interval (file, station and time named).

    Shapes:
        rows (R,) -> index (T,), positions (R,), cols (R,).
    """
    index, positions, _ = grid_positions(
        pd.DatetimeIndex(rows["timestamp"]), "PeMS station files", _FREQ_MINUTES
    )
    column = {sid: k for k, sid in enumerate(stations)}
    cols = rows["station"].map(column).to_numpy(dtype=np.int64)
    repeat = first_repeat(positions, cols, len(stations))
    if repeat is not None:
        at = rows.iloc[repeat]
        raise DataInputError(
            f"{os.fspath(station_files[at['file']])}: station {at['station']} at "
            f"{at['timestamp']} appears more than once (the same day given twice?)"
        )
    return index, positions, cols


def _read_rows(
    station_files: Sequence[str | os.PathLike[str]],
    quantity: str,
    lane_types: set[str],
    located: set[str],
    *,
    progress: bool,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The rows of every file whose station has a lane type in ``lane_types`` and coordinates;
    ``file`` is the position in ``station_files``. Also counts: rows read, stations read,
    stations of another lane type, stations without coordinates.

    Each file is filtered as it is read, so that only the kept rows of all the days are held.
    """
    frames = []
    rows_read = 0
    seen: set[str] = set()
    other_type: set[str] = set()
    unlocated: set[str] = set()
    for k, path in enumerate(progress_bar(list(station_files), "PeMS files", progress)):
        frame = _read_station_file(path, quantity)
        rows_read += len(frame)
        seen.update(frame["station"].unique())
        wrong = ~frame["lane_type"].str.upper().isin(lane_types)
        other_type.update(frame.loc[wrong, "station"].unique())
        frame = frame[~wrong]
        far = ~frame["station"].isin(located)
        unlocated.update(frame.loc[far, "station"].unique())
        frame = frame[~far].drop(columns="lane_type")
        frame["file"] = k
        frames.append(frame)
    counts = {
        "rows": rows_read,
        "stations": len(seen),
        "other_type": len(other_type),
        "unlocated": len(unlocated),
    }
    return pd.concat(frames, ignore_index=True), counts


def _read_station_file(path: str | os.PathLike[str], quantity: str) -> pd.DataFrame:
    """One station 5-minute file -> rows ``timestamp, station, lane_type, observed_pct, value``
    (numbers NaN where the field is empty)."""
    src = os.fspath(path)
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataInputError(f"{src}: not a readable gzip file ({exc})") from exc
    num_fields = _field_counts(raw)
    if len(num_fields) == 0:
        raise DataInputError(f"{src}: empty file, expected PeMS station 5-minute rows")
    lanes, extra = np.divmod(num_fields - _FIXED_FIELDS, _LANE_FIELDS)
    bad = (lanes < 0) | (extra != 0)
    if bad.any():
        line = int(np.argmax(bad))
        raise DataInputError(
            f"{src}: line {line + 1} has {num_fields[line]} fields; a station 5-minute row has "
            f"{_FIXED_FIELDS} plus {_LANE_FIELDS} per lane"
        )
    names = list(range(int(num_fields.max())))
    try:
        table = pd.read_csv(
            io.BytesIO(raw),
            header=None,
            names=names,
            usecols=[0, 1, 5, 8, _COLUMN[quantity]],
            dtype={0: str, 1: str, 5: str, 8: str, _COLUMN[quantity]: str},
            keep_default_na=False,
            skip_blank_lines=False,
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataInputError(f"{src}: cannot parse ({' '.join(str(exc).split())})") from exc
    stamps = pd.to_datetime(table[0].str.strip(), format=_TIME_FORMAT, errors="coerce")
    if stamps.isna().any():
        line = int(np.argmax(stamps.isna().to_numpy()))
        raise DataInputError(
            f"{src}: line {line + 1}: cannot read timestamp {table[0].iloc[line]!r} "
            "(expected MM/DD/YYYY HH:MM:SS)"
        )
    station = table[1].str.strip()
    if (station == "").any():
        line = int(np.argmax((station == "").to_numpy()))
        raise DataInputError(f"{src}: line {line + 1}: empty station id")
    observed = _numbers(table[8], src, "% observed")
    value = _numbers(table[_COLUMN[quantity]], src, f"average {quantity}")
    frame: pd.DataFrame = pd.DataFrame(
        {
            "timestamp": stamps.to_numpy(),
            "station": station.to_numpy(),
            "lane_type": table[5].str.strip().to_numpy(),
            "observed_pct": observed,
            "value": value,
        }
    )
    return frame


def _field_counts(raw: bytes) -> np.ndarray:
    """Fields per line of comma-separated ``raw`` (a trailing newline ends the last line).

    Shapes:
        returns (lines,) int64.
    """
    buf = np.frombuffer(raw, dtype=np.uint8)
    starts = np.concatenate(([0], np.flatnonzero(buf == ord("\n")) + 1))
    starts = starts[starts < len(buf)]  # nothing after a final newline
    if len(starts) == 0:
        return np.zeros(0, dtype=np.int64)
    # Each line's segment runs to the next line's start, its newline included (not a comma).
    return np.add.reduceat(buf == ord(","), starts, dtype=np.int64) + 1


def _numbers(text: pd.Series, src: str, what: str) -> np.ndarray:
    """A text column as float64 (NaN where empty); the first non-number is named with its line."""
    text = text.str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    bad = numbers.isna() & (text != "")
    if bad.any():
        line = int(np.argmax(bad.to_numpy()))
        raise DataInputError(f"{src}: line {line + 1}: {what} is {text.iloc[line]!r}, not a number")
    return numbers.to_numpy(dtype=np.float64)


def _station_order(station: str) -> tuple[int, int | str]:
    # Numeric ids in numeric order (PeMS ids are numbers), anything else after them.
    return (0, int(station)) if station.isdigit() else (1, station)
