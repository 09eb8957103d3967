"""Alembic manages the record's schema: the history the code names is the one shipped; a
database written before Alembic is upgraded (``mmbot db upgrade``) or adopted by a start
without losing a row and reports the same figures; a database older or newer than the code
is refused at start with one line and exit code 2; first starts racing on one new
database are serialised.

Fixtures (``tests/fixtures``), SQL dumps (``sqlite3`` ``iterdump``, gzip) of databases
written by the pre-Alembic code itself (``git archive <commit>``, then ``mmbot paper`` of
that tree on the simulated market with ``paper.A: 1.0`` and ``maker_fee: -0.00025``):

* ``record_d7289a2.sql.gz``: commit d7289a2, two runs (seeds 5 and 6, 60 s): 73 fills,
  1346 orders, some prices in exponent form (``str(Decimal)`` of that code); no
  ``mmbot_meta`` nor ``run_processes`` tables yet.
* ``record_867d9b4.sql.gz``: commit 867d9b4 (the last before Alembic), one run (seed 8,
  30 s) with every table of the first migration.
* ``record_reports_0001.json``: what ``mmbot report --json`` said for each run of those
  databases (main at 5e48404, the last code whose schema was revision 0001 and so read
  them unchanged): the figures an upgraded database must still report. Code with newer
  revisions refuses to read a database before ``mmbot db upgrade``.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from bot.errors import ConfigError
from bot.persistence import migrate
from bot.persistence.report import build_report
from bot.persistence.schema import Base
from bot.persistence.store import make_engine, open_store

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).with_name("fixtures")
RECORD_TABLES = ("runs", "orders", "order_events", "fills", "pnl_snapshots")


def mmbot(*args, cwd=ROOT, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=timeout)


def load_fixture(name: str, path: Path) -> Path:
    con = sqlite3.connect(path)
    con.executescript(gzip.decompress((FIXTURES / name).read_bytes()).decode())
    con.close()
    return path


def rows(db: Path, tables=RECORD_TABLES) -> dict[str, list[tuple]]:
    con = sqlite3.connect(db)
    try:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in tables}
    finally:
        con.close()


def tables(db: Path) -> set[str]:
    con = sqlite3.connect(db)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        con.close()


def version(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute(f"SELECT version_num FROM {migrate.VERSION_TABLE}")]
    finally:
        con.close()


def schema_diff(engine) -> list:
    """Differences between the database's schema and the code's models (Alembic's compare)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with engine.connect() as c:
        mc = MigrationContext.configure(c, opts={"compare_type": True, "version_table": migrate.VERSION_TABLE})
        return compare_metadata(mc, Base.metadata)


def report_json(db: Path, run_id: int, cwd: Path) -> dict:
    r = mmbot("report", "--db", db, "--run", run_id, "--json", cwd=cwd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def figures_0001(fixture: str) -> dict[int, dict]:
    """The report figures of a fixture's runs as the revision-0001 code gave them."""
    saved = json.loads((FIXTURES / "record_reports_0001.json").read_text())[fixture]
    return {int(i): v for i, v in saved.items()}


def same_figures(report: dict, figures: dict) -> None:
    for k, v in figures.items():
        assert report[k] == pytest.approx(v, rel=1e-12, abs=1e-9), (k, report[k], v)


def old_columns(db: Path, before: dict[str, list[tuple]]) -> dict[str, list[tuple]]:
    """Rows of the record tables cut to the columns they had in ``before`` (newer
    revisions only add columns, at the end)."""
    now = rows(db)
    width = {t: len(r[0]) if r else 0 for t, r in before.items()}
    return {t: [row[:width[t]] if width[t] else row for row in v] for t, v in now.items()}


def test_the_shipped_history_is_the_one_the_code_names_and_builds_the_models_schema(tmp_path):
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(migrate.MIGRATIONS_DIR))
    walked = [s.revision for s in script.walk_revisions()][::-1]  # oldest first
    assert walked == list(migrate.REVISIONS)
    assert script.get_current_head() == migrate.HEAD
    st = open_store(str(tmp_path / "new.db"))  # a new database: the migrations make it
    try:
        assert schema_diff(st.engine) == []
    finally:
        st.close()
    assert version(tmp_path / "new.db") == [migrate.HEAD]


@pytest.mark.parametrize("fixture, runs", [("record_d7289a2.sql.gz", 2), ("record_867d9b4.sql.gz", 1)])
def test_a_pre_alembic_database_upgrades_without_loss_and_reports_the_same(tmp_path, fixture, runs):
    db = load_fixture(fixture, tmp_path / "old.db")
    assert migrate.VERSION_TABLE not in tables(db)
    before_rows = rows(db)
    assert len(before_rows["runs"]) == runs and before_rows["fills"]
    work = tmp_path / "elsewhere"  # not the repository: the migrations come with the package
    work.mkdir()
    before = figures_0001(fixture)
    assert sorted(before) == list(range(1, runs + 1)) and all(b["fills"] > 0 for b in before.values())
    if migrate.HEAD != migrate.BASELINE:  # newer than the first revision: read only once upgraded
        r = mmbot("report", "--db", db, "--json", cwd=work)
        assert r.returncode == 2 and f"run `mmbot db upgrade --db {db}` first" in r.stderr

    r = mmbot("db", "upgrade", "--db", db, cwd=work)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"database {db}: schema upgraded from pre-alembic to revision {migrate.HEAD}"
    assert version(db) == [migrate.HEAD]
    assert old_columns(db, before_rows) == before_rows  # every row of every table, column by column
    assert {"mmbot_meta", "run_processes"} <= tables(db)
    eng = make_engine(str(db))
    try:
        assert schema_diff(eng) == []  # the old tables are the first revision's
    finally:
        eng.dispose()
    after = {i: report_json(db, i, work) for i in range(1, runs + 1)}
    for i in after:
        same_figures(after[i], before[i])

    again = mmbot("db", "upgrade", "--db", db, cwd=work)
    assert again.returncode == 0 and "already at revision" in again.stdout

    # the upgraded database takes new runs
    new = mmbot("paper", "--speed", "0", "--duration", "5", "--seed", "3", "--db", db, "--json", "--no-live", cwd=work)
    assert new.returncode == 0, new.stderr
    assert json.loads(new.stdout.strip().splitlines()[-1])["run_id"] == runs + 1
    assert {t: v for t, v in rows(db).items() if t != "runs"} != {t: v for t, v in before_rows.items() if t != "runs"}
    assert {i: report_json(db, i, work) for i in range(1, runs + 1)} == after


def test_a_start_adopts_a_pre_alembic_database_as_the_first_revision(tmp_path):
    """A start stamps a database written before Alembic as the first revision (creating
    only the tables it lacks); with newer revisions shipped it then refuses like any older
    database, until `mmbot db upgrade`."""
    db = load_fixture("record_d7289a2.sql.gz", tmp_path / "old.db")
    before_rows = rows(db)
    if migrate.HEAD != migrate.BASELINE:
        with pytest.raises(ConfigError) as e:
            open_store(str(db))  # what `mmbot paper` / `backtest` do first
        assert str(e.value).endswith(f"run `mmbot db upgrade --db {db}` first")
        assert version(db) == [migrate.BASELINE]
        assert rows(db) == before_rows
        eng = make_engine(str(db))
        try:
            migrate.upgrade(eng, str(db))
        finally:
            eng.dispose()
    st = open_store(str(db))
    try:
        run_id = st.start_run("paper", "paper", "SIM/USD", {})
        st.end_run("completed", {})
    finally:
        st.close()
    assert run_id == 3
    assert version(db) == [migrate.HEAD]
    after_rows = old_columns(db, before_rows)
    assert after_rows["runs"][:2] == before_rows["runs"]
    assert {t: after_rows[t] for t in RECORD_TABLES if t != "runs"} == {t: before_rows[t] for t in RECORD_TABLES if t != "runs"}
    same_figures(build_report(str(db), 2).as_dict(), figures_0001("record_d7289a2.sql.gz")[2])


def test_a_database_newer_than_the_code_is_refused_by_every_command(tmp_path):
    db = tmp_path / "newer.db"
    open_store(str(db)).close()
    con = sqlite3.connect(db)
    con.execute(f"UPDATE {migrate.VERSION_TABLE} SET version_num = 'f00dcafe'")
    con.commit()
    con.close()
    for args in (("paper", "--speed", "0", "--duration", "5", "--no-live", "--db", db),
                 ("report", "--db", db),
                 ("db", "upgrade", "--db", db)):
        r = mmbot(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert lines[0] == (f"mmbot: error: database {db}: its schema (revision f00dcafe) is newer than this mmbot knows "
                            f"(up to {migrate.HEAD}); upgrade mmbot or use another database")
    assert version(db) == ["f00dcafe"]
    assert rows(db)["runs"] == []  # the refused start wrote nothing


NEXT = "0999"  # a revision after the newest shipped one (whatever its id)
SECOND = f'''"""A later revision (test): runs.note, additive.

Revision ID: {NEXT}
Revises: {migrate.HEAD}
"""
import sqlalchemy as sa
from alembic import op

revision = "{NEXT}"
down_revision = "{migrate.HEAD}"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("runs", sa.Column("note", sa.String(100), nullable=True))


def downgrade():
    op.drop_column("runs", "note")
'''


def test_a_database_older_than_the_code_is_refused_until_db_upgrade(tmp_path, monkeypatch):
    """The code is given a second (real) migration; a database at the first is refused by a
    start and by the report, then upgraded by migrate.upgrade with its rows intact."""
    db = tmp_path / "older.db"
    st = open_store(str(db))
    st.start_run("paper", "paper", "X/Y", {"a": 1})
    st.end_run("completed", {"stop_reason": "done"})
    st.close()
    before_rows = rows(db)

    scripts = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / f"{NEXT}_note.py").write_text(SECOND)
    head = migrate.HEAD
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", scripts)
    monkeypatch.setattr(migrate, "REVISIONS", migrate.REVISIONS + (NEXT,))
    monkeypatch.setattr(migrate, "HEAD", NEXT)

    hint = (f"database {db}: its schema (revision {head}) is older than this mmbot's ({NEXT}); "
            f"run `mmbot db upgrade --db {db}` first")
    with pytest.raises(ConfigError) as e:
        open_store(str(db))
    assert str(e.value) == hint
    with pytest.raises(ConfigError) as e:
        build_report(str(db))
    assert str(e.value) == hint
    assert version(db) == [head]

    eng = make_engine(str(db))
    try:
        assert migrate.upgrade(eng, str(db)) == (head, NEXT)
        with eng.connect() as c:
            assert c.execute(text("SELECT note FROM runs")).all() == [(None,)]
    finally:
        eng.dispose()
    assert version(db) == [NEXT]
    after = rows(db)
    assert [r[:-1] for r in after["runs"]] == before_rows["runs"]  # the new column is last
    assert {t: after[t] for t in RECORD_TABLES if t != "runs"} == {t: before_rows[t] for t in RECORD_TABLES if t != "runs"}
    open_store(str(db)).close()  # now current: accepted


STARTER = """
import sys
from bot.persistence.store import open_store
st = open_store(sys.argv[1])
st.start_run("paper", "paper", "X/Y", {})
st.end_run("completed", {})
st.close()
"""


def test_first_starts_racing_on_a_new_database_all_succeed_with_one_schema(tmp_path):
    db = tmp_path / "race.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", STARTER, str(db)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert version(db) == [migrate.HEAD]
    eng = make_engine(str(db))
    try:
        with eng.connect() as c:
            assert [r[0] for r in c.execute(text("SELECT status FROM runs"))] == ["completed"] * 4
    finally:
        eng.dispose()


def test_db_upgrade_refuses_a_missing_file_and_a_missing_command(tmp_path):
    r = mmbot("db", "upgrade", "--db", tmp_path / "typo.db")
    assert r.returncode == 2 and r.stderr.strip() == f"mmbot: error: database {tmp_path / 'typo.db'} does not exist"
    assert not (tmp_path / "typo.db").exists()
