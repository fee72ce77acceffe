"""Calibrating a run's prediction intervals (``trafficcast calibrate``), and scoring intervals.

:func:`calibrate_run` fits :class:`trafficcast.models.intervals.IntervalCalibrator` to each model of a run
(the DCRNN, and the FC-LSTM where it was trained): the difficulty model once, on the persistence
forecast's residuals on the training windows (the traffic's own difficulty, see
:mod:`trafficcast.models.intervals`), then per model the conformal quantiles on that model's residuals on the
validation windows (which it never trained on); it stores each calibrator's state in the model's
checkpoint under ``"intervals"``. Nothing else in a checkpoint changes, so forecasts stay
bit-identical. :func:`interval_report` scores the bands on the test split for the evaluation
report, using :func:`interval_metrics` and :func:`plot_bands`.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from trafficcast.app.fsutil import atomic_write_bytes
from trafficcast.app.pipeline.fitting import log_stderr
from trafficcast.app.pipeline.report import horizon_steps
from trafficcast.app.pipeline.runs import (
    CHECKPOINT_FILES,
    LoadedRun,
    fit_historical_average,
    load_run,
)
from trafficcast.app.registry import file_sha256
from trafficcast.data import SpeedData
from trafficcast.models.baselines import persistence_forecast
from trafficcast.models.checkpoint import save_checkpoint
from trafficcast.models.errors import CheckpointError
from trafficcast.models.intervals import IntervalCalibrator
from trafficcast.models.metrics import observed
from trafficcast.models.names import (
    DCRNN_NAME,
    HISTORICAL_AVERAGE_NAME,
    MODEL_ORDER,
    PERSISTENCE_NAME,
    REFERENCE_BASELINES,
)

INTERVALS_KEY = "intervals"
# Target times scored apart (minutes of the day, end excluded): the rush hours, where errors are
# largest, and the night, where they are smallest.
PERIODS = {"rush": ((420, 540), (960, 1140)), "night": ((0, 300),)}
REPORT_LEVELS = (0.5, 0.8, 0.95)
# The reference baselines: no checkpoint to store a calibration in, so the report calibrates
# their bands itself.
BASELINES = REFERENCE_BASELINES


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
    target_times: np.ndarray

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


def split_residuals(run: LoadedRun, split: str, model: str = DCRNN_NAME) -> Residuals:
    """Forecasts of every window of ``split`` (``train``, ``val``, ``test``) with their inputs
    and targets: the run's model ``model`` (``dcrnn``, ``fc_lstm``) or a baseline of
    :data:`BASELINES` (the historical average fitted on the training rows)."""
    p, source = run.prepared, run.source
    starts = p.splits[split]
    values = np.where(p.speeds.mask, p.speeds.values, np.nan).astype(np.float32)  # (T, N)
    x_rows = starts[:, None] + np.arange(p.seq_len)  # (B, T)
    y_rows = starts[:, None] + p.seq_len + np.arange(p.horizon)  # (B, H)
    if model == PERSISTENCE_NAME:
        forecast = persistence(values[x_rows], p.horizon, run.scaler.state_dict()["mean"])
    elif model == HISTORICAL_AVERAGE_NAME:
        forecast = fit_historical_average(run).predict(p.slots[y_rows]).astype(np.float64)
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
    only: Collection[str] | None = None,
) -> dict[str, Any]:
    """Calibrate the intervals of every model of the run (or of the models named in ``only``,
    the others' checkpoints left untouched) and store each in the model's
    checkpoint (:data:`~trafficcast.app.pipeline.runs.CHECKPOINT_FILES`: the DCRNN's in
    ``RUN_DIR/model.pt``, the FC-LSTM's in ``RUN_DIR/fc_lstm.pt``); ``data`` or ``speeds``: what
    they are calibrated on, by default what the run was trained on. No checkpoint is written
    when one of them changed while calibrating (``CheckpointError``).

    Returns ``{"windows": {"train", "val"}, "files": {model: path}, "val_coverage": {model:
    {level: {horizon key: coverage}}}}``: the validation coverage at 50/80/95 % (in-sample for
    the quantiles, so a check of the arithmetic rather than a score: the test split scores them).
    """
    run_dir = Path(run_dir)
    paths = {name: run_dir / file for name, file in CHECKPOINT_FILES.items()}
    digests = {name: _digest(path) for name, path in paths.items()}
    run = load_run(run_dir, data, speeds, device)
    log(
        f"calibrate: forecasting the {len(run.prepared.splits['val'])} validation windows with "
        + ", ".join(name for name in run.models if only is None or name in only)
    )
    scale = split_residuals(run, "train", model=PERSISTENCE_NAME)
    # The difficulty model is the traffic's, not a model's: fitted once, shared by every model.
    fitted = IntervalCalibrator(*scale.forecast.shape[1:]).fit_scale(*scale.fit_args())
    states, summary = {}, {}
    for name in run.models:
        if only is not None and name not in only:
            continue
        val = split_residuals(run, "val", name)
        cal = copy.deepcopy(fitted).calibrate(*val.fit_args())
        states[name] = cal.state_dict()
        summary[name] = _coverage(cal, val, run.speeds.freq_minutes)
    for name, path in paths.items():
        if _digest(path) != digests[name]:  # e.g. retrained meanwhile: keep the new models
            raise CheckpointError(f"{path} changed while it was being calibrated; run it again")
    for name, state in states.items():
        save_checkpoint(paths[name], {**run.checkpoints[name], INTERVALS_KEY: state})
    return {
        "windows": {"train": len(scale.y), "val": len(run.prepared.splits["val"])},
        "files": {name: str(paths[name]) for name in states},
        "val_coverage": summary,
    }


def _digest(path: Path) -> str | None:
    return file_sha256(path) if path.exists() else None


def _coverage(cal: IntervalCalibrator, res: Residuals, freq_minutes: int) -> dict[str, Any]:
    """Coverage of ``cal``'s bands on ``res`` per level of :data:`REPORT_LEVELS` and horizon."""
    out = {}
    for level in REPORT_LEVELS:
        lower, upper = cal.bands(res.forecast, res.history, res.target_times, level)
        metrics = interval_metrics(res.y, res.y_mask, lower, upper, res.target_times, freq_minutes)
        out[f"{round(level * 100)}"] = {k: v["overall"]["coverage"] for k, v in metrics.items()}
    return out


def interval_report(
    run: LoadedRun, plot_dir: Path | None = None, plot_sensors: np.ndarray | None = None
) -> dict[str, Any] | None:
    """The bands scored on the test split, for ``report.json``: per model in
    :data:`~trafficcast.models.names.MODEL_ORDER`, per level in :data:`REPORT_LEVELS` (keys ``"50"``,
    ``"80"``, ``"95"``), :func:`interval_metrics`. The run's models have bands where their
    checkpoint holds a calibration; the baselines (:data:`BASELINES`) get theirs here, by the
    same method: the DCRNN's difficulty model (shared by all) and quantiles of the baseline's
    residuals on the validation split. None for a run whose DCRNN has no calibration.

    With ``plot_dir``: also ``intervals.png``, the DCRNN's 80 % band at the last horizon step
    for the sensors ``plot_sensors``.
    """
    state = run.payload.get(INTERVALS_KEY)
    if state is None:
        return None
    cals = {}
    for name in MODEL_ORDER:
        if name in run.models and INTERVALS_KEY in run.checkpoints[name]:
            cals[name] = IntervalCalibrator.from_state_dict(run.checkpoints[name][INTERVALS_KEY])
        elif name in BASELINES:
            val = split_residuals(run, "val", name)
            cals[name] = IntervalCalibrator.from_state_dict(state).calibrate(*val.fit_args())
    freq = run.speeds.freq_minutes
    out: dict[str, Any] = {}
    for name, cal in cals.items():
        test = split_residuals(run, "test", name)
        out[name] = {}
        for level in REPORT_LEVELS:
            lower, upper = cal.bands(test.forecast, test.history, test.target_times, level)
            out[name][f"{round(level * 100)}"] = interval_metrics(
                test.y, test.y_mask, lower, upper, test.target_times, freq
            )
            if (
                plot_dir is not None
                and plot_sensors is not None
                and name == DCRNN_NAME
                and level == 0.8
            ):
                plot_bands(
                    plot_dir / "intervals.png", test, lower, upper, plot_sensors,
                    run.speeds.sensor_ids, step=test.y.shape[1], level=level, freq_minutes=freq,
                )  # fmt: skip
    return out


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
    as everywhere else (:func:`trafficcast.models.metrics.observed`).

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
    # matplotlib is heavy and only the plot needs it: loaded when a band is drawn.
    import matplotlib

    matplotlib.use("Agg")
    # pyplot after use("Agg"): the backend must be chosen before pyplot loads.
    import matplotlib.pyplot as plt

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
