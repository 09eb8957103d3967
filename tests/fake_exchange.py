"""A local fake of Binance's spot REST API for tests (aiohttp.web on 127.0.0.1).

ccxt's real ``binance`` client is pointed at it with
``create_ccxt_exchange("binance", api_url=server.base_url)`` (which rewrites every
``exchange.urls['api']`` entry to this host, keeping paths such as ``/api/v3``).

Served (the endpoints ccxt 4.5 calls for the unified methods in parentheses):

* ``GET  /api/v3/exchangeInfo``  (load_markets / fetch_markets with types=['spot'])
* ``GET  /api/v3/depth``         (fetch_order_book)
* ``GET  /api/v3/ping``, ``GET /api/v3/time`` (fetch_time)
* signed, HMAC-SHA256 checked (``X-MBX-APIKEY`` header + ``signature`` param):
  ``POST /api/v3/order`` (create_order), ``DELETE /api/v3/order`` (cancel_order),
  ``GET /api/v3/order`` (fetch_order), ``GET /api/v3/openOrders`` (fetch_open_orders),
  ``GET /api/v3/account`` (fetch_balance).

Anything else answers 404 and is recorded in :attr:`FakeBinance.unexpected`, so a test can
assert that ccxt called nothing it should not (e.g. ``sapi`` endpoints without keys).

Test controls:

* :meth:`FakeBinance.set_book` replaces the served book (levels ``(price, qty)``; numbers
  or decimal strings) and bumps ``lastUpdateId``;
* :attr:`FakeBinance.book_fault` = ``"crossed"`` / ``"empty"`` serves a broken book;
* :meth:`FakeBinance.fail_next` makes the next N calls of a path answer an HTTP error
  (503 -> ccxt ``ExchangeNotAvailable``; 400 + Binance code -> the mapped ccxt error);
* :attr:`FakeBinance.latency_s` delays every reply;
* :attr:`FakeBinance.requests` counts calls per path; :attr:`FakeBinance.calls` logs
  ``(monotonic_s, method, path, query)``;
* :attr:`FakeBinance.clock_offset_ms` shifts the server clock (``/api/v3/time`` and the
  recvWindow check) to provoke -1021; :meth:`FakeBinance.hang_after` makes the next N calls
  of a path run (the order is placed / cancelled) and then never answer, as a request that
  times out although the exchange acted; ``GET /api/v3/myTrades`` and ``DELETE
  /api/v3/openOrders`` serve ``fetch_my_trades`` / ``cancel_all_orders``;
  :attr:`FakeBinance.trades` lists every execution;
* orders: limit orders that do not cross the served book rest; crossing limit and
  market orders fill at once at the best opposite level (whole size, no depth walk);
  :meth:`FakeBinance.fill_order` fills a resting order (a maker fill). Balances move
  with fills; commission is 0 unless ``commission_rate`` is set.

Prices are quote/base, quantities base units, Binance times are ms since the epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Iterable, Sequence
from urllib.parse import parse_qsl

from aiohttp import web

Level = Sequence[Any]


def _s(x: Any) -> str:
    """Binance-style decimal string (8 decimals are what Binance sends; exact for tests)."""
    d = x if isinstance(x, Decimal) else Decimal(str(x))
    return f"{d:.8f}"


def _ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class FakeMarket:
    """One spot market as Binance's exchangeInfo describes it."""

    base: str = "BTC"
    quote: str = "USDT"
    tick_size: str = "0.01"
    step_size: str = "0.00001"
    min_qty: str = "0.00001"
    min_notional: str = "5"
    status: str = "TRADING"

    @property
    def id(self) -> str:
        return self.base + self.quote

    def info(self) -> dict[str, Any]:
        """The ``symbols[]`` entry of GET /api/v3/exchangeInfo (shape of the live API, 2024/25)."""
        return {
            "symbol": self.id,
            "status": self.status,
            "baseAsset": self.base,
            "baseAssetPrecision": 8,
            "quoteAsset": self.quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT",
                           "TAKE_PROFIT", "TAKE_PROFIT_LIMIT"],
            "icebergAllowed": True,
            "ocoAllowed": True,
            "otoAllowed": True,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": True,
            "cancelReplaceAllowed": True,
            "amendAllowed": True,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": True,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": _s(self.tick_size), "maxPrice": "1000000.00000000",
                 "tickSize": _s(self.tick_size)},
                {"filterType": "LOT_SIZE", "minQty": _s(self.min_qty), "maxQty": "9000.00000000",
                 "stepSize": _s(self.step_size)},
                {"filterType": "ICEBERG_PARTS", "limit": 10},
                {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000", "maxQty": "100.00000000",
                 "stepSize": "0.00000000"},
                {"filterType": "TRAILING_DELTA", "minTrailingAboveDelta": 10, "maxTrailingAboveDelta": 2000,
                 "minTrailingBelowDelta": 10, "maxTrailingBelowDelta": 2000},
                {"filterType": "PERCENT_PRICE_BY_SIDE", "bidMultiplierUp": "5", "bidMultiplierDown": "0.2",
                 "askMultiplierUp": "5", "askMultiplierDown": "0.2", "avgPriceMins": 5},
                {"filterType": "NOTIONAL", "minNotional": _s(self.min_notional), "applyMinToMarket": True,
                 "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
                {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
                {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
            ],
            "permissions": [],
            "permissionSets": [["SPOT", "MARGIN"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
        }


@dataclass
class FakeOrder:
    """A spot order as the fake stores it (Decimal prices quote/base, quantities base)."""

    order_id: int
    client_order_id: str
    symbol: str
    side: str  # "BUY" | "SELL"
    type: str  # "LIMIT" | "LIMIT_MAKER" | "MARKET"
    price: Decimal
    orig_qty: Decimal
    time_in_force: str = "GTC"
    executed_qty: Decimal = Decimal(0)
    cum_quote: Decimal = Decimal(0)
    status: str = "NEW"
    time_ms: int = field(default_factory=_ms)
    update_ms: int = field(default_factory=_ms)
    fills: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_open(self) -> bool:
        return self.status in ("NEW", "PARTIALLY_FILLED")

    def to_json(self) -> dict[str, Any]:
        """GET /api/v3/order shape."""
        return {
            "symbol": self.symbol,
            "orderId": self.order_id,
            "orderListId": -1,
            "clientOrderId": self.client_order_id,
            "price": _s(self.price),
            "origQty": _s(self.orig_qty),
            "executedQty": _s(self.executed_qty),
            "cummulativeQuoteQty": _s(self.cum_quote),
            "status": self.status,
            "timeInForce": self.time_in_force,
            "type": self.type,
            "side": self.side,
            "stopPrice": "0.00000000",
            "icebergQty": "0.00000000",
            "time": self.time_ms,
            "updateTime": self.update_ms,
            "isWorking": True,
            "workingTime": self.time_ms,
            "origQuoteOrderQty": "0.00000000",
            "selfTradePreventionMode": "EXPIRE_MAKER",
        }


class BinanceApiError(Exception):
    """Raised inside handlers: becomes ``{"code": code, "msg": msg}`` with HTTP ``status``."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


class FakeBinance:
    """Local Binance spot REST server. ``await start()`` -> base URL; ``await stop()``.

    Args:
        markets: markets to list (default: BTCUSDT tick 0.01 / lot 0.00001 / min notional
            5, and ETHUSDT).
        api_key, secret: credentials signed requests must use.
        balances: initial free balances per asset (default 1 BTC, 100000 USDT).
        recv_window_ms: accepted ``timestamp`` skew when the request sends no recvWindow.
    """

    def __init__(
        self,
        markets: Iterable[FakeMarket] | None = None,
        *,
        api_key: str = "test-key",
        secret: str = "test-secret",
        balances: dict[str, str | Decimal] | None = None,
        recv_window_ms: int = 5000,
    ) -> None:
        mk = list(markets) if markets is not None else [
            FakeMarket(),
            FakeMarket(base="ETH", quote="USDT", tick_size="0.01", step_size="0.0001", min_qty="0.0001"),
        ]
        self.markets: dict[str, FakeMarket] = {m.id: m for m in mk}
        self.api_key, self.secret = api_key, secret
        self.recv_window_ms = recv_window_ms
        self.commission_rate = Decimal(0)
        self.free: dict[str, Decimal] = {
            k: Decimal(str(v)) for k, v in (balances or {"BTC": "1", "USDT": "100000"}).items()
        }
        self.locked: dict[str, Decimal] = {}
        self.clock_offset_ms = 0
        self.trades: list[dict[str, Any]] = []  # every execution, myTrades shape
        self._hang: dict[str, int] = {}
        self.hung = asyncio.Event()  # set when a hung request has been processed
        self._unhang = asyncio.Event()  # set by stop(): hung requests answer (late)

        # market data state (per symbol id); levels stored as (Decimal price, Decimal qty)
        self._books: dict[str, tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]] = {}
        self._update_id: dict[str, int] = {}
        for sid in self.markets:
            self._update_id[sid] = 1000
        if "BTCUSDT" in self.markets:
            self.set_book([(50000.00, 1.0), (49999.99, 2.0)], [(50000.01, 1.5), (50000.02, 3.0)], symbol="BTCUSDT")
        self.book_fault: str | None = None  # None | "crossed" | "empty"
        self.latency_s = 0.0

        # request bookkeeping
        self.requests: Counter[str] = Counter()  # path -> count (all methods)
        self.calls: list[tuple[float, str, str, str]] = []
        self.unexpected: list[str] = []
        self._failures: dict[str, list[tuple[int, int | None, str]]] = {}

        # orders
        self.orders: dict[int, FakeOrder] = {}
        self.order_requests: list[dict[str, str]] = []  # parameters of every POST /api/v3/order, as sent
        self._order_ids = itertools.count(1)
        self._trade_ids = itertools.count(1)

        self._runner: web.AppRunner | None = None
        self.base_url: str | None = None
        self.port: int | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def make_app(self) -> web.Application:
        """The aiohttp application (exposed so tests may add routes before ``start``)."""
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_get("/api/v3/ping", self._ping)
        r.add_get("/api/v3/time", self._time)
        r.add_get("/api/v3/exchangeInfo", self._exchange_info)
        r.add_get("/api/v3/depth", self._depth)
        r.add_post("/api/v3/order", self._new_order)
        r.add_delete("/api/v3/order", self._cancel_order)
        r.add_get("/api/v3/order", self._get_order)
        r.add_get("/api/v3/openOrders", self._open_orders)
        r.add_get("/api/v3/account", self._account)
        r.add_get("/api/v3/myTrades", self._my_trades)
        r.add_delete("/api/v3/openOrders", self._cancel_open_orders)
        return app

    async def start(self, app: web.Application | None = None) -> str:
        """Listen on 127.0.0.1 on a free port; returns ``http://127.0.0.1:PORT``."""
        self._runner = web.AppRunner(app or self.make_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.base_url = f"http://127.0.0.1:{self.port}"
        return self.base_url

    async def stop(self) -> None:
        """Stop listening and close connections. Safe to call twice."""
        self._unhang.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> "FakeBinance":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- test controls ------------------------------------------------------------------
    def set_book(self, bids: Iterable[Level], asks: Iterable[Level], symbol: str = "BTCUSDT") -> int:
        """Serve this book for ``symbol`` (exchange id, e.g. ``"BTCUSDT"``) from now on.

        Levels are ``(price, qty)``; they are sorted best-first. Returns the new
        ``lastUpdateId``.
        """
        b = sorted(((Decimal(str(p)), Decimal(str(q))) for p, q in bids), key=lambda x: x[0], reverse=True)
        a = sorted(((Decimal(str(p)), Decimal(str(q))) for p, q in asks), key=lambda x: x[0])
        self._books[symbol] = (b, a)
        self._update_id[symbol] = self._update_id.get(symbol, 1000) + 1
        return self._update_id[symbol]

    def fail_next(self, path: str, count: int = 1, status: int = 503, code: int | None = None,
                  msg: str = "Service Unavailable", headers: dict[str, str] | None = None) -> None:
        """Answer the next ``count`` requests to ``path`` with HTTP ``status``.

        With ``code`` the body is Binance's ``{"code": code, "msg": msg}`` (ccxt maps the
        code, e.g. -1121 -> BadSymbol); without, a plain-text body.
        """
        self._failures.setdefault(path, []).extend([(status, code, msg, headers)] * count)

    def hang_after(self, path: str, count: int = 1) -> None:
        """The next ``count`` requests to ``path`` take effect, then get no answer (the
        client's timeout fires); :attr:`hung` is set once one has been processed."""
        self._hang[path] = self._hang.get(path, 0) + count

    def count(self, path: str) -> int:
        """Number of requests received for ``path`` (all methods, failed ones included)."""
        return self.requests[path]

    def fill_order(self, order_id: int, qty: Any = None, price: Any = None) -> FakeOrder:
        """Fill a resting order (maker fill): ``qty`` base units (default: the rest) at
        ``price`` (default: the order's limit price)."""
        o = self.orders[order_id]
        if not o.is_open:
            raise ValueError(f"order {order_id} is {o.status}")
        rest = o.orig_qty - o.executed_qty
        q = rest if qty is None else min(rest, Decimal(str(qty)))
        self._fill(o, q, o.price if price is None else Decimal(str(price)), maker=True)
        return o

    # -- plumbing -----------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        self.requests[path] += 1
        self.calls.append((time.monotonic(), request.method, path, request.query_string))
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        queue = self._failures.get(path)
        if queue:
            status, code, msg, headers = queue.pop(0)
            if code is None:
                return web.Response(status=status, text=msg, headers=headers)
            return web.json_response({"code": code, "msg": msg}, status=status, headers=headers)
        try:
            resp = await handler(request)
            if self._hang.get(path):
                self._hang[path] -= 1
                self.hung.set()
                with contextlib.suppress(asyncio.TimeoutError):  # the client times out first
                    await asyncio.wait_for(self._unhang.wait(), 3600)
            return resp
        except web.HTTPNotFound:
            self.unexpected.append(f"{request.method} {path}")
            return web.Response(status=404, text="<html><body><h1>404 Not Found</h1></body></html>",
                                content_type="text/html")
        except web.HTTPMethodNotAllowed:
            self.unexpected.append(f"{request.method} {path}")
            raise
        except BinanceApiError as e:
            return web.json_response({"code": e.code, "msg": e.msg}, status=e.status)

    def _symbol(self, params: dict[str, str]) -> FakeMarket:
        sid = params.get("symbol")
        if not sid:
            raise BinanceApiError(400, -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        m = self.markets.get(sid)
        if m is None:
            raise BinanceApiError(400, -1121, "Invalid symbol.")
        return m

    async def _signed_params(self, request: web.Request) -> dict[str, str]:
        """Check API key, HMAC-SHA256 signature and timestamp; return all parameters.

        Binance signs ``totalParams`` = query string concatenated with the body (no
        separator), ``signature`` excluded.
        """
        key = request.headers.get("X-MBX-APIKEY")
        if not key:
            raise BinanceApiError(401, -2014, "API-key format invalid.")
        if key != self.api_key:
            raise BinanceApiError(401, -2015, "Invalid API-key, IP, or permissions for action.")
        query = request.rel_url.raw_query_string
        body = await request.text() if request.can_read_body else ""
        signature = None
        parts = []
        for raw in (query, body):
            kept = []
            for item in raw.split("&") if raw else []:
                if item.startswith("signature="):
                    signature = item[len("signature="):]
                else:
                    kept.append(item)
            parts.append("&".join(kept))
        if signature is None:
            raise BinanceApiError(400, -1102, "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.")
        payload = parts[0] + parts[1]
        expected = hmac.new(self.secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.lower()):
            raise BinanceApiError(400, -1022, "Signature for this request is not valid.")
        params = dict(parse_qsl(parts[0], keep_blank_values=True))
        params.update(parse_qsl(parts[1], keep_blank_values=True))
        try:
            ts = int(params["timestamp"])
        except (KeyError, ValueError):
            raise BinanceApiError(400, -1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.") from None
        window = int(params.get("recvWindow", self.recv_window_ms))
        now = _ms() + self.clock_offset_ms
        if ts > now + 1000 or now - ts > window:
            raise BinanceApiError(400, -1021, "Timestamp for this request is outside of the recvWindow.")
        return params

    # -- public endpoints ---------------------------------------------------------------
    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": _ms() + self.clock_offset_ms})

    async def _exchange_info(self, request: web.Request) -> web.Response:
        return web.json_response({
            "timezone": "UTC",
            "serverTime": _ms(),
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
                {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
            ],
            "exchangeFilters": [],
            "symbols": [m.info() for m in self.markets.values()],
        })

    async def _depth(self, request: web.Request) -> web.Response:
        m = self._symbol(dict(request.query))
        try:
            limit = int(request.query.get("limit", 100))
        except ValueError:
            raise BinanceApiError(400, -1100, "Illegal characters found in parameter 'limit'.") from None
        if not 1 <= limit <= 5000:
            raise BinanceApiError(400, -1100, "Illegal characters found in parameter 'limit'; legal range is '1..5000'.")
        bids, asks = self._books.get(m.id, ([], []))
        if self.book_fault == "empty":
            bids, asks = [], []
        elif self.book_fault == "crossed" and bids and asks:
            # lift the best bid above the best ask
            bids = [(asks[0][0] + Decimal(m.tick_size), bids[0][1])] + bids
        return web.json_response({
            "lastUpdateId": self._update_id.get(m.id, 1000),
            "bids": [[_s(p), _s(q)] for p, q in bids[:limit]],
            "asks": [[_s(p), _s(q)] for p, q in asks[:limit]],
        })

    # -- signed endpoints ---------------------------------------------------------------
    async def _account(self, request: web.Request) -> web.Response:
        await self._signed_params(request)
        assets = sorted(set(self.free) | set(self.locked))
        return web.json_response({
            "makerCommission": 10, "takerCommission": 10, "buyerCommission": 0, "sellerCommission": 0,
            "commissionRates": {"maker": "0.00100000", "taker": "0.00100000", "buyer": "0.00000000",
                                "seller": "0.00000000"},
            "canTrade": True, "canWithdraw": True, "canDeposit": True, "brokered": False,
            "requireSelfTradePrevention": False, "preventSor": False,
            "updateTime": _ms(), "accountType": "SPOT",
            "balances": [{"asset": a, "free": _s(self.free.get(a, 0)), "locked": _s(self.locked.get(a, 0))}
                         for a in assets],
            "permissions": ["SPOT"], "uid": 1,
        })

    async def _new_order(self, request: web.Request) -> web.Response:
        p = await self._signed_params(request)
        self.order_requests.append(dict(p))
        m = self._symbol(p)
        cid = p.get("newClientOrderId")
        if cid and any(o.client_order_id == cid and o.is_open for o in self.orders.values()):
            raise BinanceApiError(400, -2010, "Duplicate order sent.")
        side, otype = p.get("side", "").upper(), p.get("type", "").upper()
        if side not in ("BUY", "SELL"):
            raise BinanceApiError(400, -1102, "Mandatory parameter 'side' was not sent, was empty/null, or malformed.")
        if otype not in ("LIMIT", "LIMIT_MAKER", "MARKET"):
            raise BinanceApiError(400, -1116, "Invalid orderType.")
        try:
            qty = Decimal(p["quantity"])
        except (KeyError, ArithmeticError):
            raise BinanceApiError(400, -1102, "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed.") from None
        bids, asks = self._books.get(m.id, ([], []))
        opposite = asks if side == "BUY" else bids
        if otype == "MARKET":
            if not opposite:
                raise BinanceApiError(400, -2010, "Order book liquidity is less than LOT_SIZE filter minimum quantity.")
            price = opposite[0][0]
        else:
            try:
                price = Decimal(p["price"])
            except (KeyError, ArithmeticError):
                raise BinanceApiError(400, -1102, "Mandatory parameter 'price' was not sent, was empty/null, or malformed.") from None
            if price % Decimal(m.tick_size) != 0:
                raise BinanceApiError(400, -1013, "Filter failure: PRICE_FILTER")
        if qty <= 0 or qty % Decimal(m.step_size) != 0 or qty < Decimal(m.min_qty):
            raise BinanceApiError(400, -1013, "Filter failure: LOT_SIZE")
        if price * qty < Decimal(m.min_notional):
            raise BinanceApiError(400, -1013, "Filter failure: NOTIONAL")
        crosses = bool(opposite) and (price >= opposite[0][0] if side == "BUY" else price <= opposite[0][0])
        if otype == "LIMIT_MAKER" and crosses:
            raise BinanceApiError(400, -2010, "Order would immediately match and take.")
        # funds check and lock
        asset, need = (m.quote, price * qty) if side == "BUY" else (m.base, qty)
        if self.free.get(asset, Decimal(0)) < need:
            raise BinanceApiError(400, -2010, "Account has insufficient balance for requested action.")
        self.free[asset] = self.free.get(asset, Decimal(0)) - need
        self.locked[asset] = self.locked.get(asset, Decimal(0)) + need
        o = FakeOrder(
            order_id=next(self._order_ids),
            client_order_id=p.get("newClientOrderId") or f"fake{len(self.orders) + 1}",
            symbol=m.id, side=side, type=otype, price=price, orig_qty=qty,
            time_in_force=p.get("timeInForce", "GTC") if otype == "LIMIT" else "GTC",
        )
        self.orders[o.order_id] = o
        if otype == "MARKET" or crosses:
            self._fill(o, qty, opposite[0][0], maker=False)
        elif o.time_in_force in ("IOC", "FOK"):
            self._release(o)
            o.status = "EXPIRED"
        body = o.to_json()
        body["transactTime"] = o.update_ms
        if p.get("newOrderRespType", "FULL") == "FULL":
            body["fills"] = o.fills
        return web.json_response(body)

    async def _cancel_order(self, request: web.Request) -> web.Response:
        p = await self._signed_params(request)
        o = self._find_order(p, code=-2011, msg="Unknown order sent.")
        if not o.is_open:
            raise BinanceApiError(400, -2011, "Unknown order sent.")
        self._release(o)
        o.status, o.update_ms = "CANCELED", _ms()
        body = o.to_json()
        body["origClientOrderId"] = o.client_order_id
        body["transactTime"] = o.update_ms
        return web.json_response(body)

    async def _get_order(self, request: web.Request) -> web.Response:
        p = await self._signed_params(request)
        return web.json_response(self._find_order(p, code=-2013, msg="Order does not exist.").to_json())

    async def _open_orders(self, request: web.Request) -> web.Response:
        p = await self._signed_params(request)
        sid = p.get("symbol")
        if sid is not None:
            self._symbol(p)
        return web.json_response([o.to_json() for o in self.orders.values()
                                  if o.is_open and (sid is None or o.symbol == sid)])

    async def _my_trades(self, request: web.Request) -> web.Response:
        p = await self._signed_params(request)
        m = self._symbol(p)
        rows = [t for t in self.trades if t["symbol"] == m.id]
        if "fromId" in p:
            rows = [t for t in rows if t["id"] >= int(p["fromId"])]
        elif "startTime" in p:
            rows = [t for t in rows if t["time"] >= int(p["startTime"])]
        return web.json_response(rows[: int(p.get("limit", 500))])

    async def _cancel_open_orders(self, request: web.Request) -> web.Response:
        p = await self._signed_params(request)
        m = self._symbol(p)
        out = []
        for o in self.orders.values():
            if o.symbol == m.id and o.is_open:
                self._release(o)
                o.status, o.update_ms = "CANCELED", _ms()
                out.append({**o.to_json(), "origClientOrderId": o.client_order_id})
        if not out:
            raise BinanceApiError(400, -2011, "Unknown order sent.")
        return web.json_response(out)

    # -- order helpers ------------------------------------------------------------------
    def _find_order(self, p: dict[str, str], code: int, msg: str) -> FakeOrder:
        m = self._symbol(p)
        if "orderId" in p:
            o = self.orders.get(int(p["orderId"]))
        else:
            cid = p.get("origClientOrderId")
            o = next((x for x in self.orders.values() if x.client_order_id == cid), None)
        if o is None or o.symbol != m.id:
            raise BinanceApiError(400, code, msg)
        return o

    def _release(self, o: FakeOrder) -> None:
        """Unlock the funds still reserved by the unfilled part of ``o``."""
        m = self.markets[o.symbol]
        rest = o.orig_qty - o.executed_qty
        asset, amt = (m.quote, o.price * rest) if o.side == "BUY" else (m.base, rest)
        self.locked[asset] -= amt
        self.free[asset] = self.free.get(asset, Decimal(0)) + amt

    def _fill(self, o: FakeOrder, qty: Decimal, price: Decimal, maker: bool) -> None:
        m = self.markets[o.symbol]
        if qty <= 0:
            return
        fee = qty * price * self.commission_rate
        if o.side == "BUY":
            self.locked[m.quote] -= o.price * qty  # reserved at the limit price
            self.free[m.quote] += (o.price - price) * qty - fee  # price improvement back
            self.free[m.base] = self.free.get(m.base, Decimal(0)) + qty
        else:
            self.locked[m.base] -= qty
            self.free[m.quote] = self.free.get(m.quote, Decimal(0)) + price * qty - fee
        o.executed_qty += qty
        o.cum_quote += qty * price
        o.status = "FILLED" if o.executed_qty >= o.orig_qty else "PARTIALLY_FILLED"
        o.update_ms = _ms()
        tid = next(self._trade_ids)
        o.fills.append({"price": _s(price), "qty": _s(qty), "commission": _s(fee), "commissionAsset": m.quote,
                        "tradeId": tid})
        self.trades.append({"symbol": o.symbol, "id": tid, "orderId": o.order_id, "orderListId": -1, "price": _s(price),
                            "qty": _s(qty), "quoteQty": _s(price * qty), "commission": _s(fee),
                            "commissionAsset": m.quote, "time": o.update_ms, "isBuyer": o.side == "BUY",
                            "isMaker": maker, "isBestMatch": True})


__all__ = ["FakeBinance", "FakeMarket", "FakeOrder", "BinanceApiError"]
