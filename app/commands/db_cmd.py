"""``trafficcast db upgrade|current``: the service database's schema (Alembic migrations)."""

from __future__ import annotations

import argparse

from trafficcast.app.db import Database, migrate
from trafficcast.app.settings import load_settings


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "db",
        help="upgrade or inspect the schema of the service's database",
        description=(
            "The service's database (observations and the live-accuracy record), picked from "
            "the same settings as the service's: --database-url, else $TRAFFICCAST_DATABASE_URL, "
            "else the SQLite file $TRAFFICCAST_OBSERVATIONS_DB (default "
            "trafficcast-observations.sqlite3). The service also upgrades at start-up unless "
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
        help="postgresql://user:password@host:5432/db or sqlite:///path "
        "(default: $TRAFFICCAST_DATABASE_URL)",
    )


def _database(args: argparse.Namespace) -> Database:
    given = {} if args.database_url is None else {"database_url": args.database_url}
    return Database.open(load_settings({"database_url": "--database-url"}, **given).database)


def _upgrade(args: argparse.Namespace) -> int:
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
    db = _database(args)
    try:
        found = migrate.current(db)
    finally:
        db.dispose()
    state = "up to date" if found == migrate.head() else "needs `trafficcast db upgrade`"
    print(f"{db.description}: schema {found or 'none'}, this version's {migrate.head()} ({state})")
    return 0
