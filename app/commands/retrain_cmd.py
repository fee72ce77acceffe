"""``trafficcast retrain``: the batch retraining job (champion / challenger on a registry)."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from trafficcast.app.commands.common import (
    data_arguments,
    data_timing,
    describe,
    optional_location,
    optional_path,
    registry_argument,
    registry_dir,
    user_error_types,
)
from trafficcast.app.pipeline import log_stderr
from trafficcast.app.registry import Registry, RegistryBusy, now_iso
from trafficcast.app.retrain import (
    EXIT_BAD_INPUT,
    EXIT_BUSY,
    EXIT_FAILED,
    RetrainOptions,
    run_retrain,
    write_summary,
)
from trafficcast.app.settings import load_settings, read_database_url
from trafficcast.models.distributed import is_main_process


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "retrain",
        help="train a challenger on the latest data; promote it if it beats the champion",
        description=(
            "Train a challenger on --data merged with the service's observations, score it and "
            "the registry's current version (the champion) on the same most recent holdout, and "
            "promote the challenger only if its mean MAE is lower by --margin. Exit status: "
            "0 promoted, 3 kept (champion stays), 1 failed, 2 bad input, 4 registry locked by "
            "another job. A killed job leaves the registry valid; rerun it to resume."
        ),
    )
    registry_argument(p)
    data_arguments(p, "speeds: .h5 (key df), .csv or .parquet")
    # The service's database, whose readings win over --data's. Its URL carries a password: the
    # last two forms keep it off the command line, which every user of the machine can read.
    observations = p.add_mutually_exclusive_group()
    observations.add_argument(
        "--observations",
        metavar="DB",
        help="the service's database: its SQLite file or its URL (postgresql://...; a URL "
        "with a password is better given by one of the next two options)",
    )
    observations.add_argument(
        "--observations-from-env",
        action="store_true",
        help="the service's database as the service finds it: $TRAFFICCAST_DATABASE_URL, "
        "else the URL in the file $TRAFFICCAST_DATABASE_URL_FILE, else the SQLite file "
        "$TRAFFICCAST_OBSERVATIONS_DB",
    )
    observations.add_argument(
        "--observations-url-file",
        metavar="FILE",
        help="a file holding the database's URL (a Docker or Kubernetes secret)",
    )
    graph = p.add_mutually_exclusive_group()
    graph.add_argument("--distances", help="road distances CSV (default: the champion's graph)")
    graph.add_argument(
        "--adjacency",
        help="adjacency .npz, adj_mx.pkl or a dense N x N CSV in the data's sensor order "
        "(default: the champion's)",
    )
    p.add_argument("--threshold", type=float, default=0.1, help="adjacency threshold")
    p.add_argument("--config", help="YAML config (default: the champion's config)")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument(
        "--margin",
        type=float,
        default=0.01,
        help="relative improvement in holdout MAE needed to promote (default 0.01 = 1%%)",
    )
    p.add_argument("--force", action="store_true", help="promote the challenger regardless")
    p.add_argument(
        "--when-live-mae-above",
        type=float,
        metavar="X",
        help="train only if the champion's live MAE over the last day (the service's forecast "
        "record in --observations) is above X; otherwise keep it (exit 3)",
    )
    p.add_argument("--warm-start", action="store_true", help="start from the champion's weights")
    p.add_argument("--keep", type=int, default=5, help="versions to keep (default 5)")
    p.add_argument("--summary", help="also write the JSON summary here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=run)


def observations_location(args: argparse.Namespace) -> str | Path | None:
    """The database of ``--observations``, ``--observations-from-env`` (the service's settings)
    or ``--observations-url-file``; None when none of them is given."""
    if args.observations_from_env:
        return load_settings().database
    if args.observations_url_file is not None:
        return read_database_url(Path(args.observations_url_file))
    return optional_location(args.observations)


def run(args: argparse.Namespace) -> int:
    """Run the job; print its JSON summary and return its exit status."""
    registry = registry_dir(args)
    summary_path = optional_path(args.summary)
    try:
        opts = RetrainOptions(
            registry=registry,
            data=Path(args.data),
            **data_timing(args),
            observations=observations_location(args),
            config=optional_path(args.config),
            epochs=args.epochs,
            distances=optional_path(args.distances),
            adjacency=optional_path(args.adjacency),
            threshold=args.threshold,
            margin=args.margin,
            force=args.force,
            warm_start=args.warm_start,
            keep=args.keep,
            progress=not args.no_progress and sys.stderr.isatty(),
            when_live_mae_above=args.when_live_mae_above,
        )
        summary = run_retrain(opts, log_stderr)
    except RegistryBusy as exc:
        # Not written to the registry: the job holding the lock owns its summary.
        summary = _failure("busy", EXIT_BUSY, exc, registry)
        write_summary(summary_path, summary)
        print(json.dumps(summary, indent=2))
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except Exception as exc:
        bad_input = isinstance(exc, user_error_types())
        code = EXIT_BAD_INPUT if bad_input else EXIT_FAILED
        summary = _failure("failed", code, exc, registry)
        summary["finished_at"] = now_iso()
        write_summary(summary_path, summary)
        if Registry(registry).exists():
            write_summary(Registry(registry).summary_path, summary)
        print(json.dumps(summary, indent=2))
        if not bad_input:
            traceback.print_exc()
        print(f"error: {describe(exc)}", file=sys.stderr)
        return code
    if not is_main_process():  # under torchrun: rank 0 reports for the job
        return int(summary.get("exit_code", 0))
    write_summary(summary_path, summary)
    print(json.dumps(summary, indent=2))
    return int(summary["exit_code"])


def _failure(status: str, code: int, exc: BaseException, registry: Path) -> dict:
    return {"registry": str(registry), "status": status, "exit_code": code, "error": describe(exc)}
