"""``trafficcast calibrate``: prediction intervals for a trained run."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="calibrate a run's prediction intervals on its validation split",
        description=(
            "Fit the run's prediction intervals (normalised split-conformal: the difficulty model "
            "on training windows, the quantiles on the validation windows) and store them in "
            "RUN_DIR/model.pt; the forecasts do not change."
        ),
    )
    p.add_argument("--run", required=True, help="run directory written by `trafficcast train`")
    p.add_argument(
        "--data", help="speeds to calibrate on (default: the data the run was trained on)"
    )
    p.set_defaults(handler=_calibrate)


def _calibrate(args: argparse.Namespace) -> int:
    from app.calibration import calibrate_run

    result = calibrate_run(args.run, data=args.data)
    for level, by_horizon in result["val_coverage"].items():
        cells = ", ".join(
            f"{key} {100 * cov:.1f}%" for key, cov in by_horizon.items() if cov is not None
        )
        print(f"{level}% band, validation coverage: {cells}")
    print(f"wrote the intervals into {args.run}/model.pt")
    return 0
