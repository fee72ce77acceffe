"""The serving core's ``Service``: the model it serves, the store, the inference pool, the cache.

Lifecycle: ``start()`` opens the observation store and the inference pool and loads the model —
from a registry (then watched, and each newly promoted version swapped in), from ``run_dir``, or,
for the bundled run without a checkpoint, by training it in a background thread first (the service
is not ready until then); ``stop()`` undoes it. Inference runs in the pool, off the event loop;
concurrent forecasts are micro-batched into one forward pass (``trafficcast.app.batching``). With
``accuracy_enabled``, a background task (``trafficcast.app.serving.recorder``) records a forecast from each new
latest observed step and scores it as its readings arrive (``trafficcast.app.accuracy``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from trafficcast.app.accuracy import WINDOWS, ForecastRecord, ModelMeta
from trafficcast.app.batching import MicroBatcher
from trafficcast.app.db import UNAVAILABLE, Database
from trafficcast.app.forecaster import Forecaster
from trafficcast.app.observations import ObservationStore
from trafficcast.app.pipeline import TrainOptions, load_config, train_run
from trafficcast.app.registry import file_sha256, now_iso
from trafficcast.app.serving.cache import Bands, CachedForecast, window_bands
from trafficcast.app.serving.errors import NonFiniteForecast, NotEnoughData, ServiceNotStarted
from trafficcast.app.serving.health import DatabaseHealth
from trafficcast.app.serving.loading import (
    LoadedModel,
    open_database,
    read_locations,
    read_report,
    seed_store,
    smoke_test,
)
from trafficcast.app.serving.recorder import Recorder
from trafficcast.app.serving.swap import RegistryWatcher
from trafficcast.app.settings import BUNDLED_CONFIG, Settings
from trafficcast.app.telemetry import Metrics
from trafficcast.data import sample_adjacency_pkl_path, sample_speeds_path

log = logging.getLogger("trafficcast.service")


class Service:
    """The serving state the routes reach through the ``ServiceDep`` dependency: model, store,
    cache, metrics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.model: LoadedModel | None = None
        self.db: Database | None = None
        self.store: ObservationStore | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.cache: CachedForecast | None = None
        self.cache_lock = asyncio.Lock()
        self.status = "starting"
        self.load_error: str | None = None
        self._trainer: threading.Thread | None = None
        # Hot swap from the registry, when one is configured.
        self.swap: RegistryWatcher | None = (
            RegistryWatcher(settings.registry, settings.registry_poll_s, self)
            if settings.registry is not None
            else None
        )
        self._retired: set[asyncio.Task] = set()
        self.health: DatabaseHealth | None = None
        # The live-accuracy record and its background task (None when accuracy_enabled is off).
        self.accuracy: ForecastRecord | None = None
        self.recorder: Recorder | None = None

    @property
    def ready(self) -> bool:
        return self.model is not None

    @property
    def forecaster(self) -> Forecaster | None:
        return None if self.model is None else self.model.forecaster

    # ---- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store and the inference pool, then load the model: from the registry (and
        watch it), else from ``run_dir``, else train the bundled run in the background.

        Raises ``FileNotFoundError`` when there is no checkpoint and nothing to train.
        """
        self._open()
        model_path = self._run_dir_checkpoint()
        s = self.settings
        if self.swap is not None:
            await self._start_from_registry(self.swap, model_path)
        elif model_path.exists():
            self.load()
        elif s.serves_bundled_run and s.train_if_missing:
            self._trainer = threading.Thread(
                target=self.train_then_load, name="train-bundled", daemon=True
            )
            self._trainer.start()
        else:
            raise FileNotFoundError(2, "no model checkpoint", str(model_path))
        if self.recorder is not None:
            self.recorder.start()

    def _open(self) -> None:
        s = self.settings
        if s.torch_threads is not None:
            torch.set_num_threads(s.torch_threads)
        self.db = open_database(s)
        self.store = ObservationStore(self.db)
        self.health = DatabaseHealth(self.db, s.db_connect_timeout_s, self.metrics)
        self.executor = ThreadPoolExecutor(s.inference_workers, thread_name_prefix="inference")
        self.cache_lock = asyncio.Lock()
        if s.accuracy_enabled:
            self.accuracy = ForecastRecord(self.db)
            self.recorder = Recorder(
                self,
                self.accuracy,
                self.store,
                level=s.accuracy_interval_level,
                retention_hours=s.accuracy_retention_hours,
                on_summary=self.metrics.set_live,
            )

    def _run_dir_checkpoint(self) -> Path:
        run_dir = self.settings.run_dir
        return run_dir / "model.pt" if run_dir.is_dir() else run_dir

    async def _start_from_registry(self, swap: RegistryWatcher, model_path: Path) -> None:
        """Serve the registry's current version and start the watcher that swaps in new ones."""
        s = self.settings
        try:
            await swap.check()
        except Exception as exc:  # not ready yet; the watcher keeps trying
            self.status = f"cannot read the registry {s.registry}: {exc}"
            log.warning(self.status)
        loop = asyncio.get_running_loop()
        if self.model is None and s.registry_fallback and model_path.exists():
            # An empty registry (a fresh deployment): serve run_dir's model until the first
            # version is promoted; the watcher swaps that in like any other.
            log.warning(
                "registry %s has no servable version yet; serving %s meanwhile",
                s.registry,
                model_path,
            )
            await loop.run_in_executor(None, self.load)
        swap.start()

    async def stop(self) -> None:
        """Let the accuracy recorder finish (for a while), stop the registry watcher and the
        batchers, then close the pool and the store."""
        if self.recorder is not None:
            await self.recorder.stop()
        if self.swap is not None:
            await self.swap.stop()
        for task in list(self._retired):
            task.cancel()
        if self.model is not None and self.model.batcher is not None:
            await self.model.batcher.stop()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        if self.db is not None:
            self.db.dispose()

    async def database_problem(self) -> str | None:
        """None when the database answers, else why not (see :class:`DatabaseHealth`)."""
        if self.health is None:
            raise ServiceNotStarted("the service is not started: no database to check")
        return await self.health.problem()

    # ---- loading -----------------------------------------------------------------------
    def build(self, source: Path, smoke: bool = False, **registry: Any) -> LoadedModel:
        """Load a checkpoint with its report and locations (blocking; run off the event loop).

        ``smoke``: also run one forecast on the latest stored window (or, with no stored data,
        a window of the scaler's mean speed) and refuse a model whose forecast is not finite.
        """
        model_path = source / "model.pt" if source.is_dir() else source
        forecaster = Forecaster.from_run(source)
        if smoke:
            smoke_test(forecaster, self.store)
        return LoadedModel(
            forecaster=forecaster,
            version=file_sha256(model_path)[:16],
            report=read_report(model_path.parent / "report.json"),
            sensor_index={sid: k for k, sid in enumerate(forecaster.sensor_ids)},
            locations=read_locations(forecaster.sensor_ids, self.settings.locations_path),
            source=source,
            loaded_at=now_iso(),
            **registry,
        )

    def install(self, model: LoadedModel) -> LoadedModel | None:
        """Make ``model`` the serving one (one reference assignment); returns the old one."""
        f = model.forecaster
        self.metrics.model_info.info(
            {
                "version": model.version,
                "registry_version": model.registry_version or "",
                "trained_at": str(f.payload.get("trained_at") or ""),
                "sensors": str(len(f.sensor_ids)),
                "seq_len": str(f.seq_len),
                "horizon": str(f.horizon),
                "freq_minutes": str(f.freq_minutes),
                "run_dir": str(model.source),
            }
        )
        old, self.model = self.model, model  # last: readiness flips when everything is in place
        self.status = "ready"
        self.metrics.ready.set(1)
        if self.recorder is not None:
            self.recorder.wake()
        return old

    def load(self) -> None:
        """Load the run directory's checkpoint, report, locations; seed the store (at startup)."""
        model = self.build(self.settings.run_dir)
        self.seed(model.forecaster)
        self.install(model)

    async def swap_in(self, model: LoadedModel) -> LoadedModel | None:
        """Serve ``model`` (from a registry) from now on: the store seeded first if nothing
        served yet, the old model's batcher retired; returns the old model."""
        if self.model is None:
            await asyncio.to_thread(self.seed, model.forecaster)
        old = self.install(model)
        self.retire(old)
        return old

    def set_status(self, status: str) -> None:
        """Why nothing is served yet (readiness and 503s say it)."""
        self.status = status

    def _seed_path(self) -> Path | None:
        seed = self.settings.seed_observations
        if seed == "auto":
            return sample_speeds_path() if self.settings.serves_bundled_run else None
        return seed

    def seed(self, forecaster: Forecaster) -> None:
        """Fill an empty store with the last days of a speed file, so forecasts show at once."""
        path = self._seed_path()
        if path is None or self.store is None or not self.store.is_empty():
            return
        written = seed_store(self.store, forecaster, path, self.settings.seed_days)
        self.metrics.observations.inc(written)

    def train_then_load(self) -> None:
        """First start without the bundled checkpoint: train it (with a progress bar; training
        also calibrates its intervals, so it ships calibrated), then load."""
        try:
            self.status = "training the bundled model (first start); see the server's log"
            config = load_config(BUNDLED_CONFIG if BUNDLED_CONFIG.exists() else None)
            train_run(
                TrainOptions(
                    data=sample_speeds_path(),
                    output=self.settings.run_dir,
                    adjacency=sample_adjacency_pkl_path(),
                    config=config,
                    progress=True,
                )
            )
            self.load()
        except Exception as exc:  # readiness reports it; the process keeps answering /healthz
            log.exception("training the bundled model failed")
            self.load_error = f"training the bundled model failed: {exc}"
            self.status = self.load_error

    # ---- inference ---------------------------------------------------------------------
    def _forward(self, model: LoadedModel, speeds: np.ndarray, stamps: np.ndarray) -> np.ndarray:
        """One forward pass. Shapes: ``(B, seq_len, N)``, ``(B, seq_len)`` -> ``(B, H, N)``."""
        started = time.perf_counter()
        out = model.forecaster.forecast_batch(speeds, stamps)
        self.metrics.inference.observe(time.perf_counter() - started)
        return out

    def _batcher(self, model: LoadedModel) -> MicroBatcher | None:
        """The model's own micro-batcher, started on first use (on the event loop): one per
        model, so a batch never mixes windows of two models during a swap."""
        s = self.settings
        if s.microbatch_window_ms <= 0 or s.microbatch_max_size <= 1 or self.executor is None:
            return None
        if model.batcher is None and model is self.model:
            model.batcher = MicroBatcher(
                functools.partial(self._forward, model),
                self.executor,
                s.microbatch_window_ms,
                s.microbatch_max_size,
                on_batch=self.metrics.batch_size.observe,
            )
            model.batcher.start()
        return model.batcher

    def retire(self, model: LoadedModel | None) -> None:
        """Let a swapped-out model's batcher finish its queued requests, then stop it."""
        if model is not None and model.batcher is not None:
            task = asyncio.get_running_loop().create_task(model.batcher.close())
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    async def infer(
        self, model: LoadedModel, speeds: np.ndarray, stamps: pd.DatetimeIndex
    ) -> np.ndarray:
        """Forecast one window with ``model`` off the event loop. Shapes: ``(seq_len, N)`` ->
        ``(H, N)``. Raises :class:`NonFiniteForecast` if any value is NaN or infinite."""
        times = np.asarray(stamps, dtype="datetime64[ns]")
        batcher = self._batcher(model)
        if batcher is not None and batcher.accepting:
            out = await batcher.submit(speeds, times)
        else:  # unbatched, or a request that began just before its model was swapped out
            loop = asyncio.get_running_loop()
            out = (
                await loop.run_in_executor(
                    self.executor, self._forward, model, speeds[None], times[None]
                )
            )[0]
            self.metrics.batch_size.observe(1)
        if not np.all(np.isfinite(out)):
            raise NonFiniteForecast(
                "the model gave a non-finite forecast for this input", field="speeds"
            )
        return out

    async def stored_forecast(self, model: LoadedModel) -> tuple[CachedForecast, bool]:
        """The forecast from the latest stored window, and whether it came from the cache:
        computed once per store state and model, then cached.

        Raises :class:`NotEnoughData` when nothing is stored, or when the window holds under
        ``min_window_coverage`` of its readings or none at its last step.
        """
        f, store = model.forecaster, self._store()
        cached = self.cache
        try:
            # Read before the data: a write after this read leaves a forecast that its next
            # read of the counter invalidates.
            generation = await asyncio.to_thread(store.generation)
        except UNAVAILABLE:
            # The database is gone for now; so is every way to write a reading (every replica
            # writes there), so the forecast last made from it is still the latest one.
            if cached is not None and cached.model is model:
                self.metrics.stale_forecasts.inc()
                return cached, True
            raise
        if cached is not None and cached.generation == generation and cached.model is model:
            return cached, True
        async with self.cache_lock:
            cached = self.cache
            if cached is not None and cached.generation == generation and cached.model is model:
                return cached, True
            latest = await asyncio.to_thread(store.latest_timestamp)
            if latest is None:
                raise NotEnoughData(
                    "no observations stored yet: POST readings to /v1/observations first"
                )
            stamps, window, forecast, coverage = await self.window_forecast(model, latest)
            self.cache = CachedForecast(
                model,
                generation,
                latest,
                f.future_timestamps(latest),
                forecast,
                coverage,
                stamps,
                window,
            )
            return self.cache, False

    async def window_forecast(
        self, model: LoadedModel, end: pd.Timestamp
    ) -> tuple[pd.DatetimeIndex, np.ndarray, np.ndarray, float]:
        """The stored window of ``model``'s ``seq_len`` steps ending at ``end``, the forecast from
        it, and the fraction of the window's readings present. Shapes: window ``(seq_len, N)``
        (NaN: missing), forecast ``(H, N)``.

        Raises :class:`NotEnoughData` when the window holds under ``min_window_coverage`` of its
        readings or none at its last step.
        """
        f = model.forecaster
        stamps, window = await asyncio.to_thread(
            self._store().window, f.sensor_ids, end, f.seq_len, f.freq_minutes
        )
        coverage = float(np.isfinite(window).mean())
        need = self.settings.min_window_coverage
        if coverage < need or not np.isfinite(window[-1]).any():
            raise NotEnoughData(
                f"too little recent data: the {f.seq_len} steps ending {end.isoformat()} "
                f"hold {coverage:.0%} of their readings, {need:.0%} needed; POST more "
                "readings to /v1/observations"
            )
        return stamps, window, await self.infer(model, window, stamps), coverage

    # The calibrated band around a forecast of one window.
    bands = staticmethod(window_bands)

    @staticmethod
    def stored_bands(entry: CachedForecast, level: float) -> Bands:
        """The band of a cached forecast at ``level``: see :meth:`CachedForecast.band`."""
        return entry.band(level)

    async def forecast_at(
        self, model: LoadedModel, end: pd.Timestamp, level: float
    ) -> tuple[np.ndarray, Bands | None]:
        """``model``'s forecast ``(H, N)`` from the stored window ending at ``end`` and its band
        at ``level`` (None for a model without calibration): the latest step through the
        forecast cache, an older one directly."""
        calibrated = model.forecaster.intervals
        latest = await asyncio.to_thread(self._store().latest_timestamp)
        if end == latest and model is self.model:  # the cache holds the serving model's only
            entry, _ = await self.stored_forecast(model)
            if entry.last_observation == end:  # else newer readings came in meanwhile
                bands = self.stored_bands(entry, level) if calibrated else None
                return entry.forecast, bands
        stamps, window, forecast, _ = await self.window_forecast(model, end)
        bands = self.bands(model, window, stamps, forecast, level) if calibrated else None
        return forecast, bands

    # ---- observations ------------------------------------------------------------------
    def _store(self) -> ObservationStore:
        if self.store is None:
            raise ServiceNotStarted("the service is not started: no observation store")
        return self.store

    async def record(
        self, model: LoadedModel, sensors: list[str], stamps: pd.DatetimeIndex, values: np.ndarray
    ) -> tuple[int, pd.Timestamp | None]:
        """Store raw readings off the event loop; returns the readings written and the latest
        stored timestamp. ``model``'s missing-value rule decides, once, which readings are none
        (kept as NULL): NaN always, 0 too under ``"zero"``. Shapes: ``values``
        ``(len(stamps), len(sensors))``."""
        store = self._store()
        values = np.where(model.forecaster.observed(values), values, np.nan)
        written = await asyncio.to_thread(store.add, sensors, stamps, values)
        self.metrics.observations.inc(written)
        if self.recorder is not None:
            self.recorder.notify(stamps)
        return written, await asyncio.to_thread(store.latest_timestamp)

    async def history(
        self, model: LoadedModel, sensor: str, steps: int
    ) -> tuple[pd.DatetimeIndex, np.ndarray]:
        """The stored readings of ``sensor`` in the ``steps`` steps of ``model``'s frequency that
        end at the latest stored data. Shapes: ``(steps,)``, ``(steps, 1)`` (NaN: missing).

        Raises :class:`NotEnoughData` when nothing is stored.
        """
        store = self._store()
        latest = await asyncio.to_thread(store.latest_timestamp)
        if latest is None:
            raise NotEnoughData("no observations stored yet: POST readings to /v1/observations")
        return await asyncio.to_thread(
            store.window, [sensor], latest, steps, model.forecaster.freq_minutes
        )

    # ---- live accuracy -----------------------------------------------------------------
    async def accuracy_idle(self) -> None:
        """Return once the live record has caught up with every reading written so far: the
        forecasts from new latest steps made and recorded, the scores recomputed."""
        if self.recorder is not None:
            await self.recorder.idle()

    async def live_accuracy(
        self, version: str | None, windows: list[str]
    ) -> tuple[dict[str, Any], pd.Timestamp | None, bool] | None:
        """The live-accuracy summary of a model version (content hash or registry version; None:
        the serving one) over ``windows`` (names in ``trafficcast.app.accuracy.WINDOWS``) ending at the latest
        stored observation; that time; and whether the version is the serving one. None when the
        record knows no such version. See ``trafficcast.app.accuracy.summarize``."""
        if self.accuracy is None:
            raise ServiceNotStarted("live accuracy is off (accuracy_enabled) or not started")
        record, model, store = self.accuracy, self.model, self._store()
        serving = model is not None and version in (None, model.version, model.registry_version)
        meta: ModelMeta | None = None
        if model is not None and serving:
            f = model.forecaster
            meta = ModelMeta(model.version, list(f.sensor_ids), f.horizon, f.freq_minutes)
        elif version is not None:
            meta = await asyncio.to_thread(record.meta, version)
        if meta is None:
            return None
        latest = await asyncio.to_thread(store.latest_timestamp)
        names = [w for w in WINDOWS if w in windows]
        summary = await asyncio.to_thread(record.summary, meta, latest, names)
        return {"model_version": meta.version, **summary}, latest, serving
