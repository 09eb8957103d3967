"""End to end: the engine on the simulated market writes a real SQLite file that
`mmbot report` reads; clean shutdown on SIGINT; the paper exchange's rules."""

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal as D
from pathlib import Path

import pytest

from bot.app import build_paper_engine
from bot.config import Config, with_overrides
from bot.market import MarketInfo
from bot.market_data.base import MarketEvent
from bot.orderbook import OrderBook
from bot.orders import Order, OrderState, Side
from bot.persistence.report import build_report
from bot.persistence.store import open_store
from paper_trading.fill_models import IntensityFillModel
from paper_trading.paper_exchange import PaperExchange
from waiting import db_count

ROOT = Path(__file__).resolve().parents[1]


def run_paper(db, **over):
    cfg = with_overrides(Config(), **{"database.url": str(db), "sim.speed": 0.0, **over})
    store = open_store(cfg.database.url)
    try:
        return asyncio.run(build_paper_engine(cfg, store, handle_signals=False).run())
    finally:
        store.close()


def test_engine_run_writes_database_that_report_reads(tmp_path):
    db = tmp_path / "e2e.db"
    summary = run_paper(db)  # the defaults: 600 s of the AS market, the LSTM forecaster
    assert summary["status"] == "completed" and summary["events"] == 12000
    assert summary["forecaster"]["rows"] >= 590 and summary["forecaster"]["warmed_up"]
    assert summary["fills"] > 10  # the AS market at these settings fills dozens of times
    r = build_report(str(db))
    assert r.fills == summary["fills"] and r.status == "completed"
    assert r.total_pnl == pytest.approx(summary["pnl"], abs=1e-6)
    assert r.total_pnl == pytest.approx(r.spread_capture + r.inventory_pnl - r.fees)
    assert r.final_inventory == summary["inventory"]
    con = sqlite3.connect(db)
    # no order is left working at the end of a run, and every order has its transitions
    assert con.execute("select count(*) from orders where state in ('new','open','partially_filled')").fetchone()[0] == 0
    n_orders, n_events = con.execute("select count(*), (select count(*) from order_events) from orders").fetchone()
    assert n_orders > 0 and n_events >= 2 * n_orders
    # fills reference real orders, and inventory from fills equals the final snapshot
    assert con.execute("select count(*) from fills f left join orders o on o.client_id=f.client_id where o.id is null").fetchone()[0] == 0
    last_inv = con.execute("select inventory from pnl_snapshots order by ts_ns desc, id desc limit 1").fetchone()[0]
    assert D(last_inv) == D(str(summary["inventory"]))


def test_same_seed_same_result(tmp_path):
    a = run_paper(tmp_path / "a.db", **{"forecaster.model": "none"})
    b = run_paper(tmp_path / "b.db", **{"forecaster.model": "none"})
    c = run_paper(tmp_path / "c.db", **{"sim.seed": 8, "forecaster.model": "none"})
    assert (a["fills"], a["pnl"]) == (b["fills"], b["pnl"])
    assert (a["fills"], a["pnl"]) != (c["fills"], c["pnl"])


CID = "substr(client_id, instr(substr(client_id, 3), '-') + 3)"  # the run's id less the database prefix


def _record(db, relative: bool):
    """Orders, order events, fills and snapshots of the run (times relative to the run's first
    snapshot when ``relative``); the per-database client-id prefix and the random paper trade
    ids are left out (they differ by design); everything else must be identical."""
    con = sqlite3.connect(db)
    t0 = con.execute("select min(ts_ns) from pnl_snapshots").fetchone()[0] if relative else 0
    return (
        con.execute(f"select {CID}, side, price, size, filled, state, level, created_ns - ?, updated_ns - ?, reason "
                    "from orders order by id", (t0, t0)).fetchall(),
        con.execute(f"select {CID}, ts_ns - ?, state, filled from order_events order by id", (t0,)).fetchall(),
        con.execute(f"select {CID}, side, price, size, fee, ts_ns - ?, mid from fills order by id", (t0,)).fetchall(),
        con.execute("select ts_ns - ?, mid, inventory, cash, mtm, pnl from pnl_snapshots order by id", (t0,)).fetchall(),
    )


def test_seeded_run_with_forecaster_is_reproducible_to_the_bit(tmp_path):
    """The quickstart's setup (the LSTM forecaster on the simulated market): two runs with the
    same seed give identical orders, fills and snapshots. The forecaster samples on a grid
    aligned to the epoch; the simulated clock used to start at the wall clock, so every run
    saw another grid phase (six quickstart runs gave 87 to 91 fills)."""
    over = {"duration_s": 400.0}  # past the forecaster's 300 s warm-up
    a = run_paper(tmp_path / "a.db", **over)
    b = run_paper(tmp_path / "b.db", **over)
    assert a["forecaster"]["warmed_up"] and a["fills"] > 0
    for relative in (True, False):  # the same run relative to its start, and to the bit
        ra, rb = _record(tmp_path / "a.db", relative), _record(tmp_path / "b.db", relative)
        assert len(ra[0]) > 0 and len(ra[2]) == a["fills"]
        for name, x, y in zip(("orders", "order events", "fills", "snapshots"), ra, rb):
            assert x == y, (name, "relative" if relative else "absolute")
    assert {k: v for k, v in a.items() if k != "run_id"} == {k: v for k, v in b.items() if k != "run_id"}


def test_cli_paper_then_report(tmp_path):
    db = tmp_path / "cli.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "bot.cli", "paper", "--speed", "0", "--duration", "20", "--db", str(db), "--json"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    rep = subprocess.run([sys.executable, "-m", "bot.cli", "report", "--db", str(db), "--json"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert rep.returncode == 0, rep.stderr
    r = json.loads(rep.stdout)
    assert r["fills"] == summary["fills"] and r["total_pnl"] == pytest.approx(summary["pnl"], abs=1e-6)
    human = subprocess.run([sys.executable, "-m", "bot.cli", "report", "--db", str(db)], capture_output=True, text=True, cwd=ROOT, env=env)
    assert "spread_capture" in human.stdout and "inventory_pnl" in human.stdout


def test_sigint_cancels_orders_and_marks_run_interrupted(tmp_path):
    db = tmp_path / "sig.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "bot.cli", "paper", "--speed", "1", "--duration", "600", "--db", str(db), "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    end = time.monotonic() + 120  # a ceiling for loaded machines, not a timing assumption
    while not _count(db, "select count(*) from orders"):  # wait until the run has placed orders
        assert p.poll() is None, p.stderr.read()
        assert time.monotonic() < end, "timed out waiting for the run's first orders"
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err  # 128 + SIGINT, as shells expect
    assert "Traceback" not in err
    if out.strip():  # the summary (the database below is the record either way)
        assert json.loads(out)["status"] == "interrupted"
    con = sqlite3.connect(db)
    assert con.execute("select status, ended_ns is not null from runs").fetchone() == ("interrupted", 1)
    assert con.execute("select count(*) from orders where state in ('new','open','partially_filled')").fetchone()[0] == 0
    assert con.execute("select count(*) from orders where state='canceled'").fetchone()[0] > 0


_count = db_count


def _book(bid, ask):
    ob = OrderBook("SIM/USD")
    ob.apply_snapshot([[bid, 1.0]], [[ask, 1.0]])
    return ob


async def test_paper_exchange_rules_and_fills():
    mkt = MarketInfo("SIM/USD", "SIM", "USD", D("0.01"), D("1"), maker_fee=-0.0001)
    ex = PaperExchange(IntensityFillModel(A=1e9, k=1.5, seed=1))  # A huge: every resting order fills
    await ex.start(mkt)
    await ex.on_market(MarketEvent(_book(99.99, 100.01), 1, 1, dt_s=0.0))
    bad_tick = await ex.place(Order("SIM/USD", Side.BUY, D("99.995"), D("1")), 1)
    assert bad_tick.state is OrderState.REJECTED and "tick" in bad_tick.reason
    cross = await ex.place(Order("SIM/USD", Side.BUY, D("100.01"), D("1")), 1)
    assert cross.state is OrderState.REJECTED and "cross" in cross.reason
    o = Order("SIM/USD", Side.BUY, D("99.50"), D("2"))
    assert (await ex.place(o, 1)).state is OrderState.OPEN
    assert len(await ex.open_orders("SIM/USD")) == 1
    await ex.on_market(MarketEvent(_book(99.99, 100.01), 2, 2, fair=100.0, dt_s=0.05))
    f = ex.fills.get_nowait()
    assert f.side is Side.BUY and f.price == D("99.50") and f.size == D("2") and f.liquidity == "maker"
    assert f.fee == D("-0.0001") * D("99.50") * D("2")  # a rebate
    bal = await ex.balances()
    assert bal["SIM"] == D("2") and bal["USD"] == -(D("199.00") + f.fee)
    assert await ex.open_orders("SIM/USD") == []


async def test_intensity_fill_probability_matches_model():
    """Fill frequency over many steps equals A*exp(-k*delta)*dt (binomial tolerance)."""
    model = IntensityFillModel(A=140.0, k=1.5, seed=3)
    o = Order("SIM/USD", Side.SELL, D("100.50"), D("1"))
    ev = MarketEvent(_book(99.99, 100.01), 0, 0, fair=100.0, dt_s=0.005)
    n = 20000
    hits = sum(len(model.match(ev, [o])) for _ in range(n))
    p = 140.0 * 2.718281828459045 ** (-1.5 * 0.5) * 0.005
    assert abs(hits / n - p) < 4 * (p * (1 - p) / n) ** 0.5
