"""Schema versions of the record, managed by Alembic (``bot/persistence/migrations``).

The revision a database is at lives in the table ``mmbot_alembic_version`` (not Alembic's
default ``alembic_version``, so that a database shared with an Optuna study -- which keeps
its own Alembic revisions -- is never mistaken for a newer mmbot schema).

States of a database (:func:`schema_state`):

* ``empty``: no mmbot table -- a new database; every start creates the schema by running
  the migrations (SQLite is the default; PostgreSQL the same way).
* ``legacy``: mmbot tables but no version table -- written by mmbot before Alembic (any
  version up to the first migration). It counts as the first revision (``BASELINE``): the
  first migration creates only the tables it lacks (``mmbot_meta`` and ``run_processes``
  came late) and stamps it. A start does that on its own; when newer migrations exist,
  the start then refuses as for any older database.
* a revision: equal to :data:`HEAD` (the newest migration this code ships) is ready;
  an older one is refused at start (``mmbot db upgrade`` upgrades it); one this code does
  not know is newer than the code and is refused.

Two processes that start together on one new database are serialised: SQLite by
``BEGIN IMMEDIATE`` (the second waits for the first's write lock), PostgreSQL by a
transaction-level advisory lock. Migrations run inside that one transaction (both
databases have transactional DDL), so a failed migration leaves nothing half done.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from bot.errors import ConfigError

VERSION_TABLE = "mmbot_alembic_version"
#: every revision in ``migrations/versions``, oldest first (a test checks it against Alembic)
REVISIONS = ("0001", "0002", "0003_sessions")
BASELINE = REVISIONS[0]  # what a database written before Alembic counts as
HEAD = REVISIONS[-1]
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
MMBOT_TABLES = ("runs", "orders", "order_events", "fills", "pnl_snapshots", "mmbot_meta", "run_processes")
_PG_LOCK_KEY = 0x6D6D626F74  # "mmbot": pg_advisory_xact_lock key while checking / migrating


def schema_state(conn: Connection) -> tuple[str, str | None]:
    """(``"empty"`` | ``"legacy"`` | ``"versioned"``, revision or None); read only."""
    tables = set(inspect(conn).get_table_names())
    if VERSION_TABLE in tables:
        revs = [r[0] for r in conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))]
        if len(revs) == 1:
            return "versioned", revs[0]
        if not revs:  # stamped away (alembic downgrade base): nothing of the schema is claimed
            return ("legacy", None) if tables & set(MMBOT_TABLES) else ("empty", None)
        return "versioned", "+".join(sorted(revs))  # several heads: not a history this code has
    if tables & set(MMBOT_TABLES):
        return "legacy", None
    return "empty", None


def _refusal(label: str, rev: str) -> ConfigError | None:
    """The one-line refusal for a database at ``rev``, or None when ``rev`` is HEAD."""
    if rev == HEAD:
        return None
    if rev in REVISIONS:
        return ConfigError(f"database {label}: its schema (revision {rev}) is older than this mmbot's ({HEAD}); "
                           f"run `mmbot db upgrade --db {label}` first")
    return ConfigError(f"database {label}: its schema (revision {rev}) is newer than this mmbot knows "
                       f"(up to {HEAD}); upgrade mmbot or use another database")


def check_readable(conn: Connection, label: str) -> None:
    """For readers (``mmbot report``): refuse a database older or newer than the code; a
    database written before Alembic reads as the first revision (nothing is written)."""
    state, rev = schema_state(conn)
    if state == "legacy":
        rev = BASELINE
    if state != "empty":
        err = _refusal(label, rev)  # type: ignore[arg-type]
        if err is not None:
            raise err


def _locked(conn: Connection) -> None:
    """Start the connection's transaction holding the database's migration lock."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})


def _alembic_config(conn: Connection):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = conn
    return cfg


def _upgrade(conn: Connection, target: str) -> None:
    """Run the migrations up to ``target`` on ``conn`` (inside the caller's transaction)."""
    from alembic import command

    command.upgrade(_alembic_config(conn), target)


def prepare(engine: Engine, label: str) -> str:
    """At the start of a run: make a new database, adopt one written before Alembic, and
    refuse one older or newer than the code (ConfigError naming ``label``). Returns the
    state found (``empty``, ``legacy`` or ``versioned``)."""
    with engine.connect() as conn:
        state, rev = schema_state(conn)  # the usual case, a versioned database, takes no lock
        conn.rollback()
        if state != "versioned":
            _locked(conn)
            state, rev = schema_state(conn)  # again, under the lock: another start may have made it
        if state == "empty":
            _upgrade(conn, HEAD)
            rev = HEAD
        elif state == "legacy":
            _upgrade(conn, BASELINE)
            rev = BASELINE
        conn.commit()
    err = _refusal(label, rev)  # type: ignore[arg-type]
    if err is not None:
        raise err
    return state


def upgrade(engine: Engine, label: str) -> tuple[str | None, str]:
    """``mmbot db upgrade``: bring the database to HEAD; returns (revision before -- None
    for a new database, ``"pre-alembic"`` for one written before Alembic --, HEAD).
    A database newer than the code is refused."""
    with engine.connect() as conn:
        _locked(conn)
        state, rev = schema_state(conn)
        before = {"empty": None, "legacy": "pre-alembic"}.get(state, rev)
        if state == "versioned" and rev not in REVISIONS:
            conn.rollback()
            raise _refusal(label, rev)  # type: ignore[misc, arg-type]
        if rev != HEAD:
            _upgrade(conn, HEAD)
        conn.commit()
    return before, HEAD
