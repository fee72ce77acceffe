"""Schema versions: Alembic's migrations in ``app/db/migrations``, applied by ``trafficcast db
upgrade`` or, by default, when the service starts (``db_migrate_on_start``).

Replicas starting together on one PostgreSQL database take turns: the upgrade holds a
transaction-level advisory lock, so the second finds the schema at head and does nothing. On
SQLite an exclusive lock on a file beside the database does the same (its DDL does not wait
inside a transaction).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from trafficcast.app.db import Database

# Alembic's INFO lines (each plugin set up, the dialect's context, each revision run) would repeat
# at every start of every replica; the service logs the one line that matters, the revision.
logging.getLogger("alembic").setLevel(logging.WARNING)

MIGRATIONS = Path(__file__).parent / "migrations"
# pg_advisory_xact_lock's key: any constant the application alone uses ("trafficcast" in hex-ish).
_LOCK_KEY = 0x7472_6166_6663


# Alembic keeps its running context in module globals: one migration at a time per process.
_process_lock = threading.Lock()


class SchemaOutOfDate(RuntimeError):
    """The database's schema is not the one this version of trafficcast reads."""


class MigrationsMissing(RuntimeError):
    """The installed package holds no schema migration (a broken install)."""


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@functools.cache
def head() -> str:
    """The newest schema revision this version of trafficcast knows."""
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    if revision is None:
        raise MigrationsMissing(f"{MIGRATIONS}: no schema migrations found (reinstall trafficcast)")
    return revision


def current(db: Database) -> str | None:
    """The database's schema revision; None for a database never migrated."""
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextlib.contextmanager
def _exclusive(db: Database) -> Iterator[Connection]:
    """A transaction on ``db`` that no other migration (of any process) runs beside: a
    PostgreSQL advisory lock held to its end; for SQLite, whose DDL does not wait inside a
    transaction, an exclusive lock on a file next to the database."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(_process_lock)
        if db.dialect == "sqlite" and db.engine.url.database:
            handle = stack.enter_context(open(f"{db.engine.url.database}.migrate-lock", "a+b"))
            fcntl.flock(handle, fcntl.LOCK_EX)
        conn = stack.enter_context(db.engine.begin())
        if db.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        yield conn


def _run(conn: Connection, action: str, revision: str) -> None:
    config = _config()
    config.attributes["connection"] = conn
    getattr(command, action)(config, revision)


def upgrade(db: Database, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the schema to ``revision``; returns the revisions before and after (equal when
    another process had just done it)."""
    if revision == "head" and current(db) == head():
        return head(), head()
    with _exclusive(db) as conn:
        # Read again under the lock: a replica that waited finds the work done.
        before = MigrationContext.configure(conn).get_current_revision()
        _run(conn, "upgrade", revision)
        after = MigrationContext.configure(conn).get_current_revision()
    return before, after


def downgrade(db: Database, revision: str) -> None:
    """Take the schema back to ``revision`` (``"base"``: no tables), dropping what later
    revisions added, their data with it."""
    with _exclusive(db) as conn:
        _run(conn, "downgrade", revision)


def check(db: Database) -> None:
    """Raise :class:`SchemaOutOfDate` unless the schema is at :func:`head` (a service started
    with ``db_migrate_on_start`` off, on a database nobody upgraded)."""
    found = current(db)
    if found != head():
        raise SchemaOutOfDate(
            f"{db.description}: schema revision {found or 'none'}, this trafficcast needs "
            f"{head()}: run `trafficcast db upgrade`"
        )
