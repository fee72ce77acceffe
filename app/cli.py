"""The ``trafficcast`` command line.

The CLI is thin: each subcommand parses its arguments, calls library code and prints a short
result. User mistakes (bad files, bad values) end in one line on stderr naming the problem and a
non-zero exit status; only bugs show a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from trafficcast.app.commands import (
    calibrate_cmd,
    data_cmd,
    db_cmd,
    graph_cmd,
    import_cmd,
    model_cmd,
    registry_cmd,
    retrain_cmd,
    serve_cmd,
)
from trafficcast.app.commands.common import describe, user_error_types
from trafficcast.app.exit_status import EXIT_USER_ERROR

_COMMAND_MODULES = (
    graph_cmd,
    data_cmd,
    import_cmd,
    model_cmd,
    calibrate_cmd,
    serve_cmd,
    retrain_cmd,
    registry_cmd,
    db_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trafficcast",
        description="Traffic forecasting with DCRNN (Li et al., ICLR 2018).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in _COMMAND_MODULES:
        module.register(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        result = args.handler(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except user_error_types() as exc:
        print(f"error: {describe(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return int(result or 0)

