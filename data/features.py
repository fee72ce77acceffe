"""Calendar features of a time index, as DCRNN feeds them to the model."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["day_of_week", "time_features", "time_of_day"]


def _as_index(index: pd.DatetimeIndex | np.ndarray | pd.Series) -> pd.DatetimeIndex:
    if isinstance(index, pd.DatetimeIndex):
        return index
    converted: pd.DatetimeIndex = pd.DatetimeIndex(index)
    return converted


def time_of_day(index: pd.DatetimeIndex | np.ndarray) -> np.ndarray:
    """Fraction of the day elapsed at each timestamp, in [0, 1).

    DCRNN's ``time_in_day``: ``(t - t.normalize()) / 1 day``, so 00:00 -> 0 and 12:00 -> 0.5.
    Computed in float64 and cast at the end so 23:55 stays below 1.

    Shapes:
        index (T,) -> (T,) float32.
    """
    index = _as_index(index)
    fraction = (index - index.normalize()) / pd.Timedelta(days=1)
    return np.asarray(fraction, dtype=np.float64).astype(np.float32)


def day_of_week(index: pd.DatetimeIndex | np.ndarray) -> np.ndarray:
    """Day of the week of each timestamp, Monday = 0 ... Sunday = 6.

    Shapes:
        index (T,) -> (T,) int64.
    """
    return np.asarray(_as_index(index).day_of_week, dtype=np.int64)


def time_features(index: pd.DatetimeIndex | np.ndarray, day_of_week: bool = False) -> np.ndarray:
    """Per-timestamp features: time of day, optionally followed by a one-hot day of week.

    As DCRNN's ``generate_training_data.py`` (``add_time_in_day``, ``add_day_in_week``).

    Shapes:
        index (T,) -> (T, 1) float32, or (T, 8) with ``day_of_week``: column 0 time of day,
        columns 1..7 one-hot Monday..Sunday.
    """
    index = _as_index(index)
    tod = time_of_day(index)
    if not day_of_week:
        return tod[:, None]
    onehot = np.zeros((len(index), 7), dtype=np.float32)
    onehot[np.arange(len(index)), _day_of_week(index)] = 1.0
    return np.concatenate([tod[:, None], onehot], axis=1)


# The parameter of time_features shadows the function inside it.
_day_of_week = day_of_week
