"""One server-side websocket connection with an outgoing queue (shared by the market
streams and the user-data streams).

Messages are serialized when queued (so they show the state at the event, not at send
time) and sent in order by one sender task. ``stalled``: the connection stays open but
nothing is sent and pings are not answered (a silent stall); queued messages are dropped.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import WSMsgType, web


class WsConn:
    """A client websocket. ``kind``: ``"market"`` or ``"user"``."""

    def __init__(self, ws: web.WebSocketResponse, path: str, kind: str) -> None:
        self.ws = ws
        self.path = path
        self.kind = kind
        self.combined = path.startswith("/stream")
        self.streams: list[str] = []  # market stream names
        self.subscriptions: dict[int, str] = {}  # user: subscription id -> what
        self.listen_key: str | None = None
        self.stalled = False
        self.sent = 0
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._sender = asyncio.ensure_future(self._send_loop())

    def send(self, msg: Any) -> None:
        """Queue ``msg`` (JSON-able) for sending; dropped while stalled or closed."""
        if not self.stalled and not self.ws.closed:
            self._queue.put_nowait(json.dumps(msg))

    async def _send_loop(self) -> None:
        while True:
            text = await self._queue.get()
            if text is None:
                return
            if self.stalled or self.ws.closed:
                continue
            try:
                await self.ws.send_str(text)
                self.sent += 1
            except (ConnectionError, RuntimeError):
                return

    async def close(self, code: int = 1001, message: bytes = b"going away") -> None:
        try:
            await self.ws.close(code=code, message=message)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def finish(self) -> None:
        """Stop the sender (the socket is done)."""
        self._queue.put_nowait(None)

    async def serve(self, on_text: Any) -> None:
        """Read until the socket closes: TEXT -> ``await on_text(self, data)``; PING ->
        PONG unless stalled (the socket must be created with ``autoping=False``)."""
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    if not self.stalled:
                        await on_text(self, msg.data)
                elif msg.type == WSMsgType.PING:
                    if not self.stalled:
                        await self.ws.pong(msg.data)
                elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            self.finish()
