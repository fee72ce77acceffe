"""Alembic's environment: migrations run on the connection ``trafficcast.app.db.migrate`` hands over
(``config.attributes["connection"]``), online only; the URL never passes through Alembic's
config file, so a password with ``%`` in it needs no escaping."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
