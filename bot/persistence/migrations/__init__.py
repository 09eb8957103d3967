"""Alembic migrations of mmbot's record (``env.py``, ``versions/``); run through
:mod:`bot.persistence.migrate` (``mmbot db upgrade``), never from a working directory."""
