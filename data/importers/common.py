"""What the importers share: the result they return, its writer, the time grid and small checks.

An importer reads one public layout and returns an :class:`ImportResult`: the readings as a
:class:`~trafficcast.data.io.SpeedData` (whatever the quantity: speed, flow or occupancy), the sensors'
coordinates, the graph the layout gives (road distances or ready-made weights), and an account of
what was read, dropped and found missing. :func:`write_import` writes it in the project's formats.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from trafficcast.data.errors import DataInputError
from trafficcast.data.grid import parse_freq_minutes, parse_start
from trafficcast.data.io import write_speeds
from trafficcast.data.speeds import SpeedData
from trafficcast.graph.io import atomic_write, save_adjacency, write_distances

__all__ = [
    "QUANTITIES",
    "ImportResult",
    "finite_readings",
    "grid_positions",
    "listing",
    "parse_freq_minutes",
    "parse_start",
    "progress_bar",
    "write_import",
]

QUANTITIES = ("speed", "flow", "occupancy")
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
            order, when the layout gives weights rather than distances.
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
    inputs: list[str] = field(default_factory=list)
    read: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def config_advice(self) -> str | None:
        """The config line that makes training read this quantity right, or None for speeds."""
        if self.quantity == "speed":
            return None
        return f"data: {{quantity: {self.quantity}, missing: nan}}"

    def graph_kind(self) -> str | None:
        """``adjacency`` or ``distances``: which graph file the import writes (None: neither)."""
        if self.adjacency is not None:
            return "adjacency"
        return "distances" if self.distances is not None else None

    def summary(self) -> dict:
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
            "graph": self.graph_kind(),
            "config": self.config_advice(),
            "notes": list(self.notes),
        }


def write_import(result: ImportResult, output_dir: str | os.PathLike) -> list[Path]:
    """Write ``result`` into ``output_dir`` (created if needed), each file atomically.

    Files: ``speeds.h5`` (key ``df``, the METR-LA layout, whatever the quantity; missing
    readings are empty (NaN), never 0, so that a real zero flow stays a reading),
    ``sensor_ids.txt`` (comma-separated, the table's column order), ``locations.csv``
    (``sensor_id,latitude,longitude``) when any sensor has coordinates, ``distances.csv``
    (``from,to,cost``) or ``adjacency.npz`` (``sensor_ids``, ``adj_mx``) when the layout gives
    a graph, and ``import.json`` (:meth:`ImportResult.summary`).

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
    elif result.distances is not None:
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
    from tqdm import tqdm

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


def listing(items: Sequence[object], limit: int = 5) -> str:
    """Up to ``limit`` items, comma-separated, then how many more."""
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
