"""The tables the service keeps, as SQLAlchemy Core ``Table`` objects: the one description of
the schema for queries. The migrations under ``app/db/migrations`` create and change them (a
migration spells out its own DDL and never imports this module, so old migrations stay as they
were when the schema moves on).

Times are integer seconds since the epoch of the naive (wall-clock) time the model was trained
on; values are floats; a forecast's arrays are float32 blobs (``BLOB`` in SQLite, ``BYTEA`` in
PostgreSQL).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# One row per (sensor, time): a re-sent reading replaces the stored one. NULL speed: no reading.
readings = Table(
    "readings",
    metadata,
    Column("sensor_id", Text, primary_key=True),
    Column("ts", BigInteger, primary_key=True),
    Column("speed", Float),
    Index("readings_ts", "ts"),
    sqlite_with_rowid=False,
)

# One row (id 1): bumped in the same transaction as every write of readings, so every replica's
# forecast cache sees a reading written through any other (the cache keys on it).
store_state = Table(
    "store_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("generation", BigInteger, nullable=False),
)

# What a recorded forecast's values mean, per model version (see trafficcast.app.accuracy).
forecast_models = Table(
    "forecast_models",
    metadata,
    Column("model_version", Text, primary_key=True),
    Column("registry_version", Text),
    Column("sensor_ids", Text, nullable=False),
    Column("horizon", Integer, nullable=False),
    Column("freq_minutes", Integer, nullable=False),
)

forecasts = Table(
    "forecasts",
    metadata,
    # SQLite: INTEGER PRIMARY KEY is the rowid (autoincrementing); PostgreSQL: BIGSERIAL.
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("model_version", Text, nullable=False),
    Column("made_from", BigInteger, nullable=False),
    Column("made_at", Text, nullable=False),
    Column("level", Float),
    Column("point", LargeBinary, nullable=False),
    Column("lower", LargeBinary),
    Column("upper", LargeBinary),
    UniqueConstraint("model_version", "made_from"),
    Index("forecasts_made_from", "made_from"),
)

forecast_scores = Table(
    "forecast_scores",
    metadata,
    Column("forecast_id", BigInteger, primary_key=True, autoincrement=False),
    Column("step", Integer, primary_key=True, autoincrement=False),
    Column("target_ts", BigInteger, nullable=False),
    Column("n", Integer, nullable=False),
    Column("abs_err", Float, nullable=False),
    Column("sq_err", Float, nullable=False),
    Column("n_bounded", Integer, nullable=False),
    Column("hits", Integer, nullable=False),
    Index("forecast_scores_target", "target_ts"),
)
