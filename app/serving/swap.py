"""Hot swap from a model registry: serve its current version, and swap to each newly promoted one.

A new version is verified against its manifest, loaded and smoke-tested off the event loop; only
then is it handed to the service (:meth:`SwapTarget.swap_in`), which changes its serving
reference. Requests already running keep the model they started with. On failure the old model
keeps serving, ``/v1/model`` and the log say why, and that version is not tried again until the
pointer moves on.

The watcher knows the service only through :class:`SwapTarget`, the few things it needs of it;
:class:`~trafficcast.app.serving.core.Service` is one, and this module does not import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from trafficcast.app.registry import Pointer, Registry, now_iso
from trafficcast.app.serving.loading import LoadedModel
from trafficcast.app.telemetry import Metrics

log = logging.getLogger("trafficcast.service")


@dataclass(frozen=True)
class SwapFailure:
    """The last promoted version that could not be served: which, why, and when."""

    version: str
    error: str
    at: str


class SwapTarget(Protocol):
    """What the watcher needs of the service it swaps models into."""

    @property
    def model(self) -> LoadedModel | None:
        """The serving model, None before the first."""

    @property
    def metrics(self) -> Metrics:
        """Where swaps are counted."""

    def build(self, source: Path, smoke: bool = False, **registry: Any) -> LoadedModel:
        """Load and (``smoke``) smoke-test the model in ``source`` (blocking)."""

    async def swap_in(self, model: LoadedModel) -> LoadedModel | None:
        """Serve ``model`` from now on; returns the model it replaced."""

    def set_status(self, status: str) -> None:
        """Say why nothing is served yet (readiness reports it)."""


class RegistryWatcher:
    """The registry side of a service: what it last read and what failed (``/v1/model`` reports
    both), and the task polling the pointer."""

    def __init__(self, root: Path, poll_s: float, target: SwapTarget) -> None:
        self.target = target
        self.registry = Registry(root)
        self.poll_s = poll_s
        # The last version that could not be served (not retried until the pointer moves on),
        # why, and when the pointer was last read.
        self.swap_error: SwapFailure | None = None
        self.failed_version: str | None = None
        self.checked_at: str | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="registry-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def check(self) -> None:
        """Swap to the registry's current version if it is a new one (see the module)."""
        target, registry = self.target, self.registry
        pointer = await asyncio.to_thread(registry.current)
        self.checked_at = now_iso()
        current = target.model
        if pointer is None:
            if current is None:
                target.set_status(
                    f"no version promoted in the registry {registry.root} yet "
                    "(run `trafficcast retrain`)"
                )
            return
        serving = current.registry_version if current is not None else None
        if pointer.version in (serving, self.failed_version):
            return
        try:
            model = await asyncio.to_thread(self._load_version, pointer)
        except Exception as exc:  # any failure: the old model keeps serving
            self._failed(pointer.version, exc, serving)
            return
        old = await target.swap_in(model)
        self.failed_version = None
        if old is not None:  # the first load is not a swap
            target.metrics.swaps.labels(result="ok").inc()
        log.info(
            "now serving registry version %s (model %s; was %s)",
            pointer.version,
            model.version,
            serving or "nothing",
        )

    def _failed(self, version: str, exc: Exception, serving: str | None) -> None:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        self.failed_version = version
        self.swap_error = SwapFailure(version=version, error=reason, at=now_iso())
        self.target.metrics.swaps.labels(result="failed").inc()
        if self.target.model is None:
            self.target.set_status(f"registry version {version} cannot be served: {reason}")
        log.error(
            "swap to registry version %s failed; still serving %s: %s",
            version,
            serving or "nothing",
            reason,
        )

    def _load_version(self, pointer: Pointer) -> LoadedModel:
        problems = self.registry.verify_version(pointer.version)
        if problems:
            raise RuntimeError("; ".join(problems))
        return self.target.build(
            self.registry.version_dir(pointer.version),
            smoke=True,
            registry_version=pointer.version,
            promoted_at=pointer.promoted_at,
            reason=pointer.reason,
        )

    async def _watch(self) -> None:
        """Poll the registry pointer every ``registry_poll_s`` seconds; never gives up."""
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.check()
            except Exception as exc:  # e.g. a pointer edited by hand: say so, keep polling
                log.warning("cannot read the registry %s: %s", self.registry.root, exc)
