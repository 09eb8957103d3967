"""Binance spot market-data websocket streams (protocol as on ``stream.binance.com``).

* raw streams ``/ws`` and ``/ws/<anything>`` (ccxt connects to ``<urls.api.ws.spot>/<n>``,
  e.g. ``/ws/0``, then subscribes): the client sends
  ``{"method": "SUBSCRIBE", "params": ["btcusdt@depth@100ms"], "id": 1}``, the server answers
  ``{"result": null, "id": 1}`` and from then on pushes the stream's events as bare JSON
  objects. ``UNSUBSCRIBE``, ``LIST_SUBSCRIPTIONS``, ``SET_PROPERTY``/``GET_PROPERTY`` are
  answered. A path tail that is a stream name (``/ws/btcusdt@trade``) subscribes at connect.
* combined streams ``/stream?streams=a/b`` (+ SUBSCRIBE): events wrapped as
  ``{"stream": name, "data": event}``.

Events: diff depth ``{"e": "depthUpdate", "E", "s", "U", "u", "b", "a"}`` to subscribers of
``<sym>@depth`` (any ``@100ms``/``@1000ms`` suffix; ``U = previous u + 1`` so ccxt's sync
recipe works against REST ``/api/v3/depth``); trades ``{"e": "trade", "E", "s", "t", "p",
"q", "T", "m", "M"}`` to ``<sym>@trade`` subscribers (``m`` = buyer is maker).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .state import Event, fmt
from .wsconn import WsConn

if TYPE_CHECKING:  # pragma: no cover
    from .server import LocalBinance


def _wants(conn: WsConn, sid_lower: str, channel: str) -> str | None:
    want = f"{sid_lower}@{channel}"
    for s in conn.streams:
        if s == want or s.startswith(want + "@"):
            return s
    return None


class MarketStreams:
    """Market websocket connections; fed by the exchange state's ``depth``/``trade`` events."""

    def __init__(self, server: "LocalBinance") -> None:
        self.server = server
        self.connections: list[WsConn] = []
        self.requests: list[tuple[str, dict]] = []  # (path, message) every JSON message received
        self.connects = 0
        server.state.listen(self.on_event)

    async def handle(self, request: web.Request, conn_path_tail: str = "") -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        conn = WsConn(ws, request.path, "market")
        if conn.combined:
            conn.streams.extend(s for s in request.query.get("streams", "").split("/") if s)
        elif "@" in conn_path_tail:
            conn.streams.append(conn_path_tail)
        self.connections.append(conn)
        self.connects += 1
        try:
            await conn.serve(self._on_text)
        finally:
            if conn in self.connections:
                self.connections.remove(conn)
        return ws

    async def _on_text(self, conn: WsConn, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            conn.send({"error": {"code": 3, "msg": "Invalid JSON"}, "id": None})
            return
        if not isinstance(msg, dict):
            conn.send({"error": {"code": 2, "msg": "Invalid request"}, "id": None})
            return
        self.requests.append((conn.path, msg))
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
        conn.send(reply)

    def on_event(self, ev: Event) -> None:
        if ev.kind == "depth":
            d = ev.data or {}
            self.broadcast(ev.symbol, "depth", {"e": "depthUpdate", "E": ev.time_ms, "s": ev.symbol,
                                                "U": d["U"], "u": d["u"], "b": d["b"], "a": d["a"]})
        elif ev.kind == "trade":
            t = ev.data or {}
            self.broadcast(ev.symbol, "trade", {"e": "trade", "E": ev.time_ms, "s": ev.symbol, "t": t["id"],
                                                "p": fmt(t["price"]), "q": fmt(t["qty"]), "T": t["time"],
                                                "m": t["buyer_maker"], "M": True})

    def broadcast(self, symbol: str, channel: str, event: dict) -> None:
        sid = symbol.lower()
        for conn in list(self.connections):
            stream = _wants(conn, sid, channel)
            if stream is not None:
                conn.send({"stream": stream, "data": event} if conn.combined else event)

    def subscribe_count(self, channel: str, symbol: str = "BTCUSDT") -> int:
        """How many SUBSCRIBE requests named a ``<symbol>@<channel>`` stream so far."""
        want = f"{symbol.lower()}@{channel}"
        n = 0
        for _, msg in self.requests:
            if msg.get("method") == "SUBSCRIBE":
                n += sum(1 for s in msg.get("params") or [] if s == want or str(s).startswith(want + "@"))
        return n
