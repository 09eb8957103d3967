"""The record on a real PostgreSQL server (``tests/pg_server.py``, one server for this
module): the migrations build the models' schema there; ``mmbot paper`` (simulated market
and ``--replay``), ``mmbot backtest`` and ``mmbot report`` work on a
``postgresql+psycopg://`` URL and give the same figures as on SQLite (the default); fills
stay idempotent (PostgreSQL's ON CONFLICT DO NOTHING); a run whose process died is found
through ``run_processes``; a bad URL is one line without its password.

Each test uses a database of its own on the shared server."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from decimal import Decimal as D
from pathlib import Path

import pytest
from sqlalchemy import text

from bot.orders import Fill, Order, OrderState, Side
from bot.persistence import migrate
from bot.persistence.report import build_report
from bot.persistence.store import open_store
from pg_server import pg_server  # noqa: F401 - the fixture, reused below with module scope
from real_data import needs, require

ROOT = Path(__file__).resolve().parents[1]
HYPERLIQUID = "binance/hyperliquid/btcusd_20250126.gz"  # 26 s of real BTC order book and trades
WALL_CLOCK = ("started_ns", "ended_ns")  # report fields that are wall-clock times of the run

pg = pytest.fixture(scope="module", name="pg")(pg_server.__wrapped__)  # one server for the module
_names = itertools.count(1)


def mmbot(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=timeout)


def last_json(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture
def pgdb(pg) -> str:
    """A new, empty database on the module's server: its ``postgresql+psycopg://`` URL."""
    import psycopg

    name = f"rec{next(_names)}"
    with psycopg.connect(pg, autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    return "postgresql+psycopg://" + pg.split("://", 1)[1].rsplit("/", 1)[0] + f"/{name}"


def pg_rows(url: str, sql: str, **params) -> list[tuple]:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as con:
        return con.execute(sql, params).fetchall()


def same_figures(a: dict, b: dict) -> None:
    assert {k: v for k, v in a.items() if k not in WALL_CLOCK} == {k: v for k, v in b.items() if k not in WALL_CLOCK}


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    (raw,) = require(HYPERLIQUID)
    from bot.importers.hyperliquid import import_hyperliquid

    out = tmp_path_factory.mktemp("hl") / "rec"
    import_hyperliquid([raw], out)
    return out


def test_migrations_build_the_models_schema_on_postgresql(pgdb):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from bot.persistence.schema import Base

    r = mmbot("db", "upgrade", "--db", pgdb)
    assert r.returncode == 0, r.stderr
    assert "schema created at revision" in r.stdout
    st = open_store(pgdb)
    try:
        with st.engine.connect() as c:
            mc = MigrationContext.configure(c, opts={"compare_type": True, "version_table": migrate.VERSION_TABLE})
            assert compare_metadata(mc, Base.metadata) == []
    finally:
        st.close()
    assert pg_rows(pgdb, f"SELECT version_num FROM {migrate.VERSION_TABLE}") == [(migrate.HEAD,)]
    # row ids of the growing tables are 64-bit (a service runs for months)
    ids = dict(pg_rows(pgdb, "SELECT table_name, data_type FROM information_schema.columns "
                             "WHERE column_name = 'id' AND table_schema = 'public'"))
    assert ids == {"runs": "integer", "orders": "bigint", "order_events": "bigint", "fills": "bigint", "pnl_snapshots": "bigint",
                   "live_balance_checkpoints": "integer", "live_base_fees": "integer"}  # one row per checkpoint / base-fee fill
    r = mmbot("db", "upgrade", "--db", pgdb)
    assert r.returncode == 0 and "already at revision" in r.stdout


def test_paper_on_the_simulated_market_and_report_same_as_sqlite(pgdb, tmp_path):
    cfg = tmp_path / "fees.yaml"  # rebates: fees are exact decimal text with many digits
    cfg.write_text("paper:\n  maker_fee: -0.00025\n  A: 1.0\n")
    args = ("paper", "-c", cfg, "--speed", "0", "--duration", "20", "--seed", "3", "--json", "--no-live")
    with_password = pgdb.replace("://postgres@", "://postgres:hunter2@")  # the test server trusts; a password is ignored
    run = mmbot(*args, "--db", with_password)
    on_pg = last_json(run)
    assert "hunter2" not in run.stdout + run.stderr and on_pg["database"].startswith("postgresql+psycopg://postgres:***@")
    assert not pg_rows(pgdb, "SELECT id FROM runs WHERE config_json LIKE '%%hunter2%%'")
    on_lite = last_json(mmbot(*args, "--db", tmp_path / "lite.db"))
    assert on_pg["status"] == "completed" and on_pg["fills"] > 0
    assert on_pg["pnl"] == on_lite["pnl"] and on_pg["fills"] == on_lite["fills"]
    rep_pg = last_json(mmbot("report", "--db", pgdb, "--json"))
    same_figures(rep_pg, last_json(mmbot("report", "--db", tmp_path / "lite.db", "--json")))
    assert rep_pg["fills"] == on_pg["fills"]
    # what PostgreSQL holds, read without mmbot: exact decimals, the run closed
    fills = pg_rows(pgdb, "SELECT price, size, fee FROM fills WHERE run_id = %(r)s", r=rep_pg["run_id"])
    assert len(fills) == on_pg["fills"]
    assert sum(D(fee) for _, _, fee in fills) == sum(-D("0.00025") * D(p) * D(s) for p, s, _ in fills)
    assert pg_rows(pgdb, "SELECT status FROM runs") == [("completed",)]
    assert pg_rows(pgdb, "SELECT count(*) FROM run_processes") == [(1,)]


@needs(HYPERLIQUID)
def test_backtest_and_paper_replay_and_report_on_postgresql_same_as_sqlite(pgdb, recording, tmp_path):
    lite = tmp_path / "lite.db"
    for db in (pgdb, lite):
        bt = last_json(mmbot("backtest", "--data", recording, "--db", db, "--out", tmp_path / "rep", "--json", "--no-progress"))
        assert bt["status"] == "completed" and bt["run_id"] == 1
        rp = last_json(mmbot("paper", "--replay", recording, "--replay-speed", "0", "--db", db, "--json", "--no-live"))
        assert rp["status"] == "completed" and rp["run_id"] == 2
    for run_id, mode in ((1, "backtest"), (2, "paper")):
        rep_pg = last_json(mmbot("report", "--db", pgdb, "--run", run_id, "--json"))
        assert rep_pg["mode"] == mode and rep_pg["source"] == "hyperliquid recording"
        same_figures(rep_pg, last_json(mmbot("report", "--db", lite, "--run", run_id, "--json")))
    (n,) = pg_rows(pgdb, "SELECT count(*) FROM order_events WHERE run_id = 1")[0]
    assert n > 0
    html = mmbot("report", "--db", pgdb, "--run", 1, "--html", tmp_path / "html")
    assert html.returncode == 0, html.stderr
    assert (tmp_path / "html" / "report.html").exists()


DIES = """
import os, sys
from decimal import Decimal as D
from bot.orders import Order, OrderState, Side
from bot.persistence.store import open_store
st = open_store(sys.argv[1])
st.start_run("paper", "paper", "X/Y", {})
o = Order("X/Y", Side.BUY, D("99.5"), D("1"), client_id="dead1", created_ns=5, updated_ns=5)
st.record_order(o)
o.transition(OrderState.OPEN, 6)
st.record_order(o)
st.commit()
os._exit(0)  # gone without ending the run (as after SIGKILL)
"""


def test_dead_runs_and_idempotent_fills_on_postgresql(pgdb):
    r = subprocess.run([sys.executable, "-c", DIES, pgdb], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert build_report(pgdb, 1).status == "crashed"  # the report sees the process is gone

    st = open_store(pgdb)
    try:
        run_id = st.start_run("live", "binance", "X/Y", {})  # recovers run 1 first
        assert run_id == 2
        assert pg_rows(pgdb, "SELECT status FROM runs WHERE id = 1") == [("crashed",)]
        assert pg_rows(pgdb, "SELECT state, reason FROM orders WHERE client_id = 'dead1'") == [("canceled", "run crashed")]
        f = Fill("binance", "t1", "c1", "X/Y", Side.SELL, D("100.000000001"), D("0.00000001"), D("-1E-12"), "maker", 10, 100.0)
        assert st.record_fill(f) is True and st.record_fill(f) is False
        o = Order("X/Y", Side.SELL, D("100"), D("1"), client_id="c1", created_ns=1, updated_ns=1)
        o.transition(OrderState.REJECTED, 2, "x" * 500)  # an exchange's long message: cut, not a failed batch
        st.record_order(o)
        st.commit()
        paper_fill = Fill("paper", "p1", "c1", "X/Y", Side.SELL, D("100"), D("1"), D("0"), "maker", 11, 100.0)
        st.record_fill(paper_fill)
        st.commit()
        st._fill_keys.clear()  # forced in again: PostgreSQL's ON CONFLICT DO NOTHING keeps one row
        assert st.record_fill(paper_fill) is True
        st.end_run("completed", {})
    finally:
        st.close()
    assert pg_rows(pgdb, "SELECT price, size, fee FROM fills WHERE trade_id = 't1'") == [("100.000000001", "0.00000001", "-0.000000000001")]
    assert pg_rows(pgdb, "SELECT count(*) FROM fills WHERE trade_id = 'p1'") == [(1,)]
    (reason,) = pg_rows(pgdb, "SELECT reason FROM orders WHERE client_id = 'c1'")[0]
    assert len(reason) == 200 and reason.startswith("xxx")
    assert pg_rows(pgdb, "SELECT status FROM runs WHERE id = 2") == [("completed",)]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_postgresql_url_is_one_line_without_its_password():
    url = f"postgresql://mm:s3cret@127.0.0.1:{_closed_port()}/rec"
    for args in (("paper", "--speed", "0", "--duration", "5", "--no-live", "--db", url), ("report", "--db", url),
                 ("db", "upgrade", "--db", url)):
        r = mmbot(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert lines[0].startswith(f"mmbot: error: database postgresql://mm:***@127.0.0.1:") and "cannot be opened" in lines[0]
        assert "s3cret" not in r.stderr + r.stdout


def test_a_database_driver_mmbot_does_not_install_is_one_line():
    for args in (("report", "--db", "mysql://mm:s3cret@127.0.0.1/rec"), ("db", "upgrade", "--db", "mysql://mm:s3cret@127.0.0.1/rec")):
        r = mmbot(*args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "mysql://mm:***@127.0.0.1/rec" in r.stderr and "s3cret" not in r.stderr
