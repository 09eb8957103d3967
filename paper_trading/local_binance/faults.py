"""Programmable REST faults of the local exchange (queued, consumed by matching requests).

A :class:`Fault` fires on the next ``count`` requests that match ``match``:
``"*"`` (any API request), ``"/api/v3/order"`` (any method on that path) or
``"POST /api/v3/order"`` (method and path). Aliases: ``"order"`` = ``POST /api/v3/order``,
``"cancel"`` = ``DELETE /api/v3/order``, ``"cancel_all"`` = ``DELETE /api/v3/openOrders``.
Admin (``/_admin/...``) and websocket requests never match.

Kinds (``execute``: does the request still take effect on the exchange?):

* ``"timeout"``: (execute, default True) then hold the reply until the client gives up and
  closes the connection (or ``hold_s`` seconds, or :meth:`FaultPlan.release_holds`) - the
  order placed / cancel done although the client saw a timeout.
* ``"drop"``: (execute, default True) then close the TCP connection without a reply.
* ``"http"``: (execute, default False) then answer HTTP ``status`` (default 503), with
  Binance's ``{"code", "msg"}`` body when ``code`` is given, else a plain-text body; extra
  reply ``headers`` (e.g. ``{"Retry-After": "600"}`` on a lone 429/418 that bans nobody).
  E.g. ``status=400, code=-1021, msg="Timestamp for this request is outside of the recvWindow."``.
* ``"rate_limit"``: HTTP 429, ``Retry-After: retry_after_s``, code -1003 (not executed).
* ``"ban"``: HTTP 418, bans the client for ``retry_after_s`` seconds: every API request
  until then answers 418 with the remaining ``Retry-After`` (see :attr:`FaultPlan.banned_until_ms`).
* ``"auth"``: HTTP 401, code -2015 "Invalid API-key, IP, or permissions for action.".
* ``"latency"``: delay the reply by ``delay_s`` seconds (the request is served normally).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ALIASES = {
    "order": "POST /api/v3/order",
    "cancel": "DELETE /api/v3/order",
    "cancel_all": "DELETE /api/v3/openOrders",
    "fetch_order": "GET /api/v3/order",
}
KINDS = ("timeout", "drop", "http", "rate_limit", "ban", "auth", "latency")


@dataclass
class Fault:
    """One queued fault; see the module docstring. ``retry_after_s`` seconds,
    ``hold_s`` / ``delay_s`` seconds."""

    kind: str
    match: str = "*"
    count: int = 1
    execute: bool | None = None
    status: int = 503
    code: int | None = None
    msg: str | None = None
    retry_after_s: int = 2
    hold_s: float = 120.0
    delay_s: float = 0.0
    headers: dict[str, str] | None = None
    fired: int = field(default=0)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; known: {', '.join(KINDS)}")
        self.match = ALIASES.get(self.match, self.match)
        if self.execute is None:
            self.execute = self.kind in ("timeout", "drop")
        if self.count < 1:
            raise ValueError("count must be >= 1")

    def matches(self, method: str, path: str) -> bool:
        if self.match == "*":
            return True
        if " " in self.match:
            m, p = self.match.split(" ", 1)
            return m.upper() == method.upper() and p == path
        return self.match == path

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class FaultPlan:
    """The queue of pending faults, the ban state and the log of fired faults."""

    def __init__(self) -> None:
        self.pending: list[Fault] = []
        self.fired: list[tuple[str, str, str]] = []  # (kind, method, path)
        self.banned_until_ms = 0
        self.release_seq = 0  # bumped by release_holds()

    def add(self, fault: Fault | None = None, **kw: Any) -> Fault:
        """Queue ``fault`` (or ``Fault(**kw)``); returns it."""
        f = fault if fault is not None else Fault(**kw)
        self.pending.append(f)
        return f

    def clear(self) -> None:
        """Drop pending faults, lift any ban and release held replies."""
        self.pending.clear()
        self.banned_until_ms = 0
        self.release_holds()

    def release_holds(self) -> None:
        """Let every held (``timeout``) reply go out now."""
        self.release_seq += 1

    def take(self, method: str, path: str) -> Fault | None:
        """The first pending fault matching this request (its count is consumed), or None."""
        for f in self.pending:
            if f.matches(method, path):
                f.count -= 1
                f.fired += 1
                if f.count <= 0:
                    self.pending.remove(f)
                self.fired.append((f.kind, method, path))
                return f
        return None

    def fired_count(self, kind: str | None = None) -> int:
        """How many faults fired (of ``kind``)."""
        return sum(1 for k, _, _ in self.fired if kind is None or k == kind)
