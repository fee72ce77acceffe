"""What the CLI subcommands share: user-error types, exit codes, error lines, common arguments.

Subcommand modules and :mod:`trafficcast.app.cli` import from here; nothing here imports a subcommand or
:mod:`trafficcast.app.cli`, so the entry point depends on the subcommands and never the other way round.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

EXIT_USER_ERROR = 2
REGISTRY_ENV = "TRAFFICCAST_REGISTRY"


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean the user gave us something wrong, not that we have a bug."""
    from trafficcast.app.allocator import AllocatorError
    from trafficcast.app.db import UNAVAILABLE
    from trafficcast.app.db.migrate import SchemaOutOfDate
    from trafficcast.app.registry import RegistryError
    from trafficcast.data.errors import DataInputError
    from trafficcast.graph.errors import GraphInputError
    from trafficcast.models.errors import CheckpointError, ConfigError, TrainingError

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
        reason = exc.strerror or str(exc)
        return f"cannot open {exc.filename}: {reason}"
    if getattr(exc, "orig", None) is not None:  # a database error: the driver's message
        from trafficcast.app.db import reason

        return f"database: {reason(exc)}"
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())  # always one line


def registry_argument(p: argparse.ArgumentParser) -> None:
    """Add ``--registry DIR``, required unless ``$TRAFFICCAST_REGISTRY`` names one."""
    default = os.environ.get(REGISTRY_ENV) or None
    p.add_argument(
        "--registry",
        metavar="DIR",
        default=default,
        required=default is None,
        help=f"the model registry directory (default: ${REGISTRY_ENV})",
    )


def data_arguments(p: argparse.ArgumentParser, help: str, required: bool = True) -> None:
    """Add ``--data SPEEDS`` and, for a file without timestamps, ``--start`` and ``--freq``."""
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


def data_timing(args: argparse.Namespace) -> dict[str, object]:
    """``--start`` and ``--freq`` as the keyword arguments of the readers and pipeline jobs
    (``start``, ``freq_minutes``); a ``--freq`` that is not a whole number of minutes is a user
    error naming it."""
    return {"start": args.start, "freq_minutes": parse_freq(args.freq)}


def parse_freq(text: str | None) -> int | None:
    """``--freq`` as whole minutes (:func:`trafficcast.data.io.parse_freq_minutes`); None stays None."""
    from trafficcast.data.io import parse_freq_minutes

    return None if text is None else parse_freq_minutes(text)


def optional_location(value: str | None) -> str | Path | None:
    """An optional database argument: a URL (``postgresql://...``) as given, else a SQLite
    path; an option not given stays None."""
    from trafficcast.app.db import location

    return None if value is None else location(value)


def optional_path(value: str | None) -> Path | None:
    """An optional path argument as a ``Path``; an option not given stays None."""
    return None if value is None else Path(value)
