"""Calibrating a run's prediction intervals (``trafficcast calibrate``), and scoring intervals.

:func:`calibrate_run` fits :class:`models.intervals.IntervalCalibrator` to a run: the difficulty
model on the persistence forecast's residuals on the training windows (the traffic's own
difficulty, see :mod:`models.intervals`), the conformal quantiles on the model's residuals on the
validation windows (which it never trained on); it stores the calibrator's state in the checkpoint
under ``"intervals"``. Nothing else in the checkpoint changes, so forecasts stay bit-identical.
:func:`interval_metrics` and :func:`plot_bands` are what the evaluation report uses for the bands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from app.pipeline import LoadedRun, horizon_steps, load_run, log_stderr
from app.registry import file_sha256
from data import SpeedData
from models.baselines import persistence_forecast
from models.checkpoint import save_checkpoint
from models.errors import CheckpointError
from models.intervals import IntervalCalibrator
from models.metrics import observed

INTERVALS_KEY = "intervals"
# Target times scored apart (minutes of the day, end excluded): the rush hours, where errors are
# largest, and the night, where they are smallest.
PERIODS = {"rush": ((420, 540), (960, 1140)), "night": ((0, 300),)}


@dataclass
class Residuals:
    """Forecasts of one split against what happened.

    Shapes: ``history (B, T, N)`` input speeds (NaN = missing); ``forecast``, ``y`` ``(B, H, N)``
    in data units; ``y_mask (B, H, N)`` True where observed; ``target_times (B, H)``.
    """

    history: np.ndarray
    forecast: np.ndarray
    y: np.ndarray
    y_mask: np.ndarray
    target_times: pd.DatetimeIndex | np.ndarray

    def fit_args(self) -> tuple[np.ndarray, ...]:
        """The arguments of ``IntervalCalibrator.fit_scale`` and ``calibrate``."""
        return self.history, self.target_times, self.forecast, self.y, self.y_mask


def target_minutes(times: np.ndarray) -> np.ndarray:
    """Minute of the day of each timestamp. Shapes: ``(...)`` datetime64 -> ``(...)`` int64."""
    t = np.asarray(times, dtype="datetime64[m]")
    return (t - t.astype("datetime64[D]")).astype(np.int64)


def persistence(history: np.ndarray, horizon: int, fallback: float) -> np.ndarray:
    """The persistence forecast of windows with NaN for missing readings (``fallback`` for a
    sensor with none). Shapes: ``(B, T, N)`` -> ``(B, horizon, N)`` float64."""
    observed = np.isfinite(history)
    x = np.where(observed, history, 0.0)
    return persistence_forecast(x, observed, horizon, fallback).astype(np.float64)


def split_residuals(run: LoadedRun, split: str, model: str = "dcrnn") -> Residuals:
    """Forecasts of every window of ``split`` (``train``, ``val``, ``test``) with their inputs
    and targets: the run's model ``model`` (``dcrnn``, ``fc_lstm``) or ``persistence``."""
    p, source = run.prepared, run.source
    starts = p.splits[split]
    values = np.where(p.speeds.mask, p.speeds.values, np.nan).astype(np.float32)  # (T, N)
    x_rows = starts[:, None] + np.arange(p.seq_len)  # (B, T)
    y_rows = starts[:, None] + p.seq_len + np.arange(p.horizon)  # (B, H)
    if model == "persistence":
        forecast = persistence(values[x_rows], p.horizon, run.scaler.mean)
    else:
        preds = []
        with torch.inference_mode():
            for batch_starts in source.starts_batches(split):
                batch = source.batch_at(batch_starts)
                pred = run.models[model](batch.x)[..., 0] * run.scaler.std + run.scaler.mean
                preds.append(pred.cpu().numpy())
        forecast = np.concatenate(preds).astype(np.float64)
    return Residuals(
        history=values[x_rows],
        forecast=forecast,
        y=p.targets.numpy()[y_rows].astype(np.float64),
        y_mask=p.mask.numpy()[y_rows],
        target_times=np.asarray(p.speeds.index)[y_rows],
    )


def calibrate_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    log: Callable[[str], None] = log_stderr,
    speeds: SpeedData | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Calibrate the intervals of the run's DCRNN and store them in ``RUN_DIR/model.pt``
    (``data`` or ``speeds``: what it is calibrated on, by default what it was trained on).

    Returns the validation coverage per report horizon at 50/80/95 % (in-sample for the
    quantiles, so a check of the arithmetic rather than a score: the test split scores them).
    """
    run_dir = Path(run_dir)
    path = run_dir / "model.pt"
    digest = file_sha256(path) if path.exists() else None
    run = load_run(run_dir, data, speeds, device)
    log(f"calibrate: forecasting the {len(run.prepared.splits['val'])} validation windows")
    scale = split_residuals(run, "train", model="persistence")
    val = split_residuals(run, "val")
    horizon, num_nodes = val.forecast.shape[1:]
    cal = IntervalCalibrator(horizon, num_nodes)
    cal.fit_scale(*scale.fit_args()).calibrate(*val.fit_args())
    if file_sha256(path) != digest:  # e.g. retrained meanwhile: keep the new model as it is
        raise CheckpointError(f"{path} changed while it was being calibrated; run it again")
    save_checkpoint(path, {**run.payload, INTERVALS_KEY: cal.state_dict()})
    summary = {}
    for level in (0.5, 0.8, 0.95):
        lower, upper = cal.bands(val.forecast, val.history, val.target_times, level)
        metrics = interval_metrics(
            val.y, val.y_mask, lower, upper, val.target_times, run.speeds.freq_minutes
        )
        summary[f"{round(level * 100)}"] = {k: v["overall"]["coverage"] for k, v in metrics.items()}
    return {"windows": {"train": len(scale.y), "val": len(val.y)}, "val_coverage": summary}


REPORT_LEVELS = (0.5, 0.8, 0.95)


def interval_report(
    run: LoadedRun, plot_dir: Path | None = None, plot_sensors: np.ndarray | None = None
) -> dict[str, Any] | None:
    """The run's bands scored on the test split, for ``report.json``: per model with a
    calibration (the DCRNN checkpoint's ``"intervals"``), per level in :data:`REPORT_LEVELS`
    (keys ``"50"``, ``"80"``, ``"95"``), :func:`interval_metrics`. None for a run without one.

    With ``plot_dir``: also ``intervals.png``, the 80 % band at the last horizon step for the
    sensors ``plot_sensors``.
    """
    state = run.payload.get(INTERVALS_KEY)
    if state is None:
        return None
    cal = IntervalCalibrator.from_state_dict(state)
    test = split_residuals(run, "test")
    freq = run.speeds.freq_minutes
    out: dict[str, Any] = {}
    for level in REPORT_LEVELS:
        lower, upper = cal.bands(test.forecast, test.history, test.target_times, level)
        out[f"{round(level * 100)}"] = interval_metrics(
            test.y, test.y_mask, lower, upper, test.target_times, freq
        )
        if plot_dir is not None and plot_sensors is not None and level == 0.8:
            plot_bands(
                plot_dir / "intervals.png", test, lower, upper, plot_sensors,
                run.speeds.sensor_ids, step=test.y.shape[1], level=level, freq_minutes=freq,
            )  # fmt: skip
    return {"dcrnn": out}


def interval_metrics(
    y: np.ndarray,
    y_mask: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    target_times: np.ndarray,
    freq_minutes: int = 5,
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Empirical coverage and mean width of bands per report horizon, over all targets and in
    the rush hours and the night (:data:`PERIODS`, by the target's time of day). Targets count
    as everywhere else (:func:`models.metrics.observed`).

    Shapes: ``y``, ``y_mask``, ``lower``, ``upper`` ``(B, H, N)``; ``target_times (B, H)``.
    Returns ``{"15min": {"overall": {"coverage", "width", "count"}, "rush": ..., "night": ...}}``
    (coverage and width None where no target counts).
    """
    y = np.asarray(y, dtype=np.float64)
    mask = observed(torch.from_numpy(y), torch.from_numpy(np.asarray(y_mask, dtype=bool))).numpy()
    inside = (y >= lower) & (y <= upper)
    width = np.asarray(upper, np.float64) - lower
    minutes = target_minutes(target_times)  # (B, H)
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for key, step in horizon_steps(freq_minutes, y.shape[1]).items():
        if step is None:
            continue
        h = step - 1
        periods = {"overall": np.ones(len(y), dtype=bool)}
        for name, spans in PERIODS.items():
            periods[name] = np.any(
                [(a <= minutes[:, h]) & (minutes[:, h] < b) for a, b in spans], 0
            )
        out[key] = {}
        for name, rows in periods.items():
            m = mask[:, h] & rows[:, None]
            n = int(m.sum())
            out[key][name] = {
                "coverage": round(float(inside[:, h][m].mean()), 4) if n else None,
                "width": round(float(width[:, h][m].mean()), 4) if n else None,
                "count": n,
            }
    return out


def plot_bands(
    path: str | Path,
    residuals: Residuals,
    lower: np.ndarray,
    upper: np.ndarray,
    sensors: np.ndarray,
    sensor_ids: list[str],
    step: int,
    level: float,
    freq_minutes: int = 5,
) -> None:
    """PNG of the band at horizon ``step`` (1-based) over the windows of ``residuals``, with the
    forecast and what happened, for the sensors at positions ``sensors``."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from app.fsutil import atomic_write_bytes

    h = step - 1
    times = pd.DatetimeIndex(np.asarray(residuals.target_times)[:, h])
    fig, axes = plt.subplots(
        len(sensors), 1, figsize=(9, 2.6 * len(sensors)), sharex=True, squeeze=False
    )
    for row, n in enumerate(sensors):
        ax = axes[row, 0]
        actual = np.where(residuals.y_mask[:, h, n], residuals.y[:, h, n], np.nan)
        ax.fill_between(
            times, lower[:, h, n], upper[:, h, n], color="tab:blue", alpha=0.25, lw=0,
            label=f"{level:.0%} band",
        )  # fmt: skip
        ax.plot(times, residuals.forecast[:, h, n], color="tab:blue", lw=1, label="forecast")
        ax.plot(times, actual, color="black", lw=1, label="actual")
        ax.set_ylabel("speed")
        ax.set_title(f"sensor {sensor_ids[n]}, {step * freq_minutes} min ahead", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="lower left")
    fig.autofmt_xdate()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
