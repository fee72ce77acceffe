"""Calibrating a run's prediction intervals (``trafficcast calibrate``), and scoring intervals.

:func:`calibrate_run` fits :class:`models.intervals.IntervalCalibrator` to a run: the difficulty
model on the training windows' residuals, the conformal quantiles on the validation windows' (which
the model never trained on), and stores the calibrator's state in the checkpoint under
``"intervals"``; nothing else in the checkpoint changes, so forecasts stay bit-identical.
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
from models.checkpoint import load_checkpoint, save_checkpoint
from models.errors import CheckpointError
from models.intervals import IntervalCalibrator

INTERVALS_KEY = "intervals"
# Target times scored apart (minutes of the day, end excluded): the rush hours, where errors are
# largest, and the night, where they are smallest.
PERIODS = {"rush": ((420, 540), (960, 1140)), "night": ((0, 300),)}
# The scale model needs the shape of the errors, not every overlapping window: one training
# window in TRAIN_STRIDE is enough, and it keeps `calibrate` to a fraction of an epoch.
TRAIN_STRIDE = 3


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


def split_residuals(run: LoadedRun, split: str, stride: int = 1, model: str = "dcrnn") -> Residuals:
    """The run's forecasts on every ``stride``-th window of ``split`` (``train``, ``val``,
    ``test``), with their inputs and targets."""
    p, source = run.prepared, run.source
    starts_all = p.splits[split][::stride]
    values = np.where(p.speeds.mask, p.speeds.values, np.nan).astype(np.float32)  # (T, N)
    size = source.batch_sizes[split]
    preds = []
    with torch.inference_mode():
        for i in range(0, len(starts_all), size):
            batch = source.batch_at(starts_all[i : i + size])
            pred = run.models[model](batch.x)[..., 0] * run.scaler.std + run.scaler.mean
            preds.append(pred.cpu().numpy())
    x_rows = starts_all[:, None] + np.arange(p.seq_len)  # (B, T)
    y_rows = starts_all[:, None] + p.seq_len + np.arange(p.horizon)  # (B, H)
    return Residuals(
        history=values[x_rows],
        forecast=np.concatenate(preds).astype(np.float64),
        y=p.targets.numpy()[y_rows].astype(np.float64),
        y_mask=p.mask.numpy()[y_rows],
        target_times=np.asarray(p.speeds.index)[y_rows],
    )


def fit_calibrator(
    train: Residuals, val: Residuals, factors: tuple[str, ...] | None = None
) -> IntervalCalibrator:
    """The difficulty model fitted on ``train``, the quantiles on ``val`` (held-out windows)."""
    horizon, num_nodes = train.forecast.shape[1:]
    kwargs = {} if factors is None else {"factors": factors}
    cal = IntervalCalibrator(horizon, num_nodes, **kwargs)
    return cal.fit_scale(*train.fit_args()).calibrate(*val.fit_args())


def calibrate_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    log: Callable[[str], None] = log_stderr,
    train_stride: int = TRAIN_STRIDE,
) -> dict[str, Any]:
    """Calibrate the intervals of the run's DCRNN and store them in ``RUN_DIR/model.pt``.

    Returns the validation coverage per report horizon at 50/80/95 % (in-sample for the
    quantiles, so a check of the arithmetic rather than a score: the test split scores them).
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir, data)
    counts = {k: len(v) for k, v in run.prepared.splits.items()}
    log(
        f"calibrate: forecasting {-(-counts['train'] // train_stride)} training and "
        f"{counts['val']} validation windows"
    )
    train = split_residuals(run, "train", stride=train_stride)
    val = split_residuals(run, "val")
    cal = fit_calibrator(train, val)
    path = run_dir / "model.pt"
    payload = load_checkpoint(path)
    if payload.get("sensor_ids") != run.payload.get("sensor_ids"):
        raise CheckpointError(f"{path} changed while it was being calibrated; run it again")
    payload[INTERVALS_KEY] = cal.state_dict()
    save_checkpoint(path, payload)
    summary = {}
    for level in (0.5, 0.8, 0.95):
        lower, upper = cal.bands(val.forecast, val.history, val.target_times, level)
        metrics = interval_metrics(
            val.y, val.y_mask, lower, upper, val.target_times, run.speeds.freq_minutes
        )
        summary[f"{round(level * 100)}"] = {k: v["overall"]["coverage"] for k, v in metrics.items()}
    return {"windows": {"train": len(train.y), "val": len(val.y)}, "val_coverage": summary}


def interval_metrics(
    y: np.ndarray,
    y_mask: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    target_times: np.ndarray,
    freq_minutes: int = 5,
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Empirical coverage and mean width of bands per report horizon, over all targets and in
    the rush hours and the night (:data:`PERIODS`, by the target's time of day). A target that
    is 0 or missing counts nowhere.

    Shapes: ``y``, ``y_mask``, ``lower``, ``upper`` ``(B, H, N)``; ``target_times (B, H)``.
    Returns ``{"15min": {"overall": {"coverage", "width", "count"}, "rush": ..., "night": ...}}``
    (coverage and width None where no target counts).
    """
    y = np.asarray(y, dtype=np.float64)
    mask = np.asarray(y_mask, dtype=bool) & (y != 0)
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
