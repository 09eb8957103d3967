"""Waiting on conditions in tests, never on fixed sleeps.

Every wait polls a predicate and fails with a message naming what it waited for, after a
generous ceiling (CI machines are shared and loaded; the ceiling is not a timing
assumption) or as soon as the watched subprocess exits first.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Callable

CEILING_S = 120.0


def wait_for(pred: Callable[[], object], what: str, proc: subprocess.Popen | None = None,
             timeout: float = CEILING_S) -> None:
    """Poll ``pred`` every 50 ms until it is true; AssertionError after ``timeout`` seconds or
    when ``proc`` exits first (its stderr in the message)."""
    end = time.monotonic() + timeout
    while not pred():
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr is not None else ""
            raise AssertionError(f"process exited ({proc.returncode}) before {what}: {err}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def db_rows(db: Path | str, sql: str) -> list[tuple]:
    """Rows of ``sql`` on the SQLite file ``db``; [] while the database or table does not exist yet."""
    try:
        con = sqlite3.connect(db, timeout=30)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()
    except sqlite3.OperationalError:  # not created yet
        return []


def db_count(db: Path | str, sql: str) -> int:
    """The single number ``sql`` (a ``select count(*) ...``) returns; 0 before the database exists."""
    rows = db_rows(db, sql)
    return rows[0][0] if rows else 0
