"""Prediction intervals: which conditioning earns its keep. Prints tables, not a test.

Every candidate is normalised split-conformal (:mod:`trafficcast.models.intervals`) with a different
difficulty model, fitted to the residuals of a forecast on the training windows, with its
quantiles from DCRNN's residuals on the validation split, scored on the test split. Candidates: a
constant width per step; step x recent variability; step x time of day; step x sensor; step x
sensor x time of day (what ``trafficcast calibrate`` ships); all four; the shipped factors and all
four with the scale fitted to DCRNN's own training residuals instead of the persistence
forecast's; the shipped one with asymmetric bands. For each, the coverage of the 50/80/95 % bands
overall, in the rush hours and at night, and their mean width, at 15/30/60 minutes; then the
widths at equal coverage::

    python bench/intervals.py                                  # the bundled run and week
    python bench/intervals.py --run RUN_DIR --data SPEEDS --cache /tmp/preds.npz

DCRNN's forecasts of every split are computed once (minutes on a laptop CPU); ``--cache`` keeps
them in a file and reuses it when it is there.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trafficcast.app.pipeline import load_run  # noqa: E402
from trafficcast.app.pipeline.calibrate import (  # noqa: E402
    Residuals,
    interval_metrics,
    persistence,
    split_residuals,
)
from trafficcast.models.checkpoint import load_checkpoint  # noqa: E402
from trafficcast.models.intervals import DEFAULT_FACTORS, FACTORS, IntervalCalibrator  # noqa: E402

# name: (factors, whose training residuals the scale is fitted to, symmetric)
CANDIDATES = {
    "constant per step": (("step",), "persistence", True),
    "step x variability": (("step", "variability"), "persistence", True),
    "step x time of day": (("step", "hour"), "persistence", True),
    "step x sensor": (("step", "sensor"), "persistence", True),
    "step x sensor x time of day (shipped)": (DEFAULT_FACTORS, "persistence", True),
    "all four": (FACTORS, "persistence", True),
    "shipped factors, DCRNN's training residuals": (DEFAULT_FACTORS, "dcrnn", True),
    "all four, DCRNN's training residuals": (FACTORS, "dcrnn", True),
    "shipped, asymmetric": (DEFAULT_FACTORS, "persistence", False),
}
LEVELS = (0.5, 0.8, 0.95)
SPLITS = ("train", "val", "test")
FIELDS = ("history", "forecast", "y", "y_mask", "target_times")


def residuals(run_dir: str, data: str | None, cache: Path | None) -> dict[str, Residuals]:
    if cache is not None and cache.exists():
        z = np.load(cache)
        return {s: Residuals(*(z[f"{s}_{f}"] for f in FIELDS)) for s in SPLITS}
    run = load_run(run_dir, data)
    out = {s: split_residuals(run, s) for s in SPLITS}
    if cache is not None:
        np.savez(cache, **{f"{s}_{f}": getattr(out[s], f) for s in SPLITS for f in FIELDS})
    return out


def print_table(calibrators: dict[str, IntervalCalibrator], test: Residuals, level: float) -> None:
    """One row per candidate; a cell per horizon: coverage % overall / rush / night, then the
    mean width overall."""
    print(f"\n| candidate ({level:.0%} band) | 15 min | 30 min | 60 min |")
    print("| --- | --- | --- | --- |")
    for name, cal in calibrators.items():
        lower, upper = cal.bands(test.forecast, test.history, test.target_times, level)
        metrics = interval_metrics(test.y, test.y_mask, lower, upper, test.target_times)
        cells = [
            " / ".join(f"{100 * by[p]['coverage']:.1f}" for p in by)
            + f" · {by['overall']['width']:.2f}"
            for by in metrics.values()
        ]
        print(f"| {name} | {' | '.join(cells)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="app/bundled/metr-la-week")
    parser.add_argument("--data", default=None)
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()
    res = residuals(args.run, args.data, args.cache)
    train, val, test = res["train"], res["val"], res["test"]
    payload = load_checkpoint(Path(args.run) / "model.pt")
    horizon, num_nodes = test.forecast.shape[1:]
    scale_fits = {
        "dcrnn": train,
        "persistence": replace(
            train, forecast=persistence(train.history, horizon, payload["scaler"]["mean"])
        ),
    }
    calibrators = {}
    for name, (factors, source, symmetric) in CANDIDATES.items():
        cal = IntervalCalibrator(horizon, num_nodes, factors=factors, symmetric=symmetric)
        calibrators[name] = cal.fit_scale(*scale_fits[source].fit_args()).calibrate(*val.fit_args())
    if "intervals" in payload:  # what `trafficcast calibrate` wrote
        calibrators["the checkpoint's own"] = IntervalCalibrator.from_state_dict(
            payload["intervals"]
        )
    print(
        f"windows train/val/test {len(train.y)}/{len(val.y)}/{len(test.y)}; coverage % overall / "
        "rush (07-09, 16-19) / night (00-05) · mean width (mph)"
    )
    for level in LEVELS:
        print_table(calibrators, test, level)
    # Widths at equal coverage: each difficulty model with its quantiles taken on the test split
    # itself, so that every band covers exactly the level there. Not a method (it peeks at the
    # test split); it separates the shape of a band from the val/test difference in error level.
    print("\nat equal coverage (quantiles from the test split itself):")
    oracles = {}
    for name in ("constant per step", "step x sensor x time of day (shipped)"):
        oracle = IntervalCalibrator.from_state_dict(calibrators[name].state_dict())
        oracles[name] = oracle.calibrate(*test.fit_args())
    for level in LEVELS:
        print_table(oracles, test, level)


if __name__ == "__main__":
    main()
