"""The Forecaster: raw speeds in, forecasts out — what the CLI's ``predict`` and the service use.

It owns everything between a user's readings and the model: the sensor order, the scaler, the time
features, the model's frequency, and inference under ``torch.inference_mode``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from trafficcast.data import StandardScaler, time_features
from trafficcast.data.errors import DataInputError
from trafficcast.data.speeds import (
    MissingRule,
    check_missing_rule,
    check_quantity,
    observed_readings,
)
from trafficcast.models.checkpoint import build_model, load_checkpoint
from trafficcast.models.intervals import IntervalCalibrator


def missing_rule(payload: dict[str, Any]) -> MissingRule:
    """The missing-value rule a checkpoint was trained with: ``"zero"`` (a 0 is missing) or
    ``"nan"``; checkpoints that predate the rule forecast METR-LA-style speeds, so ``"zero"``."""
    return check_missing_rule(str(payload.get("missing", "zero")))


def model_inputs(
    speeds: np.ndarray,
    observed: np.ndarray,
    timestamps: pd.DatetimeIndex | np.ndarray,
    scaler: StandardScaler,
    time_in_day: bool,
    day_in_week: bool,
) -> np.ndarray:
    """The model's input features: the scaled speed (missing = 0, i.e. the mean), then the time
    features. The one place that defines them, for training, evaluation and serving alike.

    Shapes: ``speeds``, ``observed`` ``(..., T, N)``; ``timestamps`` ``(..., T)`` (flattened to
    one index) -> ``(..., T, N, F)`` float32.
    """
    speeds = np.asarray(speeds, dtype=np.float32)
    scaled = np.where(observed, (np.nan_to_num(speeds) - scaler.mean) / scaler.std, 0.0)
    parts = [scaled[..., None].astype(np.float32)]
    if time_in_day or day_in_week:
        tf = time_features(pd.DatetimeIndex(np.ravel(timestamps)), day_of_week=day_in_week)
        if not time_in_day:
            tf = tf[:, 1:]
        tf = tf.reshape(*speeds.shape[:-1], 1, tf.shape[-1])  # (..., T, 1, F')
        parts.append(np.broadcast_to(tf, (*speeds.shape, tf.shape[-1])).astype(np.float32))
    return np.concatenate(parts, axis=-1)


class Forecaster:
    """Forecasts from a checkpoint payload.

    Shapes: ``forecast(timestamps (seq_len,), speeds (seq_len, N))`` -> ``(horizon, N)`` in data
    units; ``forecast_batch(speeds (B, seq_len, N), timestamps (B, seq_len))`` -> ``(B, horizon, N)``;
    ``bands(speeds, timestamps, forecast (B, horizon, N), level)`` -> ``lower``, ``upper`` of the
    forecast's shape. Missing readings are NaN, and 0 too under the checkpoint's ``"zero"`` rule
    (``missing``). ``quantity`` and ``unit``: what is forecast (speed in mph for checkpoints that
    predate them). ``intervals`` says whether the checkpoint carries a calibration
    (``trafficcast calibrate``) so that :meth:`bands` can answer.
    """

    def __init__(self, payload: dict[str, Any], device: str | torch.device = "cpu") -> None:
        self.payload = payload
        self.device = torch.device(device)
        self.model = build_model(payload).to(self.device)
        self.model.eval()
        self.scaler = StandardScaler.from_state_dict(payload["scaler"])
        self.sensor_ids: list[str] = list(payload["sensor_ids"])
        self.seq_len = int(payload["seq_len"])
        self.horizon = int(payload["horizon"])
        self.freq_minutes = int(payload["freq_minutes"])
        self.quantity = check_quantity(str(payload.get("quantity", "speed")))
        self.unit = str(payload.get("unit", "mph"))
        self.missing = missing_rule(payload)
        features = payload.get("features", {})
        self.time_in_day = bool(features.get("time_in_day", True))
        self.day_in_week = bool(features.get("day_in_week", False))
        state = payload.get("intervals")
        self.calibrator = None if state is None else IntervalCalibrator.from_state_dict(state)

    @property
    def intervals(self) -> bool:
        return self.calibrator is not None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> Forecaster:
        return cls(load_checkpoint(path), device=device)

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str | torch.device = "cpu") -> Forecaster:
        run_dir = Path(run_dir)
        path = run_dir / "model.pt" if run_dir.is_dir() else run_dir
        if not path.exists():
            raise FileNotFoundError(2, "no model checkpoint", str(path))
        return cls.from_checkpoint(path, device=device)

    @property
    def freq(self) -> pd.Timedelta:
        return pd.Timedelta(minutes=self.freq_minutes)

    def future_timestamps(self, last: pd.Timestamp) -> pd.DatetimeIndex:
        return pd.date_range(last + self.freq, periods=self.horizon, freq=self.freq)

    def features(self, timestamps: pd.DatetimeIndex | np.ndarray, speeds: np.ndarray) -> np.ndarray:
        """Model inputs for one or more windows (missing: NaN, and 0 under the ``"zero"`` rule):
        see :func:`model_inputs`."""
        speeds = np.asarray(speeds, dtype=np.float32)
        return model_inputs(
            speeds,
            self.observed(speeds),
            timestamps,
            self.scaler,
            self.time_in_day,
            self.day_in_week,
        )

    def observed(self, speeds: np.ndarray) -> np.ndarray:
        """Which raw readings are real under the model's missing-value rule (the data layer's
        :func:`~trafficcast.data.io.observed_readings`). Shapes: any -> bool, the same."""
        return observed_readings(speeds, self.missing)

    def check_window(self, timestamps: pd.DatetimeIndex, speeds: np.ndarray) -> None:
        if len(timestamps) != self.seq_len:
            raise DataInputError(f"need {self.seq_len} timestamps, got {len(timestamps)}")
        if speeds.shape != (self.seq_len, len(self.sensor_ids)):
            raise DataInputError(
                f"speeds must be {self.seq_len} x {len(self.sensor_ids)} (steps x sensors), got "
                f"{' x '.join(map(str, speeds.shape))}"
            )
        steps = np.diff(timestamps.as_unit("ns").asi8)
        if len(steps) and not np.all(steps == self.freq.value):
            raise DataInputError(f"timestamps must be {self.freq_minutes} minutes apart")

    @torch.inference_mode()
    def forecast_batch(self, speeds: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(self.features(timestamps, speeds)).to(self.device)
        pred = self.model(x)[..., 0]  # (B, H, N), scaled
        return (pred * self.scaler.std + self.scaler.mean).cpu().numpy()

    def bands(
        self, speeds: np.ndarray, timestamps: np.ndarray, forecast: np.ndarray, level: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """The calibrated band at central coverage ``level`` (0.5 <= level < 1) around
        ``forecast``, the forecast of these windows: see :class:`trafficcast.models.intervals.IntervalCalibrator`.
        Raises ``ValueError`` for a bad level or a model without calibration."""
        if self.calibrator is None:
            raise ValueError("this model has no calibration: run trafficcast calibrate")
        last = np.asarray(timestamps, dtype="datetime64[ns]")[:, -1:]  # (B, 1)
        steps = np.arange(1, self.horizon + 1) * np.timedelta64(self.freq_minutes, "m")
        lower, upper = self.calibrator.bands(forecast, speeds, last + steps, level)
        return lower.astype(np.float32), upper.astype(np.float32)

    def forecast(
        self, timestamps: pd.DatetimeIndex, speeds: np.ndarray
    ) -> tuple[np.ndarray, pd.DatetimeIndex]:
        timestamps = pd.DatetimeIndex(timestamps)
        speeds = np.asarray(speeds, dtype=np.float32)
        self.check_window(timestamps, speeds)
        out = self.forecast_batch(speeds[None], np.asarray(timestamps)[None])[0]
        return out, self.future_timestamps(timestamps[-1])
