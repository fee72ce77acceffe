"""``trafficcast calibrate``: prediction intervals for a trained run."""

from __future__ import annotations

import argparse
from pathlib import Path

from trafficcast.app.pipeline.calibrate import calibrate_run


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="calibrate a run's prediction intervals on its validation split",
        description=(
            "Fit the prediction intervals of each model of the run (normalised split-conformal: "
            "the difficulty model on training windows, the quantiles on the validation windows) "
            "and store them in its checkpoint, RUN_DIR/model.pt for the DCRNN and "
            "RUN_DIR/fc_lstm.pt for the FC-LSTM; the forecasts do not change."
        ),
    )
    p.add_argument("--run", required=True, help="run directory written by `trafficcast train`")
    p.add_argument(
        "--data", help="speeds to calibrate on (default: the data the run was trained on)"
    )
    p.set_defaults(handler=_calibrate)


def _calibrate(args: argparse.Namespace) -> int:
    result = calibrate_run(args.run, data=args.data)
    for name, levels in result["val_coverage"].items():
        for level, by_horizon in levels.items():
            cells = ", ".join(
                f"{key} {100 * cov:.1f}%" for key, cov in by_horizon.items() if cov is not None
            )
            print(f"{level}% band, validation coverage: {cells} ({name})")
    files = " and ".join(f"{args.run}/{Path(f).name}" for f in result["files"].values())
    print(f"wrote the intervals into {files}")
    return 0
