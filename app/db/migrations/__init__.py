"""Alembic's environment and the schema's versions (``versions/``); run by ``trafficcast.app.db.migrate``."""
