"""Hot swap from a model registry: serve its current version, and swap to each newly promoted one.

A new version is verified against its manifest, loaded and smoke-tested off the event loop; only
then does the service's serving reference change (``Service.install``). Requests already running
keep the model they started with. On failure the old model keeps serving, ``/v1/model`` and the
log say why, and that version is not tried again until the pointer moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from trafficcast.app.registry import Pointer, Registry, now_iso
from trafficcast.app.schemas import SwapError
from trafficcast.app.serving.loading import LoadedModel

if TYPE_CHECKING:
    from trafficcast.app.serving.core import Service

log = logging.getLogger("trafficcast.service")


class RegistryWatcher:
    """The registry side of a :class:`~trafficcast.app.serving.core.Service`: what it last read and what
    failed (``/v1/model`` reports both), and the task polling the pointer."""

    def __init__(self, service: Service) -> None:
        assert service.settings.registry is not None
        self.service = service
        self.registry = Registry(service.settings.registry)
        self.poll_s = service.settings.registry_poll_s
        # The last version that could not be served (not retried until the pointer moves on),
        # why, and when the pointer was last read.
        self.swap_error: SwapError | None = None
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
        service, registry = self.service, self.registry
        pointer = await asyncio.to_thread(registry.current)
        self.checked_at = now_iso()
        if pointer is None:
            if service.model is None:
                service.status = (
                    f"no version promoted in the registry {registry.root} yet "
                    "(run `trafficcast retrain`)"
                )
            return
        serving = service.model.registry_version if service.model is not None else None
        if pointer.version in (serving, self.failed_version):
            return
        try:
            model = await asyncio.to_thread(self._load_version, pointer)
        except Exception as exc:  # any failure: the old model keeps serving
            self._failed(pointer.version, exc, serving)
            return
        if service.model is None:
            await asyncio.to_thread(service.seed, model.forecaster)
        old = service.install(model)
        self.failed_version = None
        service.retire(old)
        if old is not None:  # the first load is not a swap
            service.metrics.swaps.labels(result="ok").inc()
        log.info(
            "now serving registry version %s (model %s; was %s)",
            pointer.version,
            model.version,
            serving or "nothing",
        )

    def _failed(self, version: str, exc: Exception, serving: str | None) -> None:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        self.failed_version = version
        self.swap_error = SwapError(version=version, error=reason, at=now_iso())
        self.service.metrics.swaps.labels(result="failed").inc()
        if self.service.model is None:
            self.service.status = f"registry version {version} cannot be served: {reason}"
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
        return self.service.build(
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
