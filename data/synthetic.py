"""METR-LA-style synthetic traffic at any size, built so that the road graph matters.

The generator lays sensors along directed freeway corridors (each freeway has two directions,
which do not exchange traffic), joins some freeways at interchanges, and produces speeds as

.. math::

    v_{t,i} = \\max(f_i - r_{t,i} - c_{t,i},\\ 5) + \\epsilon_{t,i}

with :math:`f_i` the free-flow speed (60-70 mph), :math:`r` the recurrent rush-hour dips (they
differ by corridor and are lighter at weekends), :math:`c` the congestion of random incidents
and :math:`\\epsilon` AR(1) noise; speeds stay in [1, 80] mph and missing readings are 0, as in
METR-LA. What makes the graph useful for forecasting is :math:`c`: an incident starts at one
sensor and its slowdown travels UPSTREAM along the road as a shockwave at 15-20 km/h (2 km in
6-8 minutes), fading with road distance, and weakly downstream. A sensor's future therefore
depends on its downstream neighbours' present, which a per-sensor model cannot see.

The distances table has the DCRNN format (``from, to, cost`` in metres): directed road
distances along the travel direction for all pairs at most 8 km apart, and self pairs with
cost 0. Generation is vectorised over sensors, time steps and events (no Python loop over any of
them), so graphs of thousands of sensors are practical. The road network is built in
:mod:`~trafficcast.data.synthetic_layout`, the traffic on it in
:mod:`~trafficcast.data.synthetic_traffic`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import signal

from trafficcast.data.errors import DataInputError
from trafficcast.data.io import write_speeds
from trafficcast.data.speeds import SpeedData
from trafficcast.data.synthetic_layout import Layout, make_layout, road_distances
from trafficcast.data.synthetic_traffic import UPSTREAM_REACH_M, incident_congestion, rush_dips
from trafficcast.graph.io import atomic_write

__all__ = ["SyntheticDataset", "make_synthetic", "write_synthetic"]

_LA_LATITUDE, _LA_LONGITUDE = 34.05, -118.25
_METRES_PER_DEGREE = 111_320.0
_DISTANCE_CUTOFF_M = 8000.0  # pairs listed in the distances table, like DCRNN's nearby pairs

# Speeds (mph, minutes).
_FREE_FLOW_MPH = (60.0, 70.0)
_FLOOR_MPH = 5.0
_OUTAGE_SHARE = 0.25  # share of the missing readings that come from outages
_OUTAGE_MIN = (30.0, 120.0)
_NOISE_AR = 0.7
_NOISE_MPH = 1.0


@dataclass
class SyntheticDataset:
    """Speeds with their road network, in the files' formats.

    Attributes:
        speeds: the speeds (missing readings 0 with mask False).
        distances: ``from``, ``to`` (sensor ids, str), ``cost`` (road distance in metres).
        locations: ``sensor_id`` (str), ``latitude``, ``longitude``.
        sensor_ids: the ids in column order.
    """

    speeds: SpeedData
    distances: pd.DataFrame
    locations: pd.DataFrame
    sensor_ids: list[str]


def make_synthetic(
    num_sensors: int = 50,
    num_days: int = 7,
    seed: int = 0,
    missing_rate: float = 0.02,
    freq_minutes: int = 5,
    start: str = "2012-03-01",
) -> SyntheticDataset:
    """Generate a deterministic (for ``seed``) METR-LA-like dataset.

    Args:
        num_sensors: number of sensors (at least 2).
        num_days: days of data.
        seed: seed of every random draw.
        missing_rate: expected fraction of missing readings, about 3/4 single readings at random
            and 1/4 sensor outages of 30-120 minutes.
        freq_minutes: time step.
        start: first timestamp.

    Shapes:
        speeds.values/mask (num_days * 1440 // freq_minutes, num_sensors).
    """
    _validate(num_sensors, num_days, missing_rate, freq_minutes)
    try:
        start_ts = pd.Timestamp(start)
    except (ValueError, TypeError) as exc:
        raise DataInputError(f"synthetic data: cannot read start {start!r} as a time") from exc
    if start_ts.tz is not None:
        start_ts = start_ts.tz_convert("UTC").tz_localize(None)
    rng = np.random.default_rng(seed)
    num_steps = num_days * 1440 // freq_minutes
    index = pd.date_range(start_ts, periods=num_steps, freq=f"{freq_minutes}min", unit="ns")

    layout = make_layout(num_sensors, rng)
    d_from, d_to, d_cost = road_distances(
        layout, num_sensors, max(_DISTANCE_CUTOFF_M, UPSTREAM_REACH_M)
    )
    speed = _speeds(layout, index, freq_minutes, (d_from, d_to, d_cost), rng)  # (T, N)
    mask = _missing_mask(num_steps, num_sensors, freq_minutes, missing_rate, rng)
    values = np.where(mask, speed, 0.0).astype(np.float32)
    del speed

    ids = _sensor_ids(num_sensors, rng)
    listed = d_cost <= _DISTANCE_CUTOFF_M
    id_array = np.asarray(ids, dtype=object)
    distances = pd.DataFrame(
        {
            "from": id_array[d_from[listed]],
            "to": id_array[d_to[listed]],
            "cost": np.round(d_cost[listed], 1),
        }
    )
    distances["from"] = distances["from"].astype(str)
    distances["to"] = distances["to"].astype(str)
    speeds = SpeedData(
        index=index,
        sensor_ids=list(ids),
        values=values,
        mask=mask,
        freq_minutes=freq_minutes,
        source=f"synthetic(sensors={num_sensors}, days={num_days}, seed={seed})",
    )
    return SyntheticDataset(
        speeds=speeds, distances=distances, locations=_locations(layout, ids), sensor_ids=list(ids)
    )


def _speeds(
    layout: Layout,
    index: pd.DatetimeIndex,
    freq_minutes: int,
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
    rng: np.random.Generator,
) -> np.ndarray:
    """Free flow less the rush-hour dips and the incidents, floored, plus AR(1) noise, in
    [1, 80] mph. ``pairs`` are the road distances (from, to, metres) incidents travel along.

    Shapes:
        index (T,) -> (T, N) mph.
    """
    num_steps, num_sensors = len(index), len(layout.corridor)
    # Minutes since the start, and calendar position of each step.
    minutes = np.arange(num_steps, dtype=np.float64) * freq_minutes
    hour = np.asarray((index - index.normalize()) / pd.Timedelta(hours=1), dtype=np.float64)
    weekday = np.asarray(index.day_of_week < 5)

    free_flow = rng.uniform(*_FREE_FLOW_MPH, size=num_sensors)
    rush = rush_dips(layout, hour, weekday, rng)  # (T, N)
    congestion = incident_congestion(
        num_sensors, num_steps, freq_minutes, minutes, hour, weekday, *pairs, rng
    )  # (T, N)
    noise = signal.lfilter(
        [1.0], [1.0, -_NOISE_AR], rng.standard_normal((num_steps, num_sensors)), axis=0
    ) * (_NOISE_MPH * math.sqrt(1 - _NOISE_AR**2))  # unit-variance AR(1) scaled to _NOISE_MPH

    speed: np.ndarray = np.maximum(free_flow[None, :] - rush - congestion, _FLOOR_MPH) + noise
    del rush, congestion, noise
    np.clip(speed, 1.0, 80.0, out=speed)  # never 0: 0 means missing
    return speed


def _locations(layout: Layout, ids: list[str]) -> pd.DataFrame:
    """``sensor_id, latitude, longitude``: the layout's metres placed around Los Angeles."""
    latitude = _LA_LATITUDE + layout.y_m / _METRES_PER_DEGREE
    longitude = _LA_LONGITUDE + layout.x_m / (
        _METRES_PER_DEGREE * math.cos(math.radians(_LA_LATITUDE))
    )
    locations: pd.DataFrame = pd.DataFrame(
        {"sensor_id": list(ids), "latitude": latitude.round(6), "longitude": longitude.round(6)}
    )
    locations["sensor_id"] = locations["sensor_id"].astype(str)
    return locations


def write_synthetic(dataset: SyntheticDataset, output_dir: str | os.PathLike[str]) -> list[Path]:
    """Write the dataset as DCRNN-style files, each atomically; returns the paths written.

    ``speeds.h5`` (key ``df``), ``distances.csv`` (``from,to,cost`` with header),
    ``sensor_ids.txt`` (comma-separated, like DCRNN's ``graph_sensor_ids.txt``) and
    ``locations.csv`` (``sensor_id,latitude,longitude``).
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise DataInputError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        out / "speeds.h5",
        out / "distances.csv",
        out / "sensor_ids.txt",
        out / "locations.csv",
    ]
    write_speeds(dataset.speeds, paths[0])
    atomic_write(paths[1], lambda tmp: dataset.distances.to_csv(tmp, index=False))
    atomic_write(paths[2], lambda tmp: tmp.write_text(",".join(dataset.sensor_ids)))
    atomic_write(paths[3], lambda tmp: dataset.locations.to_csv(tmp, index=False))
    return paths


def _validate(num_sensors: int, num_days: int, missing_rate: float, freq_minutes: int) -> None:
    def whole(v: object) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not whole(num_sensors) or num_sensors < 2:
        raise DataInputError(f"synthetic data: sensors must be an integer >= 2, not {num_sensors}")
    if not whole(num_days) or num_days < 1:
        raise DataInputError(f"synthetic data: days must be an integer >= 1, not {num_days}")
    if not whole(freq_minutes) or not 1 <= freq_minutes <= 1440:
        raise DataInputError(
            f"synthetic data: freq_minutes must be an integer in 1..1440, not {freq_minutes}"
        )
    if not (isinstance(missing_rate, (int, float)) and 0.0 <= missing_rate <= 0.5):
        raise DataInputError(
            f"synthetic data: missing rate must be between 0 and 0.5, not {missing_rate}"
        )


def _missing_mask(
    num_steps: int,
    num_sensors: int,
    freq_minutes: int,
    missing_rate: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """True = observed. Outages (a sensor silent 30-120 minutes) plus single readings at random.

    The single-reading rate is set after the outages so the total is ``missing_rate`` on
    average.

    Shapes:
        returns (T, N) bool.
    """
    mask = np.ones((num_steps, num_sensors), dtype=bool)
    if missing_rate <= 0:
        return mask
    cells = num_steps * num_sensors
    mean_len = (sum(_OUTAGE_MIN) / 2) / freq_minutes
    num_outages = int(rng.poisson(_OUTAGE_SHARE * missing_rate * cells / mean_len))
    if num_outages:
        length = np.maximum(
            1, np.round(rng.uniform(*_OUTAGE_MIN, size=num_outages) / freq_minutes)
        ).astype(np.int64)
        first = rng.integers(0, num_steps, size=num_outages)
        sensor = rng.integers(0, num_sensors, size=num_outages)
        rows = np.repeat(first, length) + (
            np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length)
        )
        cols = np.repeat(sensor, length)
        keep = rows < num_steps
        mask[rows[keep], cols[keep]] = False
    outage_fraction = 1.0 - mask.mean()
    if outage_fraction < missing_rate:
        p = (missing_rate - outage_fraction) / (1.0 - outage_fraction)
        mask &= rng.random((num_steps, num_sensors), dtype=np.float32) >= p
    return mask


def _sensor_ids(num_sensors: int, rng: np.random.Generator) -> list[str]:
    # Six-digit ids like METR-LA's, unique, in no particular order.
    numbers = rng.choice(900_000, size=num_sensors, replace=False) + 100_000
    return [str(int(n)) for n in numbers]
