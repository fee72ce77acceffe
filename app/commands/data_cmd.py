"""``trafficcast summary`` and ``trafficcast synth``: look at speed data, make synthetic data."""

from __future__ import annotations

import argparse

from trafficcast.app.commands.common import data_arguments, data_timing
from trafficcast.data.calendar import off_calendar
from trafficcast.data.errors import DataInputError
from trafficcast.data.io import read_speeds
from trafficcast.data.synthetic import make_synthetic, write_synthetic
from trafficcast.data.windows import split_counts, window_starts

_SEQ_LEN = 12
_HORIZON = 12


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "summary",
        help="describe a speed file: size, period, missing readings, windows and splits",
    )
    data_arguments(p, ".h5 (key df), .csv or .parquet")
    p.add_argument(
        "--missing",
        choices=("zero", "nan"),
        default="zero",
        help="what is a missing reading: zero (0, NaN or empty; speeds) or nan (only NaN or "
        "empty; flows, where 0 is real); default zero",
    )
    p.set_defaults(handler=run_summary)

    p = subparsers.add_parser(
        "synth",
        help="write METR-LA-style synthetic speeds, road distances, sensor ids and locations",
    )
    p.add_argument("--sensors", required=True, type=int, metavar="N", help="number of sensors")
    p.add_argument("--days", type=int, default=7, help="days of 5-minute data (default 7)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--missing-rate",
        type=float,
        default=0.02,
        help="fraction of missing readings (default 0.02)",
    )
    p.add_argument("--output-dir", required=True, metavar="DIR", help="created if needed")
    p.set_defaults(handler=run_synth)


def run_summary(args: argparse.Namespace) -> int:
    speeds = read_speeds(args.data, missing=args.missing, **data_timing(args))
    facts = speeds.summary()
    dead = facts["always_missing"]
    shown = ", ".join(dead[:10]) + (f" and {len(dead) - 10} more" if len(dead) > 10 else "")
    lines = [
        f"file:            {speeds.source}",
        f"steps:           {facts['steps']}",
        f"sensors:         {facts['sensors']}",
        f"period:          {facts['start']} to {facts['end']}",
        f"frequency:       {facts['freq_minutes']} min",
        f"missing:         {facts['missing_pct']:.2f}%",
        f"always missing:  {len(dead)}" + (f" ({shown})" if dead else ""),
    ]
    try:
        skip = off_calendar(speeds.index, speeds.calendar)
        n = len(window_starts(speeds.num_steps, _SEQ_LEN, _HORIZON, skip, source=speeds.source))
        train, val, test = split_counts(n, seq_len=_SEQ_LEN, horizon=_HORIZON, source=speeds.source)
        lines.append(f"windows (12/12): {n}")
        lines.append(f"split:           train {train}, val {val}, test {test}")
    except DataInputError as exc:
        # Too short to train on is still worth summarising; say why there are no windows.
        lines.append(f"windows (12/12): none ({exc})")
    print("\n".join(lines))
    return 0


def run_synth(args: argparse.Namespace) -> int:
    dataset = make_synthetic(
        num_sensors=args.sensors,
        num_days=args.days,
        seed=args.seed,
        missing_rate=args.missing_rate,
    )
    paths = write_synthetic(dataset, args.output_dir)
    speeds = dataset.speeds
    print(
        f"synthetic data: {speeds.num_sensors} sensors x {speeds.num_steps} steps "
        f"({args.days} days, seed {args.seed}), {len(dataset.distances)} distance pairs"
    )
    for path in paths:
        print(f"wrote {path}")
    return 0
