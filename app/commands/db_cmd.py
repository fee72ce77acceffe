"""``trafficcast db upgrade|current``: the service database's schema (Alembic migrations)."""

from __future__ import annotations

import argparse
import os

DATABASE_URL_ENV = "TRAFFICCAST_DATABASE_URL"
OBSERVATIONS_DB_ENV = "TRAFFICCAST_OBSERVATIONS_DB"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "db",
        help="upgrade or inspect the schema of the service's database",
        description=(
            "The service's database (observations and the live-accuracy record): "
            f"--database-url, else ${DATABASE_URL_ENV}, else the SQLite file "
            f"${OBSERVATIONS_DB_ENV} (default trafficcast-observations.sqlite3), as the service "
            "picks it. The service also upgrades at start-up unless "
            "TRAFFICCAST_DB_MIGRATE_ON_START=false."
        ),
    )
    sub = p.add_subparsers(dest="db_command", metavar="ACTION")
    sub.required = True
    q = sub.add_parser("upgrade", help="apply the migrations up to this version's schema")
    _database_argument(q)
    q.set_defaults(handler=_upgrade)
    q = sub.add_parser("current", help="print the database's schema revision and this version's")
    _database_argument(q)
    q.set_defaults(handler=_current)


def _database_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database-url",
        metavar="URL",
        help=f"postgresql://user:password@host:5432/db or sqlite:///path (default: ${DATABASE_URL_ENV})",
    )


def _database(args: argparse.Namespace):
    from app.db import Database, location

    where = (
        args.database_url
        or os.environ.get(DATABASE_URL_ENV)
        or os.environ.get(OBSERVATIONS_DB_ENV)
        or "trafficcast-observations.sqlite3"
    )
    return Database.open(location(where))


def _upgrade(args: argparse.Namespace) -> int:
    from app.db import migrate

    db = _database(args)
    try:
        before, after = migrate.upgrade(db)
    finally:
        db.dispose()
    if before == after:
        print(f"{db.description}: schema at {after} (head), nothing to do")
    else:
        print(f"{db.description}: schema {before or 'none'} -> {after}")
    return 0


def _current(args: argparse.Namespace) -> int:
    from app.db import migrate

    db = _database(args)
    try:
        found = migrate.current(db)
    finally:
        db.dispose()
    state = "up to date" if found == migrate.head() else "needs `trafficcast db upgrade`"
    print(f"{db.description}: schema {found or 'none'}, this version's {migrate.head()} ({state})")
    return 0
