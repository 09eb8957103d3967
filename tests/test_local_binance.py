"""The local Binance spot exchange (paper_trading/local_binance) against the real, unmodified
ccxt 4.5 clients (``ccxt.async_support.binance`` for REST, ``ccxt.pro.binance`` for the
websockets): every endpoint, the matching, the record and each fault, through ccxt calls.

No sleeps: tests wait on conditions (server state or ccxt results) with generous ceilings.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any, AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import ccxt
import ccxt.async_support as ccxt_async
import ccxt.pro as ccxtpro
import pytest

from paper_trading.local_binance import LocalBinance

SYMBOL = "BTC/USDT"
OPTIONS = {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False, "fetchMargins": False,
           "defaultType": "spot"}
CEIL = 60.0  # seconds: ceiling for conditions on a loaded machine


def _rewrite(node: Any, base: str) -> Any:
    """Every URL in ccxt's ``urls['api']`` tree -> scheme/host/port of ``base``, path kept."""
    if isinstance(node, str) and "://" in node:
        t, s = urlsplit(base), urlsplit(node)
        return urlunsplit((t.scheme, t.netloc, s.path, s.query, ""))
    if isinstance(node, dict):
        return {k: _rewrite(v, base) for k, v in node.items()}
    return node


def rest_client(ex: LocalBinance, *, secret: str | None = None, key: str | None = None, **config: Any):
    """A real ccxt async binance client pointed at ``ex``."""
    c = ccxt_async.binance({"apiKey": key or ex.api_key, "secret": secret or ex.secret,
                            "options": dict(OPTIONS), **config})
    api = dict(c.urls["api"])
    c.urls = dict(c.urls)
    c.urls["api"] = _rewrite(api, ex.base_url)
    c.timeout_on_exit = 0
    return c


def pro_client(ex: LocalBinance, *, secret: str | None = None, **config: Any):
    """A real ccxt.pro binance client: REST urls -> ``base_url``, every ws url (market
    streams and ws-api) -> ``ws_url``."""
    c = ccxtpro.binance({"apiKey": ex.api_key, "secret": secret or ex.secret, "options": dict(OPTIONS), **config})
    api = dict(c.urls["api"])
    ws = api.pop("ws")
    api = _rewrite(api, ex.base_url)
    api["ws"] = _rewrite(ws, ex.ws_url)
    c.urls = dict(c.urls)
    c.urls["api"] = api
    c.timeout_on_exit = 0
    return c


@pytest.fixture
async def ex() -> AsyncIterator[LocalBinance]:
    server = LocalBinance()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def client(ex: LocalBinance):
    c = rest_client(ex)
    await c.load_markets()
    try:
        yield c
    finally:
        await c.close()


def D(x: Any) -> Decimal:
    return Decimal(str(x))


# -- REST basics -------------------------------------------------------------------------
async def test_markets_time_depth_and_trades(ex: LocalBinance, client) -> None:
    m = client.market(SYMBOL)
    assert m["id"] == "BTCUSDT" and m["precision"]["price"] == 0.01 and m["precision"]["amount"] == 0.00001
    assert m["limits"]["cost"]["min"] == 5
    ex.clock_offset_ms = 12_345
    t = await client.fetch_time()
    assert t - ccxt.Exchange.milliseconds() > 10_000  # the server clock, not ours
    ob = await client.fetch_order_book(SYMBOL, 5)
    assert ob["bids"][0] == [50000.0, 1.0] and ob["asks"][0] == [50000.01, 1.5] and ob["nonce"] == ex.state.update_ids["BTCUSDT"]
    tid = await ex.push_trade(50000.01, 0.2, "buy")
    trades = await client.fetch_trades(SYMBOL)
    assert [(t["id"], t["side"], t["amount"]) for t in trades] == [(str(tid), "buy", 0.2)]
    assert ex.unexpected == []


async def test_order_lifecycle_by_client_id(ex: LocalBinance, client) -> None:
    o = await client.create_order(SYMBOL, "limit", "buy", 0.001, 49990, {"postOnly": True, "clientOrderId": "mm-1-a"})
    assert (o["clientOrderId"], o["status"], o["postOnly"]) == ("mm-1-a", "open", True)
    assert ex.orders[int(o["id"])].type == "LIMIT_MAKER"
    got = await client.fetch_order(None, SYMBOL, {"origClientOrderId": "mm-1-a"})
    assert got["id"] == o["id"] and got["status"] == "open" and got["price"] == 49990.0
    assert [x["clientOrderId"] for x in await client.fetch_open_orders(SYMBOL)] == ["mm-1-a"]
    # the funds are locked at the limit price
    bal = await client.fetch_balance()
    assert D(bal["USDT"]["used"]) == D("49.99") and D(bal["USDT"]["free"]) == D("100000") - D("49.99")
    c = await client.cancel_order(None, SYMBOL, {"origClientOrderId": "mm-1-a"})
    assert c["status"] == "canceled" and c["info"]["origClientOrderId"] == "mm-1-a"
    assert c["clientOrderId"] != "mm-1-a"  # Binance: the cancel request's own client id
    assert (await client.fetch_order(o["id"], SYMBOL))["status"] == "canceled"
    assert await client.fetch_open_orders(SYMBOL) == []
    with pytest.raises(ccxt.OrderNotFound):
        await client.cancel_order(o["id"], SYMBOL)
    with pytest.raises(ccxt.OrderNotFound):
        await client.fetch_order(None, SYMBOL, {"origClientOrderId": "never-sent"})
    bal = await client.fetch_balance()
    assert D(bal["USDT"]["free"]) == D("100000") and D(bal["USDT"]["used"]) == 0
    rec = ex.record()
    assert [(r["client_order_id"], r["status"], r["closed_by"]) for r in rec["orders"]] == [("mm-1-a", "CANCELED", "client")]


async def test_post_only_that_would_cross_is_rejected(ex: LocalBinance, client) -> None:
    with pytest.raises(ccxt.OrderImmediatelyFillable, match="immediately match and take"):
        await client.create_order(SYMBOL, "limit", "buy", 0.001, 50000.01, {"postOnly": True, "clientOrderId": "pc"})
    assert ex.orders == {}
    assert [(r["client_order_id"], r["code"]) for r in ex.record()["rejections"]] == [("pc", -2010)]


async def test_crossing_limit_takes_from_the_book(ex: LocalBinance, client) -> None:
    """A plain limit buy above the ask walks the external book (taker fills, fee in base)."""
    o = await client.create_order(SYMBOL, "limit", "buy", 1.8, 50000.02, {"clientOrderId": "tk"})
    assert o["status"] == "closed" and o["filled"] == 1.8
    fills = ex.fills
    assert [(f.price, f.qty, f.maker) for f in fills] == [(D("50000.01"), D("1.5"), False), (D("50000.02"), D("0.3"), False)]
    assert ex.state.books["BTCUSDT"][1][0] == (D("50000.02"), D("2.7"))  # liquidity consumed
    bal = await client.fetch_balance()
    cost = D("50000.01") * D("1.5") + D("50000.02") * D("0.3")
    assert D(bal["USDT"]["free"]) == D("100000") - cost
    assert D(bal["BTC"]["free"]) == D("1") + D("1.8") - D("0.0018")  # 0.1 % taker fee in BTC


async def test_taker_flow_partial_and_full_fills(ex: LocalBinance, client) -> None:
    b = await client.create_order(SYMBOL, "limit", "buy", 0.003, 49990, {"postOnly": True, "clientOrderId": "b1"})
    s = await client.create_order(SYMBOL, "limit", "sell", 0.002, 50010, {"postOnly": True, "clientOrderId": "s1"})
    f1 = ex.taker_trade("sell", 0.001, 49990)  # partial
    assert [(f.client_order_id, f.qty, f.maker) for f in f1] == [("b1", D("0.001"), True)]
    assert (await client.fetch_order(b["id"], SYMBOL))["status"] == "open"
    f2 = ex.taker_trade("sell", 0.005, 49980)  # fills the rest of b1 (at its price), rest prints outside
    f3 = ex.taker_trade("buy", 0.002, 50010)   # fills s1 fully
    assert [f.qty for f in f2] == [D("0.002")] and f2[0].price == D("49990")
    assert [f.client_order_id for f in f3] == ["s1"]
    ob, os_ = await client.fetch_order(b["id"], SYMBOL), await client.fetch_order(s["id"], SYMBOL)
    assert (ob["status"], ob["filled"], os_["status"]) == ("closed", 0.003, "closed")
    trades = await client.fetch_my_trades(SYMBOL)
    ids = [int(t["id"]) for t in trades]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [(t["order"], t["side"], t["amount"], t["takerOrMaker"]) for t in trades] == [
        (b["id"], "buy", 0.001, "maker"), (b["id"], "buy", 0.002, "maker"), (s["id"], "sell", 0.002, "maker")]
    assert trades[0]["fee"]["currency"] == "BTC" and trades[2]["fee"]["currency"] == "USDT"
    # fromId / since pagination as the adapter uses it
    later = await client.fetch_my_trades(SYMBOL, params={"fromId": ids[1]})
    assert [int(t["id"]) for t in later] == ids[1:]
    since = await client.fetch_my_trades(SYMBOL, since=trades[2]["timestamp"])
    assert int(since[0]["id"]) >= ids[1] and int(since[-1]["id"]) == ids[2]
    # the trade ids are the public trade ids (same sequence as the trade stream)
    pub = {t["id"] for t in ex.state.public_trades["BTCUSDT"]}
    assert set(ids) <= pub
    # balances: exactly the sum of fills and fees
    bal = await client.fetch_balance()
    btc = D(1) + D("0.003") - D("0.000003") - D("0.002")
    usdt = D(100000) - D("49990") * D("0.003") + D("50010") * D("0.002") * (1 - D("0.001"))
    assert D(bal["BTC"]["total"]) == btc and D(bal["USDT"]["total"]) == usdt
    assert D(bal["BTC"]["used"]) == 0 and D(bal["USDT"]["used"]) == 0
    rec = ex.record()
    assert {r["client_order_id"]: r["status"] for r in rec["orders"]} == {"b1": "FILLED", "s1": "FILLED"}
    assert [r["trade_id"] for r in rec["fills"]] == ids
    assert rec["balances"]["BTC"] == {"free": f"{btc:.8f}", "locked": "0.00000000"}


async def test_cancel_all_orders(ex: LocalBinance, client) -> None:
    for i, p in enumerate((49990, 49980)):
        await client.create_order(SYMBOL, "limit", "buy", 0.001, p, {"clientOrderId": f"ca{i}"})
    await client.create_order(SYMBOL, "limit", "sell", 0.001, 50020, {"clientOrderId": "ca2"})
    res = await client.cancel_all_orders(SYMBOL)
    assert sorted(o["info"]["origClientOrderId"] for o in res) == ["ca0", "ca1", "ca2"]
    assert all(o["status"] == "canceled" for o in res)
    assert await client.fetch_open_orders(SYMBOL) == []
    with pytest.raises(ccxt.OrderNotFound):  # nothing left: Binance answers -2011
        await client.cancel_all_orders(SYMBOL)


async def test_duplicate_client_id_and_insufficient_balance(ex: LocalBinance, client) -> None:
    await client.create_order(SYMBOL, "limit", "buy", 0.001, 49990, {"clientOrderId": "dup"})
    with pytest.raises(ccxt.InvalidOrder, match="Duplicate order sent"):
        await client.create_order(SYMBOL, "limit", "buy", 0.001, 49980, {"clientOrderId": "dup"})
    assert len(ex.orders) == 1
    with pytest.raises(ccxt.InsufficientFunds):
        await client.create_order(SYMBOL, "limit", "sell", 2, 50100, {"clientOrderId": "big"})
    with pytest.raises(ccxt.InsufficientFunds):
        await client.create_order(SYMBOL, "limit", "buy", 3, 49000, {"clientOrderId": "big2"})
    assert [r["code"] for r in ex.record()["rejections"]] == [-2010, -2010, -2010]
    # Binance's rule: unique among *open* orders; once closed the id may be sent again
    await client.cancel_order(None, SYMBOL, {"origClientOrderId": "dup"})
    o = await client.create_order(SYMBOL, "limit", "buy", 0.001, 49980, {"clientOrderId": "dup"})
    assert o["status"] == "open" and len(ex.orders) == 2
