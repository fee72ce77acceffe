"""What an evaluation writes: the horizon keys of ``report.json``, ``report.md`` and the plots."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from trafficcast.app.fsutil import atomic_write_bytes
from trafficcast.data import SpeedData
from trafficcast.models.names import DCRNN_NAME, GRU_NAME

REPORT_MINUTES = {"15min": 15, "30min": 30, "60min": 60}
# The key, beside the REPORT_MINUTES keys, of the metrics over every step of the horizon.
AVERAGE_KEY = "average"
NO_METRICS: dict[str, float | None] = {"mae": None, "rmse": None, "mape_pct": None}


def horizon_steps(freq_minutes: int, horizon: int) -> dict[str, int | None]:
    """The horizon step of each report key (``15min`` is step 3 of 5-minute data); None where
    the time is not a whole number of steps or lies beyond the model's horizon."""
    steps: dict[str, int | None] = {}
    for key, minutes in REPORT_MINUTES.items():
        step, rest = divmod(minutes, freq_minutes)
        steps[key] = step if rest == 0 and 1 <= step <= horizon else None
    return steps


def trace_steps(horizon: int, freq_minutes: int = 5) -> tuple[int, int]:
    """The two horizon steps drawn in the forecast-vs-actual plot: about 15 minutes and the last."""
    return min(max(1, 15 // freq_minutes), horizon), horizon


def clean(d: dict[str, float]) -> dict[str, float | None]:
    """Metrics rounded for the report; None for a metric with nothing to average."""
    return {k: (None if not math.isfinite(v) else round(v, 4)) for k, v in d.items()}


def clean_list(values: list[float]) -> list[float | None]:
    return [None if not math.isfinite(v) else round(v, 4) for v in values]


def graph_verdict(report: dict[str, Any]) -> str | None:
    """One sentence on whether the road graph helped: DCRNN's test MAE against the graph-free
    GRU's at 15, 30 and 60 minutes (those the report has), as the GRU's MAE minus DCRNN's in
    percent of the GRU's. None without both models or without a horizon scored for both."""
    metrics = report.get("metrics", {})
    if DCRNN_NAME not in metrics or GRU_NAME not in metrics:
        return None
    gains: dict[str, float] = {}
    for key, minutes in REPORT_MINUTES.items():
        ours, plain = metrics[DCRNN_NAME][key]["mae"], metrics[GRU_NAME][key]["mae"]
        if ours is not None and plain is not None and plain > 0:
            gains[f"{minutes}"] = 100 * (plain - ours) / plain
    if not gains:
        return None
    when = " / ".join(gains)
    if all(g > 0 for g in gains.values()):
        sizes = " / ".join(f"{g:.1f} %" for g in gains.values())
        return (
            f"The road graph helped: DCRNN's MAE is {sizes} lower than the graph-free GRU's "
            f"at {when} minutes."
        )
    if all(g <= 0 for g in gains.values()):
        sizes = " / ".join(f"{-g:.1f} %" for g in gains.values())
        return (
            f"The road graph did not help: DCRNN's MAE is {sizes} higher than the graph-free "
            f"GRU's at {when} minutes."
        )
    sizes = " / ".join(f"{abs(g):.1f} % {'lower' if g > 0 else 'higher'}" for g in gains.values())
    helped = " and ".join(m for m, g in gains.items() if g > 0)
    return (
        f"The road graph helped at {helped} minutes only: DCRNN's MAE is {sizes} than the "
        f"graph-free GRU's at {when} minutes."
    )


def report_markdown(report: dict[str, Any]) -> str:
    ds, split, data = report["dataset"], report["split"], report.get("data", {})
    missing = "0 or missing" if data.get("missing", "zero") == "zero" else "missing (a 0 counts)"
    verdict = graph_verdict(report)
    lines = [
        "# trafficcast evaluation",
        "",
        *([verdict, ""] if verdict else []),
        f"Test split: {split['test']} windows ({split['train']} train / {split['val']} validation), "
        f"{ds['sensors']} sensors, {ds['freq_minutes']}-minute data. Masked metrics of "
        f"{data.get('quantity', 'speed')} in {data.get('unit', 'mph')} (a target that is {missing} "
        "counts nowhere).",
        "",
        "| model | MAE 15 min | MAE 30 min | MAE 60 min | RMSE 15 | RMSE 30 | RMSE 60 | MAPE % 15 | MAPE % 30 | MAPE % 60 | training s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    training_s = report.get("training_s", {})

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    for name, by_h in report["metrics"].items():
        row = [name]
        for metric in ("mae", "rmse", "mape_pct"):
            row += [fmt(by_h[h][metric]) for h in REPORT_MINUTES]
        seconds = training_s.get(name)
        row.append("-" if seconds is None else f"{seconds:.0f}")
        lines.append("| " + " | ".join(row) + " |")
    lines += _average_lines(report["metrics"], fmt)
    lines += _interval_lines(report.get("intervals"))
    training = (report.get("model") or {}).get("training")
    if training:
        lines += [
            "",
            f"DCRNN: best validation MAE {training['best_val_mae']:.3f} at epoch {training['best_epoch']} "
            f"of {training['epochs_run']}; training time {training['wall_time_s']:.0f} s.",
        ]
    return "\n".join(lines) + "\n"


def _average_lines(metrics: dict[str, Any], fmt: Callable[[float | None], str]) -> list[str]:
    """The metrics over every horizon step, the figure the PEMS0x tables print; nothing for a
    report written before ``average`` existed."""
    rows = [(name, by_h[AVERAGE_KEY]) for name, by_h in metrics.items() if AVERAGE_KEY in by_h]
    if not rows:
        return []
    lines = [
        "",
        "Over every step of the horizon (each target that counts weighs the same), as the "
        "PEMS0x tables report:",
        "",
        "| model | MAE average | RMSE average | MAPE % average |",
        "|---|---|---|---|",
    ]
    for name, average in rows:
        cells = [fmt(average[metric]) for metric in ("mae", "rmse", "mape_pct")]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return lines


def _interval_lines(intervals: dict[str, Any] | None) -> list[str]:
    """The prediction intervals' table: coverage and mean width per level and horizon, over all
    test targets, in the rush hours (07-09 and 16-19 h) and at night (00-05 h)."""
    if not intervals:
        return []
    lines = [
        "",
        "Prediction intervals on the test split (calibrated on the validation split): empirical "
        "coverage and mean width.",
        "",
        "| model | band | horizon | coverage | rush hours | night | width | width, rush | width, night |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f} %"

    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    for name, levels in intervals.items():
        for level, by_h in levels.items():
            for h, p in by_h.items():
                row = [name, f"{level} %", h.replace("min", " min")]
                row += [pct(p[k]["coverage"]) for k in ("overall", "rush", "night")]
                row += [num(p[k]["width"]) for k in ("overall", "rush", "night")]
                lines.append("| " + " | ".join(row) + " |")
    return lines


def write_plots(
    directory: Path,
    report: dict[str, Any],
    speeds: SpeedData,
    seq_len: int,
    horizon: int,
    traces: dict[int, list[np.ndarray]],
    trace_starts: list[np.ndarray],
    sensors: np.ndarray,
) -> None:
    """``mae_by_horizon.png`` and ``forecast_vs_actual.png`` (DCRNN's ``traces``: per horizon
    step, its forecasts of ``sensors`` for the windows starting at ``trace_starts``)."""
    # matplotlib is heavy and only the plots need it: loaded when they are drawn.
    import matplotlib

    matplotlib.use("Agg")
    # pyplot after use("Agg"): the backend must be chosen before pyplot loads.
    import matplotlib.pyplot as plt

    def save(fig, name: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        atomic_write_bytes(directory / name, buf.getvalue())

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, maes in report["mae_by_step"].items():
        steps = np.arange(1, len(maes) + 1) * speeds.freq_minutes
        ax.plot(steps, [np.nan if v is None else v for v in maes], marker="o", label=name)
    ax.set_xlabel("horizon (minutes)")
    ax.set_ylabel("masked MAE")
    ax.set_title("Test MAE by horizon")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, "mae_by_horizon.png")

    # Forecast against actual over the last test day, at 15 and 60 minutes ahead.
    starts = np.concatenate(trace_starts)
    per_day = (24 * 60) // speeds.freq_minutes
    keep = slice(max(0, len(starts) - per_day), len(starts))
    fig, axes = plt.subplots(
        len(sensors), 1, figsize=(9, 2.6 * len(sensors)), sharex=True, squeeze=False
    )
    for row, sensor_pos in enumerate(sensors):
        ax = axes[row, 0]
        short_step, long_step = trace_steps(horizon, speeds.freq_minutes)
        for step, style in ((short_step, "-"), (long_step, "--")):
            target_rows = starts[keep] + seq_len + step - 1
            times = speeds.index[target_rows]
            if step == short_step:
                actual = np.where(
                    speeds.mask[target_rows, sensor_pos],
                    speeds.values[target_rows, sensor_pos],
                    np.nan,
                )
                ax.plot(times, actual, color="black", lw=1.2, label="actual")
            pred = np.concatenate(traces[step])[keep, row]
            ax.plot(times, pred, style, lw=1, label=f"dcrnn {step * speeds.freq_minutes} min ahead")
        ax.set_ylabel(report["data"]["quantity"])
        ax.set_title(f"sensor {speeds.sensor_ids[sensor_pos]}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="lower left")
    fig.autofmt_xdate()
    save(fig, "forecast_vs_actual.png")
