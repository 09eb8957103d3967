"""Binance spot user-data streams: the WebSocket API ``/ws-api/v3`` and legacy listenKeys.

ccxt 4.5 ``ccxt.pro.binance`` subscribes spot ``watch_orders`` / ``watch_my_trades`` /
``watch_balance`` on ``urls['api']['ws']['ws-api']['spot']`` (``.../ws-api/v3``) with::

    {"id": "1", "method": "userDataStream.subscribe.signature",
     "params": {"apiKey": K, "timestamp": T, ["recvWindow": W,] "signature": HMAC}}

(HMAC-SHA256 over the other params sorted by key, ``k=v`` joined by ``&``). Answer:
``{"id": "1", "status": 200, "result": {"subscriptionId": N}}``; errors come as
``{"id", "status": 400|401, "error": {"code", "msg"}}`` (ccxt maps the code). Then events
arrive wrapped as ``{"subscriptionId": N, "event": {...}}``: ``executionReport`` per order
change (x = NEW / TRADE / CANCELED / EXPIRED; on a cancel by request ``c`` is the cancel's
client id and ``C`` the order's) and ``outboundAccountPosition`` (balances of the assets
that changed); :meth:`UserStreams.terminate` sends ``eventStreamTerminated``. Also
answered: ``ping``, ``time``, ``userDataStream.unsubscribe``,
``session.subscriptions``.

The legacy listenKey route (``POST /api/v3/userDataStream`` -> ``/ws/<listenKey>``, bare
events) is served too, although ccxt 4.5 uses it for spot no more (only for
linear/inverse/option/portfolio-margin accounts, which this server does not list).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .state import BinanceApiError, Event, fmt
from .wsconn import WsConn

if TYPE_CHECKING:  # pragma: no cover
    from .server import LocalBinance

_RATE_LIMITS = [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000, "count": 2}]


def execution_report(ev: Event) -> dict[str, Any]:
    """Binance's ``executionReport`` for an ``execution`` event (order state at the event)."""
    o, f = ev.order, ev.fill
    assert o is not None
    by_request = ev.exec_type == "CANCELED" and bool(ev.cancel_client_id)
    return {
        "e": "executionReport", "E": ev.time_ms, "s": o.symbol,
        "c": ev.cancel_client_id if by_request else o.client_order_id,
        "S": o.side, "o": o.type, "f": o.time_in_force, "q": fmt(o.orig_qty), "p": fmt(o.price),
        "P": "0.00000000", "F": "0.00000000", "g": -1, "C": o.client_order_id if by_request else "",
        "x": ev.exec_type, "X": o.status, "r": "NONE", "i": o.order_id,
        "l": fmt(f.qty) if f else "0.00000000", "z": fmt(o.executed_qty),
        "L": fmt(f.price) if f else "0.00000000", "n": fmt(f.commission) if f else "0",
        "N": f.commission_asset if f else None, "T": f.time_ms if f else ev.time_ms,
        "t": f.trade_id if f else -1, "v": 0, "I": 0, "w": o.is_open, "m": f.maker if f else False, "M": False,
        "O": o.time_ms, "Z": fmt(o.cum_quote), "Y": fmt(f.price * f.qty) if f else "0.00000000",
        "Q": "0.00000000", "W": o.time_ms, "V": "EXPIRE_MAKER",
    }


class UserStreams:
    """User-data connections (WebSocket API and listenKey); fed by ``execution``/``balance`` events."""

    def __init__(self, server: "LocalBinance") -> None:
        self.server = server
        self.connections: list[WsConn] = []
        self.requests: list[dict] = []  # every JSON request received on /ws-api/v3
        self.connects = 0
        self.listen_keys: set[str] = set()
        self.events_sent = 0
        self._sub_ids = 0
        server.state.listen(self.on_event)

    def new_listen_key(self) -> str:
        key = secrets.token_hex(32)
        self.listen_keys.add(key)
        return key

    @property
    def subscribed(self) -> list[WsConn]:
        """Connections that currently receive user events."""
        return [c for c in self.connections if c.subscriptions or c.listen_key]

    async def handle_ws_api(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        conn = WsConn(ws, request.path, "user")
        return await self._serve(conn)

    async def handle_listen_key(self, request: web.Request, key: str) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        conn = WsConn(ws, request.path, "user")
        conn.listen_key = key
        return await self._serve(conn)

    async def _serve(self, conn: WsConn) -> web.StreamResponse:
        self.connections.append(conn)
        self.connects += 1
        try:
            await conn.serve(self._on_text)
        finally:
            if conn in self.connections:
                self.connections.remove(conn)
        return conn.ws

    async def _on_text(self, conn: WsConn, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            conn.send({"id": None, "status": 400, "error": {"code": -1100, "msg": "Invalid JSON"}})
            return
        if not isinstance(msg, dict):
            conn.send({"id": None, "status": 400, "error": {"code": -1100, "msg": "Invalid request"}})
            return
        self.requests.append(msg)
        rid, method, params = msg.get("id"), msg.get("method"), msg.get("params") or {}
        try:
            result = self._dispatch(conn, str(method), params)
        except BinanceApiError as e:
            conn.send({"id": rid, "status": e.status, "error": {"code": e.code, "msg": e.msg},
                       "rateLimits": _RATE_LIMITS})
            return
        conn.send({"id": rid, "status": 200, "result": result, "rateLimits": _RATE_LIMITS})

    def _dispatch(self, conn: WsConn, method: str, params: dict[str, Any]) -> Any:
        if method == "ping":
            return {}
        if method == "time":
            return {"serverTime": self.server.state.now_ms()}
        if method == "userDataStream.subscribe.signature":
            self._check_signature(params)
            sub_id = self._sub_ids
            self._sub_ids += 1
            conn.subscriptions[sub_id] = "signature"
            return {"subscriptionId": sub_id}
        if method == "userDataStream.unsubscribe":
            sid = params.get("subscriptionId")
            if sid is None:
                conn.subscriptions.clear()
            else:
                conn.subscriptions.pop(int(sid), None)
            return {}
        if method == "session.subscriptions":
            return [{"subscriptionId": s} for s in conn.subscriptions]
        raise BinanceApiError(400, -1100, f"Illegal characters found in parameter 'method'; unknown method {method!r}.")

    def _check_signature(self, params: dict[str, Any]) -> None:
        srv = self.server
        key = params.get("apiKey")
        if not key:
            raise BinanceApiError(401, -2014, "API-key format invalid.")
        if key != srv.api_key or not srv.key_enabled:
            raise BinanceApiError(401, -2015, "Invalid API-key, IP, or permissions for action.")
        sig = params.get("signature")
        if not sig:
            raise BinanceApiError(400, -1102, "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.")
        payload = "&".join(f"{k}={_plain(v)}" for k, v in sorted(params.items()) if k != "signature")
        expected = hmac.new(srv.secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, str(sig).lower()):
            raise BinanceApiError(400, -1022, "Signature for this request is not valid.")
        srv.rest.check_timestamp(params)

    def terminate(self) -> int:
        """End every WebSocket API user-data subscription as Binance does when the
        session's key is revoked: ``{"subscriptionId": N, "event": {"e":
        "eventStreamTerminated", "E": ms}}``; the socket stays open. Returns how many."""
        n = 0
        now = self.server.state.now_ms()
        for conn in list(self.connections):
            for sub_id in list(conn.subscriptions):
                conn.send({"subscriptionId": sub_id, "event": {"e": "eventStreamTerminated", "E": now}})
                n += 1
            conn.subscriptions.clear()
        return n

    def on_event(self, ev: Event) -> None:
        if ev.kind == "execution":
            event = execution_report(ev)
        elif ev.kind == "balance":
            st = self.server.state
            event = {"e": "outboundAccountPosition", "E": ev.time_ms, "u": ev.time_ms,
                     "B": [{"a": a, "f": fmt(st.free.get(a, 0)), "l": fmt(st.locked.get(a, 0))} for a in ev.assets]}
        else:
            return
        for conn in list(self.connections):
            if conn.listen_key:
                conn.send(event)
                self.events_sent += 1
            for sub_id in list(conn.subscriptions):
                conn.send({"subscriptionId": sub_id, "event": event})
                self.events_sent += 1


def _plain(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
