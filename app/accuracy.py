"""Live accuracy: the record of the forecasts the service made from its observation store, scored
against the readings that arrived later.

The record lives in the observation store's own SQLite file (its own connection, WAL), so a restart
loses neither; three tables, plain SQL that any database speaks:

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
    sensor). A blob is standard SQL (``BYTEA`` in PostgreSQL).
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
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from app.observations import LATEST_TS_SQL, open_database
from app.pipeline import horizon_steps

# Windows of GET /v1/accuracy and the gauges, by name.
WINDOWS: dict[str, pd.Timedelta] = {"1h": pd.Timedelta(hours=1), "24h": pd.Timedelta(hours=24)}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS forecast_models (
    model_version TEXT PRIMARY KEY,
    registry_version TEXT,
    sensor_ids TEXT NOT NULL,
    horizon INTEGER NOT NULL,
    freq_minutes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS forecasts (
    id INTEGER PRIMARY KEY,
    model_version TEXT NOT NULL,
    made_from INTEGER NOT NULL,
    made_at TEXT NOT NULL,
    level REAL,
    point BLOB NOT NULL,
    lower BLOB,
    upper BLOB,
    UNIQUE (model_version, made_from)
);
CREATE INDEX IF NOT EXISTS forecasts_made_from ON forecasts (made_from);
CREATE TABLE IF NOT EXISTS forecast_scores (
    forecast_id INTEGER NOT NULL,
    step INTEGER NOT NULL,
    target_ts INTEGER NOT NULL,
    n INTEGER NOT NULL,
    abs_err REAL NOT NULL,
    sq_err REAL NOT NULL,
    n_bounded INTEGER NOT NULL,
    hits INTEGER NOT NULL,
    PRIMARY KEY (forecast_id, step)
);
CREATE INDEX IF NOT EXISTS forecast_scores_target ON forecast_scores (target_ts);
"""


def observed(target: np.ndarray) -> np.ndarray:
    """Which stored readings count as targets: the project's one rule
    (:func:`models.metrics.observed`, as in training and ``trafficcast evaluate``) over the
    store's mask. The store keeps NULL (NaN here) for no reading, decided by the model's
    missing-value rule when the reading arrived, so a stored 0 is a real reading."""
    import torch

    from models.metrics import observed as counts

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


def _array(blob: bytes | None, shape: tuple[int, int]) -> np.ndarray | None:
    return None if blob is None else np.frombuffer(blob, dtype="<f4").reshape(shape)


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
    conn: sqlite3.Connection, meta: ModelMeta, end: pd.Timestamp | None, windows: Iterable[str]
) -> dict[str, Any]:
    """MAE, RMSE, coverage, scored targets and forecasts per reported horizon, for each window
    ending at ``end`` (targets in ``(end - window, end]``), of one model version.

    Returns ``{"forecasts": recorded count, "last_made_from": ISO or None, "windows": {name:
    {"start", "end", "horizons": {"15min": {...}}}}}``; metrics are None where nothing was scored.
    """
    count, last = conn.execute(
        "SELECT COUNT(*), MAX(made_from) FROM forecasts WHERE model_version = ?", (meta.version,)
    ).fetchone()
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
        if end is not None and steps:
            marks = ",".join("?" * len(steps))
            rows = {
                int(r[0]): r[1:]
                for r in conn.execute(
                    "SELECT s.step, SUM(s.n), SUM(s.abs_err), SUM(s.sq_err), SUM(s.n_bounded), "
                    "SUM(s.hits), SUM(CASE WHEN s.n > 0 THEN 1 ELSE 0 END) "
                    "FROM forecast_scores s JOIN forecasts f ON f.id = s.forecast_id "
                    "WHERE f.model_version = ? AND s.target_ts > ? AND s.target_ts <= ? "
                    f"AND s.step IN ({marks}) GROUP BY s.step",
                    (meta.version, epoch_seconds(start), epoch_seconds(end), *steps.values()),
                )
            }
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


def _meta(conn: sqlite3.Connection, version: str) -> ModelMeta | None:
    row = conn.execute(
        "SELECT model_version, sensor_ids, horizon, freq_minutes FROM forecast_models "
        "WHERE model_version = ? OR registry_version = ? ORDER BY model_version = ? DESC",
        (version, version, version),
    ).fetchone()
    if row is None:
        return None
    return ModelMeta(row[0], row[1].split(","), int(row[2]), int(row[3]))


class ForecastRecord:
    """The forecasts the service made and their scores, in the observation store's SQLite file.

    One connection guarded by a lock, as ``ObservationStore``; every call blocks (the service
    makes them from a worker thread) and holds a write transaction only for a few rows.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn = open_database(self.path, _SCHEMA)
        self._metas: dict[str, ModelMeta] = {}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def register_model(self, meta: ModelMeta, registry_version: str | None) -> None:
        """Say what ``meta.version``'s forecasts mean (idempotent)."""
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT INTO forecast_models (model_version, registry_version, sensor_ids, "
                "horizon, freq_minutes) VALUES (?, ?, ?, ?, ?) ON CONFLICT (model_version) DO "
                "UPDATE SET registry_version = excluded.registry_version, sensor_ids = "
                "excluded.sensor_ids, horizon = excluded.horizon, freq_minutes = "
                "excluded.freq_minutes",
                (
                    meta.version,
                    registry_version,
                    ",".join(meta.sensor_ids),
                    meta.horizon,
                    meta.freq_minutes,
                ),
            )
        self._metas[meta.version] = meta

    def meta(self, version: str) -> ModelMeta | None:
        """The model version's meaning, by content-hash or registry version; None if unknown."""
        if version in self._metas:
            return self._metas[version]
        with self._lock:
            meta = _meta(self._conn, version)
        if meta is not None and meta.version == version:  # a content hash means one thing
            self._metas[version] = meta
        return meta

    def high_water(self) -> int | None:
        """The latest ``made_from`` of any recorded forecast (epoch seconds), None if none."""
        with self._lock:
            row = self._conn.execute("SELECT MAX(made_from) FROM forecasts").fetchone()
        return None if row[0] is None else int(row[0])

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
        with self._lock, self._conn:
            row = self._conn.execute(
                "INSERT INTO forecasts (model_version, made_from, made_at, level, point, lower, "
                "upper) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (model_version, made_from) DO "
                "NOTHING RETURNING id",
                (
                    meta.version,
                    made_from,
                    made_at,
                    None if bands is None else level,
                    _blob(point),
                    _blob(lower),
                    _blob(upper),
                ),
            ).fetchone()
        if row is None:
            return None
        shape = (meta.horizon, len(meta.sensor_ids))
        return Recorded(
            int(row[0]),
            meta,
            made_from,
            _array(_blob(point), shape),
            _array(_blob(lower), shape),
            _array(_blob(upper), shape),
        )

    def max_reach_s(self) -> int | None:
        """The longest horizon of any recorded version, in seconds; None with no version."""
        with self._lock:
            row = self._conn.execute(
                "SELECT MAX(horizon * freq_minutes * 60) FROM forecast_models"
            ).fetchone()
        return None if row[0] is None else int(row[0])

    def made_between(self, first: int | None, last: int | None) -> list[Recorded]:
        """The forecasts made from ``first`` to ``last`` (epoch seconds, inclusive; None: no
        bound), of every version, oldest first."""
        lo = -(2**63) if first is None else first
        hi = 2**63 - 1 if last is None else last
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, model_version, made_from, point, lower, upper FROM forecasts "
                "WHERE made_from >= ? AND made_from <= ? ORDER BY made_from, id",
                (lo, hi),
            ).fetchall()
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
                    _array(point, shape),
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
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT INTO forecast_scores (forecast_id, step, target_ts, n, abs_err, sq_err, "
                "n_bounded, hits) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (forecast_id, step) "
                "DO UPDATE SET target_ts = excluded.target_ts, n = excluded.n, abs_err = "
                "excluded.abs_err, sq_err = excluded.sq_err, n_bounded = excluded.n_bounded, "
                "hits = excluded.hits",
                rows,
            )

    def prune(self, before: int) -> int:
        """Drop the forecasts made before ``before`` (epoch seconds) and their scores; returns
        how many forecasts went."""
        with self._lock, self._conn:
            self._conn.execute(
                "DELETE FROM forecast_scores WHERE forecast_id IN "
                "(SELECT id FROM forecasts WHERE made_from < ?)",
                (before,),
            )
            return self._conn.execute(
                "DELETE FROM forecasts WHERE made_from < ?", (before,)
            ).rowcount

    def summary(
        self, meta: ModelMeta, end: pd.Timestamp | None, windows: Iterable[str] = WINDOWS
    ) -> dict[str, Any]:
        """See :func:`summarize`."""
        with self._lock:
            return summarize(self._conn, meta, end, list(windows))


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


def live_summary(db_path: str | Path, version: str) -> dict[str, Any] | None:
    """The live accuracy of a model version from the service's database, opened read-only:
    what ``trafficcast retrain`` reports beside its holdout comparison.

    ``version`` is the content-hash version the service reports (``GET /v1/model``) or the
    registry version it was served as. Returns :func:`summarize`'s dict with ``model_version``
    and ``latest_observation`` added (windows end at the latest stored observation), or None when
    the file has no record of that version.
    """
    path = Path(db_path)
    if not path.is_file():
        return None
    # mode=ro: the job must never create or change the service's database.
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    try:
        try:
            meta = _meta(conn, version)
        except sqlite3.OperationalError:  # a store without the record's tables
            return None
        if meta is None:
            return None
        row = conn.execute(LATEST_TS_SQL).fetchone()
        end = None if row is None or row[0] is None else pd.Timestamp(int(row[0]), unit="s")
        out = summarize(conn, meta, end, WINDOWS)
    finally:
        conn.close()
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
