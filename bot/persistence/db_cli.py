"""``mmbot db``: the record's database schema (Alembic migrations, see
:mod:`bot.persistence.migrate`). Every failure is one line naming the database, exit 2."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

db_app = typer.Typer(no_args_is_help=True, help="The record's database: schema migrations (Alembic).")

DEFAULT_CONFIG = Path("config/paper.yaml")


@db_app.command("upgrade")
def upgrade_cmd(
    db: Optional[str] = typer.Option(None, "--db", help="database file or SQLAlchemy URL (default: database.url of the config)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config whose database.url to upgrade (default: config/paper.yaml if present)"),
) -> None:
    """Upgrade a database's schema to this mmbot's (a database written before migrations came in is adopted)."""
    from sqlalchemy.exc import SQLAlchemyError

    from bot.persistence.dbpath import check_database, open_error, redact
    from bot.persistence.migrate import upgrade
    from bot.persistence.store import make_engine

    if db is None:
        from bot.config import load_config

        if config is None and DEFAULT_CONFIG.exists():
            config = DEFAULT_CONFIG
        db = load_config(config).database.url
    check_database(db, create=False)  # a SQLite file must exist: a typo must not create an empty database
    label = redact(db)
    eng = make_engine(db)
    try:
        before, after = upgrade(eng, label)
    except SQLAlchemyError as e:
        raise open_error(db, e) from None
    finally:
        eng.dispose()
    if before == after:
        print(f"database {label}: schema already at revision {after}")
    elif before is None:
        print(f"database {label}: schema created at revision {after}")
    else:
        print(f"database {label}: schema upgraded from {before} to revision {after}")
