"""The process entry point: the ``trafficcast`` command and ``python -m trafficcast``.

A command that trains or runs models restarts once under tcmalloc (:mod:`~trafficcast.app.allocator`).
An allocator can only be chosen before the process starts, and the restart re-imports whatever the
process had imported, torch included. So the choice is made here, from the command's name on the
command line, before this module imports the CLI (and with it the whole library).
"""

from __future__ import annotations

import sys

from trafficcast.app.allocator import AllocatorError, restart_for_command
from trafficcast.app.exit_status import EXIT_USER_ERROR

try:
    restart_for_command(sys.argv[1:])
except AllocatorError as exc:  # a bad TRAFFICCAST_ALLOCATOR: one line, as for any bad setting
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)

# After the restart above, on purpose: the process that runs the command imports the CLI once.
from trafficcast.app.cli import main  # noqa: E402

__all__ = ["main"]
