"""Derivatives: inventory reconciled against the exchange's POSITION (invariant I7 of
docs/live.md), through unmodified ccxt ``binanceusdm`` against the local exchange's USD-M
side (paper_trading/local_binance/futures.py), real SQLite. No test waits on time."""

from __future__ import annotations

import asyncio
import sqlite3
from decimal import Decimal as D

import pytest

from bot.exchanges.live import CcxtLiveExchange
from bot.live.reconcile import Reconciler, ReconcileError
from bot.persistence.store import open_store
from paper_trading.local_binance import LocalBinance
from test_live_local_binance import CEILING, until

SYM = "BTC/USDT:USDT"
CREDS = {"apiKey": "test-key", "secret": "test-secret"}


async def startup(srv, db, tolerance="0.00000001"):
    """One reconciliation at start, as `mmbot live` does before quoting."""
    store = open_store(str(db))
    ex = CcxtLiveExchange("binanceusdm", credentials=CREDS, api_url=srv.base_url, fills_transport="rest",
                          request_timeout_s=5.0, dead_man_s=None)
    try:
        await ex.connect(SYM)
        rec = Reconciler(store, ex, SYM, is_ours=lambda cid: cid.startswith("mmT-"), tolerance=D(tolerance))
        return await rec.startup(), ex.derivative
    finally:
        await ex.close()
        store.close()


async def test_start_reconciles_fills_with_the_position_and_refuses_a_mismatch(tmp_path):
    db = tmp_path / "perp.db"
    async with LocalBinance() as srv:
        rep, derivative = await startup(srv, db)  # first start: the position (flat) is the checkpoint
        assert derivative and rep.base == 0
        st = open_store(str(db))
        st.start_run("live", f"binanceusdm@127.0.0.1:{srv.port}", SYM, {})  # the run whose order fills below
        st.close()
        # an order of that run fills while no bot is watching: the next start records the
        # fill and finds inventory (0 + 0.002) equal to the position
        srv.futures.place("BTCUSDT", "BUY", "LIMIT_MAKER", "0.002", "49990", client_order_id="mmT-1-1")
        srv.futures_taker_trade("sell", "0.002", "49990")
        assert srv.futures.positions["BTCUSDT"] == D("0.002")
        rep, _ = await startup(srv, db)
        assert rep.missed_fills == 1 and rep.base == rep.expected_base == D("0.002")
        con = sqlite3.connect(db)
        assert con.execute("select size, side, fee_currency from fills").fetchall() == [("0.002", "buy", "USDT")]
        # a short sale of 0.003 by something else (another bot, a manual trade): refused, by how much
        srv.set_position("-0.001")
        with pytest.raises(ReconcileError) as e:
            await startup(srv, db)
        msg = str(e.value)
        assert "the recorded fills say BTC 0.002 but the exchange position is -0.001" in msg
        assert "off by -0.003 BTC" in msg and "not trading" in msg
        # within a tolerance it passes (and the new position becomes the checkpoint)
        rep, _ = await startup(srv, db, tolerance="0.005")
        assert rep.base == D("-0.001")


async def test_live_engine_quotes_a_perpetual_and_its_inventory_is_the_position(tmp_path):
    """`mmbot live`'s engine on a USD-M perpetual (market data, orders, fills all through
    ccxt binanceusdm): maker fills on both sides, then the database equals the record and
    the run's inventory equals the exchange's position."""
    from bot.live.app import build_live_engine
    from test_live_engine import CREDS as LIVE_CREDS
    from test_live_engine import live_cfg

    db = tmp_path / "perp-live.db"
    async with LocalBinance() as srv:
        cfg = live_cfg(srv, db, exchange="binanceusdm", symbol=SYM)
        store = open_store(cfg.database.url)
        eng = build_live_engine(cfg, store, LIVE_CREDS, handle_signals=False)

        def resting(side):
            return [o for o in srv.futures.orders.values() if o.is_open and o.side == side]

        async def taker():
            await until(lambda: eng.om is not None and resting("BUY") and resting("SELL"), "our quotes")
            bid = resting("BUY")[0]
            srv.futures_taker_trade("sell", bid.orig_qty / 2, bid.price)
            srv.futures_taker_trade("sell", bid.orig_qty, bid.price)
            await until(lambda: resting("SELL"), "our ask")
            ask = resting("SELL")[0]
            srv.futures_taker_trade("buy", ask.orig_qty * 3, ask.price)
            await until(lambda: eng.inventory.n_fills == len(srv.futures.fills), "every fill in the engine")
            eng.stop("scenario done")

        side = asyncio.ensure_future(taker())
        try:
            summary = await asyncio.wait_for(eng.run(), CEILING)
            await asyncio.wait_for(side, 10)
        finally:
            side.cancel()
            store.close()
        rec = srv.futures_record()
    assert summary["status"] == "completed" and summary["stop_reason"] == "scenario done", summary
    assert summary["fills"] == len(rec["fills"]) >= 3
    assert not [o for o in rec["orders"] if o["status"] in ("NEW", "PARTIALLY_FILLED")]  # cancel-all at the end
    con = sqlite3.connect(db)
    fills = con.execute("select trade_id, size, side, fee_cost, fee_currency from fills").fetchall()
    assert sorted(int(f[0]) for f in fills) == sorted(f["trade_id"] for f in rec["fills"])
    assert all(ccy == "USDT" for *_, ccy in fills)
    position = D(rec["positions"].get("BTCUSDT", "0"))
    assert position == sum(D(s) * (1 if side == "buy" else -1) for _, s, side, _, _ in fills)
    last = D(con.execute("select inventory from pnl_snapshots order by ts_ns desc, id desc limit 1").fetchone()[0])
    assert last == position and D(str(summary["inventory"])) == position


async def test_a_position_change_while_running_stops_the_run_and_says_by_how_much(tmp_path):
    """I7 while running: the position moves without a fill of ours (a liquidation, a manual
    trade); two reconciliations in a row see it and the run stops (status killed)."""
    from bot.live.app import build_live_engine
    from test_live_engine import CREDS as LIVE_CREDS
    from test_live_engine import live_cfg

    db = tmp_path / "perp-move.db"
    async with LocalBinance() as srv:
        cfg = live_cfg(srv, db, exchange="binanceusdm", symbol=SYM)
        store = open_store(cfg.database.url)
        eng = build_live_engine(cfg, store, LIVE_CREDS, handle_signals=False)

        async def liquidate():
            await until(lambda: eng.om is not None and any(o.is_open for o in srv.futures.orders.values()), "our quotes")
            srv.set_position("-0.25")

        side = asyncio.ensure_future(liquidate())
        try:
            summary = await asyncio.wait_for(eng.run(), CEILING)
            await asyncio.wait_for(side, 10)
        finally:
            side.cancel()
            store.close()
    assert summary["status"] == "killed", summary
    assert "the exchange position is -0.25" in summary["stop_reason"] and "off by -0.25 BTC" in summary["stop_reason"]
