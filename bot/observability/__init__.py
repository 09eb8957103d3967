"""Watching a running engine from outside: Prometheus metrics (:mod:`.metrics`), JSON-line
event logs (:mod:`.jsonlog`) and the event-loop lag probe (:mod:`.looplag`).

The engine knows one optional ``observer`` (``Engine.observer``) with the methods of
:class:`Observer`; :class:`Observers` fans them out to several. Observers never stop a run:
an exception in one is logged once per method and otherwise ignored.
"""

from __future__ import annotations

import logging

log = logging.getLogger("mmbot.observability")


class Observer:
    """Hooks the engine calls; all are optional no-ops here.

    ``run_started`` runs inside the event loop after the run's row is written (run id known);
    ``tick`` after every market event (after the engine's ``on_tick``); ``fill`` for each new
    fill applied to the inventory; ``order_error`` for each rejected order (``ack.reason``
    says why); ``run_ended`` after the run was closed in the database, with its summary."""

    def run_started(self, engine) -> None: ...

    def tick(self, engine) -> None: ...

    def fill(self, engine, fill) -> None: ...

    def order_error(self, engine, ack) -> None: ...

    def run_ended(self, engine, summary: dict) -> None: ...


class Observers(Observer):
    """Several observers as one; a failing observer is logged (once per method) and skipped."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = [o for o in observers if o is not None]
        self._failed: set[tuple[int, str]] = set()
        self._ticks = [o.tick for o in self.observers]  # bound once: tick runs on every event

    def _failure(self, i: int, name: str, e: Exception) -> None:
        if (i, name) not in self._failed:
            self._failed.add((i, name))
            o = self.observers[i]
            log.warning("observer %s.%s failed (further failures not logged): %s: %s",
                        type(o).__name__, name, type(e).__name__, e)

    def _call(self, name: str, *args) -> None:
        for i, o in enumerate(self.observers):
            try:
                getattr(o, name)(*args)
            except Exception as e:  # noqa: BLE001 - watching must never stop trading
                self._failure(i, name, e)

    def run_started(self, engine) -> None:
        self._call("run_started", engine)

    def tick(self, engine) -> None:
        for i, f in enumerate(self._ticks):
            try:
                f(engine)
            except Exception as e:  # noqa: BLE001
                self._failure(i, "tick", e)

    def fill(self, engine, fill) -> None:
        self._call("fill", engine, fill)

    def order_error(self, engine, ack) -> None:
        self._call("order_error", engine, ack)

    def run_ended(self, engine, summary: dict) -> None:
        self._call("run_ended", engine, summary)


def market_labels(engine) -> tuple[str, str]:
    """(exchange, symbol) of an engine's market: the configured exchange ("sim", a ccxt id,
    or a recording's exchange) and the market's unified symbol."""
    snap = engine.config_snapshot or {}
    exchange = str(snap.get("exchange") or engine.exchange_name())
    symbol = engine.market.symbol if engine.market is not None else str(snap.get("symbol", ""))
    return exchange, symbol


def classify_order_error(reason: str) -> str:
    """A bounded label for an order error's reason (Prometheus label values must not grow
    without bound): post_only, insufficient_funds, rate_limit, min_size, invalid_order,
    network, or other."""
    r = (reason or "").lower()
    for key, words in (("post_only", ("post-only", "post only", "postonly", "would cross", "would take")),
                       ("insufficient_funds", ("insufficient", "balance", "funds")),
                       ("rate_limit", ("rate limit", "ratelimit", "too many", "ddos")),
                       ("min_size", ("minimum", "min size", "too small", "min notional")),
                       ("network", ("network", "timeout", "timed out", "connection")),
                       ("invalid_order", ("invalid", "precision", "tick", "lot"))):
        if any(w in r for w in words):
            return key
    return "other"
