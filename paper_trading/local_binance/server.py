"""The local Binance spot exchange server: REST + market streams + user-data streams +
admin API on one ``127.0.0.1`` port (see the package docstring for the served API)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any, Callable, Iterable

from aiohttp import web

from .faults import Fault, FaultPlan
from .futures import FuturesApi
from .market_ws import MarketStreams
from .rest import RestApi
from .state import ExchangeState, Fill, Level, MarketSpec, Order
from .user_ws import UserStreams

WS_KINDS = ("market", "user")


class LocalBinance:
    """Local Binance spot exchange. ``await start()`` -> REST base URL; ``await stop()``.

    Args:
        markets: listed markets (default BTCUSDT and ETHUSDT, see :class:`MarketSpec`).
        api_key, secret: the credentials signed requests must use (HMAC-SHA256).
        balances: initial free balances per asset (default 1 BTC, 100000 USDT).
        maker_fee, taker_fee: fee fractions (default 0.001).
        futures_markets: USD-M perpetuals served under ``/fapi`` (default BTCUSDT; see
            :mod:`.futures`); their state is :attr:`futures` (wallet ``futures_balances``,
            default 100000 USDT; positions start flat).
        fee_asset: charge fees in this asset (``"BNB"``: Binance's pay-fees-with-BNB),
            valued at the mid of its book against the quote (see :mod:`.state`); also
            :meth:`set_fee_asset` / ``POST /_admin/fees {"asset": "BNB" | null}``.
        recv_window_ms: accepted timestamp age when a request sends no recvWindow (5000).
        orders_per_10s: order-count limit (Binance's ``ORDERS`` 100 per 10 s; 0 = none):
            beyond it POST /api/v3/order answers 429 / -1015 with ``Retry-After``.
        host, port: where to listen (port 0 = a free port).

    After start: :attr:`base_url` (``http://127.0.0.1:PORT``, the REST base for ccxt's
    ``urls['api']`` rewrite), :attr:`ws_url` (``ws://127.0.0.1:PORT``: market streams at
    ``/ws``, ``/stream``, WebSocket API at ``/ws-api/v3``), :attr:`ws_api_url`.
    """

    def __init__(self, markets: Iterable[MarketSpec] | None = None, *, api_key: str = "test-key",
                 secret: str = "test-secret", balances: dict[str, Any] | None = None,
                 maker_fee: Any = "0.001", taker_fee: Any = "0.001", recv_window_ms: int = 5000,
                 orders_per_10s: int = 100, host: str = "127.0.0.1", port: int = 0,
                 fee_asset: str | None = None, futures_markets: Iterable[MarketSpec] | None = None,
                 futures_balances: dict[str, Any] | None = None) -> None:
        self.state = ExchangeState(markets, balances=balances, maker_fee=maker_fee, taker_fee=taker_fee,
                                   fee_asset=fee_asset)
        self.futures = ExchangeState(futures_markets if futures_markets is not None else [MarketSpec()],
                                     balances=futures_balances or {"USDT": "100000"}, maker_fee=maker_fee,
                                     taker_fee=taker_fee, derivatives=True)
        self.faults = FaultPlan()
        self.api_key, self.secret = api_key, secret
        self.key_enabled = True
        self.recv_window_ms = recv_window_ms
        self.orders_per_10s = orders_per_10s
        self.host, self._port_wanted = host, port
        self.requests: Counter[str] = Counter()
        self.calls: list[tuple[float, str, str, str]] = []
        self.unexpected: list[str] = []
        self.rejected_while_banned = 0
        self.order_requests: list[dict[str, str]] = []  # parameters of every signed POST /api/v3/order, as sent
        self.book_fault: str | None = None  # None | "crossed" | "empty": a broken REST /api/v3/depth
        self.latency_s = 0.0  # delay before every API reply, seconds
        self.ws_blocked: set[str] = set()
        self.stopping = False
        self.rest = RestApi(self)
        self.fapi = FuturesApi(self)
        self.market_ws = MarketStreams(self)
        self.user = UserStreams(self)
        self._runner: web.AppRunner | None = None
        self.base_url: str | None = None
        self.ws_url: str | None = None
        self.ws_api_url: str | None = None
        self.port: int | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self.rest.middleware])
        self.rest.add_routes(app)
        self.fapi.add_routes(app)
        r = app.router
        r.add_get("/ws", self._ws)
        r.add_get("/ws/{tail:.*}", self._ws)
        r.add_get("/stream", self._ws)
        r.add_get("/ws-api/v3", self._ws_api)
        r.add_get("/_admin/record", self._admin_record)
        r.add_post("/_admin/fault", self._admin_fault)
        r.add_delete("/_admin/fault", self._admin_fault_clear)
        r.add_post("/_admin/{action}", self._admin_action)
        return app

    async def start(self) -> str:
        """Listen; returns the REST base URL ``http://HOST:PORT``."""
        self.stopping = False
        self._runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port_wanted)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.base_url = f"http://{self.host}:{self.port}"
        self.ws_url = f"ws://{self.host}:{self.port}"
        self.ws_api_url = self.ws_url + "/ws-api/v3"
        return self.base_url

    async def stop(self) -> None:
        """Close every websocket and stop listening. Safe to call twice."""
        self.stopping = True
        self.faults.release_holds()
        await self.drop_ws("all")
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> "LocalBinance":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- websocket routing -------------------------------------------------------------------
    async def _ws(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info.get("tail", "")
        kind = "user" if tail in self.user.listen_keys else "market"
        if kind in self.ws_blocked:
            return web.Response(status=503, text="Service Unavailable")
        if kind == "user":
            return await self.user.handle_listen_key(request, tail)
        return await self.market_ws.handle(request, tail)

    async def _ws_api(self, request: web.Request) -> web.StreamResponse:
        if "user" in self.ws_blocked:
            return web.Response(status=503, text="Service Unavailable")
        return await self.user.handle_ws_api(request)

    def _conns(self, kind: str) -> list:
        if kind not in WS_KINDS + ("all",):
            raise ValueError(f"ws kind must be one of market, user, all (got {kind!r})")
        out = []
        if kind in ("market", "all"):
            out += self.market_ws.connections
        if kind in ("user", "all"):
            out += self.user.connections
        return list(out)

    # -- test controls: market -------------------------------------------------------------
    def set_book(self, bids: Iterable[Level], asks: Iterable[Level], symbol: str = "BTCUSDT") -> int:
        """Replace the external book (see :meth:`ExchangeState.set_book`)."""
        return self.state.set_book(bids, asks, symbol)

    async def push_depth(self, bids: Iterable[Level] = (), asks: Iterable[Level] = (), **kw: Any) -> int:
        """Change the book by a diff and stream it (see :meth:`ExchangeState.apply_depth`;
        ``drop=True`` / ``skip_ids=k`` inject a sequence gap)."""
        return self.state.apply_depth(bids, asks, **kw)

    async def push_trade(self, price: Any, qty: Any, side: str, **kw: Any) -> int:
        """A public trade by an outside taker (``side`` "buy"/"sell"); does not touch our orders."""
        return self.state.print_trade(price, qty, side, **kw)

    def taker_trade(self, side: str, qty: Any, price: Any, symbol: str = "BTCUSDT") -> list[Fill]:
        """Simulated taker flow against our resting orders (see :meth:`ExchangeState.taker_trade`)."""
        return self.state.taker_trade(side, qty, price, symbol=symbol)

    def expire_order(self, order_id: Any = None, *, client_order_id: str | None = None, symbol: str = "BTCUSDT",
                     status: str = "EXPIRED") -> Order:
        """The exchange ends an open order on its own (EXPIRED or CANCELED)."""
        return self.state.expire_order(order_id, client_order_id=client_order_id, symbol=symbol, status=status)

    def set_balance(self, asset: str, free: Any) -> None:
        self.state.set_balance(asset, free)

    def fill_order(self, order_id: int, qty: Any = None, price: Any = None) -> Order:
        """Fill our resting spot order ``order_id`` as a maker (see :meth:`ExchangeState.fill_order`)."""
        return self.state.fill_order(order_id, qty, price)

    def set_fee_asset(self, asset: str | None) -> None:
        """Charge fees in ``asset`` from now on (``"BNB"``), or in the asset received (None)."""
        self.state.fee_asset = asset or None

    @property
    def clock_offset_ms(self) -> int:
        """Server clock minus wall clock, ms (clock-skew fault: beyond recvWindow -> -1021)."""
        return self.state.clock_offset_ms

    @clock_offset_ms.setter
    def clock_offset_ms(self, value: int) -> None:
        self.state.clock_offset_ms = self.futures.clock_offset_ms = int(value)

    # -- test controls: USD-M futures (see :mod:`.futures`) ----------------------------------
    def set_futures_book(self, bids: Iterable[Level], asks: Iterable[Level], symbol: str = "BTCUSDT") -> int:
        """Replace the external book of a perpetual."""
        return self.futures.set_book(bids, asks, symbol)

    def futures_taker_trade(self, side: str, qty: Any, price: Any, symbol: str = "BTCUSDT") -> list[Fill]:
        """Simulated taker flow against our resting orders on a perpetual."""
        return self.futures.taker_trade(side, qty, price, symbol=symbol)

    def set_position(self, qty: Any, symbol: str = "BTCUSDT") -> None:
        """Set the position of a perpetual (signed base units), as a liquidation, a manual
        trade or another bot on the account would: no fill of ours explains it."""
        from .state import dec

        self.futures.positions[self.futures.market(symbol).id] = dec(qty)

    def futures_record(self) -> dict[str, Any]:
        """The USD-M side's own record (orders, fills, wallet, ``positions``)."""
        return self.futures.record()

    # -- test controls: faults ----------------------------------------------------------------
    def fault(self, kind: str, match: str = "*", **kw: Any) -> Fault:
        """Queue a REST fault (see :mod:`.faults`), e.g. ``fault("timeout", "order")``."""
        return self.faults.add(Fault(kind=kind, match=match, **kw))

    def lift_ban(self) -> None:
        self.faults.banned_until_ms = 0

    def revoke_key(self, enabled: bool = False) -> None:
        """Disable (or re-enable) the API key: signed calls then answer -2015."""
        self.key_enabled = enabled

    async def drop_ws(self, kind: str = "all", code: int = 1001) -> int:
        """Close the ``kind`` ("market", "user", "all") websockets; returns how many."""
        conns = self._conns(kind)
        for c in conns:
            await c.close(code=code)
        return len(conns)

    def stall_ws(self, kind: str = "all", stalled: bool = True) -> int:
        """Silent stall: the sockets stay open but send nothing and answer no ping
        (``stalled=False`` resumes; events meanwhile are lost). Returns how many."""
        conns = self._conns(kind)
        for c in conns:
            c.stalled = stalled
        return len(conns)

    def block_ws(self, kind: str = "all", blocked: bool = True) -> None:
        """Refuse (HTTP 503) new websocket connections of ``kind`` until unblocked."""
        kinds = WS_KINDS if kind == "all" else (kind,)
        self._conns(kind)  # validates
        for k in kinds:
            (self.ws_blocked.add if blocked else self.ws_blocked.discard)(k)

    def terminate_user_stream(self) -> int:
        """Binance's ``eventStreamTerminated`` on every ws-api user-data subscription (the
        socket stays open, events stop until the client subscribes again)."""
        return self.user.terminate()

    # -- observations ---------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """The exchange's own record (orders, fills, balances, rejections) as plain JSON."""
        return self.state.record()

    @property
    def orders(self) -> dict[int, Order]:
        return self.state.orders

    @property
    def fills(self) -> list[Fill]:
        return self.state.fills

    def count(self, path: str) -> int:
        """API requests received for ``path`` (all methods, failed ones included)."""
        return self.requests[path]

    def subscribe_count(self, channel: str, symbol: str = "BTCUSDT") -> int:
        return self.market_ws.subscribe_count(channel, symbol)

    @staticmethod
    async def wait_until(pred: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
        """Poll ``pred`` every 10 ms; AssertionError after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not pred():
            if loop.time() > end:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.01)

    # -- admin API ------------------------------------------------------------------------------
    async def _admin_record(self, request: web.Request) -> web.Response:
        return web.json_response(self.record())

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json() if request.can_read_body else {}
        except json.JSONDecodeError as e:
            raise web.HTTPBadRequest(text=json.dumps({"error": f"body is not JSON: {e}"}),
                                     content_type="application/json") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text=json.dumps({"error": "body must be a JSON object"}),
                                     content_type="application/json")
        return body

    async def _admin_fault(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        try:
            f = self.faults.add(Fault(**body))
        except (TypeError, ValueError) as e:
            return web.json_response({"error": f"bad fault: {e}"}, status=400)
        return web.json_response({"queued": f.to_json()})

    async def _admin_fault_clear(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return web.json_response({"cleared": True})

    async def _admin_action(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        b = await self._json(request)
        sym = b.get("symbol", "BTCUSDT")
        try:
            if action == "taker":
                fills = self.taker_trade(b["side"], b["qty"], b["price"], symbol=sym)
                return web.json_response({"fills": [f.record() for f in fills]})
            if action == "depth":
                u = await self.push_depth(b.get("bids", []), b.get("asks", []), symbol=sym,
                                          drop=bool(b.get("drop", False)), skip_ids=int(b.get("skip_ids", 0)))
                return web.json_response({"lastUpdateId": u})
            if action == "book":
                return web.json_response({"lastUpdateId": self.set_book(b["bids"], b["asks"], sym)})
            if action == "trade":
                return web.json_response({"id": await self.push_trade(b["price"], b["qty"], b["side"], symbol=sym)})
            if action == "expire":
                o = self.expire_order(b.get("order_id"), client_order_id=b.get("client_order_id"), symbol=sym,
                                      status=b.get("status", "EXPIRED"))
                return web.json_response({"order": o.record()})
            if action == "clock":
                self.clock_offset_ms = int(b["offset_ms"])
                return web.json_response({"offset_ms": self.clock_offset_ms})
            if action == "balance":
                self.set_balance(b["asset"], b["free"])
                return web.json_response({"asset": b["asset"], "free": str(self.state.free[b["asset"]])})
            if action == "fees":
                self.set_fee_asset(b.get("asset"))
                return web.json_response({"fee_asset": self.state.fee_asset})
            if action == "key":
                self.revoke_key(bool(b.get("enabled", False)))
                return web.json_response({"enabled": self.key_enabled})
            if action == "ws":
                kind, what = b.get("kind", "all"), b.get("action")
                if what == "drop":
                    n = await self.drop_ws(kind)
                elif what in ("stall", "resume"):
                    n = self.stall_ws(kind, what == "stall")
                elif what == "terminate":
                    n = self.terminate_user_stream()
                elif what in ("block", "unblock"):
                    self.block_ws(kind, what == "block")
                    n = 0
                else:
                    return web.json_response({"error": "ws action must be drop, stall, resume, block, unblock or terminate"},
                                             status=400)
                return web.json_response({"action": what, "kind": kind, "connections": n})
            if action == "lift_ban":
                self.lift_ban()
                return web.json_response({"banned": False})
        except KeyError as e:
            return web.json_response({"error": f"/_admin/{action}: missing field {e.args[0]!r}"}, status=400)
        except (TypeError, ValueError, ArithmeticError) as e:
            return web.json_response({"error": f"/_admin/{action}: {e}"}, status=400)
        except Exception as e:  # noqa: BLE001 - BinanceApiError (unknown symbol) and the like
            return web.json_response({"error": f"/_admin/{action}: {e}"}, status=400)
        return web.json_response({"error": f"unknown admin action {action!r}"}, status=404)
