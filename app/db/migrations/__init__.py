"""Alembic's environment and the schema's versions (``versions/``); run by ``app.db.migrate``."""
