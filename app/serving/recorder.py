"""The live-accuracy recorder: one background task that forecasts from each new latest observed
step and scores the recorded forecasts as their readings arrive; never on a request's path.

``Service.record`` (behind ``POST /v1/observations``) only notes the times it wrote and wakes the
task, so the POST returns before any of this runs. Each round of the task:

1. rescores the recorded forecasts with a target time among those written since the last round
   (a score row is recomputed from the store, see ``trafficcast.app.accuracy``, so a late or re-sent reading
   counts as the store now holds it);
2. forecasts, in time order, from every stored time step later than the last step forecast
   from (its high-water mark, or the newest ``made_from`` in the record if later: replicas on
   one database share the record, and one does not redo what another did), each from the
   store's window ending there, then records and scores it. With readings arriving in time order
   that is every time step that became the latest one, whether they came one step per POST or many
   per POST, and however far the task lags. A step that arrives after a later one was forecast from
   is scored, not forecast from. The forecasts come from the service
   (:meth:`ForecastSource.forecast_at`: the latest step through its forecast cache, so a
   ``GET /v1/forecast`` afterwards is a cache hit); a step whose window is not enough data for
   that GET (``NotEnoughData``) is not forecast from either;
3. drops forecasts made more than ``accuracy_retention_hours`` before the newest one, and sets the
   live gauges.

Rounds coalesce: what arrives while one runs is taken by the next. The notes are bounded
(``MAX_PENDING_STEPS``); past that the next round rescores the whole record instead, which gives
the same scores. A whole round also runs at start, so what a stopped (or killed) process had not
got to is done then: its readings are in the store. With an empty record the high-water mark starts
at the latest step stored at start, so seeded data is not forecast from (with nothing stored then
either, the first round forecasts from the latest step only). ``stop()`` first lets the task finish
its work, for a while.

The recorder knows the service only through :class:`ForecastSource`, the two things it needs of it;
:class:`~trafficcast.app.serving.core.Service` is one, and this module does not import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import pandas as pd

from trafficcast.app.accuracy import ForecastRecord, ModelMeta, Recorded, epoch_seconds, score_rows
from trafficcast.app.observations import ObservationStore
from trafficcast.app.registry import now_iso
from trafficcast.app.serving.cache import Bands
from trafficcast.app.serving.errors import NonFiniteForecast, NotEnoughData
from trafficcast.app.serving.loading import LoadedModel

log = logging.getLogger("trafficcast.accuracy")

# Past this many distinct noted times a round rescores the whole record: as cheap by then, and
# the notes stay bounded whatever the clients send.
MAX_PENDING_STEPS = 4096
# How long stop() lets the task finish its work; what is left is caught up at the next start.
STOP_DRAIN_S = 10.0


class ForecastSource(Protocol):
    """What the recorder needs of the service whose forecasts it records."""

    @property
    def model(self) -> LoadedModel | None:
        """The serving model, None before the first."""

    async def forecast_at(
        self, model: LoadedModel, end: pd.Timestamp, level: float
    ) -> tuple[np.ndarray, Bands | None]:
        """``model``'s forecast ``(H, N)`` from the stored window ending at ``end`` and its band
        at ``level`` (None for a model without calibration). Raises ``NotEnoughData``,
        ``NonFiniteForecast``."""


class Recorder:
    """The background task of the live record; see the module docstring.

    ``source``: the serving model and its forecasts; ``record``: where forecasts and scores are
    kept; ``store``: the readings; ``level``: the band recorded with each forecast;
    ``retention_hours``: how long forecasts are kept; ``on_summary``: called with each round's
    live figures per window (the gauges).
    """

    def __init__(
        self,
        source: ForecastSource,
        record: ForecastRecord,
        store: ObservationStore,
        *,
        level: float,
        retention_hours: float,
        on_summary: Callable[[dict[str, Any]], None],
    ) -> None:
        self.source = source
        self.record = record
        self.store = store
        self.level = level
        self.retention_hours = retention_hours
        self.on_summary = on_summary
        self._written: set[int] = set()
        self._full = True  # the first round catches up with the store
        self._running = 0
        self._high_water: int | None = None
        self._registered: set[str] = set()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task | None = None

    @property
    def pending(self) -> int:
        """Noted times not yet done with (a whole-record round counts one); 0 when up to date."""
        return len(self._written) + self._running + int(self._full)

    def start(self) -> None:
        """Start the task (blocking briefly: reads the high-water mark)."""
        self._high_water = self.record.high_water()
        if self._high_water is None:
            latest = self.store.latest_timestamp()
            self._high_water = None if latest is None else epoch_seconds(latest)
        self._task = self._loop.create_task(self._run(), name="accuracy-recorder")
        self._wake.set()

    def notify(self, stamps: pd.DatetimeIndex) -> None:
        """Note times just written to the store (on the event loop; returns at once)."""
        self._written.update(epoch_seconds(t) for t in stamps)
        if len(self._written) > MAX_PENDING_STEPS:
            self._written.clear()
            self._full = True
        self._idle.clear()
        self._wake.set()

    def wake(self) -> None:
        """A model was installed (from any thread): work waiting for one can go on."""
        self._loop.call_soon_threadsafe(self._wake.set)

    async def idle(self) -> None:
        """Return once everything noted so far is recorded and scored."""
        await self._idle.wait()

    async def stop(self) -> None:
        """Let the task finish its work (up to ``STOP_DRAIN_S``), then end it."""
        if self._task is None:
            return
        if self.source.model is not None:
            try:
                await asyncio.wait_for(self._idle.wait(), STOP_DRAIN_S)
            except TimeoutError:
                log.warning("stopping with %d steps not yet recorded or scored", self.pending)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.source.model is None:  # nothing to forecast with: install() wakes us
                continue
            written, full = self._written, self._full
            self._written, self._full = set(), False
            self._running = len(written) + int(full)
            failed = False
            try:
                await self._round(written, full)
            except Exception:  # the task must outlive any one round
                log.exception("live accuracy: a round failed; the next one redoes the record")
                self._full = failed = True
            finally:
                self._running = 0
            # After a failure nothing is retried until new readings come (pending stays >= 1).
            if not self._written and (failed or not self._full):
                self._idle.set()

    # ---- one round ---------------------------------------------------------------------
    async def _round(self, written: set[int], full: bool) -> None:
        record = self.record
        if full:
            await asyncio.to_thread(self._rescore, None)
        elif written:
            await asyncio.to_thread(self._rescore, written)
        latest = await asyncio.to_thread(self.store.latest_timestamp)
        if latest is None:
            return
        for end in await asyncio.to_thread(self._new_steps, latest):
            model = self.source.model
            if model is None:  # not while a model serves: nothing to forecast with
                break
            await self._forecast_from(model, end)
        if self._high_water is not None:
            retention_s = round(self.retention_hours * 3600)
            await asyncio.to_thread(record.prune, self._high_water - retention_s)
        model = self.source.model
        if model is not None:
            meta = await asyncio.to_thread(self._meta, model)
            summary = await asyncio.to_thread(record.summary, meta, latest)
            self.on_summary(summary["windows"])

    def _new_steps(self, latest: pd.Timestamp) -> list[pd.Timestamp]:
        """The steps to forecast from, oldest first (blocking)."""
        if self._high_water is None:
            return [latest]
        # Replicas share the record: the steps another one has forecast from are not redone.
        shared = self.record.high_water()
        if shared is not None and shared > self._high_water:
            self._high_water = shared
        # Steps the retention would drop at once are not forecast from (after a long lag).
        oldest = latest - pd.Timedelta(hours=self.retention_hours)
        after = max(pd.Timestamp(self._high_water, unit="s"), oldest - pd.Timedelta(seconds=1))
        return list(self.store.steps_after(after))

    async def _forecast_from(self, model: LoadedModel, end: pd.Timestamp) -> None:
        """Forecast from the stored window ending at ``end`` with ``model`` (the serving one),
        record the forecast and score it against the readings already stored for its times."""
        self._high_water = epoch_seconds(end)
        try:
            forecast, bands = await self.source.forecast_at(model, end, self.level)
        except (NotEnoughData, NonFiniteForecast) as exc:
            log.info("live accuracy: no forecast from %s: %s", end.isoformat(), exc.detail)
            return
        meta = await asyncio.to_thread(self._meta, model)
        recorded = await asyncio.to_thread(
            self.record.add, meta, epoch_seconds(end), now_iso(), forecast, bands, self.level
        )
        if recorded is not None:
            rows = await asyncio.to_thread(self._score, [recorded], None)
            await asyncio.to_thread(self.record.put_scores, rows)

    def _meta(self, model: LoadedModel) -> ModelMeta:
        f = model.forecaster
        meta = ModelMeta(model.version, list(f.sensor_ids), f.horizon, f.freq_minutes)
        if model.version not in self._registered:
            self.record.register_model(meta, model.registry_version)
            self._registered.add(model.version)
        return meta

    # ---- scoring (blocking) --------------------------------------------------------------
    def _rescore(self, written: set[int] | None) -> None:
        """Rescore the recorded forecasts' steps whose target time is in ``written`` (None:
        every step of every recorded forecast)."""
        record = self.record
        if written is None:
            forecasts = record.made_between(None, None)
        else:
            reach = record.max_reach_s()
            if reach is None:
                return
            forecasts = record.made_between(min(written) - reach, max(written) - 1)
        record.put_scores(self._score(forecasts, written))

    def _score(self, forecasts: list[Recorded], written: set[int] | None) -> list[tuple]:
        """Score rows of ``forecasts``' steps whose target time is in ``written`` (None: all
        steps), against the store's readings. One store read per model version."""
        store = self.store
        rows: list[tuple] = []
        by_version: dict[str, list[Recorded]] = {}
        for f in forecasts:
            by_version.setdefault(f.meta.version, []).append(f)
        for group in by_version.values():
            meta = group[0].meta
            step_s = meta.freq_s
            wanted = {
                f.id: [
                    s
                    for s in range(1, meta.horizon + 1)
                    if written is None or f.made_from + s * step_s in written
                ]
                for f in group
            }
            targets = [f.made_from + s * step_s for f in group for s in wanted[f.id]]
            if not targets:
                continue
            first, last = min(targets), max(targets)
            _, block = store.window(
                meta.sensor_ids,
                pd.Timestamp(last, unit="s"),
                (last - first) // step_s + 1,
                meta.freq_minutes,
            )  # (steps, N): row k is time first + k * step_s
            for f in group:
                k = (f.made_from + step_s - first) // step_s  # the row of step 1's target
                if written is None:
                    rows += score_rows(f, block[k : k + meta.horizon])
                    continue
                for s in wanted[f.id]:
                    rows += score_rows(f, block[k + s - 1 : k + s], first_step=s)
        return rows
