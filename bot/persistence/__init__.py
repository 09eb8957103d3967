"""The record of every run: SQLAlchemy 2.x ORM on SQLite (WAL) by default, any URL accepted."""

from bot.persistence.store import Store, open_store

__all__ = ["Store", "open_store"]
