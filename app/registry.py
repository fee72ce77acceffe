"""The model registry: a directory of immutable model versions and a ``current`` pointer.

Layout (everything a reader needs is in the directory; nothing else is consulted)::

    REGISTRY/current.json        {"version": "v0003", "promoted_at": ..., "reason": ..., "history": [...]}
    REGISTRY/versions/v0003/     model.pt, fc_lstm.pt, config.yaml, report.json, graph.npz,
                                 train_log.jsonl, manifest.json (written last: sizes and SHA-256s)
    REGISTRY/versions/.tmp-*     a version being built (a crash leaves it; never read, removed
                                 by the next job)
    REGISTRY/staging/            the retraining job's working directory (resumable state)
    REGISTRY/.lock               flock'd by whoever changes the registry (dies with its process)
    REGISTRY/last-retrain.json   the last job's summary

Crash safety rests on three rules. A version directory appears by one ``rename`` of a fully
written and fsync'd temporary directory, so ``versions/vNNNN`` is complete or absent. The pointer
is one small JSON file replaced atomically (temporary file, fsync, rename, fsync of the
directory), so it names the old version or the new one. And the pointer only ever names a version
that is complete on disk, which is checked before it is written.

Readers (the service) take no lock: they read ``current.json`` and the version it names, which
no writer modifies. Writers (retrain, promote, rollback) hold ``.lock`` with ``flock``; the kernel
drops it when the process dies, SIGKILL included, so no crash leaves a stale lock.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from trafficcast.app.fsutil import atomic_write_json
from trafficcast.app.settings import FaultPoint, load_settings
from trafficcast.graph.io import atomic_write, fsync_directory

POINTER = "current.json"
MANIFEST = "manifest.json"
VERSION_FORMAT = "trafficcast-registry-version"
POINTER_FORMAT = "trafficcast-registry-pointer"
FORMAT_VERSION = 1
VERSION_RE = re.compile(r"^v(\d{4,})$")
HISTORY_LIMIT = 50

# Fault injection for the crash-safety tests (and for operators who want to see it for
# themselves): TRAFFICCAST_FAULT_POINT=<name> makes the process SIGKILL itself when it reaches the
# named point. SIGKILL, not an exception: no cleanup, no finally blocks, exactly a crash.
FAULT_ENV = "TRAFFICCAST_FAULT_POINT"
FAULT_POINTS: tuple[FaultPoint, ...] = get_args(FaultPoint)


def fault_point(name: FaultPoint) -> None:
    """SIGKILL this process if ``TRAFFICCAST_FAULT_POINT`` names ``name`` (a test hook)."""
    if load_settings().fault_point == name:
        os.kill(os.getpid(), signal.SIGKILL)


class RegistryError(Exception):
    """The registry is missing, malformed, or asked for something it cannot do; names the path."""


class RegistryBusy(RegistryError):
    """Another process holds the registry's lock."""


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _copy_synced(src: Path, dst: Path, fault: FaultPoint | None = None) -> None:
    """Copy ``src`` to ``dst`` and fsync it; ``fault`` names a fault point hit half way through."""
    data = src.read_bytes()
    with open(dst, "wb") as fh:
        if fault is not None:
            half = len(data) // 2
            fh.write(data[:half])
            fh.flush()
            os.fsync(fh.fileno())  # the torn half is on disk when the process dies
            fault_point(fault)
            fh.write(data[half:])
        else:
            fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


# --------------------------------------------------------------------------------------------
# Lock
# --------------------------------------------------------------------------------------------
class RegistryLock:
    """An exclusive ``flock`` on ``REGISTRY/.lock``; the file records who holds it (for messages).

    The kernel releases the lock when its holder exits or is killed, so a stale file means
    nothing: only a live process can hold the lock.
    """

    def __init__(self, root: Path, purpose: str) -> None:
        self.path = Path(root) / ".lock"
        self.purpose = purpose
        self._fd: int | None = None

    def acquire(self) -> RegistryLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            try:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            finally:
                os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RegistryBusy(
                    f"{self.path.parent}: the registry is locked by another job"
                    f"{f' ({holder})' if holder else ''}; try again when it has finished"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, {self.purpose}, since {now_iso()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RegistryLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
@dataclass
class Pointer:
    """What ``current.json`` says."""

    version: str
    promoted_at: str
    reason: str
    history: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": POINTER_FORMAT,
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "promoted_at": self.promoted_at,
            "reason": self.reason,
            "history": list(self.history),
        }


class Registry:
    """A registry directory (see the module docstring for the layout)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.staging_dir = self.root / "staging"
        self.pointer_path = self.root / POINTER
        self.summary_path = self.root / "last-retrain.json"

    # ---- reading ---------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.root.is_dir()

    def require(self) -> Registry:
        if not self.root.is_dir():
            raise RegistryError(f"{self.root}: no such registry directory")
        return self

    def ensure(self) -> Registry:
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        return self

    def lock(self, purpose: str) -> RegistryLock:
        return RegistryLock(self.root, purpose)

    def version_dir(self, version: str) -> Path:
        if not VERSION_RE.match(version):
            raise RegistryError(f"{version!r} is not a version name (like v0001)")
        return self.versions_dir / version

    def versions(self) -> list[str]:
        """Complete versions (those with a manifest), oldest first."""
        if not self.versions_dir.is_dir():
            return []
        found = [
            p.name
            for p in self.versions_dir.iterdir()
            if p.is_dir() and VERSION_RE.match(p.name) and (p / MANIFEST).is_file()
        ]
        return sorted(found, key=lambda v: int(VERSION_RE.match(v).group(1)))  # type: ignore[union-attr]

    def leftovers(self) -> list[Path]:
        """What interrupted writers left behind: partial version builds, pointer temp files."""
        out: list[Path] = []
        if self.versions_dir.is_dir():
            out += sorted(p for p in self.versions_dir.iterdir() if p.name.startswith("."))
        if self.root.is_dir():
            out += sorted(self.root.glob(f".{POINTER}.*.tmp"))
        return out

    def manifest(self, version: str) -> dict[str, Any]:
        path = self.version_dir(version) / MANIFEST
        if not path.is_file():
            known = ", ".join(self.versions()) or "none"
            raise RegistryError(f"{self.root}: no version {version} (versions: {known})")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RegistryError(f"{path}: unreadable manifest ({exc})") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != VERSION_FORMAT:
            raise RegistryError(f"{path}: not a {VERSION_FORMAT} manifest")
        return manifest

    def current(self) -> Pointer | None:
        """The pointer, or None for a registry with no promoted version yet."""
        try:
            raw = json.loads(self.pointer_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RegistryError(f"{self.pointer_path}: unreadable pointer ({exc})") from exc
        if not isinstance(raw, dict) or raw.get("format") != POINTER_FORMAT:
            raise RegistryError(f"{self.pointer_path}: not a {POINTER_FORMAT} file")
        version = raw.get("version")
        if not isinstance(version, str) or not VERSION_RE.match(version):
            raise RegistryError(f"{self.pointer_path}: version {version!r} is not a version name")
        history = raw.get("history") or []
        return Pointer(
            version=version,
            promoted_at=str(raw.get("promoted_at", "")),
            reason=str(raw.get("reason", "")),
            history=[h for h in history if isinstance(h, str)],
        )

    def verify_version(self, version: str, deep: bool = True) -> list[str]:
        """Problems with a version: missing manifest or files, sizes or (``deep``) hashes off."""
        directory = self.version_dir(version)
        try:
            manifest = self.manifest(version)
        except RegistryError as exc:
            return [str(exc)]
        problems = []
        for name, meta in (manifest.get("files") or {}).items():
            path = directory / name
            if not path.is_file():
                problems.append(f"{version}: {name} is missing")
            elif path.stat().st_size != meta.get("bytes"):
                problems.append(
                    f"{version}: {name} has {path.stat().st_size} bytes, manifest says "
                    f"{meta.get('bytes')}"
                )
            elif deep and file_sha256(path) != meta.get("sha256"):
                problems.append(f"{version}: {name} does not match its SHA-256 in the manifest")
        if "model.pt" not in (manifest.get("files") or {}):
            problems.append(f"{version}: the manifest lists no model.pt")
        return problems

    def verify(self) -> tuple[list[str], list[str]]:
        """``(problems, notes)`` for the whole registry; no problems means it is valid."""
        problems: list[str] = []
        notes: list[str] = []
        self.require()
        try:
            pointer = self.current()
        except RegistryError as exc:
            pointer = None
            problems.append(str(exc))
        if pointer is None and not problems:
            notes.append("no version promoted yet (no current.json)")
        versions = self.versions()
        for version in versions:
            problems += self.verify_version(version)
        if pointer is not None and pointer.version not in versions:
            problems.append(
                f"current.json names {pointer.version}, which is not a complete version"
            )
        for path in self.leftovers():
            notes.append(f"left by an interrupted job, removed by the next one: {path.name}")
        job = self.staging_dir / "job.json"
        if job.is_file():
            try:
                state = json.loads(job.read_text(encoding="utf-8"))
                notes.append(
                    f"an interrupted retrain job waits in staging/ (stage {state.get('stage')}); "
                    "the next `trafficcast retrain` resumes it"
                )
            except (OSError, ValueError):
                notes.append("staging/ holds an unreadable job; the next retrain starts afresh")
        return problems, notes

    def next_version(self) -> str:
        numbers = [0]
        if self.versions_dir.is_dir():
            for p in self.versions_dir.iterdir():
                m = re.search(r"v(\d{4,})", p.name)
                if m:
                    numbers.append(int(m.group(1)))
        pointer = self.current()
        if pointer is not None:
            for v in [pointer.version, *pointer.history]:
                m = VERSION_RE.match(v)
                if m:
                    numbers.append(int(m.group(1)))
        return f"v{max(numbers) + 1:04d}"

    # ---- writing (callers hold the lock) -----------------------------------------------------
    def clean_leftovers(self) -> list[str]:
        """Remove partial builds and pointer temp files; only safe while holding the lock."""
        removed = []
        for path in self.leftovers():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path.name)
        return removed

    def publish(self, version: str, files: dict[str, Path], manifest: dict[str, Any]) -> Path:
        """Make ``versions/<version>`` from ``files`` (name -> source path), atomically.

        The files are copied into a temporary directory beside the versions, fsync'd, the
        manifest written last, the directory fsync'd and renamed into place.
        """
        self.ensure()
        final = self.version_dir(version)
        if final.exists():
            raise RegistryError(f"{final}: version already exists (versions are immutable)")
        if "model.pt" not in files:
            raise RegistryError("a version needs a model.pt")
        tmp = self.versions_dir / f".tmp-{version}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        meta: dict[str, dict[str, Any]] = {}
        for name, src in files.items():
            _copy_synced(
                Path(src), tmp / name, fault="checkpoint-write" if name == "model.pt" else None
            )
            meta[name] = {"bytes": (tmp / name).stat().st_size, "sha256": file_sha256(tmp / name)}
        body = {
            "format": VERSION_FORMAT,
            "format_version": FORMAT_VERSION,
            "version": version,
            "created_at": now_iso(),
            **manifest,
            "files": meta,
        }
        atomic_write_json(tmp / MANIFEST, body)
        fsync_directory(tmp)
        os.rename(tmp, final)
        fsync_directory(self.versions_dir)
        return final

    def set_current(self, version: str, reason: str) -> Pointer:
        """Point ``current.json`` at ``version`` (checked complete first), atomically."""
        problems = self.verify_version(version)
        if problems:
            raise RegistryError(f"cannot promote {version}: {'; '.join(problems)}")
        old = self.current()
        history = [] if old is None else [*old.history, old.version]
        if old is not None and old.version == version:
            history = old.history
        pointer = Pointer(
            version=version, promoted_at=now_iso(), reason=reason, history=history[-HISTORY_LIMIT:]
        )
        _write_pointer(self.pointer_path, pointer)
        return pointer

    def rollback(self) -> Pointer:
        """Point back at the version that was current before this one (skipping pruned ones)."""
        old = self.current()
        if old is None:
            raise RegistryError(f"{self.root}: nothing to roll back (no version promoted yet)")
        history = list(old.history)
        available = set(self.versions())
        while history:
            candidate = history.pop()
            if candidate in available and candidate != old.version:
                problems = self.verify_version(candidate)
                if problems:
                    continue
                pointer = Pointer(
                    version=candidate,
                    promoted_at=now_iso(),
                    reason=f"rollback from {old.version}",
                    history=history,
                )
                _write_pointer(self.pointer_path, pointer)
                return pointer
        raise RegistryError(
            f"{self.root}: no earlier version to roll back to from {old.version} "
            "(the ones before it were pruned; use `registry promote VERSION`)"
        )

    def prune(self, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest versions; the current one is always kept."""
        if keep < 1:
            raise RegistryError(f"keep = {keep} must be >= 1")
        pointer = self.current()
        versions = self.versions()
        doomed = [v for v in versions[:-keep] if pointer is None or v != pointer.version]
        for version in doomed:
            # Rename first: a crash mid-delete leaves a dot-directory, never a half version.
            trash = self.versions_dir / f".trash-{version}-{os.getpid()}"
            os.rename(self.version_dir(version), trash)
            shutil.rmtree(trash, ignore_errors=True)
        if doomed:
            fsync_directory(self.versions_dir)
        return doomed


def _write_pointer(path: Path, pointer: Pointer) -> None:
    text = (json.dumps(pointer.to_dict(), indent=2) + "\n").encode()

    def write(tmp: Path) -> None:
        tmp.write_bytes(text)
        # The new pointer is written but not yet renamed: the moment a crash hurts most.
        fault_point("promotion")

    atomic_write(path, write)


def version_summary(registry: Registry, version: str) -> dict[str, Any]:
    """One line's worth of facts about a version (for ``registry list`` and ``/v1/model``)."""
    m = registry.manifest(version)
    return {
        "version": version,
        "created_at": m.get("created_at"),
        "holdout_mae": m.get("holdout_mae"),
        "data_end": (m.get("data") or {}).get("end"),
        "data_fingerprint": (m.get("data") or {}).get("fingerprint"),
        "parent": m.get("parent"),
    }
