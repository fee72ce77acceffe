"""A servable model and the blocking steps around loading one: its report and sensor locations,
the smoke test a new model must pass, and seeding an empty observation store.

All of it blocks (disk, a forward pass, the database); the service runs it off the event loop,
but for opening the database at start-up, before it serves anything.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trafficcast.app.batching import MicroBatcher
from trafficcast.app.db import UNAVAILABLE, Database, migrate, reason
from trafficcast.app.forecaster import Forecaster
from trafficcast.app.observations import ObservationStore
from trafficcast.app.settings import Settings
from trafficcast.data import read_sensor_locations, read_speeds, sample_locations_path

log = logging.getLogger("trafficcast.service")


# How long start-up waits for an unreachable database (a replica started with its database, say
# by Compose or Kubernetes, may come up first) before it gives up and exits, and how often it
# tries meanwhile.
DB_START_WAIT_S = 60.0
DB_START_RETRY_S = 2.0


def wait_for_database(db: Database) -> None:
    """Return once ``db`` answers; meanwhile retry every :data:`DB_START_RETRY_S` seconds for up
    to :data:`DB_START_WAIT_S`, then raise the last error. Logs one line per cause (the database
    without its password, the driver's reason), not one per attempt."""
    deadline = time.monotonic() + DB_START_WAIT_S
    said = None
    while True:
        try:
            db.ping()
            return
        except UNAVAILABLE as exc:
            if time.monotonic() >= deadline:
                raise
            if reason(exc) != said:
                said = reason(exc)
                log.warning(
                    "database %s unreachable (%s); retrying for up to %g s",
                    db.description,
                    said,
                    DB_START_WAIT_S,
                )
            time.sleep(DB_START_RETRY_S)


def open_database(settings: Settings) -> Database:
    """The service's database (``database_url``, else the SQLite file), its schema migrated to
    this version's head (or checked, with ``db_migrate_on_start`` off); one line logs the
    revision.

    An unreachable database is waited for (:func:`wait_for_database`), then raises; a schema
    nobody upgraded raises ``trafficcast.app.db.migrate.SchemaOutOfDate``.
    """
    s = settings
    db = Database.open(
        s.database,
        pool_size=s.db_pool_size,
        max_overflow=s.db_max_overflow,
        connect_timeout_s=s.db_connect_timeout_s,
    )
    try:
        wait_for_database(db)
        if s.db_migrate_on_start:
            before, after = migrate.upgrade(db)
        else:
            migrate.check(db)
            before = after = migrate.head()
    except BaseException:
        db.dispose()
        raise
    if before != after:
        log.info("database %s: schema upgraded %s -> %s", db.description, before or "none", after)
    else:
        log.info("database %s: schema at %s", db.description, after)
    return db


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


def smoke_test(f: Forecaster, store: ObservationStore | None) -> None:
    """Run one forecast on the latest stored window (or, with no stored data, a window of the
    scaler's mean speed); raise ``RuntimeError`` unless it has the model's shape and is finite."""
    stamps = None
    window = None
    latest = store.latest_timestamp() if store is not None else None
    if store is not None and latest is not None:
        stamps, window = store.window(f.sensor_ids, latest, f.seq_len, f.freq_minutes)
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


def read_report(path: Path) -> dict[str, Any] | None:
    """The run's ``report.json``, or None when it is absent or unreadable (logged)."""
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None
    return report if isinstance(report, dict) else None


def read_locations(sensor_ids: list[str], path: Path | None) -> dict[str, tuple[float, float]]:
    """Latitude and longitude of the model's sensors found in the locations CSV at ``path``
    (default: the bundled METR-LA locations)."""
    table = read_sensor_locations(path or sample_locations_path())
    known = set(sensor_ids)
    return {
        sid: (float(lat), float(lon))
        for sid, lat, lon in zip(
            table["sensor_id"], table["latitude"], table["longitude"], strict=True
        )
        if sid in known
    }


def seed_store(
    store: ObservationStore, forecaster: Forecaster, path: Path, seed_days: float
) -> int:
    """Write the last ``seed_days`` of the speed file at ``path`` (at least one window) for the
    model's sensors; returns the readings written, 0 when the file does not fit the model."""
    speeds = read_speeds(path)
    ids = [s for s in forecaster.sensor_ids if s in set(speeds.sensor_ids)]
    if not ids or speeds.freq_minutes != forecaster.freq_minutes:
        log.warning("seed %s does not fit the model (sensors or frequency); not seeded", path)
        return 0
    speeds = speeds.select_sensors(ids)
    steps = max(forecaster.seq_len, round(seed_days * 1440 / speeds.freq_minutes))
    part = speeds.slice_steps(max(0, speeds.num_steps - steps), None)
    values = np.where(part.mask, part.values, np.nan)
    written = store.add(ids, part.index, values)
    log.info("seeded the observation store with %d readings from %s", written, path)
    return written
