"""`mmbot live`'s engine against the local Binance exchange (paper_trading/local_binance):
every fault scenario, then the database compared with the exchange's own record.

Market data by REST polling, fills over the websocket API user stream (ccxt.pro
``watch_my_trades``) with ``fetch_my_trades`` polling as the safety net. After each scenario
the run is stopped (cancel-all), and :func:`check_against_record` asserts: every exchange
fill recorded exactly once with its client id; inventory equal to the exchange balance and
to the start balance plus the fills; no open order at the exchange; every order of ours the
exchange has is in the database with its final state; no duplicate client id; nothing left
working in the database. No test waits on time: conditions with generous ceilings."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from decimal import Decimal as D

import pytest

from bot.live.app import build_live_engine
from paper_trading.local_binance import LocalBinance, MarketSpec
from paper_trading.local_binance.record import balance_total, duplicate_client_ids, net_base_from_fills, open_orders
from test_live_engine import CREDS, WORKING, live_cfg

CEILING = 120.0
STATUS = {"FILLED": "filled", "CANCELED": "canceled", "EXPIRED": "canceled", "NEW": "open",
          "PARTIALLY_FILLED": "partially_filled"}


async def until(pred, what):
    async def loop():
        while not pred():
            await asyncio.sleep(0.02)
    try:
        await asyncio.wait_for(loop(), CEILING)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def resting(ex, side):
    return [o for o in ex.orders.values() if o.is_open and o.side == side]


async def run_scenario(tmp_path, actor, server=None, **over):
    """Run the live engine on a fresh local exchange (``LocalBinance(**server)``) while
    ``actor(ex, eng)`` plays the scenario; stop once the actor is done and every exchange
    fill has reached the engine."""
    db = tmp_path / "live.db"
    async with LocalBinance(**(server or {})) as ex:
        cfg = live_cfg(ex, db, **{"live.ws_url": ex.ws_url, "live.fills_transport": "auto", **over})
        store = open_store_(cfg)
        eng = build_live_engine(cfg, store, CREDS, handle_signals=False)
        done = asyncio.Event()

        async def act():
            try:
                await until(lambda: eng.om is not None, "the engine to start")
                await actor(ex, eng)
                done.set()
                await until(lambda: eng.inventory.n_fills == len(ex.fills), "every fill to reach the engine")
                eng.stop("scenario done")
            except BaseException:
                eng.stop("scenario failed")
                raise

        side = asyncio.ensure_future(act())
        try:
            summary = await asyncio.wait_for(eng.run(), CEILING)
            if not done.is_set():  # the actor failed (its exception) or never finished
                await asyncio.wait_for(side, 10)
                raise AssertionError("the scenario did not complete")
            assert summary["status"] == "completed" and summary["stop_reason"] == "scenario done", summary
        finally:
            side.cancel()
            with contextlib.suppress(BaseException):
                await side
            store.close()
        check_against_record(db, ex.record(), summary)
        return summary, eng, ex.record()


def open_store_(cfg):
    from bot.persistence.store import open_store
    return open_store(cfg.database.url)


def check_against_record(db, rec, summary):
    con = sqlite3.connect(db)
    fills = con.execute("select trade_id, client_id, size, side, fee_cost, fee_currency from fills").fetchall()
    ex_fills = {str(f["trade_id"]): f for f in rec["fills"]}
    assert sorted(f[0] for f in fills) == sorted(ex_fills), "every exchange fill recorded exactly once"
    for tid, cid, size, side, fee_cost, fee_ccy in fills:
        f = ex_fills[tid]
        assert cid == f["client_order_id"] and D(size) == D(f["qty"]) and side == f["side"].lower()
        assert (D(fee_cost), fee_ccy) == (D(f["commission"]), f["commission_asset"]), "the fee as the exchange charged it"
    assert not open_orders(rec), "cancel-all at shutdown leaves nothing open"
    db_orders = dict(con.execute("select client_id, state from orders").fetchall())
    for o in rec["orders"]:
        assert db_orders.get(o["client_order_id"]) == STATUS[o["status"]], (o, db_orders.get(o["client_order_id"]))
    assert not duplicate_client_ids(rec)
    ids = [r[0] for r in con.execute("select client_id from orders")]
    assert len(ids) == len(set(ids))
    assert con.execute("select count(*) from orders where state in %s" % (WORKING,)).fetchone()[0] == 0
    first, last = (D(r[0]) for r in (
        con.execute("select inventory from pnl_snapshots order by ts_ns, id limit 1").fetchone(),
        con.execute("select inventory from pnl_snapshots order by ts_ns desc, id desc limit 1").fetchone()))
    assert last == balance_total(rec, "BTC"), "inventory = exchange balance"
    assert last == first + net_base_from_fills(rec, base="BTC"), "inventory = start + fills (net of base fees)"
    assert D(str(summary["inventory"])) == last


async def taker_fills(ex, eng=None):
    """Simulated taker flow: our bid is hit partly then fully, our ask lifted fully."""
    for _ in range(1):
        await until(lambda: resting(ex, "BUY"), "our bid")
        bid = resting(ex, "BUY")[0]
        ex.taker_trade("sell", bid.orig_qty / 2, bid.price)
        ex.taker_trade("sell", bid.orig_qty, bid.price)
        await until(lambda: resting(ex, "SELL"), "our ask")
        ask = resting(ex, "SELL")[0]
        ex.taker_trade("buy", ask.orig_qty, ask.price)


async def test_taker_flow_partial_and_full_fills(tmp_path):
    summary, eng, rec = await run_scenario(tmp_path, taker_fills)
    assert summary["fills"] == len(rec["fills"]) >= 3
    assert any(f["commission_asset"] == "BTC" for f in rec["fills"])  # buys pay fees in base: I5 holds anyway


BNB_MARKETS = [MarketSpec(), MarketSpec(base="BNB", quote="USDT", tick_size="0.01", step_size="0.001", min_qty="0.001")]
BNB_SERVER = {"markets": BNB_MARKETS, "balances": {"BTC": "1", "USDT": "100000", "BNB": "10"}, "fee_asset": "BNB"}


async def bnb_taker_fills(ex, eng):
    ex.set_book([(600.00, 50)], [(600.10, 50)], symbol="BNBUSDT")  # BNB at 600.05 USDT (mid)
    await taker_fills(ex)


async def test_fees_charged_in_bnb_are_recorded_with_their_currency_and_valued_in_quote(tmp_path):
    """Binance's pay-fees-with-BNB: each fill's fee is recorded as charged (BNB amount =
    the server's record) and valued at the BNB/USDT ticker mid in fills.fee, which PnL and
    `mmbot report` use."""
    summary, eng, rec = await run_scenario(tmp_path, bnb_taker_fills, server=BNB_SERVER)
    assert len(rec["fills"]) >= 3 and all(f["commission_asset"] == "BNB" for f in rec["fills"])
    con = sqlite3.connect(tmp_path / "live.db")
    rows = con.execute("select trade_id, fee, fee_cost, fee_currency, fee_rate from fills").fetchall()
    by_tid = {str(f["trade_id"]): f for f in rec["fills"]}
    for tid, fee, cost, ccy, rate in rows:
        assert D(cost) == D(by_tid[tid]["commission"]) > 0 and ccy == "BNB"
        assert D(rate) == D("600.05") and D(fee) == D(cost) * D("600.05")
    total = sum(D(r[1]) for r in rows)
    assert eng.inventory.fees_paid == total
    from bot.persistence.report import build_report
    r = build_report(str(tmp_path / "live.db"))
    assert r.fees == float(total) and r.unconverted_fees == ""
    assert balance_total(rec, "BNB") == D(10) - sum(D(f["commission"]) for f in rec["fills"])


async def test_a_bnb_fee_without_a_price_is_recorded_raw_and_flagged(tmp_path):
    """No BNB/USDT ticker for the bot (the ticker endpoint fails): the fee is kept in BNB
    with no conversion price, counts 0 in quote, and the report lists it."""
    async def actor(ex, eng):
        ex.fault("http", "GET /api/v3/ticker/24hr", status=503, count=1000)
        await bnb_taker_fills(ex, eng)
    summary, eng, rec = await run_scenario(tmp_path, actor, server=BNB_SERVER)
    con = sqlite3.connect(tmp_path / "live.db")
    rows = con.execute("select fee, fee_cost, fee_currency, fee_rate from fills").fetchall()
    assert rows and all(D(fee) == 0 and D(cost) > 0 and ccy == "BNB" and rate is None for fee, cost, ccy, rate in rows)
    assert eng.exchange.counters["unconverted_fees"] >= len(rows)
    from bot.persistence.report import build_report
    r = build_report(str(tmp_path / "live.db"))
    assert r.unconverted_fees == f"{format(sum(D(f['commission']) for f in rec['fills']), 'f')} BNB"


async def test_order_timeout_although_placed(tmp_path):
    async def actor(ex, eng):
        ex.fault("timeout", "order")
        await until(lambda: ex.faults.fired_count("timeout") >= 1, "the timeout")
        await taker_fills(ex)
    summary, eng, rec = await run_scenario(tmp_path, actor)
    assert eng.exchange.counters["unknown_outcomes"] >= 1


async def test_cancel_timeout_although_cancelled(tmp_path):
    async def actor(ex, eng):
        await until(lambda: resting(ex, "BUY") and resting(ex, "SELL"), "our quotes")
        ex.fault("timeout", "cancel")
        ex.set_book([(50010.00, 1.0)], [(50010.01, 1.0)])  # the market moves: requote = cancel + place
        await until(lambda: ex.faults.fired_count("timeout") >= 1, "the cancel timeout")
        await until(lambda: eng.exchange.counters["resolved"] >= 1 and resting(ex, "BUY"), "resolution and a bid")
        await taker_fills(ex)
    summary, eng, rec = await run_scenario(tmp_path, actor)
    assert eng.exchange.counters["unknown_outcomes"] >= 1


async def test_5xx_not_executed_and_dropped_connection_executed(tmp_path):
    async def actor(ex, eng):
        ex.fault("http", "order", status=503)
        await until(lambda: ex.faults.fired_count("http") >= 1, "the 503")
        ex.fault("drop", "order")
        await until(lambda: ex.faults.fired_count("drop") >= 1, "the dropped connection")
        await taker_fills(ex)
    await run_scenario(tmp_path, actor)


async def test_rate_limit_and_ban_with_retry_after(tmp_path):
    async def actor(ex, eng):
        await until(lambda: resting(ex, "BUY"), "our bid")
        ex.fault("rate_limit", "order", retry_after_s=1)
        ex.set_book([(50005.00, 1.0)], [(50005.01, 1.0)])
        await until(lambda: ex.faults.fired_count("rate_limit") >= 1, "the 429")
        await until(lambda: not eng.exchange.banned, "the back-off to end")
        ex.fault("ban", "order", retry_after_s=2)
        ex.set_book([(50000.00, 1.0)], [(50000.01, 1.0)])
        await until(lambda: ex.faults.fired_count("ban") >= 1, "the 418")
        await taker_fills(ex)
    summary, eng, rec = await run_scenario(tmp_path, actor)
    assert eng.exchange.counters["rate_limited"] >= 2
    assert summary["rate_limited"] >= 2


async def test_clock_skew_resyncs_once(tmp_path):
    async def skewed(ex, eng):
        ex.clock_offset_ms = -30_000
        await until(lambda: eng.exchange.counters["clock_resyncs"] >= 1 or not resting(ex, "BUY"), "a resync")
        await taker_fills(ex)
    summary, eng, rec = await run_scenario(tmp_path, skewed, **{"market_data.poll_interval_s": 0.1})
    assert eng.exchange.counters["clock_resyncs"] >= 1


async def test_fill_while_the_user_stream_is_disconnected(tmp_path):
    async def actor(ex, eng):
        await until(lambda: resting(ex, "BUY"), "our bid")
        await until(lambda: ex._conns("user"), "the user stream")
        ex.block_ws("user")
        await ex.drop_ws("user")
        bid = resting(ex, "BUY")[0]
        ex.taker_trade("sell", bid.orig_qty, bid.price)
        await until(lambda: eng.inventory.n_fills >= 1, "the fill (polling)")
        ex.block_ws("user", blocked=False)
        await taker_fills(ex)
    await run_scenario(tmp_path, actor)


async def test_order_expired_by_the_exchange(tmp_path):
    async def actor(ex, eng):
        await until(lambda: resting(ex, "BUY"), "our bid")
        bid = resting(ex, "BUY")[0]
        ex.expire_order(bid.order_id)
        # reconciliation closes it with its true state and the level is quoted again
        await until(lambda: eng.om.orders.get(bid.client_order_id) is not None
                    and eng.om.orders[bid.client_order_id].state.terminal, "the expired order closed")
        await until(lambda: resting(ex, "BUY"), "a new bid")
        await taker_fills(ex)
    await run_scenario(tmp_path, actor)


async def test_sigkill_of_mmbot_live_then_restart(tmp_path):
    """The real command: SIGKILL while orders rest and a fill is in flight, a fill while it
    is down, then a restart on the same database: the database equals the exchange's record."""
    import json
    import os
    import signal
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    db = tmp_path / "kill.db"
    env = {**os.environ, "PYTHONPATH": str(root), "MMBOT_API_KEY": "test-key", "MMBOT_API_SECRET": "test-secret"}
    async with LocalBinance() as ex:
        cfg = tmp_path / "live.yaml"
        cfg.write_text(f"""
exchange: binance
symbol: BTC/USDT
forecaster: {{model: none}}
market_data: {{transport: rest, api_url: "{ex.base_url}", poll_interval_s: 0.1, rate_limit_per_s: 100}}
strategy: {{controls: {{order_size: 0.001, refresh_tolerance_ticks: 100000}}}}
live: {{ws_url: "{ex.ws_url}", poll_interval_s: 0.2, reconcile_interval_s: 1, request_timeout_s: 3}}
database: {{url: "sqlite:///{db}"}}
""")

        async def mmbot(*args):
            return await asyncio.create_subprocess_exec(sys.executable, "-m", "bot.cli", "live", "--config", str(cfg),
                                                        "--yes", *args, cwd=root, env=env, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE)

        def recorded_open():
            if not db.exists():
                return False
            con = sqlite3.connect(db)
            try:
                states = dict(con.execute("select client_id, state from orders").fetchall())
            except sqlite3.OperationalError:
                return False
            finally:
                con.close()
            mine = [o for o in ex.orders.values() if o.is_open]
            return len(mine) >= 2 and all(states.get(o.client_order_id) == "open" for o in mine)

        proc = await mmbot()
        try:
            await until(recorded_open, "two resting orders recorded open")
            bid = resting(ex, "BUY")[0]
            ex.taker_trade("sell", bid.orig_qty / 2, bid.price)
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.communicate()
        ex.taker_trade("sell", bid.orig_qty, bid.price)  # while the bot is down
        assert sqlite3.connect(db).execute("select status from runs").fetchone()[0] == "running"
        proc = await mmbot("--duration", "3", "--json")
        out, err = await asyncio.wait_for(proc.communicate(), CEILING)
        assert proc.returncode == 0, err.decode()
        summary = json.loads(out)
        check_against_record(db, ex.record(), summary)
        con = sqlite3.connect(db)
        assert dict(con.execute("select client_id, state from orders").fetchall())[bid.client_order_id] == "filled"


async def test_websocket_book_stall_and_sequence_gap(tmp_path):
    """Market data over websockets: a silent stall (socket open, no data, no pongs) is
    detected by the short keep-alive and the feed reconnects; a depth sequence gap is
    resynced from a snapshot; trading goes on and the database equals the record."""
    async def actor(ex, eng):
        stop = asyncio.Event()

        async def ticker():  # book updates keep coming
            i = 0
            while not stop.is_set():
                i += 1
                await ex.push_depth([(49999.50, 1 + i % 3)])
                await asyncio.sleep(0.05)
        tick = asyncio.ensure_future(ticker())
        try:
            await until(lambda: resting(ex, "BUY"), "our bid")
            connects = ex.market_ws.connects
            assert ex.stall_ws("market") >= 1
            await until(lambda: eng.source.reconnects >= 1 and ex.market_ws.connects > connects, "stall detected, reconnected")
            await ex.push_depth([(49999.40, 2)], drop=True)  # a diff that never arrives: a gap
            await ex.push_depth([(49999.30, 2)])

            def synced():  # the dropped diff's level can only come from a fresh snapshot
                return any(abs(lv[0] - 49999.40) < 1e-9 for lv in eng.source.book.bids.levels())
            await until(synced, "the book resynced after the gap")
            await taker_fills(ex)
        finally:
            stop.set()
            await tick
    summary, eng, rec = await run_scenario(tmp_path, actor, **{"market_data.transport": "ws", "market_data.ws_keepalive_s": 0.5})
    assert eng.source.reconnects >= 1


async def test_fills_over_the_websocket_user_stream_alone(tmp_path):
    """With polling effectively off, fills reach the engine through watch_my_trades (the
    websocket API's userDataStream.subscribe.signature)."""
    summary, eng, rec = await run_scenario(tmp_path, taker_fills, **{"live.poll_interval_s": 3600.0,
                                                                      "live.reconcile_interval_s": 3600.0})
    assert summary["fills"] == len(rec["fills"]) >= 3
    assert eng.exchange.counters["ws_errors"] == 0
