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
them), so graphs of thousands of sensors are practical.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import signal, sparse
from scipy.sparse import csgraph

from trafficcast.data.errors import DataInputError
from trafficcast.data.io import write_speeds
from trafficcast.data.speeds import SpeedData
from trafficcast.graph.io import atomic_write

__all__ = ["SyntheticDataset", "make_synthetic", "write_synthetic"]

# Layout (metres).
_LA_LATITUDE, _LA_LONGITUDE = 34.05, -118.25
_METRES_PER_DEGREE = 111_320.0
_SPACING_M = (500.0, 2000.0)
_DISTANCE_CUTOFF_M = 8000.0  # pairs listed in the distances table, like DCRNN's nearby pairs
_UPSTREAM_REACH_M = 12_000.0  # incidents slow traffic this far back (further than listed)
_BRANCH_PROBABILITY = 0.7  # a new freeway starts at an interchange with an existing one
_ROAD_DETOUR = 1.15  # ramps are longer than the straight line between sensors

# Speeds (mph, minutes).
_FREE_FLOW_MPH = (60.0, 70.0)
_FLOOR_MPH = 5.0
_EVENTS_PER_SENSOR_DAY = 0.6  # on weekdays; half at weekends
_EVENT_DURATION_MIN = (20.0, 90.0)
_EVENT_DROP_MPH = (15.0, 40.0)
_SHOCK_KMH = (15.0, 20.0)
_UPSTREAM_DECAY_M = 5000.0
_DOWNSTREAM_REACH_M = 3000.0
_DOWNSTREAM_DECAY_M = 1500.0
_DOWNSTREAM_WEIGHT = 0.25
_DOWNSTREAM_SPEED_M_PER_MIN = 800.0  # ~48 km/h, traffic leaving the bottleneck
_ONSET_MIN = 10.0
_RECOVERY_MIN = 15.0
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


@dataclass
class _Layout:
    x_m: np.ndarray  # (N,)
    y_m: np.ndarray  # (N,)
    corridor: np.ndarray  # (N,) corridor of each sensor
    num_corridors: int
    edge_from: np.ndarray  # (E,) directed road segments between consecutive sensors
    edge_to: np.ndarray
    edge_m: np.ndarray


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

    layout = _make_layout(num_sensors, rng)
    d_from, d_to, d_cost = _road_distances(
        layout, num_sensors, max(_DISTANCE_CUTOFF_M, _UPSTREAM_REACH_M)
    )
    listed = d_cost <= _DISTANCE_CUTOFF_M

    # Minutes since the start, and calendar position of each step.
    minutes = np.arange(num_steps, dtype=np.float64) * freq_minutes
    hour = np.asarray((index - index.normalize()) / pd.Timedelta(hours=1), dtype=np.float64)
    weekday = np.asarray(index.day_of_week < 5)

    free_flow = rng.uniform(*_FREE_FLOW_MPH, size=num_sensors)
    rush = _rush_dips(layout, hour, weekday, rng)  # (T, N)
    congestion = _incident_congestion(
        num_sensors, num_steps, freq_minutes, minutes, hour, weekday, d_from, d_to, d_cost, rng
    )  # (T, N)
    noise = signal.lfilter(
        [1.0], [1.0, -_NOISE_AR], rng.standard_normal((num_steps, num_sensors)), axis=0
    ) * (_NOISE_MPH * math.sqrt(1 - _NOISE_AR**2))  # unit-variance AR(1) scaled to _NOISE_MPH

    speed = np.maximum(free_flow[None, :] - rush - congestion, _FLOOR_MPH) + noise
    del rush, congestion, noise
    np.clip(speed, 1.0, 80.0, out=speed)  # never 0: 0 means missing

    mask = _missing_mask(num_steps, num_sensors, freq_minutes, missing_rate, rng)
    values = np.where(mask, speed, 0.0).astype(np.float32)
    del speed

    ids = _sensor_ids(num_sensors, rng)
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
    latitude = _LA_LATITUDE + layout.y_m / _METRES_PER_DEGREE
    longitude = _LA_LONGITUDE + layout.x_m / (
        _METRES_PER_DEGREE * math.cos(math.radians(_LA_LATITUDE))
    )
    locations = pd.DataFrame(
        {"sensor_id": list(ids), "latitude": latitude.round(6), "longitude": longitude.round(6)}
    )
    locations["sensor_id"] = locations["sensor_id"].astype(str)
    speeds = SpeedData(
        index=index,
        sensor_ids=list(ids),
        values=values,
        mask=mask,
        freq_minutes=freq_minutes,
        source=f"synthetic(sensors={num_sensors}, days={num_days}, seed={seed})",
    )
    return SyntheticDataset(
        speeds=speeds, distances=distances, locations=locations, sensor_ids=list(ids)
    )


def write_synthetic(dataset: SyntheticDataset, output_dir: str | os.PathLike) -> list[Path]:
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


def _make_layout(num_sensors: int, rng: np.random.Generator) -> _Layout:
    """Freeways as straight two-way lines; each direction is a corridor (a sensor chain).

    A freeway either branches from an interchange with an earlier one (its outbound direction
    fed by the sensor there, its inbound direction feeding the next sensor downstream of it) or
    starts elsewhere in a region that grows with the number of freeways.
    """
    if num_sensors < 4:
        num_freeways, sizes = 1, np.array([num_sensors])
    else:
        num_freeways = max(1, min(num_sensors // 8, round(num_sensors / 24)))
        sizes = np.full(2 * num_freeways, num_sensors // (2 * num_freeways))
        sizes[: num_sensors % (2 * num_freeways)] += 1
    region_m = 15_000.0 * math.sqrt(num_freeways)

    x = np.empty(num_sensors)
    y = np.empty(num_sensors)
    corridor = np.empty(num_sensors, dtype=np.int64)
    chains: list[np.ndarray] = []  # sensor indices of each corridor, in travel order
    edges: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    placed = 0
    for f in range(num_freeways):
        heading = rng.uniform(0.0, 2.0 * math.pi)
        ux, uy = math.cos(heading), math.sin(heading)
        parent = -1
        if f > 0 and rng.random() < _BRANCH_PROBABILITY:
            parent = int(rng.integers(0, placed))
            gap = rng.uniform(600.0, 1200.0)
            ox, oy = x[parent] + gap * ux, y[parent] + gap * uy
        else:
            ox, oy = rng.uniform(-region_m / 2, region_m / 2, size=2)
        directions = (0, 1) if len(sizes) > 1 else (0,)
        for direction in directions:
            c = len(chains)
            n = int(sizes[c])
            along = np.concatenate([[0.0], np.cumsum(rng.uniform(*_SPACING_M, size=n - 1))])
            # Outbound (0) travels away from the freeway's origin, inbound (1) towards it, 30 m
            # to the side; the two directions share no road, so no edge joins them.
            if direction == 1:
                along = along[::-1]
            side = 0.0 if direction == 0 else 30.0
            members = np.arange(placed, placed + n)
            x[members] = ox + along * ux - side * uy
            y[members] = oy + along * uy + side * ux
            corridor[members] = c
            chains.append(members)
            edges.append((members[:-1], members[1:], np.abs(np.diff(along))))
            placed += n
            if parent >= 0:
                # Interchange: outbound starts from the parent's road, inbound merges into it.
                if direction == 0:
                    src, dst = parent, members[0]
                else:
                    parent_chain = chains[corridor[parent]]
                    k = int(np.searchsorted(parent_chain, parent))
                    src, dst = members[-1], int(parent_chain[min(k + 1, len(parent_chain) - 1)])
                straight = math.hypot(x[src] - x[dst], y[src] - y[dst])
                edges.append(
                    (
                        np.array([src]),
                        np.array([dst]),
                        np.array([max(straight, 300.0) * _ROAD_DETOUR]),
                    )
                )
    edge_from = np.concatenate([e[0] for e in edges]).astype(np.int64)
    edge_to = np.concatenate([e[1] for e in edges]).astype(np.int64)
    edge_m = np.concatenate([e[2] for e in edges]).astype(np.float64)
    return _Layout(x, y, corridor, len(chains), edge_from, edge_to, edge_m)


def _road_distances(
    layout: _Layout, num_sensors: int, limit_m: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directed shortest road distances up to ``limit_m``, self pairs (0 m) included.

    Shapes:
        returns from (P,), to (P,) int64 sensor positions and cost (P,) metres, sorted by
        (from, to).
    """
    graph = sparse.csr_matrix(
        (layout.edge_m, (layout.edge_from, layout.edge_to)), shape=(num_sensors, num_sensors)
    )
    froms, tos, costs = [], [], []
    chunk = 512  # bounds the dense (chunk, N) float64 distance block: 41 MB at N = 10,000
    for lo in range(0, num_sensors, chunk):
        rows = np.arange(lo, min(lo + chunk, num_sensors))
        block = csgraph.dijkstra(graph, directed=True, indices=rows, limit=limit_m)
        r, c = np.nonzero(np.isfinite(block))
        froms.append(rows[r])
        tos.append(c)
        costs.append(block[r, c])
    return (
        np.concatenate(froms).astype(np.int64),
        np.concatenate(tos).astype(np.int64),
        np.concatenate(costs),
    )


def _rush_dips(
    layout: _Layout, hour: np.ndarray, weekday: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Recurrent morning and evening slowdowns, per corridor, scaled per sensor.

    Shapes:
        hour, weekday (T,) -> (T, N) mph.
    """
    c = layout.num_corridors
    morning_mph = rng.uniform(3.0, 18.0, size=c)
    evening_mph = rng.uniform(3.0, 20.0, size=c)
    morning_h = rng.uniform(7.3, 8.7, size=c)
    evening_h = rng.uniform(16.8, 18.2, size=c)
    width_h = rng.uniform(0.8, 1.4, size=(2, c))
    per_sensor = rng.uniform(0.7, 1.3, size=len(layout.corridor))
    day_scale = np.where(weekday, 1.0, 0.25)[:, None]  # (T, 1): weekends are lighter
    dips = morning_mph * np.exp(-0.5 * ((hour[:, None] - morning_h) / width_h[0]) ** 2)
    dips += evening_mph * np.exp(-0.5 * ((hour[:, None] - evening_h) / width_h[1]) ** 2)
    dips *= day_scale  # (T, C)
    return dips[:, layout.corridor] * per_sensor  # (T, N)


def _incident_congestion(
    num_sensors: int,
    num_steps: int,
    freq_minutes: int,
    minutes: np.ndarray,
    hour: np.ndarray,
    weekday: np.ndarray,
    d_from: np.ndarray,
    d_to: np.ndarray,
    d_cost: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Speed drops of random incidents, spread upstream as a shockwave (and weakly downstream).

    Every (incident, affected sensor) pair gets a smooth trapezoid in time: it starts when the
    wave arrives (road distance / wave speed after the incident), ramps down over
    ``_ONSET_MIN``, holds for the incident's duration, and recovers over ``_RECOVERY_MIN``; its
    depth fades with road distance. Pairs are expanded with NumPy and summed with one
    ``bincount`` per chunk; no Python loop runs over events.

    Shapes:
        returns (T, N) mph.
    """
    # Incident rate per step: peaks in the rush hours on weekdays, a midday bump at weekends.
    rush = 0.35 + 1.6 * np.exp(-0.5 * ((hour - 8.0) / 1.0) ** 2)
    rush += 1.8 * np.exp(-0.5 * ((hour - 17.5) / 1.2) ** 2)
    calm = 0.35 + 0.8 * np.exp(-0.5 * ((hour - 13.0) / 2.5) ** 2)
    steps_per_day = 1440.0 / freq_minutes
    weekday_mean = 0.35 + (1.6 * 1.0 + 1.8 * 1.2) * math.sqrt(2 * math.pi) / 24.0
    intensity = np.where(weekday, rush, 0.5 * calm * weekday_mean / calm.mean())
    per_step = intensity / weekday_mean * _EVENTS_PER_SENSOR_DAY / steps_per_day * num_sensors
    num_events = int(rng.poisson(per_step.sum()))
    drop = np.zeros(num_steps * num_sensors, dtype=np.float64)
    if num_events == 0:
        return drop.reshape(num_steps, num_sensors)

    step = rng.choice(num_steps, size=num_events, p=per_step / per_step.sum())
    t0 = minutes[step] + rng.uniform(0.0, freq_minutes, size=num_events)  # (E,) minutes
    origin = rng.integers(0, num_sensors, size=num_events)
    duration = rng.uniform(*_EVENT_DURATION_MIN, size=num_events)
    depth = rng.uniform(*_EVENT_DROP_MPH, size=num_events)
    shock = rng.uniform(*_SHOCK_KMH, size=num_events) * 1000.0 / 60.0  # m/min

    # Who feels an incident at each origin: itself, the sensors upstream (pairs u -> origin)
    # and the nearest downstream ones (origin -> w).
    upstream = (d_from != d_to) & (d_cost <= _UPSTREAM_REACH_M)
    downstream = upstream & (d_cost <= _DOWNSTREAM_REACH_M)
    hit_origin = np.concatenate([d_to[upstream], d_from[downstream], np.arange(num_sensors)])
    hit_sensor = np.concatenate([d_from[upstream], d_to[downstream], np.arange(num_sensors)])
    hit_m = np.concatenate([d_cost[upstream], d_cost[downstream], np.zeros(num_sensors)])
    kind = np.concatenate(
        [
            np.full(int(upstream.sum()), 1),
            np.full(int(downstream.sum()), 2),
            np.zeros(num_sensors, dtype=np.int64),
        ]
    )
    weight = np.where(
        kind == 1,
        np.exp(-hit_m / _UPSTREAM_DECAY_M),
        np.where(kind == 2, _DOWNSTREAM_WEIGHT * np.exp(-hit_m / _DOWNSTREAM_DECAY_M), 1.0),
    )
    order = np.argsort(hit_origin, kind="stable")
    hit_sensor, hit_m, kind, weight = hit_sensor[order], hit_m[order], kind[order], weight[order]
    degree = np.bincount(hit_origin, minlength=num_sensors)
    first_hit = np.concatenate([[0], np.cumsum(degree)[:-1]])  # CSR row starts by origin

    # (event, affected sensor) pairs, expanded without a Python loop over events.
    counts = degree[origin]
    pair_event = np.repeat(np.arange(num_events), counts)  # (P,)
    within = np.arange(len(pair_event)) - np.repeat(np.cumsum(counts) - counts, counts)
    hit = first_hit[origin[pair_event]] + within  # (P,) rows of the hit table
    lag = np.where(
        kind[hit] == 1,
        hit_m[hit] / shock[pair_event],
        hit_m[hit] / _DOWNSTREAM_SPEED_M_PER_MIN,
    )
    arrival = t0[pair_event] + lag  # (P,) minutes
    amplitude = depth[pair_event] * weight[hit] * rng.uniform(0.85, 1.15, size=len(hit))
    pair_duration = duration[pair_event]
    pair_sensor = hit_sensor[hit]

    span = int(math.ceil((_EVENT_DURATION_MIN[1] + _RECOVERY_MIN) / freq_minutes)) + 1
    offsets = np.arange(span)
    chunk = max(1, 4_000_000 // span)  # bounds the (pairs, span) temporaries
    for lo in range(0, len(arrival), chunk):
        sl = slice(lo, lo + chunk)
        first_step = np.ceil(arrival[sl] / freq_minutes).astype(np.int64)
        steps = first_step[:, None] + offsets  # (p, span)
        tau = steps * freq_minutes - arrival[sl, None]  # minutes since the wave arrived
        profile = _smoothstep(tau / _ONSET_MIN) * _smoothstep(
            (pair_duration[sl, None] + _RECOVERY_MIN - tau) / _RECOVERY_MIN
        )
        keep = (steps < num_steps) & (profile > 0)
        flat = steps * num_sensors + pair_sensor[sl, None]
        drop += np.bincount(
            flat[keep],
            weights=(amplitude[sl, None] * profile)[keep],
            minlength=num_steps * num_sensors,
        )
    return drop.reshape(num_steps, num_sensors)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


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
