"""`mmbot paper` on public order books through ccxt, against a local Binance REST server on
127.0.0.1 (ccxt's own request and parsing code runs; nothing leaves the machine), and the
one-line errors for unknown exchange, unknown symbol, unreachable network, crossed book.

No test here depends on timing: a run on live data is fed for as long as it runs and is
stopped (SIGINT) once the database shows what the test needs; every wait is for a
condition, with a generous ceiling for loaded machines."""

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

from waiting import CEILING_S, db_count

ROOT = Path(__file__).resolve().parents[1]


async def mmbot(*args, cwd=ROOT, timeout=90):
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out, err = await asyncio.wait_for(p.communicate(), timeout)
    return p.returncode, out.decode(), err.decode()


async def start_mmbot(*args, cwd=ROOT):
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )




async def wait_then_interrupt(p, pred, what):
    """Wait until ``pred()`` (checked every 50 ms), then SIGINT the run and collect it.
    Fails if the process ends first or the condition takes longer than ``CEILING_S``."""
    end = time.monotonic() + CEILING_S
    try:
        while not pred():
            if p.returncode is not None:
                err = (await p.stderr.read()).decode()
                raise AssertionError(f"mmbot exited ({p.returncode}) before {what}: {err}")
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)
        p.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(p.communicate(), CEILING_S)
    finally:
        if p.returncode is None:
            p.kill()
            await p.communicate()
    return p.returncode, out.decode(), err.decode()


def run_summary(db) -> tuple[str, dict]:
    status, summary = sqlite3.connect(db).execute("select status, summary_json from runs").fetchone()
    return status, json.loads(summary)


def live_config(tmp_path, api_url, poll="0.2", transport="rest"):
    p = tmp_path / "live.yaml"
    p.write_text(f"market_data:\n  transport: {transport}\n  api_url: {api_url}\n  poll_interval_s: {poll}\n  rate_limit_per_s: 20\n"
                 f"strategy:\n  pricing:\n    gamma: 0.001\n    k: 0.5\n    initial_sigma: 5.0\n"
                 f"  controls:\n    order_size: 0.001\n    max_inventory: 0.01\nforecaster:\n  model: none\n")
    return p


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


async def test_paper_on_ccxt_polled_books(fake_binance, tmp_path):
    cfg = live_config(tmp_path, fake_binance.base_url)
    db = tmp_path / "live.db"
    p = await start_mmbot("paper", "--config", str(cfg), "--exchange", "binance", "--symbol", "BTC/USDT",
                          "--duration", "3600", "--db", str(db), "--json")
    # polls are sequential: the 5th depth request (start + 4 polls) is sent only after the
    # engine processed the 3rd polled book
    code, _, err = await wait_then_interrupt(
        p, lambda: fake_binance.requests["/api/v3/depth"] >= 5 and db_count(db, "select count(*) from orders") >= 2,
        "three polled books and two orders")
    assert code == 130 and "Traceback" not in err, err
    status, s = run_summary(db)
    assert status == "interrupted" and s["events"] >= 3 and s["orders_placed"] >= 2
    con = sqlite3.connect(db)
    assert con.execute("select exchange, symbol from runs").fetchone() == ("paper", "BTC/USDT")
    # quotes were rounded to the market's tick (0.01) and lot (0.00001) from exchangeInfo
    for price, size in con.execute("select price, size from orders"):
        assert round(float(price) * 100) == float(price) * 100 and float(size) == 0.001
    assert con.execute("select count(*) from orders where state in ('new','open','partially_filled')").fetchone()[0] == 0


async def test_unknown_exchange(tmp_path):
    code, _, err = await mmbot("paper", "--exchange", "binanse", "--symbol", "BTC/USDT", "--db", str(tmp_path / "x.db"))
    assert_one_line_error(code, err, "unknown exchange 'binanse'", "binance")


async def test_unknown_symbol(fake_binance, tmp_path):
    cfg = live_config(tmp_path, fake_binance.base_url)
    code, _, err = await mmbot("paper", "--config", str(cfg), "--exchange", "binance", "--symbol", "FOO/BAR",
                               "--db", str(tmp_path / "x.db"))
    assert_one_line_error(code, err, "unknown symbol 'FOO/BAR'")


async def test_unreachable_network(closed_port_url, tmp_path):
    cfg = live_config(tmp_path, closed_port_url)
    db = tmp_path / "x.db"
    code, _, err = await mmbot("paper", "--config", str(cfg), "--exchange", "binance", "--symbol", "BTC/USDT", "--db", str(db))
    assert_one_line_error(code, err, "cannot reach binance")
    # nothing half-written: no run was started
    assert not db.exists() or sqlite3.connect(db).execute("select count(*) from runs").fetchone()[0] == 0


async def test_crossed_book(fake_binance, tmp_path):
    fake_binance.book_fault = "crossed"
    cfg = live_config(tmp_path, fake_binance.base_url)
    code, _, err = await mmbot("paper", "--config", str(cfg), "--exchange", "binance", "--symbol", "BTC/USDT",
                               "--db", str(tmp_path / "x.db"))
    assert_one_line_error(code, err, "crossed")


async def test_symbol_required_for_live_exchange(tmp_path):
    code, _, err = await mmbot("paper", "--exchange", "binance", "--db", str(tmp_path / "x.db"))
    assert_one_line_error(code, err, "--symbol is required")


async def test_paper_on_websocket_books_and_trades(tmp_path):
    """transport: ws: ccxt.pro's own websocket client syncs the book from the local server's
    REST snapshot and depthUpdate stream, and the paper run trades on it. The market is fed
    for as long as the run lives (it used to be fed for 3 s from before the subprocess
    started, and a loaded machine saw too few updates)."""
    from fake_binance_ws import FakeBinanceWs

    server = FakeBinanceWs()
    await server.start()
    feeder = None
    try:
        server.set_book([(29999.0 - i, 1.0) for i in range(20)], [(30001.0 + i, 1.0) for i in range(20)])
        cfg = live_config(tmp_path, server.base_url, transport="ws")
        db = tmp_path / "ws.db"
        p = await start_mmbot("paper", "--config", str(cfg), "--exchange", "binance", "--symbol", "BTC/USDT",
                              "--duration", "3600", "--db", str(db), "--json")

        async def market():  # sizes change at the best levels; prices stay uncrossed
            i = 0
            while p.returncode is None:
                await server.push_depth([(29999.0, 1.0 + i % 3)], [(30001.0, 2.0 + i % 2)])
                if i % 4 == 0:
                    await server.push_trade(30001.0, 0.01, "buy")
                i += 1
                await asyncio.sleep(0.05)  # pacing of the fake market, not a wait for a result

        feeder = asyncio.ensure_future(market())
        # snapshots are written every 1 s of exchange time: two of them mean >= 1 s of updates
        code, _, err = await wait_then_interrupt(
            p, lambda: db_count(db, "select count(*) from pnl_snapshots") >= 2 and db_count(db, "select count(*) from orders") >= 2,
            "two PnL snapshots and two orders")
        assert code == 130 and "Traceback" not in err, err
        status, s = run_summary(db)
        # two snapshots 1 s of exchange time apart need at least two market events; a starved
        # process may see the pushed updates coalesced into fewer events than were sent
        assert status == "interrupted" and s["events"] >= 2 and s["orders_placed"] >= 2
        assert db_count(db, "select count(*) from orders where state in ('new','open','partially_filled')") == 0
    finally:
        if feeder is not None:
            feeder.cancel()
            with contextlib.suppress(BaseException):
                await feeder
        await server.stop()


def test_transport_choice():
    from bot.app import build_source
    from bot.config import Config, with_overrides
    from bot.market_data.ccxt_poll import CcxtPollingSource
    from bot.market_data.ccxt_ws import CcxtWsSource

    base = with_overrides(Config(), **{"exchange": "binance", "symbol": "BTC/USDT"})
    assert isinstance(build_source(base), CcxtWsSource)  # auto: binance has websockets
    assert isinstance(build_source(with_overrides(base, **{"market_data.transport": "rest"})), CcxtPollingSource)


async def test_websocket_source_books_and_trades():
    from fake_binance_ws import FakeBinanceWs

    from bot.market_data.ccxt_ws import CcxtWsSource

    server = FakeBinanceWs()
    await server.start()
    src = CcxtWsSource("binance", "BTC/USDT", depth=10, api_url=server.base_url, duration_s=None)
    try:
        server.set_book([(99.0, 1.0), (98.0, 2.0)], [(101.0, 1.0), (102.0, 3.0)])
        market = await src.start()
        assert market.tick > 0 and src.book.best_bid() == (99.0, 1.0)
        await server.wait_until(lambda: server.subscribe_count("trade") > 0, CEILING_S, "the trades subscription")
        await server.push_trade(101.0, 0.5, "buy")
        await server.push_trade(99.0, 0.25, "sell")
        await server.push_depth([(99.5, 4.0)], [(101.0, 0.0)])
        seen = await collect_trades(server, src, 2)
        assert src.book.best_bid() == (99.5, 4.0) and src.book.best_ask() == (102.0, 3.0)
        assert [(t.price, t.size, t.side) for t in seen[:2]] == [(101.0, 0.5, "buy"), (99.0, 0.25, "sell")]
    finally:
        await src.close()
        await server.stop()


async def collect_trades(server, src, n, trade=None):
    """Book events until ``n`` trades came with them; a depth update is pushed before every
    wait after the first (trades travel on their own socket, so they may arrive later), and
    ``trade`` (price, size, side), if given, before every wait."""
    seen = []
    end = time.monotonic() + CEILING_S
    first = True
    while len(seen) < n:
        assert time.monotonic() < end, f"timed out: {len(seen)} of {n} trades"
        if trade is not None:
            await server.push_trade(*trade)
        if not first or trade is not None:
            await server.push_depth([(97.0, 1.0 + len(seen))], [])
        first = False
        ev = await asyncio.wait_for(src.next(), CEILING_S)
        seen += list(ev.trades)
    return seen


async def test_websocket_trades_survive_malformed_trades_and_a_dead_task():
    """A trade without a price (our parser's case) and one whose price is not a number
    (ccxt's parser raises, which used to end that socket's receive loop) are skipped and
    counted; the good trades after them still arrive. A trade task that ended is restarted."""
    from fake_binance_ws import FakeBinanceWs

    from bot.market_data.ccxt_ws import CcxtWsSource

    server = FakeBinanceWs()
    await server.start()
    src = CcxtWsSource("binance", "BTC/USDT", depth=10, api_url=server.base_url, duration_s=None)
    try:
        server.set_book([(99.0, 1.0)], [(101.0, 1.0)])
        await src.start()
        await server.wait_until(lambda: server.subscribe_count("trade") > 0, CEILING_S, "the trades subscription")
        ms = int(time.time() * 1000)
        bad = {"e": "trade", "E": ms, "s": "BTCUSDT", "t": 900, "q": "1", "T": ms, "m": True, "M": True}
        await server._broadcast("BTCUSDT", "trade", {**bad, "p": None})
        await server._broadcast("BTCUSDT", "trade", {**bad, "t": 901, "p": "abc"})
        await server.push_trade(101.0, 0.5, "buy")
        await server.push_trade(99.0, 0.25, "sell")
        await server.push_depth([(99.5, 2.0)], [])
        seen = await collect_trades(server, src, 2)
        assert [(t.price, t.size, t.side) for t in seen] == [(101.0, 0.5, "buy"), (99.0, 0.25, "sell")]
        assert src.malformed_trades == 1 and src.malformed_messages == 1
        assert not src._trade_task.done()

        # supervision: the task ends (here: cancelled) while the source is open; the next
        # book update restarts it, and trades flow again
        src._trade_task.cancel()
        await server.wait_until(lambda: src._trade_task.done(), CEILING_S, "the trade task to end")
        await server.push_depth([(99.5, 3.0)], [])
        await asyncio.wait_for(src.next(), CEILING_S)
        assert src.trade_task_restarts == 1 and not src._trade_task.done()
        seen = await collect_trades(server, src, 1, trade=(100.5, 0.125, "buy"))
        assert {(t.price, t.size) for t in seen} == {(100.5, 0.125)}
    finally:
        await src.close()
        await server.stop()
