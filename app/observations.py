"""The live observation store: speed readings in an embedded SQLite database (WAL mode).

One row per ``(sensor_id, ts)``: a re-sent reading replaces the stored one, so clients may retry a
batch safely. Timestamps are stored as integer seconds since the epoch of the naive (wall-clock)
time the model was trained on; missing readings are NULL.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from data.errors import DataInputError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    sensor_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    speed REAL,
    PRIMARY KEY (sensor_id, ts)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS readings_ts ON readings (ts);
"""
# The latest time with a real reading: 0 and NULL are missing. Also read by the live-accuracy
# summary (``app.accuracy``), which opens the file read-only.
LATEST_TS_SQL = "SELECT MAX(ts) FROM readings WHERE speed IS NOT NULL"


def to_epoch_seconds(stamps: pd.DatetimeIndex) -> np.ndarray:
    """Naive timestamps as int64 seconds since 1970-01-01 (the column the store keys on).

    Shapes: ``(T,)`` -> ``(T,)``.
    """
    return np.asarray(stamps.as_unit("ns").asi8 // 1_000_000_000, dtype=np.int64)


def open_database(path: Path, schema: str) -> sqlite3.Connection:
    """The service's SQLite file (created with its folder if new), in WAL mode, with ``schema``
    (``CREATE ... IF NOT EXISTS`` statements) applied: one connection for a thread-safe class
    that guards it with a lock. The observation store and the forecast record share the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL is durable across application crashes in WAL mode; only a power cut may lose the
    # last transactions, which clients re-send (writes are idempotent).
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(schema)
    conn.commit()
    return conn


class ObservationStore:
    """Readings of the model's sensors, kept across restarts in one SQLite file.

    One connection guarded by a lock: the service writes from a thread pool, and SQLite's own
    locking then only matters for other processes, which WAL lets read while we write.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn = open_database(self.path, _SCHEMA)
        # Bumped on every write: the forecast cache keys on it so late readings are seen.
        self.generation = 0

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def add(self, sensor_ids: Sequence[str], stamps: pd.DatetimeIndex, speeds: np.ndarray) -> int:
        """Store a block of readings; NaN means missing. Returns the number of rows written.

        Shapes: ``speeds (T, N)`` for ``stamps (T,)`` and ``sensor_ids (N,)``.
        """
        seconds = to_epoch_seconds(stamps)
        values = np.asarray(speeds, dtype=np.float64)
        rows = [
            (sid, int(ts), None if not np.isfinite(v) else float(v))
            for t, ts in enumerate(seconds)
            for sid, v in zip(sensor_ids, values[t], strict=True)
        ]
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO readings (sensor_id, ts, speed) VALUES (?, ?, ?)", rows
            )
            self.generation += 1
        return len(rows)

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0])

    def latest_timestamp(self) -> pd.Timestamp | None:
        """The latest time with at least one real reading (0 and NULL are missing)."""
        with self._lock:
            row = self._conn.execute(LATEST_TS_SQL).fetchone()
        if row is None or row[0] is None:
            return None
        return pd.Timestamp(int(row[0]), unit="s")

    def steps_after(self, after: pd.Timestamp) -> pd.DatetimeIndex:
        """The times later than ``after`` with at least one real reading, in order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT DISTINCT ts FROM readings WHERE ts > ? AND speed IS NOT NULL ORDER BY ts",
                (int(to_epoch_seconds(pd.DatetimeIndex([after]))[0]),),
            ).fetchall()
        return pd.DatetimeIndex(pd.to_datetime([int(r[0]) for r in rows], unit="s")).as_unit("ns")

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
        with self._lock:
            cursor = self._conn.execute(
                "SELECT sensor_id, ts, speed FROM readings WHERE ts >= ? AND ts <= ? "
                "AND speed IS NOT NULL",
                (int(seconds[0]), int(seconds[-1])),
            )
            rows = cursor.fetchall()
        for sid, ts, speed in rows:
            k, t = column.get(sid), row_of.get(int(ts))
            if k is not None and t is not None:
                out[t, k] = speed
        return stamps, out


def read_readings(path: str | Path) -> pd.DataFrame:
    """Every real reading in a store file, opened read-only (the retraining job's view).

    Returns a frame with columns ``sensor_id`` (str), ``timestamp`` (naive datetime64[ns]) and
    ``speed`` (float); NULL and 0 (missing readings) are left out.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    # mode=ro: the job must never create or change the service's database.
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    try:
        rows = conn.execute(
            "SELECT sensor_id, ts, speed FROM readings WHERE speed IS NOT NULL"
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        raise DataInputError(f"{path}: not a trafficcast observation store ({exc})") from exc
    finally:
        conn.close()
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
