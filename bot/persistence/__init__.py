"""The record of every run: SQLAlchemy 2.x on SQLite (WAL) by default, or PostgreSQL
(``postgresql+psycopg://``); the schema is managed by Alembic (:mod:`bot.persistence.migrate`,
``docs/database.md``)."""

from bot.persistence.store import Store, open_store

__all__ = ["Store", "open_store"]
