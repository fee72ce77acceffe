"""The service's database: SQLite (one file, embedded, the default) or PostgreSQL (shared by any
number of replicas), through one data-access layer, SQLAlchemy Core with psycopg 3.

``Database.open(location)`` takes a URL (``postgresql://user:pass@host/db``,
``sqlite:///path``) or a SQLite file path, and gives the pooled engine the observation store
(``trafficcast.app.observations``) and the forecast record (``trafficcast.app.accuracy``) share. The schema is versioned
by the Alembic migrations in ``app/db/migrations`` (:mod:`trafficcast.app.db.migrate`). Writes are upserts
(:meth:`Database.upsert`), so a reading sent twice, to one replica or to two, is one row.

:data:`UNAVAILABLE` are the errors that mean the database can't be reached or can't take the
write now (connection refused or lost, pool exhausted, SQLite busy): the service answers them
503 with ``Retry-After`` and the pool reconnects on its own when the database returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url

from trafficcast.data.errors import DataInputError

UNAVAILABLE: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
)


def reason(exc: BaseException) -> str:
    """One line on why a database call failed: the driver's message (SQLAlchemy wraps it with the
    SQL and a link), else the error's own text, else its type's name."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def is_url(location: str | Path) -> bool:
    """Whether ``location`` is a database URL rather than a SQLite file path."""
    return isinstance(location, str) and "://" in location


def location(value: str) -> str | Path:
    """A command-line database argument: a URL stays text, anything else is a SQLite path."""
    return value if is_url(value) else Path(value)


def to_url(location: str | Path) -> URL:
    """The SQLAlchemy URL of a location: PostgreSQL URLs get the psycopg 3 driver; a path is a
    SQLite file. Raises :class:`DataInputError` for a URL of another database."""
    if not is_url(location):
        return URL.create("sqlite+pysqlite", database=str(Path(location)))
    try:
        url = make_url(str(location))
    except sa_exc.ArgumentError as exc:
        raise DataInputError(f"database URL: {exc}") from exc
    backend = url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return url.set(drivername="sqlite+pysqlite")
    raise DataInputError(
        f"database URL: {url.render_as_string(hide_password=True)}: only postgresql:// and "
        "sqlite:/// are supported"
    )


def describe(location: str | Path) -> str:
    """The location to show in logs and errors: a URL without its password."""
    if not is_url(location):
        return str(location)
    try:
        return make_url(str(location)).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return "<invalid database URL>"


class Database:
    """A pooled engine on the service's database, and the dialect-specific bits of its SQL.

    Thread-safe: each call checks a connection out of the pool. PostgreSQL connections are
    pinged before use (``pool_pre_ping``), so a restarted server costs one failed ping per pooled
    connection, not an error to a client.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.description = engine.url.render_as_string(hide_password=True)

    @classmethod
    def open(
        cls,
        location: str | Path,
        read_only: bool = False,
        pool_size: int = 5,
        max_overflow: int = 5,
        connect_timeout_s: float = 5.0,
    ) -> Database:
        """An engine on ``location`` (URL or SQLite file path).

        ``read_only``: never create or change anything (the retraining job's view of the
        service's database): a SQLite file must exist and is opened ``mode=ro``; a PostgreSQL
        session is ``default_transaction_read_only``. Raises ``FileNotFoundError`` for a
        read-only SQLite path that does not exist.
        """
        url = to_url(location)
        if url.get_backend_name() == "sqlite":
            return cls(_sqlite_engine(url, read_only))
        options = "-c default_transaction_read_only=on" if read_only else None
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_pre_ping=True,
            pool_timeout=connect_timeout_s,
            # Connections older than this are replaced: servers and proxies drop idle ones.
            pool_recycle=1800,
            connect_args={
                "connect_timeout": max(1, round(connect_timeout_s)),
                "application_name": "trafficcast",
                **({"options": options} if options else {}),
            },
        )
        return cls(engine)

    def dispose(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        """One round trip; raises one of :data:`UNAVAILABLE` when the database does not answer."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def upsert(self, table: Table, keys: Sequence[str], update: Sequence[str] | None = None) -> Any:
        """``INSERT`` into ``table`` that, on a row with the same ``keys``, replaces the
        ``update`` columns (all the others by default), or does nothing when ``update`` is
        empty. Execute with a list of row dicts."""
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        stmt = insert(table)
        columns = (
            [c.name for c in table.columns if c.name not in keys] if update is None else update
        )
        if not columns:
            return stmt.on_conflict_do_nothing(index_elements=list(keys))
        return stmt.on_conflict_do_update(
            index_elements=list(keys), set_={c: stmt.excluded[c] for c in columns}
        )


def _sqlite_engine(url: URL, read_only: bool) -> Engine:
    path = Path(url.database or "")
    if read_only:
        if not path.is_file():
            raise FileNotFoundError(2, "No such file or directory", str(path))
        # mode=ro: opening must never create or change the file.
        url = url.set(database=f"file:{path}?mode=ro", query={"uri": "true"})
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30.0})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        if read_only:
            return
        cursor = dbapi_conn.cursor()
        # WAL: readers (other threads, other processes such as the retraining job) go on while
        # one connection writes. NORMAL is durable across application crashes in WAL mode;
        # only a power cut may lose the last transactions, which clients re-send (writes are
        # idempotent).
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine
