"""Non-learned baselines: persistence and the historical average by time of day.

Both work on raw (unscaled) speeds with the missing mask, in the layout of the learned models'
outputs, so that every model is scored by the same metric code on the same windows.
"""

from __future__ import annotations

import numpy as np


def persistence_forecast(
    x: np.ndarray, x_mask: np.ndarray, horizon: int, fallback: np.ndarray | float
) -> np.ndarray:
    """Each sensor's last observed value in the input window, repeated for every future step.

    A sensor with no observation in the window gets ``fallback`` (per sensor or one value).

    Shapes:
        x, x_mask: ``(B, T, N)`` raw speeds and True-where-observed.
        fallback: ``(N,)`` or scalar.
        returns: ``(B, horizon, N)``.
    """
    b, t, n = x.shape
    observed_any = x_mask.any(axis=1)  # (B, N)
    # Index of the last observed step per (batch, sensor): argmax over the reversed time axis.
    last = t - 1 - np.argmax(x_mask[:, ::-1, :], axis=1)  # (B, N)
    values = np.take_along_axis(x, last[:, None, :], axis=1)[:, 0, :]  # (B, N)
    fallback = np.broadcast_to(np.asarray(fallback, dtype=x.dtype), (n,))
    values = np.where(observed_any, values, fallback[None, :])
    return np.repeat(values[:, None, :], horizon, axis=1)


class HistoricalAverage:
    """The mean observed speed of each sensor at each time of day, over the training period.

    Slots are time-of-day bins of the data's frequency (288 for 5-minute data). A slot a sensor
    was never observed in falls back to that sensor's overall mean, then to the global mean.

    Shapes: ``fit(values (T, N), mask (T, N), slots (T,))``; ``predict(slots (B, H)) -> (B, H, N)``.
    """

    def __init__(self, num_slots: int) -> None:
        self.num_slots = num_slots
        self.table: np.ndarray | None = None  # (num_slots, N)

    def fit(self, values: np.ndarray, mask: np.ndarray, slots: np.ndarray) -> HistoricalAverage:
        t, n = values.shape
        sums = np.zeros((self.num_slots, n), dtype=np.float64)
        counts = np.zeros((self.num_slots, n), dtype=np.float64)
        np.add.at(sums, slots, np.where(mask, values, 0.0))
        np.add.at(counts, slots, mask.astype(np.float64))
        total = mask.sum()
        global_mean = float(np.where(mask, values, 0.0).sum() / total) if total else 0.0
        sensor_counts = counts.sum(axis=0)
        sensor_mean = np.where(
            sensor_counts > 0, sums.sum(axis=0) / np.maximum(sensor_counts, 1), global_mean
        )
        table = np.where(counts > 0, sums / np.maximum(counts, 1), sensor_mean[None, :])
        self.table = table.astype(np.float32)
        return self

    def predict(self, slots: np.ndarray) -> np.ndarray:
        if self.table is None:
            raise RuntimeError("HistoricalAverage.predict called before fit")
        forecast: np.ndarray = self.table[slots]  # (B, H, N)
        return forecast


def time_slots(index_minutes_of_day: np.ndarray, freq_minutes: int) -> np.ndarray:
    """Time-of-day slot numbers from minutes since midnight."""
    return (np.asarray(index_minutes_of_day) // freq_minutes).astype(np.int64)
