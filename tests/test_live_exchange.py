"""The live ccxt adapter against the local Binance REST fake (real ccxt client code, real
HTTP on 127.0.0.1): order entry, precision, client ids, and every error rule of
bot/exchanges/live.py. No test waits on time: each waits for an order update or a server
event with a generous ceiling."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal as D

import pytest

from bot.exchanges.live import CcxtLiveExchange, plain
from bot.orders import Order, OrderState, Side

CEILING = 90.0
CREDS = {"apiKey": "test-key", "secret": "test-secret"}


async def make(fake, **kw) -> CcxtLiveExchange:
    args = dict(credentials=CREDS, api_url=fake.base_url, fills_transport="rest", poll_interval_s=3600,
                request_timeout_s=3.0, resolve_interval_s=0.2)
    args.update(kw)
    ex = CcxtLiveExchange("binance", **args)
    m = await ex.connect("BTC/USDT")
    await ex.start(m)
    return ex


async def final(ex: CcxtLiveExchange, cid: str, seen: list | None = None) -> OrderState:
    """Wait for the first resolved (not in-flight) state reported for ``cid``."""
    async def loop():
        while True:
            a = await ex.order_updates.get()
            if seen is not None:
                seen.append((a.client_id, a.state))
            if a.client_id == cid and a.state not in (OrderState.PENDING_NEW, OrderState.PENDING_CANCEL, OrderState.UNKNOWN):
                return a
    return await asyncio.wait_for(loop(), CEILING)


def buy(price="49000", size="0.001", **kw) -> Order:
    return Order("BTC/USDT", Side.BUY, D(price), D(size), **kw)


def test_venue_names_keep_testnets_and_local_servers_apart():
    from bot.exchanges.live import venue_name

    assert venue_name("binance") == "binance"
    assert venue_name("binance", sandbox=True) == "binance-sandbox"
    assert venue_name("binance", api_url="http://127.0.0.1:8765") == "binance@127.0.0.1:8765"


def test_plain_never_exponent():
    assert plain(D("1E+2")) == "100"
    assert plain(D("1E-7")) == "0.0000001"
    assert plain(D("0.00100")) == "0.001"


async def test_post_only_order_with_client_id_and_plain_strings(fake_binance):
    ex = await make(fake_binance)
    try:
        o = buy(size="1E-3")
        ack = await ex.place(o, 0)
        assert ack.state is OrderState.PENDING_NEW  # answered at once; the request runs as a task
        a = await final(ex, o.client_id)
        assert a.state is OrderState.OPEN and a.exchange_id
        req = fake_binance.order_requests[-1]
        assert req["newClientOrderId"] == o.client_id
        assert req["type"] == "LIMIT_MAKER"  # ccxt's unified postOnly
        assert req["quantity"] == "0.001" and req["price"] == "49000"
        assert "e" not in req["quantity"].lower() and "e" not in req["price"].lower()
    finally:
        await ex.close()


async def test_price_off_tick_is_rejected_locally(fake_binance):
    ex = await make(fake_binance)
    try:
        o = buy(price="49000.005")
        await ex.place(o, 0)
        a = await final(ex, o.client_id)
        assert a.state is OrderState.REJECTED and "precision" in a.reason
        assert fake_binance.count("/api/v3/order") == 0
    finally:
        await ex.close()


async def test_timeout_although_placed_resolves_to_open_without_resend(fake_binance):
    ex = await make(fake_binance, request_timeout_s=2.0)
    try:
        fake_binance.hang_after("/api/v3/order")
        o = buy()
        seen: list = []
        await ex.place(o, 0)
        a = await final(ex, o.client_id, seen)
        assert (o.client_id, OrderState.UNKNOWN) in seen
        assert a.state is OrderState.OPEN
        assert len(fake_binance.order_requests) == 1  # never re-sent
        assert [x.client_order_id for x in fake_binance.orders.values()] == [o.client_id]
        assert ex.counters["unknown_outcomes"] == 1
    finally:
        await ex.close()


async def test_5xx_before_placing_resolves_to_rejected_without_resend(fake_binance):
    ex = await make(fake_binance)
    try:
        fake_binance.fail_next("/api/v3/order", status=503)
        o = buy()
        seen: list = []
        await ex.place(o, 0)
        a = await final(ex, o.client_id, seen)
        assert (o.client_id, OrderState.UNKNOWN) in seen
        assert a.state is OrderState.REJECTED and "not at the exchange" in a.reason
        assert fake_binance.count("/api/v3/order") >= 2  # one POST, then GETs by client id
        assert len(fake_binance.order_requests) == 0 and not fake_binance.orders
    finally:
        await ex.close()


async def test_invalid_nonce_resyncs_once_and_retries_once(fake_binance):
    ex = await make(fake_binance)
    try:
        fake_binance.clock_offset_ms = -20_000  # the server's clock is 20 s behind ours
        o = buy()
        await ex.place(o, 0)
        a = await final(ex, o.client_id)
        assert a.state is OrderState.OPEN
        assert ex.counters["clock_resyncs"] == 1
        assert fake_binance.count("/api/v3/time") == 1
        assert len(fake_binance.orders) == 1
    finally:
        await ex.close()


async def test_invalid_nonce_twice_is_a_rejection_not_a_loop(fake_binance):
    ex = await make(fake_binance)
    try:
        fake_binance.fail_next("/api/v3/order", count=5, status=400, code=-1021,
                               msg="Timestamp for this request is outside of the recvWindow.")
        o = buy()
        await ex.place(o, 0)
        a = await final(ex, o.client_id)
        assert a.state is OrderState.REJECTED and "clock" in a.reason
        assert fake_binance.count("/api/v3/order") == 2  # first try + one retry after the resync
    finally:
        await ex.close()


async def test_rate_limit_backs_off_with_retry_after_and_sends_nothing(fake_binance):
    ex = await make(fake_binance)
    try:
        fake_binance.fail_next("/api/v3/order", status=429, code=-1003, msg="Too many requests.",
                               headers={"Retry-After": "600"})
        o = buy()
        await ex.place(o, 0)
        a = await final(ex, o.client_id)
        assert a.state is OrderState.REJECTED and "rate limited" in a.reason
        assert ex.banned and ex.counters["rate_limited"] == 1
        assert ex.banned_until - time.monotonic() > 300  # the server's Retry-After (600 s), not a guess
        n = fake_binance.count("/api/v3/order")
        for _ in range(5):  # the engine would pull quotes; a placement anyway is refused locally
            ack = await ex.place(buy(), 0)
            assert ack.state is OrderState.REJECTED
        assert fake_binance.count("/api/v3/order") == n  # no request storm
    finally:
        await ex.close()


async def test_ban_418_is_a_ban_too(fake_binance):
    ex = await make(fake_binance)
    try:
        fake_binance.fail_next("/api/v3/order", status=418, code=-1003, msg="Way too many requests; IP banned.",
                               headers={"Retry-After": "120"})
        o = buy()
        await ex.place(o, 0)
        assert (await final(ex, o.client_id)).state is OrderState.REJECTED
        assert ex.banned
    finally:
        await ex.close()


async def test_insufficient_funds_blocks_that_side_only(fake_binance):
    fake_binance.free["USDT"] = D("10")
    ex = await make(fake_binance)
    try:
        o = buy()
        await ex.place(o, 0)
        a = await final(ex, o.client_id)
        assert a.state is OrderState.REJECTED and "insufficient" in a.reason
        assert Side.BUY in ex.side_blocked and Side.SELL not in ex.side_blocked
        n = len(fake_binance.order_requests)
        assert (await ex.place(buy(), 0)).state is OrderState.REJECTED
        assert len(fake_binance.order_requests) == n
        s = Order("BTC/USDT", Side.SELL, D("51000"), D("0.001"))
        await ex.place(s, 0)
        assert (await final(ex, s.client_id)).state is OrderState.OPEN
        fake_binance.free["USDT"] = D("100000")  # funds arrive: the side comes back
        ex.mid = 50000.0
        await ex.refresh_balances(D("0.001"))
        assert Side.BUY not in ex.side_blocked
    finally:
        await ex.close()


async def test_post_only_that_would_cross_is_a_rejection(fake_binance):
    ex = await make(fake_binance)
    try:
        o = buy(price="50000.01")  # at the best ask
        await ex.place(o, 0)
        a = await final(ex, o.client_id)
        assert a.state is OrderState.REJECTED and "post-only" in a.reason
        assert ex.counters["post_only_rejects"] == 1 and not ex.side_blocked
    finally:
        await ex.close()


async def test_duplicate_client_id_is_resolved_never_resent(fake_binance):
    ex = await make(fake_binance)
    try:
        o = buy()
        # the same client id already rests at the exchange (e.g. sent by a run that crashed)
        await ex.ex.create_order("BTC/USDT", "limit", "buy", "0.001", "49000", {"clientOrderId": o.client_id, "postOnly": True})
        await ex.place(o, 0)
        a = await final(ex, o.client_id)
        assert a.state is OrderState.OPEN and ex.counters["duplicate_client_id"] == 1
        assert len(fake_binance.order_requests) == 2 and len(fake_binance.orders) == 1
        assert (await ex.place(o, 0)).state is OrderState.REJECTED  # the adapter never sends a client id twice
        assert len(fake_binance.order_requests) == 2
    finally:
        await ex.close()


async def test_authentication_error_is_fatal_with_a_clear_message(fake_binance):
    stopped: list[str] = []
    ex = await make(fake_binance, credentials={"apiKey": "wrong-key", "secret": "test-secret"}, on_fatal=stopped.append)
    try:
        o = buy()
        await ex.place(o, 0)
        await final(ex, o.client_id)
        assert ex.fatal and "refused our API key" in ex.fatal and stopped == [ex.fatal]
        assert "test-secret" not in ex.fatal
        assert (await ex.place(buy(), 0)).state is OrderState.REJECTED
    finally:
        await ex.close()


async def test_cancel_and_cancel_timeout_that_took_effect(fake_binance):
    ex = await make(fake_binance, request_timeout_s=2.0)
    try:
        o = buy()
        await ex.place(o, 0)
        await final(ex, o.client_id)
        o.state = OrderState.OPEN
        assert (await ex.cancel(o, 0)).state is OrderState.PENDING_CANCEL
        assert (await final(ex, o.client_id)).state is OrderState.CANCELED
        o2 = buy(price="48000")
        await ex.place(o2, 0)
        await final(ex, o2.client_id)
        o2.state = OrderState.OPEN
        fake_binance.hang_after("/api/v3/order")  # the DELETE cancels, then never answers
        seen: list = []
        await ex.cancel(o2, 0)
        a = await final(ex, o2.client_id, seen)
        assert (o2.client_id, OrderState.UNKNOWN) in seen and a.state is OrderState.CANCELED
        assert all(not x.is_open for x in fake_binance.orders.values())
    finally:
        await ex.close()


async def test_cancel_of_an_order_that_traded_out_resolves_to_filled(fake_binance):
    ex = await make(fake_binance)
    try:
        o = buy()
        await ex.place(o, 0)
        a = await final(ex, o.client_id)
        fake_binance.fill_order(int(a.exchange_id))
        o.state = OrderState.OPEN
        await ex.cancel(o, 0)
        assert (await final(ex, o.client_id)).state is OrderState.FILLED
        assert ex.counters["cancel_not_found"] == 1
    finally:
        await ex.close()


async def test_cancel_waits_for_an_unresolved_placement(fake_binance):
    ex = await make(fake_binance, request_timeout_s=2.0)
    try:
        fake_binance.hang_after("/api/v3/order")
        o = buy()
        await ex.place(o, 0)
        await ex.cancel(o, 0)  # while the placement is in flight
        states: list = []

        async def until_canceled():
            while True:
                a = await ex.order_updates.get()
                states.append(a.state)
                if a.state is OrderState.CANCELED:
                    return
        await asyncio.wait_for(until_canceled(), CEILING)
        assert OrderState.OPEN in states  # resolved first, then cancelled
        assert len(fake_binance.order_requests) == 1
        assert all(not x.is_open for x in fake_binance.orders.values())
    finally:
        await ex.close()


async def test_fills_by_polling_my_trades_once_each(fake_binance):
    fake_binance.commission_rate = D("0.001")
    ex = await make(fake_binance)
    try:
        o = buy()
        await ex.place(o, 0)
        a = await final(ex, o.client_id)
        fake_binance.fill_order(int(a.exchange_id), qty="0.0004")
        fake_binance.fill_order(int(a.exchange_id))
        assert await ex.poll_fills_once() == 2
        assert await ex.poll_fills_once() == 0  # the cursor moved: nothing twice
        f1, f2 = ex.fills.get_nowait(), ex.fills.get_nowait()
        assert {f1.client_id, f2.client_id} == {o.client_id}
        assert f1.size + f2.size == D("0.001") and f1.side is Side.BUY
        assert f1.exchange == ex.name == f"binance@127.0.0.1:{fake_binance.port}"  # a local stand-in is its own venue
        assert f1.fee == D("49000") * D("0.0004") * D("0.001")
    finally:
        await ex.close()


async def test_cancel_all_reports_every_order_sent(fake_binance):
    ex = await make(fake_binance)
    try:
        orders = [buy(price=str(49000 - i)) for i in range(3)]
        for o in orders:
            await ex.place(o, 0)
        acks = await ex.cancel_all("BTC/USDT", 0)
        assert {a.client_id: a.state for a in acks} == {o.client_id: OrderState.CANCELED for o in orders}
        assert not [x for x in fake_binance.orders.values() if x.is_open]
    finally:
        await ex.close()


async def test_fee_currency_prices_from_the_ticker_cached_inverse_and_missing():
    """A third fee currency is valued at the FEE/QUOTE ticker mid (or 1 / QUOTE/FEE), the
    price is reused for fee_rate_max_age_s; with no market for it the fee stays
    unconverted and flagged (fee 0 in quote, cost and currency kept, rate None)."""
    from paper_trading.local_binance import LocalBinance, MarketSpec

    markets = [MarketSpec(), MarketSpec(base="BNB", quote="USDT"), MarketSpec(base="USDT", quote="EUR", min_notional="1")]
    async with LocalBinance(markets) as srv:
        srv.set_book([(600.00, 5)], [(600.10, 5)], symbol="BNBUSDT")
        srv.set_book([(0.90, 1000)], [(0.92, 1000)], symbol="USDTEUR")
        ex = await make(srv)
        try:
            assert await ex.fee_rate("USDT") == 1
            assert await ex.fee_rate("BNB") == D("600.05")
            srv.set_book([(700.00, 5)], [(700.10, 5)], symbol="BNBUSDT")
            assert await ex.fee_rate("BNB") == D("600.05")  # cached
            assert srv.count("/api/v3/ticker/24hr") == 1
            ex.fee_rate_max_age_s = 0.0
            assert await ex.fee_rate("BNB") == D("700.05")  # refetched once too old
            assert await ex.fee_rate("EUR") == 1 / D("0.91")  # only USDT/EUR is listed
            trade = {"id": "7", "price": 50000.0, "amount": 0.001, "side": "buy", "timestamp": 1, "symbol": "BTC/USDT",
                     "fee": {"cost": 0.0001, "currency": "BNB"}}
            f = await ex.make_fill(trade, "c1")
            assert (f.fee_cost, f.fee_currency, f.fee_rate, f.fee) == (D("0.0001"), "BNB", D("700.05"), D("0.070005"))
            f = await ex.make_fill({**trade, "id": "8", "fee": {"cost": 0.5, "currency": "XYZ"}}, "c1")
            assert (f.fee_cost, f.fee_currency, f.fee_rate, f.fee) == (D("0.5"), "XYZ", None, 0)
            assert ex.counters["unconverted_fees"] == 1
            f = await ex.make_fill({**trade, "id": "9", "fee": {"cost": 0.000001, "currency": "BTC"}}, "c1")
            assert (f.fee_rate, f.fee) == (D("50000.0"), D("0.000001") * D("50000.0")) and ex.base_fees["9"] == D("0.000001")
        finally:
            await ex.close()
