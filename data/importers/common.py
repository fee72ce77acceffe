"""What the importers share: the steps of an import after the reading, the result, its writer.

Every importer has the same skeleton. Its own part reads one public layout into
:class:`Readings`: each reading with its row on the regular time grid (:func:`grid_positions`)
and its sensor column, which readings are usable (:func:`finite_readings`: the missing-value rule
every layout follows, plus any rule of its own), the sensors' coordinates, the graph the layout
gives (road distances or ready-made weights), and an account of what was read and dropped.
:func:`finish_import` does the rest the same way for every layout: the readings placed on the
grid as a :class:`~trafficcast.data.speeds.SpeedData` (whatever the quantity: speed, flow or
occupancy; missing readings 0.0 with mask False) and the :class:`ImportResult`, which
:func:`write_import` writes in the project's formats and the ``import`` command summarises.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd
from tqdm import tqdm

from trafficcast.data.errors import DataInputError, listing
from trafficcast.data.grid import parse_freq_minutes, parse_start
from trafficcast.data.io import write_speeds
from trafficcast.data.speeds import QUANTITIES, SpeedData
from trafficcast.graph.io import atomic_write, save_adjacency, write_distances
from trafficcast.graph.links import LinkCounts, count_links, link_adjacency

__all__ = [
    "QUANTITIES",
    "ImportResult",
    "Readings",
    "finish_import",
    "finite_readings",
    "first_repeat",
    "grid_positions",
    "listing",
    "located",
    "no_distances_note",
    "parse_freq_minutes",
    "parse_start",
    "progress_bar",
    "write_import",
]

_NS_PER_MINUTE = 60 * 1_000_000_000
_T = TypeVar("_T")


@dataclass
class ImportResult:
    """One imported data set, ready to write in the project's formats.

    Attributes:
        format: the layout read (``pems``, ``npz``, ``largest``, ``libcity``).
        quantity: what ``data`` holds: ``speed``, ``flow`` or ``occupancy``.
        data: the readings on a regular time grid; ``mask`` False where missing (the value
            there is 0.0, as in every :class:`SpeedData`).
        locations: ``sensor_id, latitude, longitude`` of the sensors that have coordinates.
        distances: road distances ``from, to, cost`` between the sensors, when the layout gives
            distances.
        adjacency: edge weights ``adj[i, j]`` from sensor i to sensor j in ``data``'s sensor
            order, when the layout gives weights or links (both it and ``distances`` when the
            layout gives links with their distances, as the ASTGCN releases do).
        graph: the account of the graph's links (listed, repeated, kept, sensors isolated).
        inputs: the files read.
        read: counts of what was read (rows, sensors, ...).
        dropped: why sensors or readings were left out, and how many.
        notes: anything else the user should know (one line each).

    Shapes:
        data values/mask (T, N); adjacency (N, N).
    """

    format: str
    quantity: str
    data: SpeedData
    locations: pd.DataFrame | None = None
    distances: pd.DataFrame | None = None
    adjacency: np.ndarray | None = None
    graph: LinkCounts | None = None
    inputs: list[str] = field(default_factory=list)
    read: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def config_advice(self) -> str | None:
        """The config line that makes training read this quantity right, or None for speeds."""
        if self.quantity == "speed":
            return None
        return f"data: {{quantity: {self.quantity}, missing: nan}}"

    def graph_files(self) -> list[str]:
        """The graph files the import writes: ``adjacency.npz`` and/or ``distances.csv``."""
        files = ["adjacency.npz"] if self.adjacency is not None else []
        return files + (["distances.csv"] if self.distances is not None else [])

    def graph_summary(self) -> dict[str, Any] | None:
        """``import.json``'s ``graph``: the files written and the links' account (None: the
        layout gives no graph)."""
        files = self.graph_files()
        if not files:
            return None
        counts = self.graph.summary() if self.graph is not None else {}
        return {"files": files, **counts}

    def summary(self) -> dict[str, Any]:
        """What was read, dropped and found missing (JSON-serialisable)."""
        facts = self.data.summary()
        return {
            "format": self.format,
            "quantity": self.quantity,
            "inputs": list(self.inputs),
            "read": dict(self.read),
            "dropped": dict(self.dropped),
            "sensors": facts["sensors"],
            "steps": facts["steps"],
            "start": facts["start"],
            "end": facts["end"],
            "freq_minutes": facts["freq_minutes"],
            "missing_pct": round(facts["missing_pct"], 4),
            "always_missing": facts["always_missing"],
            "graph": self.graph_summary(),
            "config": self.config_advice(),
            "notes": list(self.notes),
        }


@dataclass
class Readings:
    """What a layout's reader hands :func:`finish_import`: its readings, each with its place on
    the regular time grid, and its account of the import.

    Readings come as whole rows (``cols`` None: ``values`` and ``usable`` are ``(R, N)``, row k
    lands on grid row ``rows[k]``) or one by one (``values``, ``usable`` and ``cols`` are
    ``(R,)``: reading k lands at ``(rows[k], cols[k])``); no two land on the same cell.

    Attributes:
        quantity: what the values are: ``speed``, ``flow`` or ``occupancy``.
        index: the grid; sensor_ids: its columns; freq_minutes: its step; source: for messages.
        rows, cols, values, usable: the readings, as above; a reading not ``usable`` (missing
            by the layout's rules) becomes 0.0 with mask False, as do cells nothing lands on.
        locations, distances, adjacency, graph, inputs, read, dropped, notes: as in
            :class:`ImportResult`.

    Shapes:
        index (T,); rows (R,); values, usable (R, N) or (R,) with cols (R,).
    """

    quantity: str
    index: pd.DatetimeIndex
    sensor_ids: list[str]
    freq_minutes: int
    source: str
    rows: npt.NDArray[np.int64]
    values: np.ndarray
    usable: npt.NDArray[np.bool_]
    cols: npt.NDArray[np.int64] | None = None
    locations: pd.DataFrame | None = None
    distances: pd.DataFrame | None = None
    adjacency: np.ndarray | None = None
    graph: LinkCounts | None = None
    inputs: list[str] = field(default_factory=list)
    read: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def finish_import(layout: str, readings: Readings) -> ImportResult:
    """The readings on their grid as a :class:`SpeedData`, and the import's result.

    A graph given as distances loses its exact repeats (counted in ``graph.duplicates``); a
    layout that gives no account of its graph gets one from :func:`graph.count_links` (weights)
    or :func:`graph.link_adjacency` (distances: every listed link).

    Shapes:
        readings as in :class:`Readings` -> data values/mask (T, N).
    """
    shape = (len(readings.index), len(readings.sensor_ids))
    values = np.zeros(shape, dtype=np.float32)
    mask = np.zeros(shape, dtype=bool)
    cells = readings.rows if readings.cols is None else (readings.rows, readings.cols)
    # Assigned, then zeroed where missing, rather than through np.where: that would make a
    # float64 copy of all the readings, as large again as what the import holds.
    values[cells] = readings.values
    mask[cells] = readings.usable
    values[~mask] = 0.0
    data = SpeedData(
        index=readings.index,
        sensor_ids=readings.sensor_ids,
        values=values,
        mask=mask,
        freq_minutes=readings.freq_minutes,
        source=readings.source,
    )
    graph = readings.graph
    if graph is None and readings.adjacency is not None:
        graph = count_links(readings.adjacency, readings.sensor_ids)
    elif graph is None and readings.distances is not None:
        graph = link_adjacency(readings.distances, readings.sensor_ids)[1]
    distances = readings.distances
    if distances is not None:
        # An exact repeat says nothing new; a repeat with another cost was refused on reading.
        distances = distances.drop_duplicates(["from", "to", "cost"]).reset_index(drop=True)
    return ImportResult(
        format=layout,
        quantity=readings.quantity,
        data=data,
        locations=readings.locations,
        distances=distances,
        adjacency=readings.adjacency,
        graph=graph,
        inputs=readings.inputs,
        read=readings.read,
        dropped=readings.dropped,
        notes=readings.notes,
    )


def located(ids: Sequence[str], latitude: np.ndarray, longitude: np.ndarray) -> pd.DataFrame:
    """The ``locations`` table of an import: ``sensor_id, latitude, longitude``."""
    table: pd.DataFrame = pd.DataFrame(
        {"sensor_id": list(ids), "latitude": latitude, "longitude": longitude}
    )
    return table


def no_distances_note(layout: str) -> str:
    """The note of an import whose layout gives coordinates but no road distances."""
    return (
        f"{layout} gives no road distances: make them with `trafficcast distances` (--roads, or "
        "--straight-line as an approximation) from locations.csv"
    )


def first_repeat(rows: np.ndarray, cols: np.ndarray, num_sensors: int) -> int | None:
    """The position of the first reading that lands on the same cell as an earlier one, if any.

    Shapes:
        rows, cols (R,).
    """
    repeated = pd.Series(rows * num_sensors + cols).duplicated().to_numpy()
    return int(np.argmax(repeated)) if repeated.any() else None


def write_import(result: ImportResult, output_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``result`` into ``output_dir`` (created if needed), each file atomically.

    Files: ``speeds.h5`` (key ``df``, the METR-LA layout, whatever the quantity; missing
    readings are empty (NaN), never 0, so that a real zero flow stays a reading),
    ``sensor_ids.txt`` (comma-separated, the table's column order), ``locations.csv``
    (``sensor_id,latitude,longitude``) when any sensor has coordinates, ``adjacency.npz``
    (``sensor_ids``, ``adj_mx``) and/or ``distances.csv`` (``from,to,cost``) as the layout gives
    its graph, and ``import.json`` (:meth:`ImportResult.summary`).

    Returns:
        the paths written, in that order.
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise DataInputError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    data = result.data
    paths = [out / "speeds.h5", out / "sensor_ids.txt"]
    # Written under the "nan" rule (missing empty) whatever the quantity: a real 0 stays a reading.
    write_speeds(dataclasses.replace(data, missing="nan"), paths[0])
    atomic_write(paths[1], lambda tmp: tmp.write_text(",".join(data.sensor_ids) + "\n"))
    if result.locations is not None and len(result.locations):
        paths.append(out / "locations.csv")
        table = result.locations.loc[:, ["sensor_id", "latitude", "longitude"]]
        atomic_write(paths[-1], lambda tmp: table.to_csv(tmp, index=False, lineterminator="\n"))
    if result.adjacency is not None:
        paths.append(out / "adjacency.npz")
        save_adjacency(paths[-1], data.sensor_ids, result.adjacency)
    if result.distances is not None:
        paths.append(out / "distances.csv")
        write_distances(paths[-1], result.distances)
    paths.append(out / "import.json")
    text = json.dumps(result.summary(), indent=2) + "\n"
    atomic_write(paths[-1], lambda tmp: tmp.write_text(text))
    return paths


def grid_positions(
    stamps: pd.DatetimeIndex, src: str, freq_minutes: int | None = None
) -> tuple[pd.DatetimeIndex, np.ndarray, int]:
    """The regular grid that holds ``stamps``, each stamp's row on it, and the step in minutes.

    The step is ``freq_minutes``, or the most common difference between the distinct sorted
    stamps; the grid runs from the first stamp to the last, so gaps become missing rows.

    Raises:
        DataInputError: no stamps, a single stamp without ``freq_minutes``, a step that is not
            a whole number of minutes, or a stamp off the grid (named).

    Shapes:
        stamps (R,) in any order, repeats allowed -> grid (T,), positions (R,) int64.
    """
    if len(stamps) == 0:
        raise DataInputError(f"{src}: no readings")
    stamps = pd.DatetimeIndex(stamps).as_unit("ns")  # asi8 below counts nanoseconds
    distinct = np.unique(stamps.asi8)
    if freq_minutes is not None:
        step = freq_minutes * _NS_PER_MINUTE
    elif len(distinct) < 2:
        raise DataInputError(f"{src}: a single timestamp; cannot tell the time step")
    else:
        diffs, counts = np.unique(np.diff(distinct), return_counts=True)
        step = int(diffs[np.argmax(counts)])  # ties go to the smallest
        if step % _NS_PER_MINUTE:
            raise DataInputError(
                f"{src}: the most common time step, {pd.Timedelta(step)}, is not a whole number "
                "of minutes"
            )
    offsets = stamps.asi8 - distinct[0]
    off_grid = offsets % step != 0
    if off_grid.any():
        raise DataInputError(
            f"{src}: timestamp {stamps[int(np.argmax(off_grid))]} is not on the "
            f"{step // _NS_PER_MINUTE}-minute grid starting at {pd.Timestamp(distinct[0])}"
        )
    total = int((distinct[-1] - distinct[0]) // step) + 1
    grid = pd.date_range(
        pd.Timestamp(distinct[0]), periods=total, freq=f"{step // _NS_PER_MINUTE}min", unit="ns"
    )
    return grid, (offsets // step).astype(np.int64), int(step // _NS_PER_MINUTE)


def progress_bar(
    items: Sequence[_T] | Iterable[_T], desc: str, show: bool, unit: str = "file"
) -> Iterator[_T]:
    """``items``, with a tqdm bar on stderr when ``show``."""
    if not show:
        yield from items
        return
    yield from tqdm(items, desc=desc, unit=unit, leave=False)


def finite_readings(values: np.ndarray) -> tuple[np.ndarray, int]:
    """A mask of usable readings: finite and not negative; also the count of negative ones.

    Shapes:
        values (T, N) -> mask (T, N).
    """
    finite = np.isfinite(values)
    with np.errstate(invalid="ignore"):
        negative = finite & (values < 0)
    return finite & ~negative, int(negative.sum())
