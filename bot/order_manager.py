"""The order manager: turns desired quotes into the fewest cancels and placements, and
keeps every order's state from exchange acknowledgements and fills.

Diffing rule, per side: each desired level (best first) is matched to an unmatched working
order on that side whose size equals the level's size and whose price is within
``tolerance_ticks`` of it (exact price preferred), and which is not older than
``max_age_ns``. Matched orders are left working (they keep their queue position);
unmatched working orders are cancelled; unmatched desired levels become new orders.
Orders still in flight (state ``new``: sent, not yet accepted) count as working; orders
with a cancel in flight (``cancel_requested``, state ``pending_cancel``) are neither
matched nor cancelled again. Live trading: while a level's placement is in flight
(``pending_new``) or its outcome is ``unknown``, no second order is placed for that side
and level: the in-flight order is matched like a working one, and if the quote moved away
it is cancelled (the adapter runs that cancel only once the placement is resolved) but
its replacement waits until the level is free.

Every state change is reported to ``on_change(order)`` (the engine persists it).

Memory: :attr:`OrderManager.orders` holds the working orders and only the last
``keep_terminal`` orders that became terminal (filled, cancelled, rejected), oldest dropped
first, so a long run (tens of thousands of orders an hour on a fast market) holds a bounded
number of orders. The terminal ones are kept for the acks and fills that race behind a
cancel; an ack or fill for an order dropped long ago is ignored like any unknown id (the
engine still records the fill and moves the inventory).
"""

from __future__ import annotations

from collections import OrderedDict
from decimal import Decimal
from typing import Callable

from bot.exchanges.base import OrderAck
from bot.market import MarketInfo
from bot.orders import Fill, Order, OrderState, Side
from bot.orders import new_client_id as default_client_id
from strategies.base import QuoteLevel, Quotes


class OrderManager:
    def __init__(
        self,
        market: MarketInfo,
        tolerance_ticks: int = 0,
        max_age_s: float | None = None,
        post_only: bool = True,
        on_change: Callable[[Order], None] | None = None,
        new_client_id: Callable[[], str] | None = None,
        keep_terminal: int = 10_000,
    ) -> None:
        self.market = market
        self.tol = Decimal(tolerance_ticks) * market.tick
        self.max_age_ns = None if max_age_s is None else int(max_age_s * 1e9)
        self.post_only = post_only
        self.on_change = on_change or (lambda o: None)
        self.new_client_id = new_client_id or default_client_id  # the engine passes the run's ids
        self.working: dict[str, Order] = {}  # client_id -> non-terminal order
        self.orders: dict[str, Order] = {}  # working + the last keep_terminal terminal orders, by client id
        self.keep_terminal = keep_terminal
        self._terminal: OrderedDict[str, None] = OrderedDict()  # terminal client ids, oldest first

    # -- diffing ----------------------------------------------------------------------
    def plan(self, quotes: Quotes, now_ns: int) -> tuple[list[Order], list[Order]]:
        """(orders to cancel, new orders to place) that make the book match ``quotes``."""
        cancels: list[Order] = []
        places: list[Order] = []
        for side, levels in ((Side.BUY, quotes.bids), (Side.SELL, quotes.asks)):
            mine = [o for o in self.working.values() if o.side is side]
            c, p = self._plan_side(side, levels, mine, now_ns)
            cancels += c
            places += p
        return cancels, places

    def _plan_side(self, side: Side, levels: list[QuoteLevel], mine: list[Order], now_ns: int) -> tuple[list[Order], list[Order]]:
        live = [o for o in mine if not o.cancel_requested and o.state is not OrderState.PENDING_CANCEL]
        busy = {o.level for o in mine if o.state in _IN_FLIGHT}
        if self.max_age_ns is None:
            free, stale = live, []
        else:
            free = [o for o in live if now_ns - o.created_ns < self.max_age_ns]
            stale = [o for o in live if now_ns - o.created_ns >= self.max_age_ns]
        places: list[Order] = []
        for i, lv in enumerate(levels):
            best, best_d = None, None
            for o in free:
                if o.size != lv.size:
                    continue
                d = abs(o.price - lv.price)
                if d <= self.tol and (best_d is None or d < best_d):
                    best, best_d = o, d
                    if d == 0:
                        break
            if best is not None:
                free.remove(best)
            elif i in busy:
                continue  # the level's placement is in flight: never a second order for it
            else:
                places.append(Order(self.market.symbol, side, lv.price, lv.size, client_id=self.new_client_id(),
                                    post_only=self.post_only, level=i, created_ns=now_ns, updated_ns=now_ns))
        return stale + free, places

    # -- state keeping ------------------------------------------------------------------
    def submitted(self, order: Order) -> None:
        """Register a new order before it is sent (state ``new``)."""
        self.orders[order.client_id] = order
        self.working[order.client_id] = order
        self.on_change(order)

    def on_ack(self, ack: OrderAck) -> Order | None:
        """Apply the exchange's answer to place/cancel. Unknown client ids are ignored."""
        o = self.orders.get(ack.client_id)
        if o is None:
            return None
        if ack.exchange_id and not o.exchange_id:
            o.exchange_id = ack.exchange_id
        if ack.state is not o.state and ack.state in _NEXT[o.state]:
            if (o.state in (OrderState.PENDING_CANCEL, OrderState.UNKNOWN) and o.cancel_requested
                    and ack.state in (OrderState.OPEN, OrderState.PARTIALLY_FILLED)):
                o.cancel_requested = False  # the cancel did not take: the order rests and may be cancelled again
            o.transition(ack.state, ack.ts_ns, ack.reason)
            if o.state.terminal:
                self._retire(o)
            self.on_change(o)
        return o

    def on_fill(self, fill: Fill) -> Order | None:
        """Apply an execution to its order; returns the order (None if not ours)."""
        o = self.orders.get(fill.client_id)
        if o is None:
            return None
        if o.state is OrderState.NEW:  # fill raced ahead of the ack
            o.transition(OrderState.OPEN, fill.ts_ns)
            self.on_change(o)
        if o.state.terminal and o.state is not OrderState.CANCELED:
            # the venue reported the final state before this fill arrived: keep the count right
            o.filled = min(o.size, o.filled + fill.size)
            self.on_change(o)
            return o
        if o.state is OrderState.CANCELED:
            # a fill that arrives after our cancel ack: the venue traded first. Record the
            # fill (the money moved) but keep the order's terminal state.
            o.filled += fill.size
            self.on_change(o)
            return o
        o.apply_fill(min(fill.size, o.remaining), fill.ts_ns)
        if o.state.terminal:
            self._retire(o)
        self.on_change(o)
        return o

    def _retire(self, o: Order) -> None:
        """``o`` became terminal: out of the working set; the oldest terminal order beyond
        ``keep_terminal`` is forgotten."""
        self.working.pop(o.client_id, None)
        self._terminal[o.client_id] = None
        while len(self._terminal) > self.keep_terminal:
            cid, _ = self._terminal.popitem(last=False)
            if cid not in self.working:
                self.orders.pop(cid, None)


_IN_FLIGHT = {OrderState.PENDING_NEW, OrderState.UNKNOWN}

# states an acknowledgement may move an order to (fills move it to partially_filled/filled)
_RESOLVED = {OrderState.OPEN, OrderState.REJECTED, OrderState.CANCELED, OrderState.FILLED, OrderState.UNKNOWN}
_NEXT = {
    OrderState.NEW: {OrderState.OPEN, OrderState.REJECTED, OrderState.CANCELED, OrderState.PENDING_NEW, OrderState.UNKNOWN},
    OrderState.PENDING_NEW: _RESOLVED | {OrderState.PARTIALLY_FILLED},
    OrderState.UNKNOWN: (_RESOLVED - {OrderState.UNKNOWN}) | {OrderState.PARTIALLY_FILLED},
    OrderState.OPEN: {OrderState.CANCELED, OrderState.PENDING_CANCEL, OrderState.FILLED},
    OrderState.PARTIALLY_FILLED: {OrderState.CANCELED, OrderState.PENDING_CANCEL, OrderState.FILLED},
    OrderState.PENDING_CANCEL: {OrderState.CANCELED, OrderState.FILLED, OrderState.OPEN, OrderState.PARTIALLY_FILLED,
                                OrderState.UNKNOWN},
    OrderState.FILLED: set(),
    OrderState.CANCELED: set(),
    OrderState.REJECTED: set(),
}
