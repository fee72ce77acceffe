"""``trafficcast train``, ``evaluate`` and ``predict``."""

from __future__ import annotations

import argparse
import sys

from trafficcast.app.commands.common import data_arguments, data_timing
from trafficcast.app.pipeline import (
    CHECKPOINT_FILES,
    TrainOptions,
    evaluate_run,
    load_config,
    predict_run,
    train_run,
)
from trafficcast.models.distributed import is_main_process


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train DCRNN (and the baselines) on speeds and a road graph",
        description="Train DCRNN on METR-LA-style speeds and write RUN_DIR with the checkpoint and report.json.",
    )
    data_arguments(p, "speeds (or flows, occupancies): .h5 (key df), .csv or .parquet")
    graph = p.add_mutually_exclusive_group(required=True)
    graph.add_argument("--distances", help="road distances CSV (from,to,cost)")
    graph.add_argument(
        "--adjacency",
        help="adjacency .npz from `trafficcast graph`, DCRNN's adj_mx.pkl, or a dense N x N "
        "CSV of weights",
    )
    p.add_argument(
        "--sensor-ids",
        metavar="IDS.txt",
        help="the sensor order of a dense --adjacency CSV without a header (default: the "
        "data's columns)",
    )
    p.add_argument("--config", help="YAML in DCRNN's layout (data:, model:, train:)")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument(
        "--threshold", type=float, default=0.1, help="adjacency threshold with --distances"
    )
    p.add_argument("--output", required=True, help="run directory to write")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="train a new run over the finished one in --output (refused without it)",
    )
    p.add_argument(
        "--only",
        metavar="NAMES",
        help="add these baselines (comma-separated: fc_lstm, gru, tcn) to the run in --output, "
        "trained on the same data and config; its other models stay as they are",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_train)

    p = subparsers.add_parser(
        "evaluate",
        help="metrics of a trained run on the test split",
        description="Score DCRNN and the baselines on the test split (the last 20% in time).",
    )
    p.add_argument("--run", required=True, help="run directory written by `trafficcast train`")
    data_arguments(
        p, "speeds to evaluate on (default: the data the run was trained on)", required=False
    )
    p.add_argument("--output", help="report path (default: RUN_DIR/report.json)")
    p.set_defaults(handler=_evaluate)

    p = subparsers.add_parser(
        "predict",
        help="forecast the hour after a chosen time",
        description="Forecast the horizon after --at from the seq_len steps ending at --at.",
    )
    p.add_argument("--run", required=True, help="run directory written by `trafficcast train`")
    data_arguments(p, "speeds holding the history up to --at")
    p.add_argument("--at", required=True, help="the last observed timestamp, e.g. 2012-03-07T22:00")
    p.add_argument("--output", required=True, help="forecast CSV to write (timestamp x sensor)")
    p.add_argument(
        "--interval",
        type=float,
        metavar="LEVEL",
        help="also the calibrated band at this central coverage (e.g. 0.8): columns "
        "SENSOR_lower and SENSOR_upper after the forecast's",
    )
    p.set_defaults(handler=_predict)


def _train(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.epochs)
    report = train_run(
        TrainOptions(
            data=args.data,
            output=args.output,
            distances=args.distances,
            adjacency=args.adjacency,
            config=config,
            threshold=args.threshold,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.no_progress and sys.stderr.isatty(),
            sensor_ids=args.sensor_ids,
            only=tuple(n.strip() for n in args.only.split(",")) if args.only is not None else None,
            **data_timing(args),
        )
    )
    if not is_main_process():
        return 0  # under torchrun, rank 0 speaks for the job
    _print_table(report)
    if args.only is None:
        print(f"wrote {args.output}/model.pt and {args.output}/report.json")
    else:
        added = [f"{args.output}/{CHECKPOINT_FILES[n.strip()]}" for n in args.only.split(",")]
        print(f"wrote {', '.join(added)} and {args.output}/report.json")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    report = evaluate_run(args.run, data=args.data, output=args.output, **data_timing(args))
    _print_table(report)
    print(f"wrote {args.output or args.run + '/report.json'}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    frame = predict_run(
        args.run, args.data, args.at, args.output, interval=args.interval, **data_timing(args)
    )
    sensors = frame.shape[1] // (1 if args.interval is None else 3)
    band = "" if args.interval is None else f", with the {args.interval:g} band"
    print(
        f"wrote {args.output}: {frame.shape[0]} steps ({frame.index[0]} to {frame.index[-1]}) "
        f"x {sensors} sensors{band}"
    )
    return 0


def _print_table(report: dict) -> None:
    print(f"{'model':<20} {'MAE 15m':>8} {'MAE 30m':>8} {'MAE 60m':>8} {'MAE avg':>8}")
    for name, by_h in report["metrics"].items():
        cells = []
        for key in ("15min", "30min", "60min", "average"):
            v = by_h.get(key, {}).get("mae")
            cells.append("n/a" if v is None else f"{v:.3f}")
        print(f"{name:<20} " + " ".join(f"{cell:>8}" for cell in cells))
