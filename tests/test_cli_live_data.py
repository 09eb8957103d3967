"""`mmbot paper` on public order books through ccxt, against a local Binance REST server on
127.0.0.1 (ccxt's own request and parsing code runs; nothing leaves the machine), and the
one-line errors for unknown exchange, unknown symbol, unreachable network, crossed book."""

import asyncio
import json
import os
import sqlite3
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


async def mmbot(*args, cwd=ROOT, timeout=90):
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out, err = await asyncio.wait_for(p.communicate(), timeout)
    return p.returncode, out.decode(), err.decode()


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
    code, out, err = await mmbot("paper", "--config", str(cfg), "--exchange", "binance", "--symbol", "BTC/USDT",
                                 "--duration", "2", "--db", str(db), "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["status"] == "completed" and s["events"] >= 3 and s["orders_placed"] >= 2
    con = sqlite3.connect(db)
    assert con.execute("select exchange, symbol from runs").fetchone() == ("paper", "BTC/USDT")
    # quotes were rounded to the market's tick (0.01) and lot (0.00001) from exchangeInfo
    for price, size in con.execute("select price, size from orders"):
        assert round(float(price) * 100) == float(price) * 100 and float(size) == 0.001
    assert fake_binance.requests["/api/v3/depth"] >= 3


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
    REST snapshot and depthUpdate stream, and the paper run trades on it."""
    from fake_binance_ws import FakeBinanceWs

    server = FakeBinanceWs()
    await server.start()
    try:
        server.set_book([(29999.0 - i, 1.0) for i in range(20)], [(30001.0 + i, 1.0) for i in range(20)])
        cfg = live_config(tmp_path, server.base_url, transport="ws")
        db = tmp_path / "ws.db"

        async def market():
            for i in range(60):  # sizes change at the best levels; prices stay uncrossed
                await asyncio.sleep(0.05)
                await server.push_depth([(29999.0, 1.0 + i % 3)], [(30001.0, 2.0 + i % 2)])
                if i % 4 == 0:
                    await server.push_trade(30001.0, 0.01, "buy")

        feeder = asyncio.ensure_future(market())
        code, out, err = await mmbot("paper", "--config", str(cfg), "--exchange", "binance", "--symbol", "BTC/USDT",
                                     "--duration", "4", "--db", str(db), "--json")
        feeder.cancel()
        assert code == 0, err
        s = json.loads(out)
        assert s["status"] == "completed" and s["events"] >= 3 and s["orders_placed"] >= 2
        assert sqlite3.connect(db).execute("select count(*) from pnl_snapshots").fetchone()[0] >= 2
    finally:
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
    src = CcxtWsSource("binance", "BTC/USDT", depth=10, api_url=server.base_url, duration_s=10)
    try:
        server.set_book([(99.0, 1.0), (98.0, 2.0)], [(101.0, 1.0), (102.0, 3.0)])
        market = await src.start()
        assert market.tick > 0 and src.book.best_bid() == (99.0, 1.0)
        await asyncio.sleep(0.3)  # the trades subscription is up
        await server.push_trade(101.0, 0.5, "buy")
        await server.push_trade(99.0, 0.25, "sell")
        await asyncio.sleep(0.2)
        await server.push_depth([(99.5, 4.0)], [(101.0, 0.0)])
        seen_trades = []
        for _ in range(5):
            ev = await asyncio.wait_for(src.next(), 5)
            seen_trades += list(ev.trades)
            if src.book.best_bid() == (99.5, 4.0) and len(seen_trades) >= 2:
                break
            await server.push_depth([(97.0, 1.0)], [])
        assert src.book.best_bid() == (99.5, 4.0) and src.book.best_ask() == (102.0, 3.0)
        assert [(t.price, t.size, t.side) for t in seen_trades[:2]] == [(101.0, 0.5, "buy"), (99.0, 0.25, "sell")]
    finally:
        await src.close()
        await server.stop()
