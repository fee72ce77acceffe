"""Atomic file writes for run directories: a crash leaves the old file or the new one, never half.

Thin wrappers over :func:`trafficcast.graph.io.atomic_write` (temporary file beside the target, fsync,
rename, fsync of the directory), the project's one implementation of the pattern; unlike it,
they create missing parent directories, as a run directory is built up file by file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trafficcast.graph.io import atomic_write


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")
