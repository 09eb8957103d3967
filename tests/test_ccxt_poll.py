"""ccxt client factory, market loading and the REST polling source, against a local fake
Binance (tests/fake_exchange.py). ccxt's real binance client code runs; nothing leaves
127.0.0.1.

Note: ccxt's own rate limiter (enableRateLimit, binance spot depth weight 1 at 50 ms)
caps ccxt at ~20 depth requests/s; poll intervals below are chosen with that in mind.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import ccxt
import pytest

from bot.errors import BookError, ExchangeError
from bot.exchanges.ccxt_client import create_ccxt_exchange, load_market, rewrite_url
from bot.market_data.ccxt_poll import CcxtPollingSource
from fake_exchange import FakeBinance

SYMBOL = "BTC/USDT"


# -- client factory ----------------------------------------------------------------------
async def test_api_url_rewrites_host_and_keeps_path() -> None:
    ex = create_ccxt_exchange("binance", api_url="http://127.0.0.1:9999")
    try:
        api = ex.urls["api"]
        assert api["public"] == "http://127.0.0.1:9999/api/v3"
        assert api["fapiPublic"] == "http://127.0.0.1:9999/fapi/v1"
        assert all(v.startswith("http://127.0.0.1:9999/") for v in api.values())
        assert ex.enableRateLimit is True
    finally:
        await ex.close()
    assert rewrite_url("https://api.{hostname}/v5", "http://h:1/pre") == "http://h:1/pre/v5"


async def test_unknown_exchange_id() -> None:
    with pytest.raises(ExchangeError, match=r"unknown exchange 'binanse'.*binance"):
        create_ccxt_exchange("binanse")


# -- load_market ------------------------------------------------------------------------------
async def test_load_market_from_fake(fake_binance: FakeBinance) -> None:
    ex = create_ccxt_exchange("binance", api_url=fake_binance.base_url)
    try:
        m = await load_market(ex, SYMBOL)
    finally:
        await ex.close()
    assert (m.symbol, m.base, m.quote) == (SYMBOL, "BTC", "USDT")
    assert m.tick == Decimal("0.01")
    assert m.lot == Decimal("0.00001")
    assert m.min_notional == Decimal("5")
    assert m.min_size == Decimal("0.00001")
    # spot only: one exchangeInfo call, no futures hosts, no sapi (private) calls
    assert fake_binance.count("/api/v3/exchangeInfo") == 1
    assert fake_binance.unexpected == []
    assert set(fake_binance.requests) == {"/api/v3/exchangeInfo"}


async def test_unknown_symbol(fake_binance: FakeBinance) -> None:
    ex = create_ccxt_exchange("binance", api_url=fake_binance.base_url)
    try:
        with pytest.raises(ExchangeError, match=r"unknown symbol 'DOGE/EUR' on binance"):
            await load_market(ex, "DOGE/EUR")
    finally:
        await ex.close()


async def test_unreachable_server(closed_port_url: str) -> None:
    ex = create_ccxt_exchange("binance", api_url=closed_port_url)
    try:
        with pytest.raises(ExchangeError, match=r"^cannot reach binance: ") as ei:
            await load_market(ex, SYMBOL)
    finally:
        await ex.close()
    assert "\n" not in str(ei.value)


async def test_error_reply_is_one_line(fake_binance: FakeBinance) -> None:
    fake_binance.fail_next("/api/v3/exchangeInfo", status=418, code=-1003, msg="Way too many requests; IP banned.")
    ex = create_ccxt_exchange("binance", api_url=fake_binance.base_url)
    try:
        with pytest.raises(ExchangeError) as ei:
            await load_market(ex, SYMBOL)
    finally:
        await ex.close()
    msg = str(ei.value)
    assert msg.startswith(("binance answered an error:", "cannot reach binance:")) and "\n" not in msg


# -- polling source ---------------------------------------------------------------------------
async def test_poll_books_follow_server(fake_binance: FakeBinance) -> None:
    src = CcxtPollingSource("binance", SYMBOL, api_url=fake_binance.base_url, poll_interval_s=0.05,
                            rate_limit_per_s=50, depth=5)
    try:
        market = await src.start()
        assert market.tick == Decimal("0.01")
        assert src.book.best_bid() == (50000.00, 1.0)
        assert src.book.best_ask() == (50000.01, 1.5)

        ev = await src.next()
        assert ev is not None and ev.book is src.book
        assert ev.book.best_bid() == (50000.00, 1.0)
        assert ev.book.best_ask() == (50000.01, 1.5)
        assert ev.book.mid() == pytest.approx(50000.005)
        assert ev.ts_ns > 1_600_000_000 * 10**9 and ev.recv_ns >= ev.ts_ns  # binance spot: no exchange ts
        first_id = ev.book.update_id

        uid = fake_binance.set_book([(61000.10, 0.5), (61000.00, 2)], [(61000.30, 0.25), (61000.40, 1)])
        ev = await src.next()
        assert ev is not None
        assert ev.book.best_bid() == (61000.10, 0.5)
        assert ev.book.best_ask() == (61000.30, 0.25)
        assert ev.book.mid() == pytest.approx(61000.20)
        assert ev.book.update_id == uid != first_id
        assert len(ev.book.bids) == 2 and len(ev.book.asks) == 2

        # depth is forwarded as the request's limit
        assert "limit=5" in [c for c in fake_binance.calls if c[2] == "/api/v3/depth"][-1][3]
        assert fake_binance.unexpected == []
    finally:
        await src.close()
        await src.close()  # idempotent
    assert await src.next() is None


async def test_duration_ends_feed(fake_binance: FakeBinance) -> None:
    src = CcxtPollingSource("binance", SYMBOL, api_url=fake_binance.base_url, poll_interval_s=0.1,
                            rate_limit_per_s=50, duration_s=0.35)
    try:
        await src.start()
        n = 0
        while await src.next() is not None:
            n += 1
            assert n < 20
    finally:
        await src.close()
    assert 1 <= n <= 4


async def test_throttler_caps_request_rate(fake_binance: FakeBinance) -> None:
    # poll "as fast as possible" for ~1.2 s with a cap of 3 requests per sliding second.
    # Unthrottled this would be ~20 requests (ccxt's own limiter); throttled at most 3 in
    # the first second plus 3 more after it (and the count can only be lower on a slow box).
    src = CcxtPollingSource("binance", SYMBOL, api_url=fake_binance.base_url, poll_interval_s=0.0,
                            rate_limit_per_s=3, duration_s=1.2)
    try:
        await src.start()
        events = 0
        while await src.next() is not None:
            events += 1
    finally:
        await src.close()
    depth_requests = fake_binance.count("/api/v3/depth")
    assert depth_requests == src.requests == events + 1  # +1: the snapshot in start()
    assert 3 <= depth_requests <= 6


async def test_crossed_book_raises(fake_binance: FakeBinance) -> None:
    src = CcxtPollingSource("binance", SYMBOL, api_url=fake_binance.base_url, poll_interval_s=0.02,
                            rate_limit_per_s=50)
    try:
        await src.start()
        fake_binance.book_fault = "crossed"
        with pytest.raises(BookError, match="crossed") as ei:
            await src.next()
        assert "\n" not in str(ei.value)
        # the source's book is left at the last valid snapshot
        assert not src.book.is_crossed()
    finally:
        await src.close()


async def test_empty_book_at_start_raises(fake_binance: FakeBinance) -> None:
    fake_binance.book_fault = "empty"
    src = CcxtPollingSource("binance", SYMBOL, api_url=fake_binance.base_url)
    with pytest.raises(BookError, match="empty"):
        await src.start()
    assert src.exchange is None  # closed on failure


async def test_poll_retries_then_recovers(fake_binance: FakeBinance) -> None:
    src = CcxtPollingSource("binance", SYMBOL, api_url=fake_binance.base_url, poll_interval_s=0.02,
                            rate_limit_per_s=50, max_consecutive_errors=3, retry_backoff_s=0.01)
    try:
        await src.start()
        fake_binance.fail_next("/api/v3/depth", count=2, status=503)
        ev = await src.next()
        assert ev is not None and ev.book.best_bid() == (50000.00, 1.0)
        assert src.requests == 1 + 3

        fake_binance.fail_next("/api/v3/depth", count=3, status=503)
        with pytest.raises(ExchangeError, match=r"^cannot reach binance: 3 failures in a row"):
            await src.next()
    finally:
        await src.close()


async def test_source_unknown_symbol_and_unreachable(fake_binance: FakeBinance, closed_port_url: str) -> None:
    src = CcxtPollingSource("binance", "NOPE/USDT", api_url=fake_binance.base_url)
    with pytest.raises(ExchangeError, match="NOPE/USDT"):
        await src.start()
    src = CcxtPollingSource("binance", SYMBOL, api_url=closed_port_url)
    with pytest.raises(ExchangeError, match="cannot reach binance"):
        await src.start()
    src = CcxtPollingSource("nosuchexchange", SYMBOL)
    with pytest.raises(ExchangeError, match="unknown exchange"):
        await src.start()


# -- the fake's signed endpoints (for later order-path tests) ---------------------------------
async def test_fake_order_endpoints_with_signature(fake_binance: FakeBinance) -> None:
    creds = {"apiKey": fake_binance.api_key, "secret": fake_binance.secret}
    ex = create_ccxt_exchange("binance", api_url=fake_binance.base_url, credentials=creds)
    bad = create_ccxt_exchange("binance", api_url=fake_binance.base_url,
                               credentials={"apiKey": fake_binance.api_key, "secret": "wrong"})
    try:
        await load_market(ex, SYMBOL)
        o = await ex.create_order(SYMBOL, "limit", "buy", 0.001, 49000)
        assert o["status"] == "open" and o["price"] == 49000
        assert [x["id"] for x in await ex.fetch_open_orders(SYMBOL)] == [o["id"]]
        fake_binance.fill_order(int(o["id"]), "0.0004")
        assert (await ex.fetch_order(o["id"], SYMBOL))["filled"] == pytest.approx(0.0004)
        assert (await ex.cancel_order(o["id"], SYMBOL))["status"] == "canceled"
        bal = await ex.fetch_balance()
        assert bal["BTC"]["free"] == pytest.approx(1.0004)
        assert bal["USDT"]["free"] == pytest.approx(100000 - 0.0004 * 49000)
        with pytest.raises(ccxt.OrderNotFound):
            await ex.cancel_order(o["id"], SYMBOL)

        await load_market(bad, SYMBOL)
        with pytest.raises(ccxt.AuthenticationError):
            await bad.fetch_balance()
        assert fake_binance.unexpected == []  # no sapi calls even with keys
    finally:
        await ex.close()
        await bad.close()


async def test_close_while_polling_ends_feed(fake_binance: FakeBinance) -> None:
    src = CcxtPollingSource("binance", SYMBOL, api_url=fake_binance.base_url, poll_interval_s=0.02,
                            rate_limit_per_s=50)
    await src.start()
    fake_binance.latency_s = 0.3  # the next request is in flight when close() runs
    task = asyncio.ensure_future(src.next())
    await asyncio.sleep(0.1)
    await src.close()
    assert await asyncio.wait_for(task, 2.0) is None
