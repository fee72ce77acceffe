"""The live observation store: speed readings in the service's database (``trafficcast.app.db``: a SQLite
file by default, PostgreSQL shared by replicas).

One row per ``(sensor_id, ts)``: a re-sent reading replaces the stored one, so clients may retry a
batch safely, through one replica or several. Timestamps are stored as integer seconds since the
epoch of the naive (wall-clock) time the model was trained on; missing readings are NULL.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError

from trafficcast.app.db import Database, describe, migrate, reason
from trafficcast.app.db import schema as t
from trafficcast.data.errors import DataInputError

# The latest time with a real reading: 0 and NULL are missing. Also read by the live-accuracy
# summary (``trafficcast.app.accuracy``).
LATEST_TS = select(func.max(t.readings.c.ts)).where(t.readings.c.speed.is_not(None))


def to_epoch_seconds(stamps: pd.DatetimeIndex) -> np.ndarray:
    """Naive timestamps as int64 seconds since 1970-01-01 (the column the store keys on).

    Shapes: ``(T,)`` -> ``(T,)``.
    """
    return np.asarray(stamps.as_unit("ns").asi8 // 1_000_000_000, dtype=np.int64)


def open_store_database(location: Database | str | Path) -> tuple[Database, bool]:
    """``location`` as a migrated :class:`Database`, and whether the caller opened it (and so
    closes it): a ``Database`` is used as given; a URL or SQLite path is opened and upgraded to
    the schema's head."""
    if isinstance(location, Database):
        return location, False
    db = Database.open(location)
    migrate.upgrade(db)
    return db, True


class ObservationStore:
    """Readings of the model's sensors, kept across restarts in the service's database.

    Thread-safe (each call checks a connection out of the database's pool). Every write bumps
    the shared :meth:`generation` in its own transaction, which is how any replica's forecast
    cache learns of readings written through another.
    """

    def __init__(self, location: Database | str | Path) -> None:
        self.db, self._owned = open_store_database(location)

    def close(self) -> None:
        if self._owned:
            self.db.dispose()

    def add(self, sensor_ids: Sequence[str], stamps: pd.DatetimeIndex, speeds: np.ndarray) -> int:
        """Store a block of readings; NaN means missing. Returns the number of rows written.

        Shapes: ``speeds (T, N)`` for ``stamps (T,)`` and ``sensor_ids (N,)``.
        """
        seconds = to_epoch_seconds(stamps)
        values = np.asarray(speeds, dtype=np.float64)
        # In key order: concurrent writers (of any replica) then lock shared readings in one
        # order, so two batches sharing readings can't deadlock.
        rows = sorted(
            (
                {"sensor_id": sid, "ts": int(ts), "speed": None if not np.isfinite(v) else float(v)}
                for t_, ts in enumerate(seconds)
                for sid, v in zip(sensor_ids, values[t_], strict=True)
            ),
            key=lambda r: (r["sensor_id"], r["ts"]),
        )
        if not rows:
            return 0
        with self.db.engine.begin() as conn:
            conn.execute(self.db.upsert(t.readings, ["sensor_id", "ts"]), rows)
            # The counter last: writers queue on its row lock only from here to the commit.
            conn.execute(
                update(t.store_state)
                .where(t.store_state.c.id == 1)
                .values(generation=t.store_state.c.generation + 1)
            )
        return len(rows)

    def generation(self) -> int:
        """A number that changes with every write through any process on this database."""
        with self.db.engine.connect() as conn:
            value = conn.execute(
                select(t.store_state.c.generation).where(t.store_state.c.id == 1)
            ).scalar_one()
        return int(value)

    def count(self) -> int:
        with self.db.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(t.readings)).scalar_one())

    def is_empty(self) -> bool:
        """Whether no reading (real or missing) is stored; cheap on a large table."""
        with self.db.engine.connect() as conn:
            return conn.execute(select(t.readings.c.ts).limit(1)).first() is None

    def latest_timestamp(self) -> pd.Timestamp | None:
        """The latest time with at least one real reading (0 and NULL are missing)."""
        with self.db.engine.connect() as conn:
            value = conn.execute(LATEST_TS).scalar()
        return None if value is None else pd.Timestamp(int(value), unit="s")

    def steps_after(self, after: pd.Timestamp) -> pd.DatetimeIndex:
        """The times later than ``after`` with at least one real reading, in order."""
        since = int(to_epoch_seconds(pd.DatetimeIndex([after]))[0])
        query = (
            select(t.readings.c.ts)
            .where(t.readings.c.ts > since, t.readings.c.speed.is_not(None))
            .distinct()
            .order_by(t.readings.c.ts)
        )
        with self.db.engine.connect() as conn:
            rows = conn.execute(query).scalars().all()
        return pd.DatetimeIndex(pd.to_datetime([int(r) for r in rows], unit="s")).as_unit("ns")

    def window(
        self, sensor_ids: Sequence[str], end: pd.Timestamp, steps: int, freq_minutes: int
    ) -> tuple[pd.DatetimeIndex, np.ndarray]:
        """The ``steps`` grid times ending at ``end`` and the readings there, NaN where missing.

        Shapes: returns ``stamps (steps,)``, ``speeds (steps, N)`` in ``sensor_ids`` order.
        """
        stamps = pd.date_range(end=end, periods=steps, freq=pd.Timedelta(minutes=freq_minutes))
        seconds = to_epoch_seconds(stamps)
        out = np.full((steps, len(sensor_ids)), np.nan, dtype=np.float32)
        column = {sid: k for k, sid in enumerate(sensor_ids)}
        row_of = {int(s): k for k, s in enumerate(seconds)}
        r = t.readings.c
        query = select(r.sensor_id, r.ts, r.speed).where(
            r.ts >= int(seconds[0]), r.ts <= int(seconds[-1]), r.speed.is_not(None)
        )
        with self.db.engine.connect() as conn:
            rows = conn.execute(query).all()
        for sid, ts, speed in rows:
            k, i = column.get(sid), row_of.get(int(ts))
            if k is not None and i is not None:
                out[i, k] = speed
        return stamps, out


def read_readings(location: str | Path) -> pd.DataFrame:
    """Every real reading in a store (SQLite path or database URL), opened read-only: the
    retraining job's view, which never creates or changes the service's database.

    Returns a frame with columns ``sensor_id`` (str), ``timestamp`` (naive datetime64[ns]) and
    ``speed`` (float); NULL and 0 (missing readings) are left out. Raises ``FileNotFoundError``
    for a SQLite path that does not exist and :class:`DataInputError` for a database without
    the store's table.
    """
    db = Database.open(location, read_only=True)
    r = t.readings.c
    try:
        with db.engine.connect() as conn:
            rows = conn.execute(
                select(r.sensor_id, r.ts, r.speed).where(r.speed.is_not(None))
            ).all()
    except DBAPIError as exc:
        raise DataInputError(
            f"{describe(location)}: cannot read a trafficcast observation store there "
            f"({reason(exc)})"
        ) from exc
    finally:
        db.dispose()
    frame = pd.DataFrame(rows, columns=["sensor_id", "ts", "speed"])
    return pd.DataFrame(
        {
            "sensor_id": frame["sensor_id"].astype(str),
            "timestamp": pd.to_datetime(frame["ts"].astype(np.int64), unit="s").astype(
                "datetime64[ns]"
            ),
            "speed": frame["speed"].astype(np.float64),
        }
    )
