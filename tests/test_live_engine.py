"""The live engine end to end against the local Binance fake (REST market data, real ccxt,
real SQLite): quoting, fills recorded once, the database equal to the exchange's record,
reconciliation at start (crashed run's orders, missed fills, unknown orders, balance
mismatch), the kill switch, and secrets kept out of logs and rows."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from decimal import Decimal as D

import pytest

from bot.config import Config, with_overrides
from bot.errors import MmbotError
from bot.live.app import build_live_engine
from bot.live.reconcile import ReconcileError
from bot.live.secrets import Credentials, install_log_redaction, register_secret
from bot.orders import OrderState
from bot.persistence.report import build_report
from bot.persistence.store import open_store

CEILING = 120.0
WORKING = tuple(s.value for s in OrderState if not s.terminal)


def live_cfg(fake, db, **over) -> Config:
    base = {
        "exchange": "binance", "symbol": "BTC/USDT", "database.url": str(db),
        "market_data.transport": "rest", "market_data.api_url": fake.base_url, "market_data.poll_interval_s": 0.1,
        "market_data.rate_limit_per_s": 100.0, "forecaster.model": "none", "strategy.controls.order_size": 0.001,
        "live.fills_transport": "rest", "live.poll_interval_s": 0.2, "live.reconcile_interval_s": 0.5,
        "live.request_timeout_s": 3.0, "pnl_snapshot_interval_s": 0.2,
    }
    base.update(over)
    return with_overrides(Config(), **base)


CREDS = Credentials("test-key", "test-secret")


async def run_live(cfg, until, actor=None):
    """Run the live engine until ``until(engine)`` holds (checked every event), with
    ``actor(engine)`` running beside it (the exchange's side of a scenario)."""
    store = open_store(cfg.database.url)
    eng = build_live_engine(cfg, store, CREDS, handle_signals=False)

    def tick(e):
        if until(e):
            e.stop("test done")
    eng.on_tick = tick
    side = asyncio.ensure_future(actor(eng)) if actor else None
    try:
        return await asyncio.wait_for(eng.run(), CEILING), eng
    finally:
        if side is not None:
            side.cancel()
            with contextlib.suppress(BaseException):
                await side
        store.close()


def ours_open(fake):
    return [o for o in fake.orders.values() if o.is_open]


async def wait_for(cond, what):
    async def loop():
        while not cond():
            await asyncio.sleep(0.05)
    try:
        await asyncio.wait_for(loop(), CEILING)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def check_db_equals_exchange(db, fake):
    """The invariants after a scenario: every exchange fill recorded exactly once, inventory
    = start balance + fills, nothing open at the exchange that the DB calls closed or does
    not know, no duplicate client id."""
    con = sqlite3.connect(db)
    trades = {str(t["id"]): t for t in fake.trades}
    rows = con.execute("select trade_id, client_id, side, size from fills where exchange like 'binance%'").fetchall()
    assert sorted(r[0] for r in rows) == sorted(trades), "every exchange fill recorded exactly once"
    by_cid = {o.client_order_id: o for o in fake.orders.values()}
    for tid, cid, side, size in rows:
        o = next(x for x in fake.orders.values() if x.order_id == trades[tid]["orderId"])
        assert o.client_order_id == cid and D(size) == D(trades[tid]["qty"]) and side == o.side.lower()
    db_orders = dict(con.execute("select client_id, state from orders").fetchall())
    for o in fake.orders.values():
        if o.is_open:
            assert db_orders.get(o.client_order_id) in WORKING, f"open at the exchange, {db_orders.get(o.client_order_id)} in the DB"
    ids = [r[0] for r in con.execute("select client_id from orders")]
    assert len(ids) == len(set(ids)), "duplicate client id"
    assert len(by_cid) == len(fake.orders), "a client id reached the exchange twice"
    return con


async def test_live_run_quotes_fills_and_matches_the_exchange(fake_binance, tmp_path):
    db = tmp_path / "live.db"
    fake = fake_binance
    start_btc = fake.free["BTC"]

    async def taker(eng):  # simulated taker flow: fill our resting orders, partly then fully
        done = 0
        while done < 4:
            await wait_for(lambda: ours_open(fake), "an order of ours at the exchange")
            o = ours_open(fake)[0]
            fake.fill_order(o.order_id, qty=o.orig_qty / 2)
            fake.fill_order(o.order_id)
            done += 2

    summary, eng = await run_live(live_cfg(fake, db), lambda e: e.inventory.n_fills >= 4, taker)
    assert summary["status"] == "completed" and summary["fills"] >= 4
    assert not ours_open(fake)  # cancel-all at shutdown
    con = check_db_equals_exchange(db, fake)
    assert con.execute("select count(*) from orders where state in %s" % (WORKING,)).fetchone()[0] == 0
    inv = D(con.execute("select inventory from pnl_snapshots order by ts_ns desc, id desc limit 1").fetchone()[0])
    fills = sum(D(s) * (1 if side == "buy" else -1) for side, s in con.execute("select side, size from fills"))
    assert inv == start_btc + fills == fake.free["BTC"] + fake.locked.get("BTC", 0)
    assert con.execute("select mode from runs").fetchone()[0] == "live"
    r = build_report(str(db))
    assert r.fills == summary["fills"]
    from rich.console import Console

    from bot.status import status_table
    con_ = Console(record=True, width=200)
    con_.print(status_table(eng))
    panel = con_.export_text()
    assert "order errors / unknown outcomes" in panel and "rate limited" in panel and "quoting" in panel
    # the order-type sent is post-only with our client id, as plain decimal strings
    assert all(p["type"] == "LIMIT_MAKER" and "e" not in p["price"].lower() for p in fake.order_requests)


async def test_restart_reconciles_a_crashed_run(fake_binance, tmp_path):
    """A run that 'crashed' (its orders left working in the DB, still open at the exchange)
    is reconciled by the next start: missed fills recorded with their run, orders closed
    with their true state, nothing of ours left open, inventory equal to the balance."""
    db = tmp_path / "crash.db"
    fake = fake_binance
    cfg = live_cfg(fake, db)
    store = open_store(cfg.database.url)
    eng = build_live_engine(cfg, store, CREDS, handle_signals=False)
    # run until two orders rest at the exchange, then drop the engine without its shutdown
    eng.on_tick = lambda e: e.stop("x") if len(ours_open(fake)) >= 2 else None
    orig = eng._shutdown

    async def crash(status, started):  # what SIGKILL leaves behind: no cancel-all, no end of run
        for t in (eng._watchdog, eng._recon_task):
            if t is not None:
                t.cancel()
        eng.store.commit()
        await eng.exchange.wait_idle()
        eng._drain_fills()
        eng.store.commit()
        return {}
    eng._shutdown = crash
    await asyncio.wait_for(eng.run(), CEILING)
    store.close()
    del orig
    con = sqlite3.connect(db)
    assert con.execute("select count(*) from orders where state in %s" % (WORKING,)).fetchone()[0] >= 2
    # while the bot is down: one order trades out, the other rests
    a, b = ours_open(fake)[:2]
    fake.fill_order(a.order_id)
    # and an order with our prefix (this database's installation id) that the DB never heard of rests too
    inst = con.execute("select value from mmbot_meta where key = 'installation_id'").fetchone()[0]
    ghost = f"mm{inst}-zz-1"
    fake.orders[999] = type(a)(999, ghost, "BTCUSDT", "BUY", "LIMIT_MAKER", D("40000"), D("0.001"))
    fake.locked["USDT"] = fake.locked.get("USDT", 0) + D("40")
    fake.free["USDT"] -= D("40")
    # and one that is not ours (another mmbot with its own database on the account): left alone
    fake.orders[1000] = type(a)(1000, "mmOtherDb1-1-1", "BTCUSDT", "BUY", "LIMIT", D("39000"), D("0.001"))
    fake.locked["USDT"] += D("39")
    fake.free["USDT"] -= D("39")

    summary, eng2 = await run_live(with_overrides(cfg, **{"live.dedicated_account": False}),
                                   lambda e: e.state.events >= 3)
    rep = eng2.startup_report
    assert rep.missed_fills == 1 and rep.cancelled_unknown == [ghost]
    assert rep.closed[a.client_order_id] == "filled" and rep.closed[b.client_order_id] == "canceled"
    assert fake.orders[1000].is_open and not fake.orders[999].is_open
    run_of = dict(con.execute("select client_id, run_id from orders").fetchall())
    assert con.execute("select run_id from fills").fetchall() == [(run_of[a.client_order_id],)]  # with its own run
    fake.orders.pop(1000)  # not ours: out of the comparison
    check_db_equals_exchange(db, fake)
    assert con.execute("select count(*) from orders where state in %s" % (WORKING,)).fetchone()[0] == 0


async def test_balance_mismatch_refuses_to_trade_and_says_by_how_much(fake_binance, tmp_path):
    db = tmp_path / "mm.db"
    fake = fake_binance
    cfg = live_cfg(fake, db)
    await run_live(cfg, lambda e: e.state.events >= 2)  # first run: checkpoint of the balance
    fake.free["BTC"] -= D("0.25")  # something else moved the balance
    with pytest.raises(ReconcileError, match=r"off by -0\.25 BTC"):
        await run_live(cfg, lambda e: True)
    assert not fake.order_requests or all(o.status != "NEW" for o in fake.orders.values())


async def test_kill_switch_cancels_everything_stops_and_records_why(fake_binance, tmp_path):
    db = tmp_path / "kill.db"
    fake = fake_binance
    cfg = live_cfg(fake, db, **{"live.risk.max_loss": 0.5})

    async def crash_market(eng):  # our bid fills, then the market falls 1000
        await wait_for(lambda: any(o.side == "BUY" for o in ours_open(fake)), "our bid")
        bid = next(o for o in ours_open(fake) if o.side == "BUY")
        fake.fill_order(bid.order_id)
        fake.set_book([(49000.00, 1.0)], [(49000.01, 1.0)])

    summary, eng = await run_live(cfg, lambda e: False, crash_market)
    assert summary["status"] == "killed" and "kill switch" in summary["stop_reason"]
    # the 0.001 BTC bought lost about 1000 * 0.001 = 1 USDT; the 1 BTC held from the start is not the bot's loss
    assert -1.2 < eng.trading_pnl() < -0.5 and summary["pnl"] < -900
    assert not ours_open(fake)
    con = sqlite3.connect(db)
    status, s = con.execute("select status, summary_json from runs").fetchone()
    assert status == "killed" and "max_loss" in s


async def test_secrets_never_in_logs_or_database(fake_binance, tmp_path, caplog):
    secret = "s3cr3t-" + "x" * 40
    fake = fake_binance
    fake.secret = secret
    install_log_redaction()
    register_secret(secret)
    caplog.set_level(logging.DEBUG)
    db = tmp_path / "sec.db"
    creds = Credentials("test-key", secret)
    cfg = live_cfg(fake, db)
    store = open_store(cfg.database.url)
    eng = build_live_engine(cfg, store, creds, handle_signals=False)
    logging.getLogger("bot.test").warning("a careless line with the secret %s in it", secret)
    eng.on_tick = lambda e: e.stop("done") if e.state.placed >= 2 else None
    fake.fail_next("/api/v3/order", status=503)  # an error path logs too
    try:
        await asyncio.wait_for(eng.run(), CEILING)
    finally:
        store.close()
    assert caplog.records and all(secret not in r.getMessage() for r in caplog.records)
    assert secret not in caplog.text and "***" in caplog.text
    con = sqlite3.connect(db)
    for (table,) in con.execute("select name from sqlite_master where type='table'").fetchall():
        for row in con.execute(f"select * from {table}"):
            assert secret not in " ".join(map(str, row)), f"secret in table {table}"
    assert secret not in repr(creds) and secret not in str(cfg.model_dump())


async def test_auth_error_stops_at_once_with_a_clear_message(fake_binance, tmp_path):
    db = tmp_path / "auth.db"
    fake = fake_binance
    cfg = live_cfg(fake, db)
    store = open_store(cfg.database.url)
    eng = build_live_engine(cfg, store, CREDS, handle_signals=False)

    def revoke(e):  # the key is revoked while running
        if e.state.events == 2:
            fake.api_key = "another-key"
    eng.on_tick = revoke
    try:
        with pytest.raises(MmbotError, match="refused our API key"):
            await asyncio.wait_for(eng.run(), CEILING)
    finally:
        store.close()
    con = sqlite3.connect(db)
    assert con.execute("select status from runs").fetchone()[0] == "failed"


async def test_wrong_key_at_start_refuses_with_a_clear_message(fake_binance, tmp_path):
    cfg = live_cfg(fake_binance, tmp_path / "k.db")
    store = open_store(cfg.database.url)
    eng = build_live_engine(cfg, store, Credentials("not-the-key", "test-secret"), handle_signals=False)
    try:
        with pytest.raises(MmbotError, match="refused our API key"):
            await asyncio.wait_for(eng.run(), CEILING)
    finally:
        store.close()
    assert not fake_binance.order_requests


async def test_stale_market_data_pulls_all_quotes(fake_binance, tmp_path, caplog):
    fake = fake_binance
    cfg = live_cfg(fake, tmp_path / "stale.db", **{"live.risk.stale_after_s": 1.0})
    store = open_store(cfg.database.url)
    eng = build_live_engine(cfg, store, CREDS, handle_signals=False)

    async def freeze_feed():
        await wait_for(lambda: len(ours_open(fake)) >= 2, "two quotes resting")
        fake.hang_after("/api/v3/depth", count=10_000)  # the book feed goes silent
        await wait_for(lambda: eng.pulled and not ours_open(fake), "quotes pulled")
        eng.stop("test done")
    side = asyncio.ensure_future(freeze_feed())
    try:
        summary = await asyncio.wait_for(eng.run(), CEILING)
        await side
    finally:
        store.close()
    assert not ours_open(fake) and summary["status"] == "completed"
    assert any("no dead-man switch" in r.getMessage() for r in caplog.records)  # binance spot has none: said so
    check_db_equals_exchange(tmp_path / "stale.db", fake)


async def test_inventory_mismatch_while_running_stops_and_says_by_how_much(fake_binance, tmp_path):
    fake = fake_binance
    db = tmp_path / "mis.db"
    cfg = live_cfg(fake, db)

    async def withdraw(eng):  # something else takes BTC from the account while the bot runs
        await wait_for(lambda: len(ours_open(fake)) >= 2, "our quotes")
        fake.free["BTC"] -= D("0.5")
    summary, eng = await run_live(cfg, lambda e: False, withdraw)
    assert summary["status"] == "killed" and "inventory mismatch" in summary["stop_reason"]
    assert "off by -0.5" in summary["stop_reason"]
    assert not ours_open(fake)  # everything cancelled on the way out


async def test_insufficient_funds_stops_that_side_until_balances_allow(fake_binance, tmp_path):
    fake = fake_binance
    fake.free["USDT"] = D("1")  # cannot buy: only asks are quoted
    cfg = live_cfg(fake, tmp_path / "funds.db", **{"live.balance_check": False})

    async def fund(eng):
        await wait_for(lambda: any(o.side == "SELL" for o in ours_open(fake)) and eng.exchange.side_blocked, "asks only")
        assert not any(o.side == "BUY" for o in ours_open(fake))
        n = len(fake.order_requests)
        await wait_for(lambda: eng.state.events >= 20, "more updates")
        assert sum(1 for p in fake.order_requests[n:] if p["side"] == "BUY") == 0  # no retry storm on the blocked side
        fake.free["USDT"] = D("100000")  # a deposit
        await wait_for(lambda: any(o.side == "BUY" for o in ours_open(fake)), "bids again")
        eng.stop("test done")
    summary, eng = await run_live(cfg, lambda e: False, fund)
    assert eng.exchange.counters["insufficient_funds"] == 1


async def test_a_market_move_against_the_held_balance_does_not_trip_the_kill_switch(fake_binance, tmp_path):
    fake = fake_binance
    cfg = live_cfg(fake, tmp_path / "hold.db", **{"live.risk.max_loss": 0.5})

    async def move(eng):  # no fill: only the 1 BTC the account holds loses value
        await wait_for(lambda: len(ours_open(fake)) >= 2, "our quotes")
        fake.set_book([(49000.00, 1.0)], [(49000.01, 1.0)])
        await wait_for(lambda: eng.state.mid < 49500 and eng.state.events >= 10, "the move seen")
        eng.stop("test done")
    summary, eng = await run_live(cfg, lambda e: False, move)
    assert summary["status"] == "completed" and summary["pnl"] < -900 and abs(eng.trading_pnl()) < 0.5
