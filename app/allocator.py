"""The memory allocator the heavy commands run under.

PyTorch's CPU training frees and reallocates tensors of many sizes at every step. glibc's
allocator fragments under that pattern and keeps the fragments: a whole training run on the
bundled week peaks at about half the memory with tcmalloc, at the same or better speed (the
figures and the commands that measure them are in ``bench/README.md``). An allocator can only be chosen before the
process starts, so ``trafficcast train``/``evaluate``/``predict``/``retrain``/``serve`` restart
themselves once, in place (``execve``: same PID, same arguments), with tcmalloc preloaded when the
machine has it.

The setting is the environment variable ``TRAFFICCAST_ALLOCATOR``:

- ``auto`` (the default): tcmalloc when a library is found, otherwise the system allocator;
- ``tcmalloc``: tcmalloc, and an error when no library is found;
- ``system``: leave the process as it was started.

This one variable is read here and not through the settings object (``app/settings.py``): the
choice is made before the library is imported, and the settings module imports it (SQLAlchemy,
torch through ``models``), which the restart would then import twice.

A process that already preloads an allocator (``LD_PRELOAD`` naming tcmalloc or jemalloc, as the
Docker image does) is left alone, and so is any platform other than Linux.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ENV_SETTING = "TRAFFICCAST_ALLOCATOR"
# Set by the restart itself: a process that carries it never restarts again, whatever happened.
ENV_RESTARTED = "TRAFFICCAST_ALLOCATOR_RESTARTED"
CHOICES = ("auto", "tcmalloc", "system")
# The commands that train or run models: they restart under tcmalloc (the others stay light).
ALLOCATOR_COMMANDS = frozenset({"train", "evaluate", "predict", "calibrate", "serve", "retrain"})

_LIBRARY_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
_LIBRARY_DIRS = (
    "/usr/local/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
)


class AllocatorError(ValueError):
    """The allocator setting can't be honoured (one-line message for the CLI)."""


def find_tcmalloc(
    dirs: Sequence[str | os.PathLike] = _LIBRARY_DIRS, prefix: str = sys.prefix
) -> Path | None:
    """The first tcmalloc shared library in the environment's ``lib`` or the system's dirs."""
    for directory in (Path(prefix) / "lib", *map(Path, dirs)):
        for name in _LIBRARY_NAMES:
            candidate = directory / name
            if candidate.is_file():
                return candidate
    return None


def preloaded_allocator(env: Mapping[str, str]) -> str | None:
    """The allocator that ``LD_PRELOAD`` already names, if any."""
    preload = env.get("LD_PRELOAD", "")
    for name in ("tcmalloc", "jemalloc"):
        if name in preload:
            return name
    return None


def restart_plan(
    env: Mapping[str, str], platform: str = sys.platform, library: Path | None = None
) -> dict[str, str] | None:
    """The environment to restart with, or ``None`` to carry on as started.

    ``library`` is the tcmalloc found on this machine (``None``: none). Raises
    :class:`AllocatorError` for a bad setting, or ``tcmalloc`` asked for and not available.
    """
    setting = env.get(ENV_SETTING, "auto").strip().lower() or "auto"
    if setting not in CHOICES:
        raise AllocatorError(
            f"{ENV_SETTING}={env[ENV_SETTING]!r} is not one of {', '.join(CHOICES)}"
        )
    if setting == "system" or env.get(ENV_RESTARTED) or preloaded_allocator(env):
        return None
    if not platform.startswith("linux"):
        if setting == "tcmalloc":
            raise AllocatorError(f"{ENV_SETTING}=tcmalloc is supported on Linux only")
        return None
    if library is None:
        if setting == "tcmalloc":
            raise AllocatorError(
                f"{ENV_SETTING}=tcmalloc but no tcmalloc library was found "
                "(Debian/Ubuntu: apt-get install libtcmalloc-minimal4)"
            )
        return None
    new_env = dict(env)
    preload = env.get("LD_PRELOAD", "").strip()
    new_env["LD_PRELOAD"] = f"{library} {preload}".strip()
    new_env[ENV_RESTARTED] = "tcmalloc"
    return new_env


def allocator_for(env: Mapping[str, str] | None = None) -> str:
    """The allocator a heavy command started with ``env`` runs under: tcmalloc, jemalloc, system."""
    env = os.environ if env is None else env
    preloaded = preloaded_allocator(env)
    if preloaded:
        return preloaded
    return "system" if _plan_here(env) is None else "tcmalloc"


def _plan_here(env: Mapping[str, str]) -> dict[str, str] | None:
    """:func:`restart_plan` with this machine's platform and tcmalloc library."""
    on_linux = sys.platform.startswith("linux")
    return restart_plan(env, library=find_tcmalloc() if on_linux else None)


def restart_for_command(args: Sequence[str]) -> None:
    """:func:`restart_with_preferred_allocator` when ``args`` (the command line after the
    program's name) runs one of :data:`ALLOCATOR_COMMANDS`; the process entry point calls it
    before importing the library."""
    if args and args[0] in ALLOCATOR_COMMANDS:
        restart_with_preferred_allocator()


def restart_with_preferred_allocator() -> None:
    """Replace this process by itself under tcmalloc when the setting asks for it.

    Returns only when no restart is due. Call it before any heavy import or thread start:
    ``execve`` keeps the PID (process supervisors, ``torchrun`` and signals see the same
    process) and re-runs the interpreter with the original command line.
    """
    plan = _plan_here(os.environ)
    if plan is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, list(sys.orig_argv), plan)
    except OSError:
        return  # could not restart (an odd interpreter path): carry on with the system allocator
