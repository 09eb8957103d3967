"""Binance spot REST API handlers of the local exchange (aiohttp), with the fault middleware.

Signed endpoints check, in Binance's order: ``X-MBX-APIKEY`` (-2014 missing, -2015
wrong / revoked), HMAC-SHA256 ``signature`` over query string + body (-1022), then
``timestamp`` against the server clock: accepted when ``timestamp < server + 1000`` and
``server - timestamp <= recvWindow`` (default 5000 ms, max 60000), else -1021.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from aiohttp import web

from .state import BinanceApiError, Order, dec, fmt

if TYPE_CHECKING:  # pragma: no cover
    from .server import LocalBinance

_24H_MS = 24 * 3600 * 1000


def _int(p: dict[str, str], key: str, default: int | None = None) -> int | None:
    v = p.get(key)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise BinanceApiError(400, -1100, f"Illegal characters found in parameter '{key}'; legal range is '^[0-9]{{1,20}}$'.") from None


def _need_symbol(p: dict[str, str]) -> str:
    sid = p.get("symbol")
    if not sid:
        raise BinanceApiError(400, -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
    return sid


class RestApi:
    """The REST routes; all state lives in ``server.state`` / ``server.faults``."""

    def __init__(self, server: "LocalBinance") -> None:
        self.server = server
        self.state = server.state
        self.weight_times: deque[float] = deque()  # monotonic s of API requests, last minute
        self.order_times: deque[float] = deque()   # monotonic s of order requests, last 10 s
        self.orders_today = 0

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/api/v3/ping", self.ping)
        r.add_get("/api/v3/time", self.time)
        r.add_get("/api/v3/exchangeInfo", self.exchange_info)
        r.add_get("/api/v3/depth", self.depth)
        r.add_get("/api/v3/trades", self.trades)
        r.add_get("/api/v3/aggTrades", self.agg_trades)
        r.add_get("/api/v3/ticker/24hr", self.ticker_24hr)
        r.add_post("/api/v3/order", self.new_order)
        r.add_delete("/api/v3/order", self.cancel_order)
        r.add_get("/api/v3/order", self.get_order)
        r.add_get("/api/v3/openOrders", self.open_orders)
        r.add_delete("/api/v3/openOrders", self.cancel_open_orders)
        r.add_get("/api/v3/allOrders", self.all_orders)
        r.add_get("/api/v3/myTrades", self.my_trades)
        r.add_get("/api/v3/account", self.account)
        r.add_post("/api/v3/userDataStream", self.listen_key_new)
        r.add_put("/api/v3/userDataStream", self.listen_key_keepalive)
        r.add_delete("/api/v3/userDataStream", self.listen_key_close)

    # -- middleware: bookkeeping, bans, faults, error replies ------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        srv = self.server
        path, method = request.path, request.method
        if path.startswith("/_admin") or request.headers.get("Upgrade", "").lower() == "websocket":
            return await handler(request)
        srv.requests[path] += 1
        srv.calls.append((time.monotonic(), method, path, request.query_string))
        faults = srv.faults
        now = self.state.now_ms()
        if faults.banned_until_ms > now:
            srv.rejected_while_banned += 1
            left = max(1, (faults.banned_until_ms - now + 999) // 1000)
            return self._error(418, -1003, f"Way too much request weight used; IP banned until {faults.banned_until_ms}. "
                               "Please use WebSocket Streams for live updates to avoid bans.", retry_after=left)
        now_s = time.monotonic()
        w = self.weight_times
        while w and now_s - w[0] > 60:
            w.popleft()
        w.append(now_s)
        if srv.latency_s:
            await asyncio.sleep(srv.latency_s)
        fault = faults.take(method, path)
        if fault is None:
            response = await self._run(handler, request)
            if not response.prepared:
                response.headers["X-MBX-USED-WEIGHT-1M"] = str(len(w))
            return response
        if fault.kind == "latency":
            await asyncio.sleep(fault.delay_s)
            return await self._run(handler, request)
        if fault.kind == "rate_limit":
            return self._error(429, -1003, "Too many requests; current limit of IP(127.0.0.1) request weight is 6000 "
                               "per minute. Please use WebSocket Streams for live updates to avoid polling the API.",
                               retry_after=fault.retry_after_s)
        if fault.kind == "ban":
            faults.banned_until_ms = now + fault.retry_after_s * 1000
            return self._error(418, -1003, f"Way too much request weight used; IP banned until {faults.banned_until_ms}. "
                               "Please use WebSocket Streams for live updates to avoid bans.",
                               retry_after=fault.retry_after_s)
        if fault.kind == "auth":
            return self._error(401, -2015, "Invalid API-key, IP, or permissions for action.")
        response = await self._run(handler, request) if fault.execute else None
        if fault.kind == "http":
            if fault.code is None:
                return web.Response(status=fault.status, text=fault.msg or "Service Unavailable", headers=fault.headers)
            r = self._error(fault.status, fault.code, fault.msg or "An unknown error occurred while processing the request.")
            r.headers.update(fault.headers or {})
            return r
        if fault.kind == "drop":
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)  # never delivered: the transport is gone
        # timeout: hold the reply until the client gives up (closes), a release, or hold_s
        seq = faults.release_seq
        loop = asyncio.get_running_loop()
        end = loop.time() + fault.hold_s
        while loop.time() < end and faults.release_seq == seq and not srv.stopping:
            tr = request.transport
            if tr is None or tr.is_closing():
                break
            await asyncio.sleep(0.02)
        return response if response is not None else web.Response(status=504, text="Gateway Timeout")

    async def _run(self, handler: Any, request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPNotFound:
            self.server.unexpected.append(f"{request.method} {request.path}")
            return web.Response(status=404, text="<html><body><h1>404 Not Found</h1></body></html>",
                                content_type="text/html")
        except web.HTTPMethodNotAllowed:
            self.server.unexpected.append(f"{request.method} {request.path}")
            raise
        except BinanceApiError as e:
            return self._error(e.status, e.code, e.msg, e.retry_after)

    @staticmethod
    def _error(status: int, code: int, msg: str, retry_after: int | None = None) -> web.Response:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return web.json_response({"code": code, "msg": msg}, status=status, headers=headers)

    # -- auth --------------------------------------------------------------------------------
    def check_key(self, request: web.Request) -> None:
        key = request.headers.get("X-MBX-APIKEY")
        if not key:
            raise BinanceApiError(401, -2014, "API-key format invalid.")
        if key != self.server.api_key or not self.server.key_enabled:
            raise BinanceApiError(401, -2015, "Invalid API-key, IP, or permissions for action.")

    async def signed(self, request: web.Request) -> dict[str, str]:
        """Check key, signature and timestamp; return all parameters (query + body)."""
        self.check_key(request)
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
        expected = hmac.new(self.server.secret.encode(), (parts[0] + parts[1]).encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.lower()):
            raise BinanceApiError(400, -1022, "Signature for this request is not valid.")
        params = dict(parse_qsl(parts[0], keep_blank_values=True))
        params.update(parse_qsl(parts[1], keep_blank_values=True))
        self.check_timestamp(params)
        return params

    def check_timestamp(self, params: dict[str, Any]) -> None:
        ts = _int({k: str(v) for k, v in params.items()}, "timestamp")
        if ts is None:
            raise BinanceApiError(400, -1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.")
        window = _int({k: str(v) for k, v in params.items()}, "recvWindow", self.server.recv_window_ms)
        if window is None or not 0 < window <= 60000:
            raise BinanceApiError(400, -1131, "recvWindow must be less than 60000")
        now = self.state.now_ms()
        if ts >= now + 1000:
            raise BinanceApiError(400, -1021, "Timestamp for this request was 1000ms ahead of the server's time.")
        if now - ts > window:
            raise BinanceApiError(400, -1021, "Timestamp for this request is outside of the recvWindow.")

    # -- public ------------------------------------------------------------------------------
    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": self.state.now_ms()})

    async def exchange_info(self, request: web.Request) -> web.Response:
        return web.json_response({
            "timezone": "UTC", "serverTime": self.state.now_ms(),
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
                {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
            ],
            "exchangeFilters": [],
            "symbols": [m.info() for m in self.state.markets.values()],
        })

    async def depth(self, request: web.Request) -> web.Response:
        p = dict(request.query)
        m = self.state.market(_need_symbol(p))
        limit = _int(p, "limit", 100)
        if not 1 <= limit <= 5000:
            raise BinanceApiError(400, -1100, "Illegal characters found in parameter 'limit'; legal range is '1..5000'.")
        bids, asks = self.state.books.get(m.id, ([], []))
        fault = self.server.book_fault
        if fault == "empty":
            bids, asks = [], []
        elif fault == "crossed" and bids and asks:  # a best bid above the best ask
            bids = [(asks[0][0] + dec(m.tick_size), bids[0][1])] + bids
        return web.json_response({
            "lastUpdateId": self.state.update_ids.get(m.id, 1000),
            "bids": [[fmt(p_), fmt(q)] for p_, q in bids[:limit]],
            "asks": [[fmt(p_), fmt(q)] for p_, q in asks[:limit]],
        })

    def _recent_trades(self, request: web.Request) -> list[dict[str, Any]]:
        p = dict(request.query)
        m = self.state.market(_need_symbol(p))
        limit = _int(p, "limit", 500)
        if not 1 <= limit <= 1000:
            raise BinanceApiError(400, -1100, "Illegal characters found in parameter 'limit'; legal range is '1..1000'.")
        return self.state.public_trades.get(m.id, [])[-limit:]

    async def trades(self, request: web.Request) -> web.Response:
        """GET /api/v3/trades (recent public trades, oldest first)."""
        return web.json_response([
            {"id": t["id"], "price": fmt(t["price"]), "qty": fmt(t["qty"]), "quoteQty": fmt(t["price"] * t["qty"]),
             "time": t["time"], "isBuyerMaker": t["buyer_maker"], "isBestMatch": True}
            for t in self._recent_trades(request)])

    async def agg_trades(self, request: web.Request) -> web.Response:
        """GET /api/v3/aggTrades (ccxt's default spot fetch_trades): one aggregate per trade."""
        return web.json_response([
            {"a": t["id"], "p": fmt(t["price"]), "q": fmt(t["qty"]), "f": t["id"], "l": t["id"],
             "T": t["time"], "m": t["buyer_maker"], "M": True}
            for t in self._recent_trades(request)])

    async def ticker_24hr(self, request: web.Request) -> web.Response:
        """GET /api/v3/ticker/24hr?symbol= (ccxt spot ``fetch_ticker``): best bid/ask of the
        external book, the last public trade; the 24 h statistics are those trades'."""
        p = dict(request.query)
        m = self.state.market(_need_symbol(p))
        bids, asks = self.state.books.get(m.id, ([], []))
        trades = self.state.public_trades.get(m.id, [])
        last = trades[-1]["price"] if trades else (((bids[0][0] + asks[0][0]) / 2) if bids and asks else 0)
        first = trades[0]["price"] if trades else last
        now = self.state.now_ms()
        px = [t["price"] for t in trades] or [last]
        return web.json_response({
            "symbol": m.id, "priceChange": fmt(last - first), "priceChangePercent": "0.000",
            "weightedAvgPrice": fmt(last), "prevClosePrice": fmt(first), "lastPrice": fmt(last),
            "lastQty": fmt(trades[-1]["qty"] if trades else 0),
            "bidPrice": fmt(bids[0][0] if bids else 0), "bidQty": fmt(bids[0][1] if bids else 0),
            "askPrice": fmt(asks[0][0] if asks else 0), "askQty": fmt(asks[0][1] if asks else 0),
            "openPrice": fmt(first), "highPrice": fmt(max(px)), "lowPrice": fmt(min(px)),
            "volume": fmt(sum((t["qty"] for t in trades), 0)),
            "quoteVolume": fmt(sum((t["qty"] * t["price"] for t in trades), 0)),
            "openTime": now - _24H_MS, "closeTime": now, "firstId": trades[0]["id"] if trades else -1,
            "lastId": trades[-1]["id"] if trades else -1, "count": len(trades)})

    # -- trading -------------------------------------------------------------------------------
    async def new_order(self, request: web.Request) -> web.Response:
        p = await self.signed(request)
        self.server.order_requests.append(dict(p))
        count_10s = self._count_order()
        sid = _need_symbol(p)
        self.state.market(sid)
        if "quantity" not in p:
            raise BinanceApiError(400, -1102, "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed.")
        o = self.state.place(sid, p.get("side", ""), p.get("type", ""), p["quantity"], p.get("price"),
                             time_in_force=p.get("timeInForce"), client_order_id=p.get("newClientOrderId"))
        resp_type = p.get("newOrderRespType") or ("FULL" if o.type in ("LIMIT", "MARKET") else "ACK")
        if resp_type == "ACK":
            body: dict[str, Any] = {"symbol": o.symbol, "orderId": o.order_id, "orderListId": -1,
                                    "clientOrderId": o.client_order_id, "transactTime": o.time_ms}
        else:
            body = o.to_json()
            body["transactTime"] = o.time_ms
            if resp_type == "FULL":
                body["fills"] = [{"price": fmt(f.price), "qty": fmt(f.qty), "commission": fmt(f.commission),
                                  "commissionAsset": f.commission_asset, "tradeId": f.trade_id}
                                 for f in self.state.fills if f.order_id == o.order_id]
        return web.json_response(body, headers={"X-MBX-ORDER-COUNT-10S": str(count_10s),
                                                "X-MBX-ORDER-COUNT-1D": str(self.orders_today)})

    def _count_order(self) -> int:
        """Binance's order-count limit (``server.orders_per_10s``, 0 = off): past it, HTTP
        429 with -1015 and ``Retry-After``. Returns the count in the last 10 s."""
        now = time.monotonic()
        q = self.order_times
        while q and now - q[0] > 10:
            q.popleft()
        limit = self.server.orders_per_10s
        if limit and len(q) >= limit:
            wait = max(1, int(10 - (now - q[0])) + 1)
            raise BinanceApiError(429, -1015, f"Too many new orders; current limit is {limit} orders per TEN_SECONDS.",
                                  retry_after=wait)
        q.append(now)
        self.orders_today += 1
        return len(q)

    @staticmethod
    def _ids(p: dict[str, str]) -> tuple[str | None, str | None]:
        oid, cid = p.get("orderId"), p.get("origClientOrderId")
        if oid is None and cid is None:
            raise BinanceApiError(400, -1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        return oid, cid

    @staticmethod
    def order_json(o: Order) -> dict[str, Any]:
        """An order as this API shows it (GET order, open orders, all orders)."""
        return o.to_json()

    @staticmethod
    def trade_json(f: Any) -> dict[str, Any]:
        """One of our trades as this API shows it (my trades)."""
        return f.to_json()

    @staticmethod
    def _cancel_json(o: Order, ccid: str) -> dict[str, Any]:
        body = o.to_json()
        body["origClientOrderId"] = o.client_order_id
        body["clientOrderId"] = ccid  # Binance: the cancel request's own client id
        body["transactTime"] = o.update_ms
        return body

    async def cancel_order(self, request: web.Request) -> web.Response:
        p = await self.signed(request)
        oid, cid = self._ids(p)
        o, ccid = self.state.cancel(_need_symbol(p), oid, cid, p.get("newClientOrderId"))
        return web.json_response(self._cancel_json(o, ccid))

    async def cancel_open_orders(self, request: web.Request) -> web.Response:
        p = await self.signed(request)
        done = self.state.cancel_all(_need_symbol(p))
        return web.json_response([self._cancel_json(o, ccid) for o, ccid in done])

    async def get_order(self, request: web.Request) -> web.Response:
        p = await self.signed(request)
        oid, cid = self._ids(p)
        o = self.state.find_order(_need_symbol(p), oid, cid)
        if o is None:
            raise BinanceApiError(400, -2013, "Order does not exist.")
        return web.json_response(self.order_json(o))

    async def open_orders(self, request: web.Request) -> web.Response:
        p = await self.signed(request)
        return web.json_response([self.order_json(o) for o in self.state.open_orders(p.get("symbol") or None)])

    async def all_orders(self, request: web.Request) -> web.Response:
        """GET /api/v3/allOrders: orders of ``symbol`` (``orderId`` >= , ``startTime``,
        ``endTime``, ``limit`` default 500 max 1000), oldest first."""
        p = await self.signed(request)
        sid = self.state.market(_need_symbol(p)).id
        rows = [o for o in self.state.orders.values() if o.symbol == sid]
        from_id, start, end = _int(p, "orderId"), _int(p, "startTime"), _int(p, "endTime")
        limit = min(_int(p, "limit", 500), 1000)
        if from_id is not None:
            rows = [o for o in rows if o.order_id >= from_id][:limit]
        elif start is not None or end is not None:
            rows = [o for o in rows if (start is None or o.time_ms >= start) and (end is None or o.time_ms <= end)][:limit]
        else:
            rows = rows[-limit:]
        return web.json_response([self.order_json(o) for o in rows])

    async def my_trades(self, request: web.Request) -> web.Response:
        """GET /api/v3/myTrades: ``symbol`` required; ``orderId``; ``fromId`` (trade id >=,
        not with times); ``startTime``/``endTime`` (window at most 24 h; one given -> 24 h
        from/to it); else the most recent; ``limit`` default 500, max 1000; oldest first."""
        p = await self.signed(request)
        sid = self.state.market(_need_symbol(p)).id
        rows = [f for f in self.state.fills if f.symbol == sid]
        order_id, from_id = _int(p, "orderId"), _int(p, "fromId")
        start, end = _int(p, "startTime"), _int(p, "endTime")
        limit = _int(p, "limit", 500)
        if not 1 <= limit <= 1000:
            raise BinanceApiError(400, -1100, "Illegal characters found in parameter 'limit'; legal range is '1..1000'.")
        if from_id is not None and (start is not None or end is not None):
            raise BinanceApiError(400, -1128, "Combination of optional parameters invalid.")
        if order_id is not None:
            rows = [f for f in rows if f.order_id == order_id]
        if from_id is not None:
            rows = [f for f in rows if f.trade_id >= from_id][:limit]
        elif start is not None or end is not None:
            if start is not None and end is not None and end - start > _24H_MS:
                raise BinanceApiError(400, -1127, "More than 24 hours between startTime and endTime.")
            lo = start if start is not None else end - _24H_MS
            hi = end if end is not None else start + _24H_MS
            rows = [f for f in rows if lo <= f.time_ms <= hi][:limit]
        else:
            rows = rows[-limit:]
        return web.json_response([self.trade_json(f) for f in rows])

    async def account(self, request: web.Request) -> web.Response:
        p = await self.signed(request)
        st = self.state
        assets = sorted(set(st.free) | set(st.locked))
        rows = [{"asset": a, "free": fmt(st.free.get(a, 0)), "locked": fmt(st.locked.get(a, 0))} for a in assets]
        if p.get("omitZeroBalances") == "true":
            rows = [r for r in rows if float(r["free"]) or float(r["locked"])]
        return web.json_response({
            "makerCommission": int(st.maker_fee * 10000), "takerCommission": int(st.taker_fee * 10000),
            "buyerCommission": 0, "sellerCommission": 0,
            "commissionRates": {"maker": fmt(st.maker_fee), "taker": fmt(st.taker_fee), "buyer": "0.00000000",
                                "seller": "0.00000000"},
            "canTrade": True, "canWithdraw": True, "canDeposit": True, "brokered": False,
            "requireSelfTradePrevention": False, "preventSor": False,
            "updateTime": st.now_ms(), "accountType": "SPOT", "balances": rows, "permissions": ["SPOT"], "uid": 1,
        })

    # -- legacy listenKey user-data stream (API key only, no signature) -------------------------
    async def listen_key_new(self, request: web.Request) -> web.Response:
        self.check_key(request)
        return web.json_response({"listenKey": self.server.user.new_listen_key()})

    async def listen_key_keepalive(self, request: web.Request) -> web.Response:
        self.check_key(request)
        p = dict(parse_qsl(request.rel_url.raw_query_string))
        p.update(parse_qsl(await request.text() if request.can_read_body else ""))
        if p.get("listenKey") not in self.server.user.listen_keys:
            raise BinanceApiError(400, -1125, "This listenKey does not exist.")
        return web.json_response({})

    async def listen_key_close(self, request: web.Request) -> web.Response:
        self.check_key(request)
        p = dict(parse_qsl(request.rel_url.raw_query_string))
        p.update(parse_qsl(await request.text() if request.can_read_body else ""))
        self.server.user.listen_keys.discard(p.get("listenKey", ""))
        return web.json_response({})
