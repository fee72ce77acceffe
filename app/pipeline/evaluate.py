"""Scoring a run: its models and the baselines on the test split, into ``report.json``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trafficcast.app.fsutil import atomic_write_json, atomic_write_text
from trafficcast.app.pipeline.calibrate import interval_report
from trafficcast.app.pipeline.data import missing_rule
from trafficcast.app.pipeline.report import (
    AVERAGE_KEY,
    NO_METRICS,
    clean,
    clean_list,
    horizon_steps,
    report_markdown,
    trace_steps,
    write_plots,
)
from trafficcast.app.pipeline.runs import LoadedRun, fit_historical_average, load_run
from trafficcast.data import SpeedData
from trafficcast.models.baselines import persistence_forecast
from trafficcast.models.metrics import MaskedMetrics
from trafficcast.models.names import (
    DCRNN_NAME,
    HISTORICAL_AVERAGE_NAME,
    MODEL_ORDER,
    PERSISTENCE_NAME,
    REFERENCE_BASELINES,
)


@dataclass
class _TestScores:
    """Every model's metrics on the test split, and the forecasts the plot draws.

    ``traces[name][step]``: per test batch, the forecasts at horizon ``step`` of the
    ``plot_sensors`` (``(B, len(plot_sensors))``); ``trace_starts`` the batches' window starts.
    """

    metrics: dict[str, MaskedMetrics]
    plot_sensors: np.ndarray
    traces: dict[str, dict[int, list[np.ndarray]]]
    trace_starts: list[np.ndarray] = field(default_factory=list)


def _score_test(run: LoadedRun) -> _TestScores:
    """Forecast every test window with the run's models, persistence and the historical
    average (fit on the training rows), in data units."""
    speeds, prepared, source = run.speeds, run.prepared, run.source
    mean, std = run.scaler.mean, run.scaler.std
    horizon = prepared.horizon
    names = (*run.models, *REFERENCE_BASELINES)
    ha = fit_historical_average(run)
    fallback = np.float32(mean)
    scores = _TestScores(
        metrics={name: MaskedMetrics(horizon) for name in names},
        plot_sensors=_plot_sensors(speeds, prepared.train_rows()),
        traces={
            name: {step: [] for step in trace_steps(horizon, speeds.freq_minutes)} for name in names
        },
    )
    with torch.inference_mode():
        for starts in source.starts_batches("test"):
            batch = source.batch_at(starts)
            preds: dict[str, torch.Tensor] = {}
            for name, model in run.models.items():
                preds[name] = (model(batch.x)[..., 0] * std + mean).cpu()
            x_rows = starts[:, None] + np.arange(prepared.seq_len)
            preds[PERSISTENCE_NAME] = torch.from_numpy(
                persistence_forecast(speeds.values[x_rows], speeds.mask[x_rows], horizon, fallback)
            )
            y_rows = starts[:, None] + prepared.seq_len + np.arange(horizon)
            preds[HISTORICAL_AVERAGE_NAME] = torch.from_numpy(ha.predict(prepared.slots[y_rows]))
            y_raw, y_mask = batch.y_raw.cpu(), batch.y_mask.cpu()
            for name, pred in preds.items():
                scores.metrics[name].update(pred, y_raw, y_mask)
                for step, kept in scores.traces[name].items():
                    kept.append(pred[:, step - 1, scores.plot_sensors].numpy())
            scores.trace_starts.append(starts)
    return scores


def _report(run: LoadedRun, metrics: dict[str, MaskedMetrics]) -> dict[str, Any]:
    """``report.json`` (interface.md) from the test metrics."""
    payload, config, speeds, prepared = run.payload, run.config, run.speeds, run.prepared
    counts = {k: int(len(v)) for k, v in prepared.splits.items()}
    report: dict[str, Any] = {
        "dataset": {
            "sensors": speeds.num_sensors,
            "steps": speeds.num_steps,
            "freq_minutes": int(speeds.freq_minutes),
        },
        "split": counts,
        "metrics": {},
        "model": {
            "name": DCRNN_NAME,
            "trained_at": payload.get("trained_at"),
            "config": {
                "rnn_units": config.model.rnn_units,
                "num_rnn_layers": config.model.num_rnn_layers,
                "max_diffusion_step": config.model.max_diffusion_step,
                "filter_type": config.model.filter_type,
                "batch_size": config.data.batch_size,
                "base_lr": config.train.base_lr,
            },
            "training": payload.get("training"),
        },
        "data": {
            "source": str(speeds.source),
            "start": str(speeds.index[0]),
            "end": str(speeds.index[-1]),
            # What the metrics are of, in which unit, and which targets counted.
            "quantity": payload.get("quantity", "speed"),
            "unit": payload.get("unit", "mph"),
            "missing": missing_rule(payload),
        },
    }
    for name in MODEL_ORDER:
        if name in metrics:
            report["metrics"][name] = {
                key: clean(metrics[name].at(step)) if step is not None else NO_METRICS
                for key, step in horizon_steps(speeds.freq_minutes, prepared.horizon).items()
            }
            # Over every step of the horizon, as the PEMS0x tables report (README, "Compare
            # with the published tables").
            report["metrics"][name][AVERAGE_KEY] = clean(metrics[name].average())
    # Seconds each trained model took to train (the baselines without training have none).
    report["training_s"] = {
        name: run.checkpoints[name].get("training", {}).get("wall_time_s")
        for name in report["metrics"]
        if name in run.checkpoints
    }
    report["mae_by_step"] = {
        name: clean_list(metrics[name].mae_by_step()) for name in report["metrics"]
    }
    return report


def evaluate_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    output: str | Path | None = None,
    speeds: SpeedData | None = None,
    device: torch.device | None = None,
    plots: bool = True,
    start: str | None = None,
    freq_minutes: int | None = None,
    calendar: str | None = None,
) -> dict[str, Any]:
    """Score the run's models and the baselines on the test split; write the report files.
    ``start``/``freq_minutes``/``calendar``: the times of a ``data`` file without timestamps,
    and the days it covers."""
    run_dir = Path(run_dir)
    run = load_run(run_dir, data, speeds, device, start, freq_minutes, calendar)
    scores = _score_test(run)
    report = _report(run, scores.metrics)
    out_path = Path(output) if output is not None else run_dir / "report.json"
    intervals = interval_report(run, out_path.parent if plots else None, scores.plot_sensors)
    if intervals is not None:
        report["intervals"] = intervals
    atomic_write_json(out_path, report)
    atomic_write_text(out_path.with_suffix(".md"), report_markdown(report))
    if plots:
        p = run.prepared
        write_plots(
            out_path.parent,
            report,
            run.speeds,
            p.seq_len,
            p.horizon,
            scores.traces[DCRNN_NAME],
            scores.trace_starts,
            scores.plot_sensors,
        )
    return report


def _plot_sensors(speeds: SpeedData, train_rows: int, count: int = 3) -> np.ndarray:
    """The sensors with the most variable speed in training: where forecasts are interesting."""
    values = np.where(speeds.mask[:train_rows], speeds.values[:train_rows], np.nan)
    with np.errstate(all="ignore"):
        spread = np.nan_to_num(np.nanstd(values, axis=0), nan=-1.0)
    return np.sort(np.argsort(-spread)[: min(count, speeds.num_sensors)])
