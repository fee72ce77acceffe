"""The traffic of the synthetic data: rush-hour dips and incidents that travel along the roads.

Part of :mod:`~trafficcast.data.synthetic`, which describes the whole generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from trafficcast.data.synthetic_layout import Layout

__all__ = ["UPSTREAM_REACH_M", "incident_congestion", "rush_dips"]

UPSTREAM_REACH_M = 12_000.0  # incidents slow traffic this far back (further than listed)
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


def rush_dips(
    layout: Layout, hour: np.ndarray, weekday: np.ndarray, rng: np.random.Generator
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
    by_sensor: np.ndarray = dips[:, layout.corridor] * per_sensor  # (T, N)
    return by_sensor


@dataclass
class _Events:
    """Random incidents: when (minutes since the start), where, how long, how deep, how fast the
    shockwave travels (m/min). Shapes: every field (E,)."""

    t0: np.ndarray
    origin: np.ndarray
    duration: np.ndarray
    depth: np.ndarray
    shock: np.ndarray


@dataclass
class _Hits:
    """Who feels an incident at each origin, as CSR rows by origin: the sensor, its road
    distance, its kind (0 the origin, 1 upstream, 2 downstream) and the weight of the drop there.
    Shapes: sensor, metres, kind, weight (H,); degree, first (N,)."""

    sensor: np.ndarray
    metres: np.ndarray
    kind: np.ndarray
    weight: np.ndarray
    degree: np.ndarray
    first: np.ndarray


def incident_congestion(
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
        minutes, hour, weekday (T,); d_from, d_to, d_cost (P,) -> (T, N) mph.
    """
    events = _draw_events(num_sensors, num_steps, freq_minutes, minutes, hour, weekday, rng)
    if events is None:
        return np.zeros((num_steps, num_sensors), dtype=np.float64)
    hits = _hit_table(num_sensors, d_from, d_to, d_cost)

    # (event, affected sensor) pairs, expanded without a Python loop over events.
    counts = hits.degree[events.origin]
    pair_event = np.repeat(np.arange(len(events.t0)), counts)  # (P,)
    within = np.arange(len(pair_event)) - np.repeat(np.cumsum(counts) - counts, counts)
    hit = hits.first[events.origin[pair_event]] + within  # (P,) rows of the hit table
    lag = np.where(
        hits.kind[hit] == 1,
        hits.metres[hit] / events.shock[pair_event],
        hits.metres[hit] / _DOWNSTREAM_SPEED_M_PER_MIN,
    )
    arrival = events.t0[pair_event] + lag  # (P,) minutes
    amplitude = events.depth[pair_event] * hits.weight[hit] * rng.uniform(0.85, 1.15, size=len(hit))
    drop = _sum_profiles(
        arrival,
        amplitude,
        events.duration[pair_event],
        hits.sensor[hit],
        (num_steps, num_sensors),
        freq_minutes,
    )
    return drop.reshape(num_steps, num_sensors)


def _draw_events(
    num_sensors: int,
    num_steps: int,
    freq_minutes: int,
    minutes: np.ndarray,
    hour: np.ndarray,
    weekday: np.ndarray,
    rng: np.random.Generator,
) -> _Events | None:
    """The incidents, or None when none happens.

    Their rate per step peaks in the rush hours on weekdays; at weekends it has a midday bump
    and half the weekday total.
    """
    rush = 0.35 + 1.6 * np.exp(-0.5 * ((hour - 8.0) / 1.0) ** 2)
    rush += 1.8 * np.exp(-0.5 * ((hour - 17.5) / 1.2) ** 2)
    calm = 0.35 + 0.8 * np.exp(-0.5 * ((hour - 13.0) / 2.5) ** 2)
    steps_per_day = 1440.0 / freq_minutes
    weekday_mean = 0.35 + (1.6 * 1.0 + 1.8 * 1.2) * math.sqrt(2 * math.pi) / 24.0
    intensity = np.where(weekday, rush, 0.5 * calm * weekday_mean / calm.mean())
    per_step = intensity / weekday_mean * _EVENTS_PER_SENSOR_DAY / steps_per_day * num_sensors
    num_events = int(rng.poisson(per_step.sum()))
    if num_events == 0:
        return None
    step = rng.choice(num_steps, size=num_events, p=per_step / per_step.sum())
    t0 = minutes[step] + rng.uniform(0.0, freq_minutes, size=num_events)  # (E,) minutes
    origin = rng.integers(0, num_sensors, size=num_events)
    duration = rng.uniform(*_EVENT_DURATION_MIN, size=num_events)
    depth = rng.uniform(*_EVENT_DROP_MPH, size=num_events)
    shock = rng.uniform(*_SHOCK_KMH, size=num_events) * 1000.0 / 60.0  # m/min
    return _Events(t0=t0, origin=origin, duration=duration, depth=depth, shock=shock)


def _hit_table(num_sensors: int, d_from: np.ndarray, d_to: np.ndarray, d_cost: np.ndarray) -> _Hits:
    """Who feels an incident at each origin: itself, the sensors upstream (pairs u -> origin)
    and the nearest downstream ones (origin -> w), with the weight of the drop at each."""
    upstream = (d_from != d_to) & (d_cost <= UPSTREAM_REACH_M)
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
    degree = np.bincount(hit_origin, minlength=num_sensors)
    first_hit = np.concatenate([[0], np.cumsum(degree)[:-1]])  # CSR row starts by origin
    return _Hits(
        sensor=hit_sensor[order],
        metres=hit_m[order],
        kind=kind[order],
        weight=weight[order],
        degree=degree,
        first=first_hit,
    )


def _sum_profiles(
    arrival: np.ndarray,
    amplitude: np.ndarray,
    duration: np.ndarray,
    sensor: np.ndarray,
    shape: tuple[int, int],
    freq_minutes: int,
) -> np.ndarray:
    """Every pair's trapezoid in time, summed into the flat (step, sensor) grid.

    Shapes:
        arrival, amplitude, duration, sensor (P,) -> (T * N,) mph.
    """
    num_steps, num_sensors = shape
    drop = np.zeros(num_steps * num_sensors, dtype=np.float64)
    span = int(math.ceil((_EVENT_DURATION_MIN[1] + _RECOVERY_MIN) / freq_minutes)) + 1
    offsets = np.arange(span)
    chunk = max(1, 4_000_000 // span)  # bounds the (pairs, span) temporaries
    for lo in range(0, len(arrival), chunk):
        sl = slice(lo, lo + chunk)
        first_step = np.ceil(arrival[sl] / freq_minutes).astype(np.int64)
        steps = first_step[:, None] + offsets  # (p, span)
        tau = steps * freq_minutes - arrival[sl, None]  # minutes since the wave arrived
        profile = _smoothstep(tau / _ONSET_MIN) * _smoothstep(
            (duration[sl, None] + _RECOVERY_MIN - tau) / _RECOVERY_MIN
        )
        keep = (steps < num_steps) & (profile > 0)
        flat = steps * num_sensors + sensor[sl, None]
        drop += np.bincount(
            flat[keep],
            weights=(amplitude[sl, None] * profile)[keep],
            minlength=num_steps * num_sensors,
        )
    return drop


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    smooth: np.ndarray = x * x * (3.0 - 2.0 * x)
    return smooth
