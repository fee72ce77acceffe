"""The forecast service: ``create_app(settings)`` builds the FastAPI app of interface.md.

Routes see only the :class:`~app.forecaster.Forecaster`, the observation store and the schemas,
through the ``Service`` dependency. The model is loaded by the app's lifespan (or, for the bundled
run without a checkpoint, trained in a background thread first: ``/readyz`` answers 503 until
then). Inference runs in a thread pool, off the event loop; concurrent ``POST /v1/forecast``
requests are micro-batched into one forward pass (``app.batching``).

Every error is JSON ``{"detail": "...", "field": ..., "value": ...}`` naming the problem; request
validation errors are reformatted to say which field, and a body over ``max_body_bytes`` is refused
with 413 before it is parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import math
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi import Depends, FastAPI, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.batching import MicroBatcher
from app.forecaster import Forecaster
from app.observations import ObservationStore
from app.registry import file_sha256, now_iso
from app.schemas import (
    ErrorBody,
    FieldError,
    ForecastRequest,
    ForecastResponse,
    HistoryResponse,
    ModelInfo,
    ObservationBatch,
    ObservationResult,
    RegistryInfo,
    SensorInfo,
    SensorList,
    Status,
    StoredForecastResponse,
    SwapError,
    iso,
)
from app.settings import BUNDLED_CONFIG, Settings
from app.telemetry import CONTENT_TYPE_LATEST, Metrics, MetricsMiddleware

log = logging.getLogger("trafficcast.service")

STATIC_DIR = Path(__file__).parent / "static"
API_KEY_HEADER = "X-API-Key"


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
class ApiError(Exception):
    """A client mistake: becomes ``status`` with an :class:`ErrorBody` naming the field."""

    def __init__(
        self,
        status: int,
        detail: str,
        field: str | None = None,
        value: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.field = field
        self.value = value
        self.headers = headers


def _short(value: Any, limit: int = 80) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_response(
    status: int,
    detail: str,
    field: str | None = None,
    value: Any = None,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(
        detail=" ".join(detail.split()), field=field, value=_short(value), errors=errors
    )
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _field_name(loc: tuple[Any, ...]) -> str:
    """``("body", "speeds", 3, 2)`` -> ``speeds[3][2]``; ``("query", "horizon")`` -> ``horizon``."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "header", "path", "cookie"):
        where = parts.pop(0)
        if not parts:
            return "body" if where == "body" else where
    name = ""
    for p in parts:
        if isinstance(p, int):
            name += f"[{p}]"
        else:
            name += ("." if name else "") + str(p)
    return name


def _describe_validation(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    fields: list[FieldError] = []
    for err in errors[:20]:
        loc = tuple(err.get("loc", ()))
        kind = err.get("type", "")
        if kind == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "malformed")
            fields.append(FieldError(field="body", message=f"invalid JSON ({reason})"))
            continue
        if kind == "missing" and loc == ("body",):
            fields.append(FieldError(field="body", message="a JSON object is required"))
            continue
        message = str(err.get("msg", "invalid")).rstrip(".")
        if kind in ("model_attributes_type", "dict_type") and loc == ("body",):
            message = "the body must be a JSON object"
        fields.append(FieldError(field=_field_name(loc), message=message))
    first = errors[0] if errors else {}
    head = fields[0] if fields else FieldError(field="body", message="invalid request")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    value = None
    if first.get("type") not in ("missing", "json_invalid") and first.get("loc") != ("body",):
        value = first.get("input")
    return _error_response(
        422, f"{head.field}: {head.message}{more}", field=head.field, value=value, errors=fields
    )


# --------------------------------------------------------------------------------------------
# Body size limit
# --------------------------------------------------------------------------------------------
class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: from Content-Length up front, or counted as it streams.

    The body is buffered (it is at most ``max_bytes``) and replayed to the app, so an oversized
    chunked upload is refused before any of it is parsed.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> JSONResponse:
        return _error_response(
            413,
            f"request body larger than the limit of {self.max_bytes} bytes",
            field="body",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _error_response(
                    400, "Content-Length is not a number", field="Content-Length"
                )(scope, receive, send)
                return
            if length > self.max_bytes:
                await self._too_large()(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large()(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """One servable model and everything derived from it. Immutable once built: a hot swap
    replaces the service's reference to it, and a request keeps the one it started with."""

    forecaster: Forecaster
    version: str  # content hash of the checkpoint
    report: dict[str, Any] | None
    sensor_index: dict[str, int]
    locations: dict[str, tuple[float, float]]
    source: Path
    loaded_at: str
    registry_version: str | None = None
    promoted_at: str | None = None
    reason: str | None = None
    batcher: MicroBatcher | None = None


@dataclass
class CachedForecast:
    model: LoadedModel
    generation: int
    last_observation: pd.Timestamp
    future: pd.DatetimeIndex
    forecast: np.ndarray  # (H, N) in the model's sensor order
    coverage: float
    # Cache hits for the same (sensors, horizon) answer with the same bytes: serialising 207 x 12
    # numbers is most of the cost of a cached read, so it is done once per query.
    rendered: dict[tuple[tuple[str, ...], int], bytes] = field(default_factory=dict)


class Service:
    """What the routes reach through the ``ServiceDep`` dependency: model, store, cache, metrics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.model: LoadedModel | None = None
        self.store: ObservationStore | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.cache: CachedForecast | None = None
        self.cache_lock: asyncio.Lock | None = None
        self.status = "starting"
        self.load_error: str | None = None
        self._trainer: threading.Thread | None = None
        # Hot swap from a registry: the last failed version (not retried until the pointer moves
        # on), why it failed, and when the pointer was last read.
        self.swap_error: SwapError | None = None
        self.failed_version: str | None = None
        self.registry_checked_at: str | None = None
        self._retired: set[asyncio.Task] = set()

    @property
    def ready(self) -> bool:
        return self.model is not None

    @property
    def forecaster(self) -> Forecaster | None:
        return None if self.model is None else self.model.forecaster

    # ---- loading -----------------------------------------------------------------------
    def build(self, source: Path, smoke: bool = False, **registry: Any) -> LoadedModel:
        """Load a checkpoint with its report and locations (blocking; run off the event loop).

        ``smoke``: also run one forecast on the latest stored window (or, with no stored data,
        a window of the scaler's mean speed) and refuse a model whose forecast is not finite.
        """
        model_path = source / "model.pt" if source.is_dir() else source
        forecaster = Forecaster.from_run(source)
        if smoke:
            self._smoke(forecaster)
        return LoadedModel(
            forecaster=forecaster,
            version=file_sha256(model_path)[:16],
            report=_read_report(model_path.parent / "report.json"),
            sensor_index={sid: k for k, sid in enumerate(forecaster.sensor_ids)},
            locations=self._read_locations(forecaster.sensor_ids),
            source=source,
            loaded_at=now_iso(),
            **registry,
        )

    def _smoke(self, f: Forecaster) -> None:
        stamps = None
        window = None
        latest = self.store.latest_timestamp() if self.store is not None else None
        if latest is not None:
            stamps, window = self.store.window(f.sensor_ids, latest, f.seq_len, f.freq_minutes)
        if window is None or not np.isfinite(window).any():
            end = pd.Timestamp.now().floor(f"{f.freq_minutes}min")
            stamps = pd.date_range(end=end, periods=f.seq_len, freq=f.freq)
            window = np.full((f.seq_len, len(f.sensor_ids)), f.scaler.mean, dtype=np.float32)
        out = f.forecast_batch(window[None], np.asarray(stamps, dtype="datetime64[ns]")[None])
        if out.shape != (1, f.horizon, len(f.sensor_ids)):
            raise RuntimeError(f"smoke forecast: shape {out.shape}, expected {f.horizon} steps")
        if not np.all(np.isfinite(out)):
            bad = int((~np.isfinite(out)).sum())
            raise RuntimeError(f"smoke forecast: {bad} of {out.size} values are not finite")

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
        return old

    def load(self) -> None:
        """Load the run directory's checkpoint, report, locations; seed the store (at startup)."""
        model = self.build(self.settings.run_dir)
        self._seed(model.forecaster)
        self.install(model)

    def _read_locations(self, sensor_ids: list[str]) -> dict[str, tuple[float, float]]:
        from data import read_sensor_locations, sample_locations_path

        path = self.settings.locations_path or sample_locations_path()
        table = read_sensor_locations(path)
        known = set(sensor_ids)
        return {
            sid: (float(lat), float(lon))
            for sid, lat, lon in zip(
                table["sensor_id"], table["latitude"], table["longitude"], strict=True
            )
            if sid in known
        }

    def _seed_path(self) -> Path | None:
        seed = self.settings.seed_observations
        if seed == "auto":
            from data import sample_speeds_path

            return sample_speeds_path() if self.settings.serves_bundled_run else None
        return seed

    def _seed(self, forecaster: Forecaster) -> None:
        """Fill an empty store with the last days of a speed file, so forecasts show at once."""
        path = self._seed_path()
        if path is None or self.store is None or self.store.count() > 0:
            return
        from data import read_speeds

        speeds = read_speeds(path)
        ids = [s for s in forecaster.sensor_ids if s in set(speeds.sensor_ids)]
        if not ids or speeds.freq_minutes != forecaster.freq_minutes:
            log.warning("seed %s does not fit the model (sensors or frequency); not seeded", path)
            return
        speeds = speeds.select_sensors(ids)
        steps = max(forecaster.seq_len, round(self.settings.seed_days * 1440 / speeds.freq_minutes))
        part = speeds.slice_steps(max(0, speeds.num_steps - steps), None)
        values = np.where(part.mask, part.values, np.nan)
        written = self.store.add(ids, part.index, values)
        self.metrics.observations.inc(written)
        log.info("seeded the observation store with %d readings from %s", written, path)

    # ---- registry: hot swap ------------------------------------------------------------
    async def check_registry(self) -> None:
        """Swap to the registry's current version if it is a new one.

        The version is verified against its manifest, loaded and smoke-tested off the event loop;
        only then is the serving reference swapped. Requests already running keep the model they
        started with. On failure the old model keeps serving, and ``/v1/model`` and the log say
        why; that version is not retried until the pointer moves on.
        """
        from app.registry import Registry

        assert self.settings.registry is not None
        registry = Registry(self.settings.registry)
        loop = asyncio.get_running_loop()
        pointer = await loop.run_in_executor(None, registry.current)
        self.registry_checked_at = now_iso()
        if pointer is None:
            if self.model is None:
                self.status = (
                    f"no version promoted in the registry {registry.root} yet "
                    "(run `trafficcast retrain`)"
                )
            return
        serving = self.model.registry_version if self.model is not None else None
        if pointer.version in (serving, self.failed_version):
            return
        try:
            model = await loop.run_in_executor(None, self._load_version, registry, pointer)
        except Exception as exc:  # any failure: the old model keeps serving
            reason = " ".join(str(exc).split()) or type(exc).__name__
            self.failed_version = pointer.version
            self.swap_error = SwapError(version=pointer.version, error=reason, at=now_iso())
            self.metrics.swaps.labels(result="failed").inc()
            if self.model is None:
                self.status = f"registry version {pointer.version} cannot be served: {reason}"
            log.error(
                "swap to registry version %s failed; still serving %s: %s",
                pointer.version,
                serving or "nothing",
                reason,
            )
            return
        if self.model is None:
            await loop.run_in_executor(None, self._seed, model.forecaster)
        old = self.install(model)
        self.failed_version = None
        self.retire(old)
        if old is not None:  # the first load is not a swap
            self.metrics.swaps.labels(result="ok").inc()
        log.info(
            "now serving registry version %s (model %s; was %s)",
            pointer.version,
            model.version,
            serving or "nothing",
        )

    def _load_version(self, registry: Any, pointer: Any) -> LoadedModel:
        problems = registry.verify_version(pointer.version)
        if problems:
            raise RuntimeError("; ".join(problems))
        return self.build(
            registry.version_dir(pointer.version),
            smoke=True,
            registry_version=pointer.version,
            promoted_at=pointer.promoted_at,
            reason=pointer.reason,
        )

    async def watch_registry(self) -> None:
        """Poll the registry pointer every ``registry_poll_s`` seconds; never gives up."""
        while True:
            await asyncio.sleep(self.settings.registry_poll_s)
            try:
                await self.check_registry()
            except Exception as exc:  # e.g. a pointer edited by hand: say so, keep polling
                log.warning("cannot read the registry %s: %s", self.settings.registry, exc)

    def train_then_load(self) -> None:
        """First start without the bundled checkpoint: train it (with a progress bar), then load."""
        from app.pipeline import load_config, train_run
        from data import sample_adjacency_pkl_path, sample_speeds_path

        try:
            self.status = "training the bundled model (first start); see the server's log"
            config = load_config(BUNDLED_CONFIG if BUNDLED_CONFIG.exists() else None)
            train_run(
                data=sample_speeds_path(),
                output=self.settings.run_dir,
                adjacency=sample_adjacency_pkl_path(),
                config=config,
                progress=True,
            )
            self.load()
        except Exception as exc:  # readiness reports it; the process keeps answering /healthz
            log.exception("training the bundled model failed")
            self.load_error = f"training the bundled model failed: {exc}"
            self.status = self.load_error

    # ---- inference ---------------------------------------------------------------------
    def _forward(self, model: LoadedModel, speeds: np.ndarray, stamps: np.ndarray) -> np.ndarray:
        """One forward pass. Shapes: ``(B, seq_len, N)``, ``(B, seq_len)`` -> ``(B, H, N)``."""
        import time

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
        ``(H, N)``."""
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
            raise ApiError(
                422, "the model gave a non-finite forecast for this input", field="speeds"
            )
        return out

    async def stored_forecast(self, model: LoadedModel) -> tuple[CachedForecast, bool]:
        """The forecast from the latest stored window: computed once per store state and model,
        then cached."""
        assert self.store is not None and self.cache_lock is not None
        f, store = model.forecaster, self.store
        cached = self.cache
        if cached is not None and cached.generation == store.generation and cached.model is model:
            return cached, True
        async with self.cache_lock:
            generation = store.generation  # read before the data: a later write invalidates
            cached = self.cache
            if cached is not None and cached.generation == generation and cached.model is model:
                return cached, True
            latest = await run_in_threadpool(store.latest_timestamp)
            if latest is None:
                raise ApiError(
                    409,
                    "no observations stored yet: POST readings to /v1/observations first",
                )
            stamps, window = await run_in_threadpool(
                store.window, f.sensor_ids, latest, f.seq_len, f.freq_minutes
            )
            coverage = float(np.isfinite(window).mean())
            need = self.settings.min_window_coverage
            if coverage < need or not np.isfinite(window[-1]).any():
                raise ApiError(
                    409,
                    f"too little recent data: the {f.seq_len} steps ending {latest.isoformat()} "
                    f"hold {coverage:.0%} of their readings, {need:.0%} needed; POST more "
                    "readings to /v1/observations",
                )
            forecast = await self.infer(model, window, stamps)
            self.cache = CachedForecast(
                model, generation, latest, f.future_timestamps(latest), forecast, coverage
            )
            return self.cache, False


def _read_report(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None
    return report if isinstance(report, dict) else None


# --------------------------------------------------------------------------------------------
# Dependencies
# --------------------------------------------------------------------------------------------
def _service(request: Request) -> Service:
    return request.app.state.service


def _ready_service(request: Request) -> Service:
    service: Service = request.app.state.service
    if not service.ready:
        raise ApiError(503, f"model not loaded yet: {service.status}", headers={"Retry-After": "5"})
    return service


ServiceDep = Annotated[Service, Depends(_service)]
ReadyService = Annotated[Service, Depends(_ready_service)]
_api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="one of the keys in TRAFFICCAST_API_KEYS"
)


def _writer(
    service: ReadyService, key: Annotated[str | None, Security(_api_key_scheme)] = None
) -> Service:
    keys = service.settings.api_keys
    if not keys:
        raise ApiError(
            403, "writes are disabled: no API keys are configured (set TRAFFICCAST_API_KEYS)"
        )
    if not key:
        raise ApiError(
            401,
            f"missing {API_KEY_HEADER} header",
            field=API_KEY_HEADER,
            headers={"WWW-Authenticate": "ApiKey"},
        )
    given = key.encode("utf-8", "surrogateescape")
    # Compare with every key in constant time, without stopping at the first match.
    matched = False
    for candidate in keys:
        matched |= hmac.compare_digest(given, candidate.encode("utf-8"))
    if not matched:
        raise ApiError(
            401,
            f"invalid {API_KEY_HEADER}",
            field=API_KEY_HEADER,
            headers={"WWW-Authenticate": "ApiKey"},
        )
    return service


WriterService = Annotated[Service, Depends(_writer)]


# --------------------------------------------------------------------------------------------
# Request checks shared by POST /v1/forecast and POST /v1/observations
# --------------------------------------------------------------------------------------------
def _listing(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def _check_sensors(service: Service, model: LoadedModel, sensors: list[str]) -> list[int]:
    """Positions of ``sensors`` in the model's order, refusing too many, duplicates and unknowns."""
    cap = service.settings.max_sensors_per_request
    if len(sensors) > cap:
        raise ApiError(
            422, f"sensors: {len(sensors)} given, at most {cap} per request", field="sensors"
        )
    seen: set[str] = set()
    dups: list[str] = []
    for sid in sensors:
        if sid in seen and sid not in dups:
            dups.append(sid)
        seen.add(sid)
    if dups:
        raise ApiError(
            422, f"sensors: listed more than once: {_listing(dups)}", field="sensors", value=dups
        )
    index = model.sensor_index
    unknown = [s for s in sensors if s not in index]
    if unknown:
        raise ApiError(
            422,
            f"sensors: unknown to the model: {_listing(unknown)} "
            f"(GET /v1/sensors lists the {len(index)} it knows)",
            field="sensors",
            value=unknown,
        )
    return [index[s] for s in sensors]


def _check_matrix(service: Service, body: ForecastRequest | ObservationBatch) -> np.ndarray:
    """The speeds as a float array with NaN for missing. Shapes: ``(T, len(sensors))``."""
    cap = service.settings.max_timestamps_per_request
    if len(body.timestamps) > cap:
        raise ApiError(
            422,
            f"timestamps: {len(body.timestamps)} given, at most {cap} per request",
            field="timestamps",
        )
    if len(body.speeds) != len(body.timestamps):
        raise ApiError(
            422,
            f"speeds: {len(body.speeds)} rows but {len(body.timestamps)} timestamps "
            "(one row per timestamp)",
            field="speeds",
        )
    for t, row in enumerate(body.speeds):
        if len(row) != len(body.sensors):
            raise ApiError(
                422,
                f"speeds[{t}]: {len(row)} values but {len(body.sensors)} sensors "
                "(one value per sensor)",
                field=f"speeds[{t}]",
            )
    values = np.array(
        [[np.nan if v is None else v for v in row] for row in body.speeds], dtype=np.float64
    ).reshape(len(body.timestamps), len(body.sensors))  # (T, n)
    return values


# --------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------
def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        401: "missing or invalid X-API-Key",
        403: "writes are disabled: no API keys configured",
        409: "not enough stored data to answer",
        413: "request body over the size limit",
        422: "invalid request; the body names the field and the value",
        500: "unexpected server error (a bug), as JSON",
        503: "no model loaded yet (starting or training)",
    }
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service, configured by ``settings`` (``Settings()`` reads the environment)."""
    settings = settings if settings is not None else Settings()
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.torch_threads is not None:
            import torch

            torch.set_num_threads(settings.torch_threads)
        service.store = ObservationStore(settings.observations_db)
        service.executor = ThreadPoolExecutor(
            settings.inference_workers, thread_name_prefix="inference"
        )
        service.cache_lock = asyncio.Lock()
        watcher: asyncio.Task | None = None
        model_path = (
            settings.run_dir / "model.pt" if settings.run_dir.is_dir() else settings.run_dir
        )
        if settings.registry is not None:
            try:
                await service.check_registry()
            except Exception as exc:  # not ready yet; the watcher keeps trying
                service.status = f"cannot read the registry {settings.registry}: {exc}"
                log.warning(service.status)
            if service.model is None and settings.registry_fallback and model_path.exists():
                # An empty registry (a fresh deployment): serve run_dir's model until the first
                # version is promoted; the watcher swaps that in like any other.
                log.warning(
                    "registry %s has no servable version yet; serving %s meanwhile",
                    settings.registry,
                    model_path,
                )
                await asyncio.get_running_loop().run_in_executor(None, service.load)
            watcher = asyncio.get_running_loop().create_task(
                service.watch_registry(), name="registry-watcher"
            )
        elif model_path.exists():
            service.load()
        elif settings.serves_bundled_run and settings.train_if_missing:
            service._trainer = threading.Thread(
                target=service.train_then_load, name="train-bundled", daemon=True
            )
            service._trainer.start()
        else:
            raise FileNotFoundError(2, "no model checkpoint", str(model_path))
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            for task in list(service._retired):
                task.cancel()
            if service.model is not None and service.model.batcher is not None:
                await service.model.batcher.stop()
            service.executor.shutdown(wait=False, cancel_futures=True)
            service.store.close()

    app = FastAPI(
        title="trafficcast",
        summary="Traffic speed forecasts with DCRNN (Li et al., ICLR 2018)",
        version=_package_version(),
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.settings = settings

    # ---- error handlers ----------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.detail, exc.field, exc.value, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _describe_validation(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 400 and request.method in ("POST", "PUT", "PATCH"):
            # FastAPI's "error parsing the body" (e.g. bytes that are not UTF-8): the same 422 as
            # for any other body that is not JSON.
            return _error_response(
                422, "body: invalid JSON (cannot be decoded as UTF-8 text)", field="body"
            )
        if exc.status_code == 404:
            detail = f"no such path: {request.url.path}"
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # Starlette names only the first route that matched the path; list every method.
            allowed = _allowed_methods(app, request.url.path)
            headers["Allow"] = ", ".join(allowed)
            detail = (
                f"method {request.method} not allowed on {request.url.path} "
                f"(allowed: {', '.join(allowed)})"
            )
        return _error_response(exc.status_code, detail, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error_response(500, f"internal error ({type(exc).__name__}); see the server log")

    # ---- probes and metadata -------------------------------------------------------------
    @app.get("/healthz", response_model=Status, tags=["probes"])
    async def healthz() -> Status:
        """200 while the process runs."""
        return Status(status="ok")

    @app.get("/readyz", response_model=Status, tags=["probes"], responses=_responses(503))
    async def readyz(service: ServiceDep) -> Status:
        """200 once a model is loaded and can answer, else 503."""
        if not service.ready:
            raise ApiError(503, f"not ready: {service.status}", headers={"Retry-After": "5"})
        return Status(status="ready")

    @app.get("/v1/model", response_model=ModelInfo, tags=["model"], responses=_responses(503))
    async def model_info(service: ReadyService) -> ModelInfo:
        """The serving model: version, training time, size, its test metrics; with a registry,
        the registry version, and the last promoted version that could not be served."""
        m = service.model
        assert m is not None
        f = m.forecaster
        metrics = m.report.get("metrics") if m.report else None
        registry = None
        if service.settings.registry is not None:
            registry = RegistryInfo(
                path=str(service.settings.registry),
                version=m.registry_version,
                promoted_at=m.promoted_at,
                reason=m.reason,
                poll_s=service.settings.registry_poll_s,
                checked_at=service.registry_checked_at,
            )
        return ModelInfo(
            version=m.version,
            trained_at=f.payload.get("trained_at"),
            sensors=len(f.sensor_ids),
            seq_len=f.seq_len,
            horizon=f.horizon,
            freq_minutes=f.freq_minutes,
            metrics=metrics if isinstance(metrics, dict) else None,
            training=f.payload.get("training"),
            loaded_at=m.loaded_at,
            registry=registry,
            last_swap_error=service.swap_error,
        )

    @app.get("/v1/sensors", response_model=SensorList, tags=["model"], responses=_responses(503))
    async def sensors(service: ReadyService) -> SensorList:
        """The model's sensors, in its order, with coordinates when known."""
        m = service.model
        assert m is not None
        out = []
        for sid in m.forecaster.sensor_ids:
            lat, lon = m.locations.get(sid, (None, None))
            out.append(SensorInfo(id=sid, latitude=lat, longitude=lon))
        return SensorList(sensors=out)

    @app.get(
        "/metrics",
        tags=["probes"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics(service: ServiceDep) -> Response:
        """Prometheus text format."""
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # ---- forecasts ---------------------------------------------------------------------
    @app.post(
        "/v1/forecast",
        response_model=ForecastResponse,
        tags=["forecast"],
        responses=_responses(413, 422, 503),
    )
    async def post_forecast(body: ForecastRequest, service: ReadyService) -> ForecastResponse:
        """Forecast the horizon after the history the client sends."""
        m = service.model  # this request's model, even if a swap happens while it runs
        assert m is not None
        f = m.forecaster
        if len(body.timestamps) != f.seq_len:
            raise ApiError(
                422,
                f"timestamps: {len(body.timestamps)} given, the model needs {f.seq_len} "
                f"(every {f.freq_minutes} minutes)",
                field="timestamps",
            )
        columns = _check_sensors(service, m, body.sensors)
        values = _check_matrix(service, body)  # (seq_len, n)
        # pandas 3 keeps datetime's microseconds unit; the checks below work in nanoseconds.
        stamps = pd.DatetimeIndex(body.timestamps).as_unit("ns")
        _check_spacing(stamps, f.freq_minutes)
        window = np.full((f.seq_len, len(f.sensor_ids)), np.nan, dtype=np.float32)
        window[:, columns] = values  # others stay missing
        forecast = await service.infer(m, window, stamps)  # (H, N)
        service.metrics.forecasts.labels(endpoint="post").inc()
        return ForecastResponse(
            model_version=m.version,
            sensors=list(body.sensors),
            timestamps=iso(f.future_timestamps(stamps[-1])),
            forecast=forecast[:, columns].astype(np.float64).tolist(),
        )

    @app.get(
        "/v1/forecast",
        response_model=StoredForecastResponse,
        tags=["forecast"],
        responses=_responses(409, 422, 503),
    )
    async def get_forecast(
        service: ReadyService,
        sensors: Annotated[
            str | None,
            Query(description="comma-separated sensor ids (default: all)", max_length=100_000),
        ] = None,
        horizon: Annotated[
            int | None, Query(ge=1, description="steps ahead to return (default: all)")
        ] = None,
    ) -> Response:
        """Forecast from the latest stored window; computed once per data state, then cached."""
        m = service.model
        assert m is not None
        f = m.forecaster
        if sensors is None:
            ids = list(f.sensor_ids)
        else:
            ids = [s.strip() for s in sensors.split(",")]
            if any(not s for s in ids):
                raise ApiError(
                    422, "sensors: empty sensor id in the list", field="sensors", value=sensors
                )
        columns = _check_sensors(service, m, ids)
        steps = f.horizon if horizon is None else horizon
        if steps > f.horizon:
            raise ApiError(
                422,
                f"horizon: {steps} steps asked, the model forecasts {f.horizon}",
                field="horizon",
                value=horizon,
            )
        entry, hit = await service.stored_forecast(m)
        service.metrics.cache.labels(result="hit" if hit else "miss").inc()
        service.metrics.forecasts.labels(endpoint="get").inc()
        key = (tuple(ids), steps)
        body = entry.rendered.get(key) if hit else None
        if body is None:
            body = (
                StoredForecastResponse(
                    model_version=m.version,
                    sensors=ids,
                    timestamps=iso(entry.future[:steps]),
                    forecast=entry.forecast[:steps][:, columns].astype(np.float64).tolist(),
                    last_observation=entry.last_observation.isoformat(),
                    coverage=round(entry.coverage, 4),
                    cached=hit,
                )
                .model_dump_json()
                .encode()
            )
            if hit and len(entry.rendered) < 256:  # bounded: queries may name any subset
                entry.rendered[key] = body
        return Response(
            body,
            media_type="application/json",
            headers={"X-Forecast-Cache": "hit" if hit else "miss"},
        )

    # ---- observations ------------------------------------------------------------------
    @app.post(
        "/v1/observations",
        response_model=ObservationResult,
        tags=["observations"],
        responses=_responses(401, 403, 413, 422, 503),
    )
    async def post_observations(
        body: ObservationBatch, service: WriterService
    ) -> ObservationResult:
        """Store readings (needs X-API-Key). A re-sent reading replaces itself: retries are safe."""
        m, store = service.model, service.store
        assert m is not None and store is not None
        f = m.forecaster
        _check_sensors(service, m, body.sensors)
        values = _check_matrix(service, body)
        # pandas 3 keeps datetime's microseconds unit; the checks below work in nanoseconds.
        stamps = pd.DatetimeIndex(body.timestamps).as_unit("ns")
        _check_grid(stamps, f.freq_minutes, service.settings.max_future_minutes)
        values = np.where(values == 0, np.nan, values)  # 0 is "no reading", as in METR-LA
        written = await run_in_threadpool(store.add, list(body.sensors), stamps, values)
        service.metrics.observations.inc(written)
        latest = await run_in_threadpool(store.latest_timestamp)
        return ObservationResult(
            written=written,
            timestamps=len(stamps),
            sensors=len(body.sensors),
            latest_timestamp=None if latest is None else latest.isoformat(),
        )

    @app.get(
        "/v1/history",
        response_model=HistoryResponse,
        tags=["observations"],
        responses=_responses(409, 422, 503),
    )
    async def history(
        service: ReadyService,
        sensor: Annotated[str, Query(min_length=1, max_length=64, description="a sensor id")],
        steps: Annotated[int, Query(ge=1, description="steps back from the latest data")] = 36,
    ) -> HistoryResponse:
        """The stored readings of one sensor: the ``steps`` steps ending at the latest data."""
        m, store = service.model, service.store
        assert m is not None and store is not None
        f = m.forecaster
        _check_sensors(service, m, [sensor])
        cap = service.settings.max_history_steps
        if steps > cap:
            raise ApiError(422, f"steps: {steps} asked, at most {cap}", field="steps", value=steps)
        latest = await run_in_threadpool(store.latest_timestamp)
        if latest is None:
            raise ApiError(409, "no observations stored yet: POST readings to /v1/observations")
        stamps, values = await run_in_threadpool(
            store.window, [sensor], latest, steps, f.freq_minutes
        )
        return HistoryResponse(
            sensor=sensor,
            timestamps=iso(stamps),
            speeds=[None if not math.isfinite(v) else float(v) for v in values[:, 0]],
        )

    # ---- dashboard ---------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # Order matters: the metrics see every response, the 413 included.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)

    schema_model: list[LoadedModel | None] = [None]

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None and schema_model[0] is service.model:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=(
                "Forecasts of traffic speed from a DCRNN checkpoint. Errors are JSON "
                "`{detail, field, value}`; request bodies are capped at "
                f"{settings.max_body_bytes} bytes."
            ),
            routes=app.routes,
        )
        model = service.model
        if model is None:
            return schema  # not cached: the model's own constraints are added once it loads
        _constrain_schema(schema, service, model)
        app.openapi_schema, schema_model[0] = schema, model  # rebuilt after a hot swap
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _constrain_schema(schema: dict[str, Any], service: Service, model: LoadedModel) -> None:
    """Write the loaded model's own limits into the OpenAPI document.

    Its sensor ids, ``seq_len``, ``horizon`` and the request caps are known only once the model is
    loaded, so clients and fuzzers read them from the schema rather than discover them by 422s.
    """
    f, s = model.forecaster, service.settings
    ids = list(f.sensor_ids)
    max_sensors = min(len(ids), s.max_sensors_per_request)
    comps = schema["components"]["schemas"]
    sensor_list = {
        "type": "array",
        "items": {"type": "string", "enum": ids},
        "minItems": 1,
        "maxItems": max_sensors,
        "uniqueItems": True,
    }
    for name, rows in (
        ("ForecastRequest", (f.seq_len, f.seq_len)),
        ("ObservationBatch", (1, s.max_timestamps_per_request)),
    ):
        props = comps[name]["properties"]
        props["sensors"] = {**props["sensors"], **sensor_list}
        for key in ("timestamps", "speeds"):
            props[key]["minItems"], props[key]["maxItems"] = rows
        props["speeds"]["items"]["minItems"] = 1
        props["speeds"]["items"]["maxItems"] = max_sensors
    for path, method, params in (
        ("/v1/forecast", "get", {"sensors", "horizon"}),
        ("/v1/history", "get", {"sensor", "steps"}),
    ):
        for param in schema["paths"][path][method].get("parameters", []):
            if param["name"] not in params:
                continue
            if param["name"] == "horizon":
                param["schema"] = {"type": "integer", "minimum": 1, "maximum": f.horizon}
            elif param["name"] == "steps":
                param["schema"] = {**param["schema"], "maximum": s.max_history_steps}
            elif param["name"] == "sensor":
                param["schema"] = {"type": "string", "enum": ids}
            else:  # OpenAPI's comma-separated array: style form, explode false
                param["schema"] = sensor_list
                param["style"] = "form"
                param["explode"] = False


def _check_spacing(stamps: pd.DatetimeIndex, freq_minutes: int) -> None:
    steps = np.diff(stamps.asi8)
    expected = pd.Timedelta(minutes=freq_minutes).value
    bad = np.flatnonzero(steps != expected)
    if len(bad):
        k = int(bad[0]) + 1
        gap = pd.Timedelta(int(steps[k - 1]))
        raise ApiError(
            422,
            f"timestamps must be {freq_minutes} minutes apart: timestamps[{k}] "
            f"({stamps[k].isoformat()}) is {_minutes(gap)} after timestamps[{k - 1}]",
            field=f"timestamps[{k}]",
            value=stamps[k].isoformat(),
        )


def _check_grid(stamps: pd.DatetimeIndex, freq_minutes: int, max_future_minutes: int) -> None:
    freq = pd.Timedelta(minutes=freq_minutes).value
    off = np.flatnonzero(stamps.asi8 % freq != 0)
    if len(off):
        k = int(off[0])
        raise ApiError(
            422,
            f"timestamps[{k}] ({stamps[k].isoformat()}) is not on the model's "
            f"{freq_minutes}-minute grid",
            field=f"timestamps[{k}]",
            value=stamps[k].isoformat(),
        )
    dup = stamps[stamps.duplicated()]
    if len(dup):
        raise ApiError(
            422,
            f"timestamps: {dup[0].isoformat()} given more than once",
            field="timestamps",
            value=dup[0].isoformat(),
        )
    limit = pd.Timestamp.now(tz="UTC").tz_localize(None) + pd.Timedelta(minutes=max_future_minutes)
    future = np.flatnonzero(stamps > limit)
    if len(future):
        k = int(future[0])
        raise ApiError(
            422,
            f"timestamps[{k}] ({stamps[k].isoformat()}) is in the future (later than "
            f"{limit.floor('min').isoformat()})",
            field=f"timestamps[{k}]",
            value=stamps[k].isoformat(),
        )


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    methods: set[str] = set()
    for route in app.routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path) and getattr(route, "methods", None):
            methods |= set(route.methods)
    return sorted(methods)


def _minutes(delta: pd.Timedelta) -> str:
    minutes = delta.total_seconds() / 60
    return f"{minutes:g} minutes"


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trafficcast")
    except PackageNotFoundError:
        return "0"


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory app.service:app_from_env``: settings from the environment."""
    return create_app(Settings())
