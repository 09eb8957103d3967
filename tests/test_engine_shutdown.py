"""Signals at full speed and a shutdown that always closes the run.

* SIGINT reaches a run that never waits for its feed (``--speed 0``, a backtest's replay):
  the engine yields to the event loop, so the signal handler runs and the run ends
  ``interrupted`` with its orders closed.
* An exception of any type in a shutdown step (cancel-all, the final snapshot, the final
  commit) still leaves the run with its final status, no order working in the database,
  and the original error raised.
"""

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from decimal import Decimal as D
from pathlib import Path

import pytest

from bot.app import build_paper_engine
from bot.config import Config, with_overrides
from bot.engine import Engine
from bot.inventory import Inventory
from bot.persistence.store import open_store
from paper_trading.fees import MakerTakerFees
from paper_trading.fill_models import IntensityFillModel
from paper_trading.paper_exchange import PaperExchange
from paper_trading.sim_market import SimulatedMarket
from strategies.market_maker import build_strategy
from waiting import db_count, wait_for

ROOT = Path(__file__).resolve().parents[1]
HL_CAPTURE = ROOT.parent / "shared" / "data" / "binance" / "hyperliquid" / "btcusd_20250126.gz"
WORKING = "('new','open','partially_filled')"


def test_sigint_at_speed_0_stops_the_run(tmp_path):
    """`mmbot paper --speed 0` over a simulated day that cannot end within the test: only the
    signal can stop it (before the fix the loop never yielded and SIGINT was ignored)."""
    db = tmp_path / "fast.db"
    p = subprocess.Popen([sys.executable, "-m", "bot.cli", "paper", "--speed", "0", "--duration", "10000000", "--db", str(db),
                          "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_for(lambda: db_count(db, "select count(*) from orders") > 0, "the run to place orders", proc=p)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert "Traceback" not in err, err
    assert p.returncode == 130, err  # 128 + SIGINT
    con = sqlite3.connect(db)
    assert con.execute("select status, ended_ns is not null from runs").fetchone() == ("interrupted", 1)
    assert con.execute(f"select count(*) from orders where state in {WORKING}").fetchone()[0] == 0
    summary = json.loads(con.execute("select summary_json from runs").fetchone()[0])
    assert summary["stop_reason"] == "SIGINT" and summary["events"] < 10000000 / 0.05


@pytest.mark.skipif(not HL_CAPTURE.exists(), reason=f"real market data not found at {HL_CAPTURE}")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_a_replay_at_full_speed(tmp_path, sig):
    """The backtest path (replay at speed 0) with the engine's own signal handlers: the
    signal is sent by the process to itself at the 20th decision; the replay stops soon
    after instead of running to the end of the data."""
    from bot.importers.hyperliquid import import_hyperliquid
    from paper_trading.backtest import build_replay_engine, load_recording

    rec = tmp_path / "hl"
    import_hyperliquid([HL_CAPTURE], rec)
    cfg = with_overrides(Config(), **{"forecaster.model": "none", "strategy.controls.order_size": 0.001})
    count_store = open_store(str(tmp_path / "count.db"))
    full = asyncio.run(_count_steps(build_replay_engine(rec, cfg, count_store, mode="backtest", speed=0.0,
                                                        events_meta=load_recording(rec))[1]))
    count_store.close()

    def tick(engine):
        if engine.state.events == 20:
            os.kill(os.getpid(), sig)

    store = open_store(str(tmp_path / "bt.db"))
    try:
        engine, _ = build_replay_engine(rec, cfg, store, mode="backtest", speed=0.0, on_tick=tick, events_meta=load_recording(rec))
        summary = asyncio.run(engine.run())
    finally:
        store.close()
    assert summary["status"] == "interrupted" and summary["stop_reason"] == sig.name
    assert 20 <= summary["events"] < full
    con = sqlite3.connect(tmp_path / "bt.db")
    assert con.execute("select status from runs").fetchone() == ("interrupted",)
    assert con.execute(f"select count(*) from orders where state in {WORKING}").fetchone()[0] == 0


async def _count_steps(source) -> int:
    """Decisions in the whole replay (what an uninterrupted run would process)."""
    await source.start()
    n = 0
    while await source.next() is not None:
        n += 1
    return n


# -- shutdown steps failing with exceptions that are not mmbot's ------------------------------

class CancelAllBreaks(PaperExchange):
    async def cancel_all(self, symbol, now_ns):
        raise RuntimeError("venue connection reset during cancel-all")


def sim_engine(store, exchange, duration_s=30.0, forecaster=None):
    cfg = with_overrides(Config(), **{"forecaster.model": "none", "sim.speed": 0.0, "duration_s": duration_s})
    eng = build_paper_engine(cfg, store, handle_signals=False, forecaster=forecaster)
    if exchange is not None:
        eng.exchange = exchange
    return eng


def paper_exchange(cls=PaperExchange, fee=0.0):
    return cls(IntensityFillModel(50.0, 1.5, seed=8), MakerTakerFees(fee, fee), D(0), D(100000))


def test_cancel_all_raising_a_foreign_exception_still_closes_the_run(tmp_path):
    db = tmp_path / "ca.db"
    store = open_store(str(db))
    try:
        engine = sim_engine(store, paper_exchange(CancelAllBreaks))
        with pytest.raises(RuntimeError, match="cancel-all"):
            asyncio.run(engine.run())
    finally:
        store.close()
    con = sqlite3.connect(db)
    status, ended, summary = con.execute("select status, ended_ns, summary_json from runs").fetchone()
    assert status == "failed" and ended is not None
    s = json.loads(summary)
    assert "cancel-all failed: RuntimeError" in s["stop_reason"] and s["events"] == 600
    # a simulated venue's orders die with the process: none is left working in the record
    assert con.execute("select count(*) from orders").fetchone()[0] > 0
    assert con.execute(f"select count(*) from orders where state in {WORKING}").fetchone()[0] == 0
    # the final snapshot was still written after the failed step
    assert con.execute("select count(*) from pnl_snapshots").fetchone()[0] >= 2


class SnapshotBreaks(Engine):
    """The final snapshot fails (an error of another type, as a bug in a new metric would)."""

    def _snapshot(self, ts_ns, force=False):
        if self._stop.is_set() or self.stop_reason:
            raise ZeroDivisionError("final snapshot")
        super()._snapshot(ts_ns, force)


def test_failing_final_snapshot_and_original_error_chained(tmp_path):
    """The run fails with an mmbot error; the final snapshot then fails with another type. The
    run's status is written, its orders are closed, and the original error is raised with
    the shutdown failure attached."""
    from bot.errors import ExchangeError

    class FeedDies(SimulatedMarket):
        async def next(self):
            if self.i == 100:
                raise ExchangeError("feed lost")
            return await super().next()

    db = tmp_path / "snap.db"
    store = open_store(str(db))
    cfg = with_overrides(Config(), **{"forecaster.model": "none", "strategy.pricing.horizon": "rolling"})  # no session end here
    src = FeedDies(duration_s=30.0, seed=3)
    engine = SnapshotBreaks(src, paper_exchange(), lambda m: build_strategy(cfg.strategy, m), store,
                            inventory=Inventory(cash=D(100000)), handle_signals=False)
    try:
        with pytest.raises(ExchangeError, match="feed lost") as ei:
            asyncio.run(engine.run())
    finally:
        store.close()
    assert any("final PnL snapshot failed" in n and "ZeroDivisionError" in n for n in ei.value.__notes__)
    con = sqlite3.connect(db)
    status, ended, summary = con.execute("select status, ended_ns, summary_json from runs").fetchone()
    assert status == "failed" and ended is not None
    assert "feed lost" in json.loads(summary)["stop_reason"]
    assert con.execute(f"select count(*) from orders where state in {WORKING}").fetchone()[0] == 0


def test_final_commit_refused_still_writes_the_status(tmp_path):
    """A NaN fee (what an unvalidated ``paper.maker_fee: .nan`` gives) makes SQLite refuse the
    PnL snapshots (NaN is stored as NULL in NOT NULL columns): the run failed, and before the
    fix it stayed ``running`` with its orders open. Now the status, the orders' final states
    and the rows the database accepts are written, and the loss is counted."""
    db = tmp_path / "nan.db"
    store = open_store(str(db))
    try:
        engine = sim_engine(store, paper_exchange(fee=float("nan")), duration_s=120.0)
        with pytest.raises(Exception) as ei:
            asyncio.run(engine.run())
    finally:
        store.close()
    assert "NOT NULL" in str(ei.value)
    con = sqlite3.connect(db)
    status, ended, summary = con.execute("select status, ended_ns, summary_json from runs").fetchone()
    assert status == "failed" and ended is not None
    s = json.loads(summary)  # valid JSON (NaN written as null)
    assert s["rows_lost"] > 0 and "NOT NULL" in s["commit_error"]
    assert con.execute("select count(*) from orders").fetchone()[0] > 0
    assert con.execute(f"select count(*) from orders where state in {WORKING}").fetchone()[0] == 0
