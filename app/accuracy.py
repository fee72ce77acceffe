"""Live accuracy: the record of the forecasts the service made from its observation store, scored
against the readings that arrived later.

The record lives in the observation store's database (``trafficcast.app.db``: the same SQLite file, or the
PostgreSQL database the replicas share), so a restart loses neither; three tables
(``trafficcast.app.db.schema``):

``forecast_models``
    one row per model version: its sensor order, horizon and frequency (what a stored forecast's
    values mean), and the registry version it was served as, when there was one.
``forecasts``
    one row per forecast: model version, ``made_from`` (the last time of the window it was made
    from, epoch seconds of naive time like the store's ``ts``), ``made_at`` (wall clock, ISO),
    the values and, where the model gave them, lower and upper bounds at central coverage
    ``level``. Values are float32 blobs of shape ``(horizon, sensors)`` in the model's sensor
    order: the recorder writes and the scorer reads a whole forecast at a time, never one value,
    and a day of 207-sensor forecasts is 2.9 MB this way against 715,392 rows of (forecast, step,
    sensor). A blob is ``BLOB`` in SQLite, ``BYTEA`` in PostgreSQL.
``forecast_scores``
    one row per (forecast, horizon step): the number of targets that count (:func:`observed`),
    the sums of absolute and squared errors over them, and how many had bounds and fell inside.

A score row is (re)computed from the store's readings at its target time whenever its forecast is
recorded or readings for that time arrive, and replaces the previous row. A late reading is thus
scored when it comes, and a re-sent one replaces its first value in the score as in the store: the
sums always equal scoring the record offline against the store as it now is. Windows ("1h", "24h")
select score rows by target time, relative to the latest stored observation (not the wall clock:
replayed data can be years old).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sqlalchemy import Connection, case, delete, func, or_, select
from sqlalchemy import exc as sa_exc

from trafficcast.app.db import Database
from trafficcast.app.db import schema as t
from trafficcast.app.observations import LATEST_TS, open_store_database
from trafficcast.app.pipeline.report import horizon_steps
from trafficcast.models.metrics import observed as counts

# Windows of GET /v1/accuracy and the gauges, by name.
WINDOWS: dict[str, pd.Timedelta] = {"1h": pd.Timedelta(hours=1), "24h": pd.Timedelta(hours=24)}


def observed(target: np.ndarray) -> np.ndarray:
    """Which stored readings count as targets: the project's one rule
    (:func:`trafficcast.models.metrics.observed`, as in training and ``trafficcast evaluate``) over the
    store's mask. The store keeps NULL (NaN here) for no reading, decided by the model's
    missing-value rule when the reading arrived, so a stored 0 is a real reading."""
    values = torch.from_numpy(np.ascontiguousarray(target))
    return counts(values, torch.from_numpy(np.isfinite(target))).numpy()


def score_steps(
    point: np.ndarray,
    target: np.ndarray,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
) -> np.ndarray:
    """Per-step sums of one forecast against its targets, in float64.

    Shapes: ``point``, ``target``, ``lower``, ``upper`` ``(S, N)`` (NaN target: missing) ->
    ``(S, 5)``: counted targets, sum of absolute errors, sum of squared errors, counted targets
    with bounds, and those inside ``[lower, upper]``.
    """
    mask = observed(target)
    err = np.where(mask, point.astype(np.float64) - target.astype(np.float64), 0.0)
    n = mask.sum(axis=1)
    out = np.zeros((len(point), 5), dtype=np.float64)
    out[:, 0] = n
    out[:, 1] = np.abs(err).sum(axis=1)
    out[:, 2] = (err**2).sum(axis=1)
    if lower is not None and upper is not None:
        inside = mask & (lower <= target) & (target <= upper)
        out[:, 3] = n
        out[:, 4] = inside.sum(axis=1)
    return out


def _blob(values: np.ndarray | None) -> bytes | None:
    return None if values is None else np.ascontiguousarray(values, dtype="<f4").tobytes()


def _values(blob: bytes, shape: tuple[int, int]) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").reshape(shape)


def _array(blob: bytes | None, shape: tuple[int, int]) -> np.ndarray | None:
    return None if blob is None else _values(blob, shape)


def epoch_seconds(t: pd.Timestamp) -> int:
    """A naive timestamp as the store's ``ts`` (seconds since the epoch)."""
    return int(pd.Timestamp(t).as_unit("ns").value // 1_000_000_000)


@dataclass(frozen=True)
class ModelMeta:
    """What a recorded forecast's values mean: sensor order, horizon steps and their spacing."""

    version: str
    sensor_ids: list[str]
    horizon: int
    freq_minutes: int

    @property
    def freq_s(self) -> int:
        return self.freq_minutes * 60


@dataclass
class Recorded:
    """One recorded forecast. Shapes: ``point``, ``lower``, ``upper`` ``(horizon, N)``."""

    id: int
    meta: ModelMeta
    made_from: int
    point: np.ndarray
    lower: np.ndarray | None
    upper: np.ndarray | None


def summarize(
    conn: Connection, meta: ModelMeta, end: pd.Timestamp | None, windows: Iterable[str]
) -> dict[str, Any]:
    """MAE, RMSE, coverage, scored targets and forecasts per reported horizon, for each window
    ending at ``end`` (targets in ``(end - window, end]``), of one model version.

    Returns ``{"forecasts": recorded count, "last_made_from": ISO or None, "windows": {name:
    {"start", "end", "horizons": {"15min": {...}}}}}``; metrics are None where nothing was scored.
    """
    f, sc = t.forecasts.c, t.forecast_scores.c
    count, last = conn.execute(
        select(func.count(), func.max(f.made_from)).where(f.model_version == meta.version)
    ).one()
    # The horizons of report.json the model reaches (15min is step 3 of 5-minute data).
    steps = {k: s for k, s in horizon_steps(meta.freq_minutes, meta.horizon).items() if s}
    out: dict[str, Any] = {
        "forecasts": int(count),
        "last_made_from": None if last is None else pd.Timestamp(int(last), unit="s").isoformat(),
        "windows": {},
    }
    for name in windows:
        start = None if end is None else end - WINDOWS[name]
        rows: dict[int, tuple] = {}
        if start is not None and end is not None and steps:
            query = (
                select(
                    sc.step,
                    func.sum(sc.n),
                    func.sum(sc.abs_err),
                    func.sum(sc.sq_err),
                    func.sum(sc.n_bounded),
                    func.sum(sc.hits),
                    func.sum(case((sc.n > 0, 1), else_=0)),
                )
                .join(t.forecasts, f.id == sc.forecast_id)
                .where(
                    f.model_version == meta.version,
                    sc.target_ts > epoch_seconds(start),
                    sc.target_ts <= epoch_seconds(end),
                    sc.step.in_(list(steps.values())),
                )
                .group_by(sc.step)
            )
            rows = {int(r[0]): tuple(r[1:]) for r in conn.execute(query)}
        horizons = {}
        for key, step in steps.items():
            n, abs_sum, sq_sum, n_bounded, hits, forecasts = rows.get(step, (0, 0, 0, 0, 0, 0))
            n, n_bounded = int(n or 0), int(n_bounded or 0)
            horizons[key] = {
                "step": step,
                "mae": float(abs_sum) / n if n else None,
                "rmse": math.sqrt(float(sq_sum) / n) if n else None,
                "coverage": int(hits) / n_bounded if n_bounded else None,
                "scored": n,
                "forecasts": int(forecasts or 0),
            }
        out["windows"][name] = {
            "start": None if start is None else start.isoformat(),
            "end": None if end is None else end.isoformat(),
            "horizons": horizons,
        }
    return out


def _meta(conn: Connection, version: str) -> ModelMeta | None:
    m = t.forecast_models.c
    row = conn.execute(
        select(m.model_version, m.sensor_ids, m.horizon, m.freq_minutes)
        .where(or_(m.model_version == version, m.registry_version == version))
        # A content hash wins over a registry version of the same text.
        .order_by(case((m.model_version == version, 0), else_=1))
        .limit(1)
    ).first()
    if row is None:
        return None
    return ModelMeta(row[0], row[1].split(","), int(row[2]), int(row[3]))


class ForecastRecord:
    """The forecasts the service made and their scores, in the observation store's database.

    Thread-safe like ``ObservationStore``; every call blocks (the service makes them from a worker
    thread) and holds a write transaction only for a few rows. Replicas sharing a database share
    the record: each records from the readings posted to it, and a forecast recorded twice (same
    version, same ``made_from``) is one row, the first.
    """

    def __init__(self, location: Database | str | Path) -> None:
        self.db, self._owned = open_store_database(location)
        self._metas: dict[str, ModelMeta] = {}

    def close(self) -> None:
        if self._owned:
            self.db.dispose()

    def register_model(self, meta: ModelMeta, registry_version: str | None) -> None:
        """Say what ``meta.version``'s forecasts mean (idempotent)."""
        row = {
            "model_version": meta.version,
            "registry_version": registry_version,
            "sensor_ids": ",".join(meta.sensor_ids),
            "horizon": meta.horizon,
            "freq_minutes": meta.freq_minutes,
        }
        with self.db.engine.begin() as conn:
            conn.execute(self.db.upsert(t.forecast_models, ["model_version"]), [row])
        self._metas[meta.version] = meta

    def meta(self, version: str) -> ModelMeta | None:
        """The model version's meaning, by content-hash or registry version; None if unknown."""
        if version in self._metas:
            return self._metas[version]
        with self.db.engine.connect() as conn:
            meta = _meta(conn, version)
        if meta is not None and meta.version == version:  # a content hash means one thing
            self._metas[version] = meta
        return meta

    def high_water(self) -> int | None:
        """The latest ``made_from`` of any recorded forecast (epoch seconds), None if none."""
        with self.db.engine.connect() as conn:
            value = conn.execute(select(func.max(t.forecasts.c.made_from))).scalar()
        return None if value is None else int(value)

    def add(
        self,
        meta: ModelMeta,
        made_from: int,
        made_at: str,
        point: np.ndarray,
        bands: tuple[np.ndarray, np.ndarray] | None,
        level: float,
    ) -> Recorded | None:
        """Record a forecast; None if this version already has one from ``made_from`` (the first
        stands). Shapes: ``point`` and each band ``(horizon, N)``."""
        lower, upper = bands if bands is not None else (None, None)
        stmt = self.db.upsert(t.forecasts, ["model_version", "made_from"], update=[]).returning(
            t.forecasts.c.id
        )
        point_blob = np.ascontiguousarray(point, dtype="<f4").tobytes()
        lower_blob, upper_blob = _blob(lower), _blob(upper)
        row = {
            "model_version": meta.version,
            "made_from": made_from,
            "made_at": made_at,
            "level": None if bands is None else level,
            "point": point_blob,
            "lower": lower_blob,
            "upper": upper_blob,
        }
        with self.db.engine.begin() as conn:
            fid = conn.execute(stmt.values(**row)).scalar()
        if fid is None:
            return None
        shape = (meta.horizon, len(meta.sensor_ids))
        return Recorded(
            int(fid),
            meta,
            made_from,
            _values(point_blob, shape),
            _array(lower_blob, shape),
            _array(upper_blob, shape),
        )

    def max_reach_s(self) -> int | None:
        """The longest horizon of any recorded version, in seconds; None with no version."""
        m = t.forecast_models.c
        with self.db.engine.connect() as conn:
            value = conn.execute(select(func.max(m.horizon * m.freq_minutes * 60))).scalar()
        return None if value is None else int(value)

    def made_between(self, first: int | None, last: int | None) -> list[Recorded]:
        """The forecasts made from ``first`` to ``last`` (epoch seconds, inclusive; None: no
        bound), of every version, oldest first."""
        f = t.forecasts.c
        query = select(f.id, f.model_version, f.made_from, f.point, f.lower, f.upper)
        if first is not None:
            query = query.where(f.made_from >= first)
        if last is not None:
            query = query.where(f.made_from <= last)
        with self.db.engine.connect() as conn:
            rows = conn.execute(query.order_by(f.made_from, f.id)).all()
        out = []
        for fid, version, made_from, point, lower, upper in rows:
            meta = self.meta(version)
            if meta is None:  # a forecast without its model row: nothing to read it by
                continue
            shape = (meta.horizon, len(meta.sensor_ids))
            out.append(
                Recorded(
                    int(fid),
                    meta,
                    int(made_from),
                    _values(point, shape),
                    _array(lower, shape),
                    _array(upper, shape),
                )
            )
        return out

    def put_scores(self, rows: Sequence[tuple]) -> None:
        """Write score rows ``(forecast_id, step, target_ts, n, abs_err, sq_err, n_bounded,
        hits)``, replacing those of the same (forecast, step)."""
        if not rows:
            return
        names = [c.name for c in t.forecast_scores.columns]
        with self.db.engine.begin() as conn:
            conn.execute(
                self.db.upsert(t.forecast_scores, ["forecast_id", "step"]),
                [dict(zip(names, row, strict=True)) for row in rows],
            )

    def prune(self, before: int) -> int:
        """Drop the forecasts made before ``before`` (epoch seconds) and their scores; returns
        how many forecasts went."""
        f, sc = t.forecasts.c, t.forecast_scores.c
        old = select(f.id).where(f.made_from < before)
        with self.db.engine.begin() as conn:
            conn.execute(delete(t.forecast_scores).where(sc.forecast_id.in_(old)))
            return conn.execute(delete(t.forecasts).where(f.made_from < before)).rowcount

    def summary(
        self, meta: ModelMeta, end: pd.Timestamp | None, windows: Iterable[str] = WINDOWS
    ) -> dict[str, Any]:
        """See :func:`summarize`."""
        with self.db.engine.connect() as conn:
            return summarize(conn, meta, end, list(windows))


def score_rows(recorded: Recorded, targets: np.ndarray, first_step: int = 1) -> list[tuple]:
    """The score rows of ``recorded``'s steps ``first_step`` .. ``first_step + len(targets) - 1``.

    Shapes: ``targets (S, N)``: the store's readings at those steps' target times, in the model's
    sensor order (NaN: missing).
    """
    rows = slice(first_step - 1, first_step - 1 + len(targets))
    lower = None if recorded.lower is None else recorded.lower[rows]
    upper = None if recorded.upper is None else recorded.upper[rows]
    sums = score_steps(recorded.point[rows], targets, lower, upper)
    out = []
    for k, (n, abs_err, sq_err, n_bounded, hits) in enumerate(sums):
        step = first_step + k
        out.append(
            (
                recorded.id,
                step,
                recorded.made_from + step * recorded.meta.freq_s,
                int(n),
                float(abs_err),
                float(sq_err),
                int(n_bounded),
                int(hits),
            )
        )
    return out


def live_summary(location: str | Path, version: str) -> dict[str, Any] | None:
    """The live accuracy of a model version from the service's database (SQLite path or URL),
    opened read-only: what ``trafficcast retrain`` reports beside its holdout comparison.

    ``version`` is the content-hash version the service reports (``GET /v1/model``) or the
    registry version it was served as. Returns :func:`summarize`'s dict with ``model_version``
    and ``latest_observation`` added (windows end at the latest stored observation), or None when
    the database has no record of that version (or no such SQLite file).
    """
    try:
        db = Database.open(location, read_only=True)
    except FileNotFoundError:
        return None
    try:
        with db.engine.connect() as conn:
            try:
                meta = _meta(conn, version)
            except (sa_exc.OperationalError, sa_exc.ProgrammingError):
                return None  # a store without the record's tables (or not a store)
            if meta is None:
                return None
            value = conn.execute(LATEST_TS).scalar()
            end = None if value is None else pd.Timestamp(int(value), unit="s")
            out = summarize(conn, meta, end, WINDOWS)
    finally:
        db.dispose()
    return {
        "model_version": meta.version,
        "latest_observation": None if end is None else end.isoformat(),
        **out,
    }


def pooled_mae(summary: dict[str, Any], window: str = "24h") -> float | None:
    """One live MAE for a summary: over the targets of every reported horizon (15, 30 and 60
    minutes) in ``window`` together; None where none was scored. What ``trafficcast retrain
    --when-live-mae-above`` compares."""
    horizons = summary["windows"][window]["horizons"].values()
    n = sum(h["scored"] for h in horizons)
    return sum(h["mae"] * h["scored"] for h in horizons if h["scored"]) / n if n else None
