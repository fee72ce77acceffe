"""The observation store, its generation counter and the live-accuracy record.

Tables are created only where missing: a SQLite file written before the schema was versioned
(its tables made by ``CREATE TABLE IF NOT EXISTS`` with these same definitions) is adopted as is
and stamped.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# SQLite's INTEGER PRIMARY KEY is the rowid; PostgreSQL gets BIGSERIAL.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "readings",
        sa.Column("sensor_id", sa.Text, primary_key=True),
        sa.Column("ts", sa.BigInteger, primary_key=True),
        sa.Column("speed", sa.Float),
        sqlite_with_rowid=False,
        if_not_exists=True,
    )
    op.create_index("readings_ts", "readings", ["ts"], if_not_exists=True)
    op.create_table(
        "store_state",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
        if_not_exists=True,
    )
    op.execute("INSERT INTO store_state (id, generation) VALUES (1, 0)")
    op.create_table(
        "forecast_models",
        sa.Column("model_version", sa.Text, primary_key=True),
        sa.Column("registry_version", sa.Text),
        sa.Column("sensor_ids", sa.Text, nullable=False),
        sa.Column("horizon", sa.Integer, nullable=False),
        sa.Column("freq_minutes", sa.Integer, nullable=False),
        if_not_exists=True,
    )
    op.create_table(
        "forecasts",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("made_from", sa.BigInteger, nullable=False),
        sa.Column("made_at", sa.Text, nullable=False),
        sa.Column("level", sa.Float),
        sa.Column("point", sa.LargeBinary, nullable=False),
        sa.Column("lower", sa.LargeBinary),
        sa.Column("upper", sa.LargeBinary),
        sa.UniqueConstraint("model_version", "made_from"),
        if_not_exists=True,
    )
    op.create_index("forecasts_made_from", "forecasts", ["made_from"], if_not_exists=True)
    op.create_table(
        "forecast_scores",
        sa.Column("forecast_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("step", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("target_ts", sa.BigInteger, nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("abs_err", sa.Float, nullable=False),
        sa.Column("sq_err", sa.Float, nullable=False),
        sa.Column("n_bounded", sa.Integer, nullable=False),
        sa.Column("hits", sa.Integer, nullable=False),
        if_not_exists=True,
    )
    op.create_index("forecast_scores_target", "forecast_scores", ["target_ts"], if_not_exists=True)


def downgrade() -> None:
    for index, table in (
        ("forecast_scores_target", "forecast_scores"),
        ("forecasts_made_from", "forecasts"),
        ("readings_ts", "readings"),
    ):
        op.drop_index(index, table_name=table)
    for table in ("forecast_scores", "forecasts", "forecast_models", "store_state", "readings"):
        op.drop_table(table)
