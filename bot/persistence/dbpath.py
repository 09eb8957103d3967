"""Checks on a database path before SQLAlchemy touches it, so that a path the user got wrong
ends as one line naming the path and the problem (not a driver traceback).

``db`` is what the user typed: a file path or an SQLAlchemy URL. Only SQLite files are
checked here; other URLs are left to the driver (the caller turns its error into one line).
"""

from __future__ import annotations

from pathlib import Path

from bot.errors import ConfigError

SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 database file


def engine_url(db: str) -> str:
    """The SQLAlchemy URL for what the user typed: a bare path is a SQLite file;
    ``postgresql://`` and ``postgres://`` use psycopg (version 3, installed with mmbot; the
    SQLAlchemy 2.0 default would be psycopg2, which is not)."""
    if "://" not in db:
        return f"sqlite:///{db}"
    for scheme in ("postgresql://", "postgres://"):
        if db.startswith(scheme):
            return "postgresql+psycopg://" + db[len(scheme):]
    return db


def redact(db: str) -> str:
    """``db`` without its password (``postgresql://user:***@host/db``), for messages."""
    if "://" in db and "@" in db:
        scheme, rest = db.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        if ":" in cred:
            return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"
    return db


def sqlite_file(db: str) -> Path | None:
    """The file of a SQLite database given as a path or ``sqlite:///path``; None for
    in-memory databases and other drivers."""
    url = db if "://" in db else f"sqlite:///{db}"
    if not url.startswith("sqlite:///") or url.startswith("sqlite:///:memory:"):
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    return Path(path).expanduser() if path else None


def check_database(db: str, *, create: bool) -> None:
    """Raise ConfigError naming ``db`` if it cannot be an mmbot SQLite database.

    ``create``: the caller will create the file (and its folder) if missing (paper, backtest);
    otherwise the file must exist (report).
    Checks: not a directory; every existing parent is a directory; an existing file starts
    with the SQLite header (an empty file is a valid empty database); it can be read."""
    p = sqlite_file(db)
    if p is None:
        return
    if p.is_dir():
        raise ConfigError(f"database {db}: is a directory, not a database file")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"database {db}: {parent} is a file, not a folder")
            break
    if not p.exists():
        if not create:
            raise ConfigError(f"database {db} does not exist")
        return
    try:
        with p.open("rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as e:
        raise ConfigError(f"database {db}: cannot be read ({e.strerror})") from None
    if head and head != SQLITE_MAGIC:
        raise ConfigError(f"database {db}: not an SQLite database file")


def open_error(db: str, e: Exception) -> ConfigError:
    """One line for a driver error while opening ``db`` (``e`` a SQLAlchemy or sqlite3 error)."""
    orig = getattr(e, "orig", None) or e
    msg = " ".join(str(orig).split()) or type(orig).__name__
    return ConfigError(f"database {redact(db)}: cannot be opened ({msg})")
