"""A local fake of Binance spot market data over REST *and* websocket (aiohttp, 127.0.0.1).

:class:`FakeBinanceWs` extends :class:`fake_exchange.FakeBinance` (REST: exchangeInfo, depth,
orders, ...) with what ``ccxt.pro.binance``'s ``watch_order_book`` / ``watch_trades`` and
ccxt's REST ``fetch_trades`` need:

* websocket endpoints, protocol as on ``stream.binance.com``:

  - raw streams ``/ws`` and ``/ws/<anything>`` (ccxt connects to ``<urls.api.ws.spot>/<n>``,
    e.g. ``/ws/0``, then subscribes): client sends
    ``{"method": "SUBSCRIBE", "params": ["btcusdt@depth@100ms"], "id": 1}``, server answers
    ``{"result": null, "id": 1}`` and from then on pushes the stream's events as bare JSON
    objects. ``UNSUBSCRIBE`` and ``LIST_SUBSCRIPTIONS`` are answered too. A path tail that
    is a stream name (``/ws/btcusdt@trade``) subscribes at connect time.
  - combined streams ``/stream?streams=a/b`` (+ SUBSCRIBE): events wrapped as
    ``{"stream": name, "data": event}``.

* events (pushed by the test, in the order the test calls):

  - diff depth ``{"e": "depthUpdate", "E", "s", "U", "u", "b", "a"}`` to subscribers of
    ``<sym>@depth`` (any ``@100ms``/``@1000ms`` suffix);
  - trades ``{"e": "trade", "E", "s", "t", "p", "q", "T", "m", "M"}`` to subscribers of
    ``<sym>@trade``.

* REST ``GET /api/v3/trades`` and ``GET /api/v3/aggTrades`` serving the pushed trades.

The served book (REST ``/api/v3/depth``) and the websocket diffs share one state: every
:meth:`push_depth` changes the book and advances ``lastUpdateId`` exactly like Binance (the
diff carries ``U = previous u + 1`` and ``u``), so ccxt's documented sync recipe (buffer
diffs, fetch the snapshot, drop ``u <= lastUpdateId``, then require ``U == previous u + 1``)
works against it. Sequence gaps are injected with ``push_depth(..., drop=True)`` (the book
changes but the diff is never sent) or ``skip_ids=k`` (update ids jump).

Prices are quote/base, quantities base units, Binance times are ms since the epoch.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from decimal import Decimal
from typing import Any, Callable, Iterable

from aiohttp import WSMsgType, web

from fake_exchange import BinanceApiError, FakeBinance, Level, _s

__all__ = ["FakeBinanceWs", "WsConnection"]


def _ms() -> int:
    return time.time_ns() // 1_000_000


class WsConnection:
    """One client websocket: its path, subscribed stream names and the raw socket."""

    def __init__(self, ws: web.WebSocketResponse, path: str, combined: bool) -> None:
        self.ws = ws
        self.path = path
        self.combined = combined
        self.streams: list[str] = []

    def wants(self, sid_lower: str, channel: str) -> str | None:
        """The subscribed stream name matching ``<sid>@<channel>[@...]``, or None."""
        want = f"{sid_lower}@{channel}"
        for s in self.streams:
            if s == want or s.startswith(want + "@"):
                return s
        return None


class FakeBinanceWs(FakeBinance):
    """:class:`FakeBinance` plus Binance's market-data websocket and public trade endpoints.

    After ``await start()``: ``base_url`` (``http://127.0.0.1:PORT``, REST) and ``ws_url``
    (``ws://127.0.0.1:PORT``). Point ccxt.pro at it by rewriting ``urls['api']`` to
    ``base_url`` and ``urls['api']['ws']`` to ``ws_url`` (keeping paths).

    Test controls: :meth:`push_depth`, :meth:`push_trade`, :meth:`drop_connections`,
    :meth:`wait_until`; observations: :attr:`ws_requests` (every JSON message clients sent,
    with the connection path), :meth:`subscribe_count`, :meth:`book`, :attr:`ws_connects`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: list[WsConnection] = []
        self.ws_requests: list[tuple[str, dict]] = []
        self.ws_connects = 0
        self.events_sent = 0
        self.ws_url: str | None = None
        self._public_trades: dict[str, list[dict[str, Any]]] = {}
        self._public_trade_ids = itertools.count(1)

    # -- lifecycle ----------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = super().make_app()
        r = app.router
        r.add_get("/ws", self._ws_handler)
        r.add_get("/ws/{tail:.*}", self._ws_handler)
        r.add_get("/stream", self._ws_handler)
        r.add_get("/api/v3/trades", self._trades)
        r.add_get("/api/v3/aggTrades", self._agg_trades)
        return app

    async def start(self, app: web.Application | None = None) -> str:
        url = await super().start(app)
        self.ws_url = "ws" + url[len("http"):]
        return url

    async def stop(self) -> None:
        await self.drop_connections()
        await super().stop()

    async def drop_connections(self, code: int = 1001) -> int:
        """Close every client websocket (as Binance does on maintenance). Returns how many."""
        conns = list(self.connections)
        for c in conns:
            try:
                await c.ws.close(code=code, message=b"going away")
            except Exception:  # noqa: BLE001 - already gone
                pass
        return len(conns)

    # -- test controls ------------------------------------------------------------------
    async def push_depth(
        self,
        bids: Iterable[Level] = (),
        asks: Iterable[Level] = (),
        *,
        symbol: str = "BTCUSDT",
        drop: bool = False,
        skip_ids: int = 0,
        n_ids: int = 1,
        event_ms: int | None = None,
    ) -> int:
        """Change the book by absolute level sizes ``(price, qty)`` (qty 0 deletes) and send
        the ``depthUpdate`` to the depth subscribers. Returns the new ``lastUpdateId`` (``u``).

        ``drop=True``: the book changes and the ids advance, but the diff is not sent (a
        lost message: the next diff shows a sequence gap). ``skip_ids``: update ids that are
        skipped before this diff (``U = previous u + 1 + skip_ids``). ``n_ids``: how many
        update ids this diff spans (``u = U + n_ids - 1``).
        """
        b_list = [(Decimal(str(p)), Decimal(str(q))) for p, q in bids]
        a_list = [(Decimal(str(p)), Decimal(str(q))) for p, q in asks]
        cur_b, cur_a = self._books.get(symbol, ([], []))
        db, da = dict(cur_b), dict(cur_a)
        for p, q in b_list:
            if q == 0:
                db.pop(p, None)
            else:
                db[p] = q
        for p, q in a_list:
            if q == 0:
                da.pop(p, None)
            else:
                da[p] = q
        self._books[symbol] = (sorted(db.items(), key=lambda x: x[0], reverse=True), sorted(da.items(), key=lambda x: x[0]))
        first = self._update_id.get(symbol, 1000) + 1 + int(skip_ids)
        last = first + max(1, int(n_ids)) - 1
        self._update_id[symbol] = last
        if not drop:
            event = {
                "e": "depthUpdate",
                "E": _ms() if event_ms is None else int(event_ms),
                "s": symbol,
                "U": first,
                "u": last,
                "b": [[_s(p), _s(q)] for p, q in b_list],
                "a": [[_s(p), _s(q)] for p, q in a_list],
            }
            await self._broadcast(symbol, "depth", event)
        return last

    async def push_trade(
        self,
        price: Any,
        qty: Any,
        side: str,
        *,
        symbol: str = "BTCUSDT",
        trade_ms: int | None = None,
        send: bool = True,
    ) -> int:
        """A public trade; ``side`` is the taker (aggressor) side, ``"buy"`` or ``"sell"``
        (Binance sends ``m`` = buyer is maker, i.e. ``m = side == "sell"``). Sent to the
        trade subscribers (unless ``send=False``) and served by ``/api/v3/trades``.
        Returns the trade id."""
        if side not in ("buy", "sell"):
            raise ValueError("side must be 'buy' or 'sell'")
        tid = next(self._public_trade_ids)
        t_ms = _ms() if trade_ms is None else int(trade_ms)
        p, q = Decimal(str(price)), Decimal(str(qty))
        rec = {"id": tid, "price": p, "qty": q, "time": t_ms, "buyer_maker": side == "sell"}
        self._public_trades.setdefault(symbol, []).append(rec)
        if send:
            event = {
                "e": "trade", "E": t_ms, "s": symbol, "t": tid, "p": _s(p), "q": _s(q),
                "T": t_ms, "m": side == "sell", "M": True,
            }
            await self._broadcast(symbol, "trade", event)
        return tid

    def book(self, symbol: str = "BTCUSDT") -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """The served book as floats, best first: ``(bids, asks)``."""
        b, a = self._books.get(symbol, ([], []))
        return [(float(p), float(q)) for p, q in b], [(float(p), float(q)) for p, q in a]

    def update_id(self, symbol: str = "BTCUSDT") -> int:
        """Current ``lastUpdateId`` of ``symbol``."""
        return self._update_id.get(symbol, 1000)

    def subscribe_count(self, channel: str, symbol: str = "BTCUSDT") -> int:
        """How many SUBSCRIBE requests named a ``<symbol>@<channel>`` stream so far."""
        want = f"{symbol.lower()}@{channel}"
        n = 0
        for _, msg in self.ws_requests:
            if msg.get("method") == "SUBSCRIBE":
                n += sum(1 for s in msg.get("params") or [] if s == want or str(s).startswith(want + "@"))
        return n

    @staticmethod
    async def wait_until(pred: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
        """Poll ``pred`` every 10 ms; AssertionError after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not pred():
            if loop.time() > end:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.01)

    # -- websocket ------------------------------------------------------------------------
    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        combined = request.path.startswith("/stream")
        conn = WsConnection(ws, request.path, combined)
        if combined:
            conn.streams.extend(s for s in request.query.get("streams", "").split("/") if s)
        else:
            tail = request.match_info.get("tail", "")
            if "@" in tail:
                conn.streams.append(tail)
        self.connections.append(conn)
        self.ws_connects += 1
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_ws_text(conn, msg.data)
                elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            if conn in self.connections:
                self.connections.remove(conn)
        return ws

    async def _on_ws_text(self, conn: WsConnection, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            await conn.ws.send_str(json.dumps({"error": {"code": 3, "msg": "Invalid JSON"}, "id": None}))
            return
        if not isinstance(msg, dict):
            await conn.ws.send_str(json.dumps({"error": {"code": 2, "msg": "Invalid request"}, "id": None}))
            return
        self.ws_requests.append((conn.path, msg))
        method, rid, params = msg.get("method"), msg.get("id"), msg.get("params") or []
        if method == "SUBSCRIBE":
            for s in params:
                if s not in conn.streams:
                    conn.streams.append(str(s))
            reply: dict[str, Any] = {"result": None, "id": rid}
        elif method == "UNSUBSCRIBE":
            conn.streams = [s for s in conn.streams if s not in params]
            reply = {"result": None, "id": rid}
        elif method == "LIST_SUBSCRIPTIONS":
            reply = {"result": list(conn.streams), "id": rid}
        elif method in ("SET_PROPERTY", "GET_PROPERTY"):
            reply = {"result": None, "id": rid}
        else:
            reply = {"error": {"code": 2, "msg": f"Invalid request: unknown method {method!r}"}, "id": rid}
        await conn.ws.send_str(json.dumps(reply))

    async def _broadcast(self, symbol: str, channel: str, event: dict) -> None:
        sid = symbol.lower()
        for conn in list(self.connections):
            stream = conn.wants(sid, channel)
            if stream is None or conn.ws.closed:
                continue
            payload = {"stream": stream, "data": event} if conn.combined else event
            try:
                await conn.ws.send_str(json.dumps(payload))
                self.events_sent += 1
            except (ConnectionError, RuntimeError):  # client went away meanwhile
                pass

    # -- REST: public trades ----------------------------------------------------------------
    def _recent_trades(self, request: web.Request) -> list[dict[str, Any]]:
        m = self._symbol(dict(request.query))
        try:
            limit = int(request.query.get("limit", 500))
        except ValueError:
            raise BinanceApiError(400, -1100, "Illegal characters found in parameter 'limit'.") from None
        if not 1 <= limit <= 1000:
            raise BinanceApiError(400, -1100, "Illegal characters found in parameter 'limit'; legal range is '1..1000'.")
        return self._public_trades.get(m.id, [])[-limit:]

    async def _trades(self, request: web.Request) -> web.Response:
        """GET /api/v3/trades (ccxt ``fetch_trades`` with fetchTradesMethod=publicGetTrades)."""
        rows = self._recent_trades(request)
        return web.json_response([
            {"id": t["id"], "price": _s(t["price"]), "qty": _s(t["qty"]), "quoteQty": _s(t["price"] * t["qty"]),
             "time": t["time"], "isBuyerMaker": t["buyer_maker"], "isBestMatch": True}
            for t in rows
        ])

    async def _agg_trades(self, request: web.Request) -> web.Response:
        """GET /api/v3/aggTrades (ccxt's default spot ``fetch_trades``): one aggregate per trade."""
        rows = self._recent_trades(request)
        return web.json_response([
            {"a": t["id"], "p": _s(t["price"]), "q": _s(t["qty"]), "f": t["id"], "l": t["id"],
             "T": t["time"], "m": t["buyer_maker"], "M": True}
            for t in rows
        ])
