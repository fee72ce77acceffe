"""The retraining job's data: the ``--data`` file merged with the readings the service stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trafficcast.app.db import describe
from trafficcast.app.observations import read_readings
from trafficcast.data import SpeedData
from trafficcast.data.errors import DataInputError

# Readings further apart than this would make the merged series mostly an empty grid.
MAX_GAP = pd.Timedelta(days=7)


def merge_observations(speeds: SpeedData, db: str | Path) -> tuple[SpeedData, dict[str, Any]]:
    """``speeds`` extended and overridden by the readings in the observation store ``db``.

    The store's readings win where both have one (same sensor, same time). Sensors the store has
    but the file lacks are left out (the model's sensors come from the file and the graph), and
    said so; readings off the file's time grid are left out. The grid runs from the earlier start
    to the later end; a gap over :data:`MAX_GAP` is refused.

    Shapes: ``speeds`` ``(T, N)`` -> ``(T', N)`` with ``T' >= T``.
    """
    readings = read_readings(db)
    info: dict[str, Any] = {"path": describe(db), "readings": 0, "overridden": 0, "new_steps": 0}
    if readings.empty:
        return speeds, info
    known = set(speeds.sensor_ids)
    store_sensors = sorted(set(readings["sensor_id"]))
    unknown = [s for s in store_sensors if s not in known]
    if len(unknown) == len(store_sensors):
        raise DataInputError(
            f"{describe(db)}: none of its {len(store_sensors)} sensors is in {speeds.source} "
            f"(e.g. {', '.join(unknown[:3])}): the observations belong to another sensor network"
        )
    if unknown:
        info["ignored_sensors"] = len(unknown)
        info["ignored_sensor_examples"] = unknown[:5]
        readings = readings[readings["sensor_id"].isin(known)]
    freq_ns = pd.Timedelta(minutes=speeds.freq_minutes).value
    origin = speeds.index[0].value
    stamps_ns = readings["timestamp"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    on_grid = (stamps_ns - origin) % freq_ns == 0
    if not on_grid.all():
        info["off_grid"] = int((~on_grid).sum())
        readings, stamps_ns = readings[on_grid], stamps_ns[on_grid]
    if len(readings) == 0:
        return speeds, info
    # Gaps: the file is regular, so only the readings outside it can leave one.
    times = np.union1d(np.unique(stamps_ns), speeds.index.asi8)
    gaps = np.diff(times)
    if len(gaps) and gaps.max() > MAX_GAP.value:
        k = int(np.argmax(gaps))
        raise DataInputError(
            f"{describe(db)}: {pd.Timedelta(int(gaps[k]))} without a reading between "
            f"{pd.Timestamp(times[k])} and {pd.Timestamp(times[k + 1])} ({speeds.source} and the "
            f"store together); the limit is {MAX_GAP.days} days: give a --data file that reaches "
            "the store's readings"
        )
    start, end = int(times[0]), int(times[-1])
    index = pd.date_range(pd.Timestamp(start), pd.Timestamp(end), freq=f"{speeds.freq_minutes}min")
    values = np.zeros((len(index), speeds.num_sensors), dtype=np.float32)  # (T', N)
    mask = np.zeros((len(index), speeds.num_sensors), dtype=bool)
    offset = (speeds.index[0].value - start) // freq_ns
    values[offset : offset + speeds.num_steps] = speeds.values
    mask[offset : offset + speeds.num_steps] = speeds.mask
    rows = (stamps_ns - start) // freq_ns
    column = {sid: k for k, sid in enumerate(speeds.sensor_ids)}
    cols = readings["sensor_id"].map(column).to_numpy(dtype=np.int64)
    info["readings"] = int(len(rows))
    info["overridden"] = int(mask[rows, cols].sum())
    values[rows, cols] = readings["speed"].to_numpy(dtype=np.float32)
    mask[rows, cols] = True
    info["new_steps"] = int(len(index) - speeds.num_steps)
    merged = SpeedData(
        index=index,
        sensor_ids=list(speeds.sensor_ids),
        values=values,
        mask=mask,
        freq_minutes=speeds.freq_minutes,
        source=f"{speeds.source} + {describe(db)}",
        missing=speeds.missing,
    )
    return merged, info
