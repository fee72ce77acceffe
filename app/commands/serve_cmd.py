"""``trafficcast serve``: the REST service and dashboard (uvicorn)."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from trafficcast.app.db import UNAVAILABLE, Database, reason
from trafficcast.app.service import create_app
from trafficcast.app.serving.loading import DB_START_WAIT_S, wait_for_database
from trafficcast.app.settings import Settings, load_settings
from trafficcast.models.errors import CheckpointError, ConfigError

# uvicorn's exit status for an app that failed to start.
STARTUP_FAILURE = 3

# The settings this command also takes as flags; the others come from the environment only.
_FLAGS = {
    "run_dir": "--run",
    "registry": "--registry",
    "database_url": "--database-url",
    "host": "--host",
    "port": "--port",
}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve forecasts over REST, with a dashboard at /",
        description=(
            "Run the forecast service. With no arguments it serves the bundled METR-LA week with "
            "the bundled model (trained on first start if absent). Every setting can also come "
            "from the environment: TRAFFICCAST_RUN_DIR, TRAFFICCAST_API_KEYS=k1,k2, "
            "TRAFFICCAST_OBSERVATIONS_DB (SQLite) or TRAFFICCAST_DATABASE_URL (PostgreSQL, shared by "
            "replicas), TRAFFICCAST_TORCH_THREADS, TRAFFICCAST_MICROBATCH_WINDOW_MS, ..."
        ),
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--registry",
        metavar="DIR",
        help="model registry from `trafficcast retrain`: serve its current version and swap to "
        "each newly promoted one (TRAFFICCAST_REGISTRY; poll interval TRAFFICCAST_REGISTRY_POLL_S)",
    )
    source.add_argument("--run", metavar="RUN_DIR", help="run directory from `trafficcast train`")
    p.add_argument(
        "--database-url",
        metavar="URL",
        help="postgresql://user:password@host:5432/db, shared by replicas "
        "(TRAFFICCAST_DATABASE_URL; default: the SQLite file TRAFFICCAST_OBSERVATIONS_DB)",
    )
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.set_defaults(handler=run_serve)


def build_settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the command line; one-line errors."""
    overrides = {
        "run_dir": args.run,
        "registry": args.registry,
        "database_url": args.database_url,
        "host": args.host,
        "port": args.port,
    }
    settings = load_settings(_FLAGS, **{k: v for k, v in overrides.items() if v is not None})
    if args.run is not None and settings.registry is not None:
        settings = settings.model_copy(update={"registry": None})  # --run beats the environment
    if settings.registry is not None:
        if settings.registry.exists() and not settings.registry.is_dir():
            raise ConfigError(f"--registry {settings.registry}: not a directory")
        return settings  # an empty registry is fine: the service waits for a promotion
    run_dir = settings.run_dir
    model = run_dir / "model.pt" if run_dir.is_dir() else run_dir
    if not model.exists() and not (settings.serves_bundled_run and settings.train_if_missing):
        if not run_dir.exists():
            raise CheckpointError(f"{run_dir}: no such run directory")
        raise CheckpointError(
            f"{run_dir}: no model.pt in the run directory (train one with "
            f"`trafficcast train ... --output {run_dir}`)"
        )
    return settings


def run_serve(args: argparse.Namespace) -> int:
    """Serve until stopped; 3 when the database stays unreachable (uvicorn's start-up failure)."""
    settings = build_settings(args)
    # The service's own messages (seeding, training failures) beside uvicorn's, in its format.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    # Wait for the database before uvicorn starts: giving up is then one line, where a failed
    # start-up of the app ends in uvicorn's traceback. The app then finds it at once.
    db = Database.open(settings.database, connect_timeout_s=settings.db_connect_timeout_s)
    try:
        wait_for_database(db)
    except UNAVAILABLE as exc:
        print(
            f"error: database {db.description} unreachable for {DB_START_WAIT_S:g} s: "
            f"{reason(exc)}",
            file=sys.stderr,
        )
        return STARTUP_FAILURE
    finally:
        db.dispose()
    model = settings.run_dir / "model.pt"
    if settings.registry is not None:
        print(f"serving the current version of the registry {settings.registry}")
    elif settings.serves_bundled_run and not model.exists():
        print(
            "no bundled model yet: training it on the bundled METR-LA week first (a few minutes); "
            "/readyz answers 503 until it is ready"
        )
    print(f"serving on http://{settings.host}:{settings.port}/ (dashboard), API docs at /docs")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
    return 0
