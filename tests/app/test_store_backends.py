"""The observation store's and the forecast record's contract, on SQLite and on a real
PostgreSQL server (``database`` runs each test once per backend), plus the migrations and what
happens when the PostgreSQL server goes away and comes back."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

from trafficcast.app.accuracy import ForecastRecord, ModelMeta, live_summary, score_rows
from trafficcast.app.db import UNAVAILABLE, Database, migrate
from trafficcast.app.observations import ObservationStore, read_readings
from trafficcast.data.errors import DataInputError

SENSORS = ["s1", "s2", "s3"]
T0 = pd.Timestamp("2012-03-07 08:00:00")


def grid(n: int, start: pd.Timestamp = T0) -> pd.DatetimeIndex:
    return pd.date_range(start, periods=n, freq="5min").as_unit("ns")


def test_readings_round_trip_and_a_resent_reading_replaces_itself(database):
    store = ObservationStore(database)
    try:
        assert store.is_empty() and store.count() == 0 and store.latest_timestamp() is None
        values = np.array([[60.0, np.nan, 55.5], [61.0, 62.0, np.nan], [np.nan] * 3])
        assert store.add(SENSORS, grid(3), values) == 9
        assert not store.is_empty() and store.count() == 9
        # The last step holds only NULLs: it is not the latest time with a reading.
        assert store.latest_timestamp() == T0 + pd.Timedelta("5min")
        stamps, window = store.window(["s3", "s1"], T0 + pd.Timedelta("5min"), 3, 5)
        assert list(stamps) == list(grid(3, T0 - pd.Timedelta("5min")))
        np.testing.assert_array_equal(
            window, np.array([[np.nan, np.nan], [55.5, 60.0], [np.nan, 61.0]], dtype=np.float32)
        )
        assert list(store.steps_after(T0 - pd.Timedelta("1min"))) == list(grid(2))
        # Re-sent with a new value (and a reading where there was none): replaced, not added.
        store.add(["s1", "s3"], grid(1), np.array([[59.0, 50.0]]))
        assert store.count() == 9
        _, window = store.window(SENSORS, T0, 1, 5)
        np.testing.assert_array_equal(window, np.array([[59.0, np.nan, 50.0]], dtype=np.float32))
        frame = read_readings(database).sort_values(["timestamp", "sensor_id"])
        assert list(frame["sensor_id"]) == ["s1", "s3", "s1", "s2"]
        assert list(frame["speed"]) == [59.0, 50.0, 61.0, 62.0]
        assert str(frame["timestamp"].dtype) == "datetime64[ns]"
    finally:
        store.close()


def test_every_write_through_any_store_changes_the_generation_all_of_them_read(database):
    one, two = ObservationStore(database), ObservationStore(database)  # two replicas
    try:
        start = one.generation()
        assert two.generation() == start
        one.add(SENSORS, grid(1), np.ones((1, 3)))
        assert two.generation() == start + 1
        two.add(SENSORS, grid(1), np.ones((1, 3)))  # the same readings again still count
        assert one.generation() == start + 2
        assert one.count() == two.count() == 3
    finally:
        one.close()
        two.close()


def test_concurrent_overlapping_writes_neither_deadlock_nor_duplicate(database):
    # Two replicas writing the same day of readings at once, one in the opposite order (times
    # and sensors reversed): rows locked in the order given would deadlock (PostgreSQL aborts
    # one of them) within a few batches.
    stores = [ObservationStore(database) for _ in range(2)]
    start = stores[0].generation()
    stamps = grid(288)
    rng = np.random.default_rng(0)
    errors: list[BaseException] = []

    def write(k: int) -> None:
        sensors, times = (SENSORS, stamps) if k == 0 else (SENSORS[::-1], stamps[::-1])
        try:
            for _ in range(10):
                stores[k].add(sensors, times, rng.uniform(1, 70, (288, 3)))
        except BaseException as exc:  # pragma: no cover - the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    try:
        assert not errors, errors
        assert stores[0].count() == 288 * 3
        assert stores[1].generation() == start + 20
    finally:
        for store in stores:
            store.close()


def _meta(version: str = "abc123") -> ModelMeta:
    return ModelMeta(version, SENSORS, horizon=2, freq_minutes=5)


def test_the_forecast_record_on_both_backends(database):
    store, record, other = (
        ObservationStore(database),
        ForecastRecord(database),
        ForecastRecord(database),
    )
    try:
        meta = _meta()
        record.register_model(meta, "v0001")
        record.register_model(meta, "v0001")  # idempotent
        assert other.meta("v0001") == meta and other.meta("abc123") == meta
        made_from = int(T0.value // 10**9)
        point = np.array([[10.0, 20.0, 30.0], [11.0, 21.0, 31.0]], dtype=np.float32)
        bands = (point - 1, point + 1)
        first = record.add(meta, made_from, "2026-12-01T00:00:00", point, bands, 0.8)
        assert first is not None
        np.testing.assert_array_equal(first.point, point)
        # The same forecast recorded by another replica: the first stands.
        assert other.add(meta, made_from, "later", point + 5, None, 0.8) is None
        assert record.high_water() == made_from and other.max_reach_s() == 600
        [again] = other.made_between(made_from, made_from)
        np.testing.assert_array_equal(again.upper, point + 1)
        # Targets: step 1 has all three (one outside the band), step 2 one missing.
        targets = np.array([[10.5, 22.0, 30.0], [np.nan, 21.0, 33.0]])
        store.add(SENSORS, grid(2, T0 + pd.Timedelta("5min")), targets)
        record.put_scores(score_rows(again, targets))
        record.put_scores(score_rows(again, targets))  # replaced, not added
        summary = other.summary(meta, T0 + pd.Timedelta("10min"), ["1h"])
        assert summary["forecasts"] == 1
        assert summary["last_made_from"] == T0.isoformat()
        live = live_summary(database, "v0001")
        assert live is not None and live["model_version"] == "abc123"
        assert live["latest_observation"] == (T0 + pd.Timedelta("10min")).isoformat()
        with record.db.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT step, n, abs_err, sq_err, n_bounded, hits FROM forecast_scores")
            ).all()
        assert sorted(tuple(r) for r in rows) == [(1, 3, 2.5, 4.25, 3, 2), (2, 2, 2.0, 4.0, 2, 1)]
        assert live_summary(database, "0123456789abcdef") is None
        assert record.prune(made_from + 1) == 1
        assert other.made_between(None, None) == [] and record.high_water() is None
        with record.db.engine.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM forecast_scores")).scalar() == 0
    finally:
        for closing in (store, record, other):
            closing.close()


def test_the_retraining_job_reads_without_writing(database):
    ObservationStore(database).close()
    db = Database.open(database, read_only=True)
    try:
        with pytest.raises(Exception) as raised, db.engine.begin() as conn:
            conn.execute(text("INSERT INTO readings (sensor_id, ts, speed) VALUES ('x', 1, 1.0)"))
        assert "read-only" in str(raised.value).lower() or "readonly" in str(raised.value).lower()
    finally:
        db.dispose()


def test_migrations_are_idempotent_reversible_and_safe_to_race(database):
    # Two replicas starting at once: two processes upgrading one new database together.
    url = database if "://" in database else f"sqlite:///{database}"
    cmd = [sys.executable, "-m", "trafficcast", "db", "upgrade", "--database-url", url]
    runs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    # One migrated, the other found the schema at head (it waited for the first).
    assert sorted("nothing to do" in out for out in outputs) == [False, True], outputs
    assert "secret" not in "".join(outputs)
    db = Database.open(database)
    try:
        assert migrate.current(db) == migrate.head()
        assert migrate.upgrade(db) == (migrate.head(), migrate.head())
        migrate.check(db)
        migrate.downgrade(db, "base")
        assert migrate.current(db) is None
        with pytest.raises(migrate.SchemaOutOfDate, match="trafficcast db upgrade"):
            migrate.check(db)
        assert migrate.upgrade(db) == (None, migrate.head())
    finally:
        db.dispose()


def test_a_store_written_before_the_schema_was_versioned_is_adopted(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:  # the schema as the service wrote it before Alembic
        conn.executescript(
            "CREATE TABLE readings (sensor_id TEXT NOT NULL, ts INTEGER NOT NULL, speed REAL, "
            "PRIMARY KEY (sensor_id, ts)) WITHOUT ROWID; CREATE INDEX readings_ts ON readings "
            "(ts); INSERT INTO readings VALUES ('s1', 1331107200, 60.0);"
        )
    store = ObservationStore(path)
    try:
        assert store.count() == 1 and store.latest_timestamp() == T0
        assert migrate.current(store.db) == migrate.head()
        start = store.generation()
        store.add(["s1"], grid(1, T0 + pd.Timedelta("5min")), np.array([[61.0]]))
        assert store.generation() == start + 1 and store.count() == 2
    finally:
        store.close()


def test_a_database_that_is_not_a_store_is_one_clear_error(tmp_path, postgres_url):
    with pytest.raises(DataInputError, match="cannot read a trafficcast observation store"):
        read_readings(postgres_url)  # an empty database: no readings table
    with pytest.raises(FileNotFoundError):
        read_readings(tmp_path / "absent.sqlite3")
    assert not (tmp_path / "absent.sqlite3").exists()


def test_the_store_recovers_by_itself_when_postgresql_comes_back(tmp_path):
    from pgserver import PostgresServer, find_bin_dir

    if find_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed")
    with PostgresServer(tmp_path / "pg", durable=True) as server:  # it survives a crash
        store = ObservationStore(server.url)
        try:
            store.add(SENSORS, grid(1), np.ones((1, 3)))
            server.stop("immediate")  # a crash: pooled connections are dead now
            with pytest.raises(UNAVAILABLE):
                store.add(SENSORS, grid(1, T0 + pd.Timedelta("5min")), np.ones((1, 3)))
            with pytest.raises(UNAVAILABLE):
                store.db.ping()
            server.start()
            # The same store object: the pool replaces its dead connections on its own.
            store.add(SENSORS, grid(1, T0 + pd.Timedelta("5min")), 2 * np.ones((1, 3)))
            assert store.count() == 6
            assert store.latest_timestamp() == T0 + pd.Timedelta("5min")
        finally:
            store.close()
