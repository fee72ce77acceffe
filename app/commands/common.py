"""What the CLI subcommands share: user-error types, exit codes, error lines, common arguments.

Subcommand modules and :mod:`trafficcast.app.cli` import from here; nothing here imports a subcommand or
:mod:`trafficcast.app.cli`, so the entry point depends on the subcommands and never the other way round.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TypedDict

from trafficcast.app.allocator import AllocatorError
from trafficcast.app.db import UNAVAILABLE, location, reason
from trafficcast.app.db.migrate import SchemaOutOfDate
from trafficcast.app.registry import RegistryError
from trafficcast.app.settings import load_settings
from trafficcast.data.errors import DataInputError
from trafficcast.data.io import parse_freq_minutes
from trafficcast.graph.errors import GraphInputError
from trafficcast.models.errors import CheckpointError, ConfigError, TrainingError


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean the user gave us something wrong, not that we have a bug."""
    return (
        AllocatorError,
        DataInputError,
        GraphInputError,
        ConfigError,
        CheckpointError,
        TrainingError,
        RegistryError,
        FileNotFoundError,
        IsADirectoryError,
        PermissionError,
        SchemaOutOfDate,
        *UNAVAILABLE,
    )


def describe(exc: BaseException) -> str:
    """``exc`` as the one line that follows ``error:`` (a file error names the file)."""
    if isinstance(exc, OSError) and exc.filename is not None:
        why = exc.strerror or str(exc)
        return f"cannot open {exc.filename}: {why}"
    if getattr(exc, "orig", None) is not None:  # a database error: the driver's message
        return f"database: {reason(exc)}"
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())  # always one line


def registry_argument(p: argparse.ArgumentParser) -> None:
    """Add ``--registry DIR``; :func:`registry_dir` falls back on ``$TRAFFICCAST_REGISTRY``."""
    p.add_argument(
        "--registry",
        metavar="DIR",
        help="the model registry directory (default: $TRAFFICCAST_REGISTRY)",
    )


def registry_dir(args: argparse.Namespace) -> Path:
    """The registry of a command: ``--registry``, else the settings' ``registry``
    (``$TRAFFICCAST_REGISTRY``); neither is a user error naming both."""
    if args.registry is not None:
        return Path(args.registry)
    registry = load_settings({"registry": "--registry"}).registry
    if registry is None:
        raise ConfigError("no registry: give --registry DIR or set TRAFFICCAST_REGISTRY")
    return registry


def data_arguments(p: argparse.ArgumentParser, help: str, required: bool = True) -> None:
    """Add ``--data SPEEDS`` and, for a file without timestamps, ``--start`` and ``--freq``; and
    ``--calendar``, the days the data covers."""
    p.add_argument("--data", required=required, metavar="SPEEDS", help=help)
    p.add_argument(
        "--start",
        metavar="TIMESTAMP",
        help="time of the first row of a --data file without timestamps (needs --freq)",
    )
    p.add_argument(
        "--freq",
        metavar="STEP",
        help="time step of the --data rows, e.g. 5min or 15min (inferred from timestamps if any)",
    )
    p.add_argument(
        "--calendar",
        metavar="DAYS",
        help="the days the --data rows cover: all (default) or weekdays (a weekdays-only release "
        "such as PeMSD7(M): rows dated Monday to Friday, no window across a weekend); "
        "weekdays:2012-05-28,... also leaves out those holidays",
    )


class DataTiming(TypedDict):
    """The times of a data file without timestamps, as the readers and pipeline jobs take them."""

    start: str | None
    freq_minutes: int | None
    calendar: str | None


def data_timing(args: argparse.Namespace) -> DataTiming:
    """``--start``, ``--freq`` and ``--calendar`` as the keyword arguments of the readers and
    pipeline jobs (``start``, ``freq_minutes``, ``calendar``); a ``--freq`` that is not a whole
    number of minutes is a user error naming it."""
    return DataTiming(start=args.start, freq_minutes=parse_freq(args.freq), calendar=args.calendar)


def parse_freq(text: str | None) -> int | None:
    """``--freq`` as whole minutes (:func:`trafficcast.data.io.parse_freq_minutes`); None stays None."""
    return None if text is None else parse_freq_minutes(text)


def optional_location(value: str | None) -> str | Path | None:
    """An optional database argument: a URL (``postgresql://...``) as given, else a SQLite
    path; an option not given stays None."""
    return None if value is None else location(value)


def optional_path(value: str | None) -> Path | None:
    """An optional path argument as a ``Path``; an option not given stays None."""
    return None if value is None else Path(value)
