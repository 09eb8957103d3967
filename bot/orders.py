"""Orders, their state machine, and fills.

An order carries our own ``client_id`` (unique per run, sent to the exchange as its client
order id) and, once acknowledged, the exchange's ``exchange_id``. Prices are Decimal quote
currency per base unit; sizes Decimal base units; times ns since the epoch.

State machine::

    new -> open -> partially_filled -> filled
     |       |            |
     |       +------------+--> canceled
     +--> rejected | canceled | partially_filled | filled   (a marketable order may fill at once)

``filled``, ``canceled`` and ``rejected`` are terminal.

In-flight states (live trading, where a request takes time and may fail ambiguously)::

    new -> pending_new (request sent) -> open | partially_filled | filled | rejected | canceled
                                      -> unknown (timeout, 5xx: the exchange may or may not
                                                  have the order) -> resolved by client id to
                                                  open | partially_filled | filled | canceled | rejected
    open | partially_filled -> pending_cancel (cancel sent) -> canceled | filled
                                      | open | partially_filled (the cancel failed, the order still rests)
                                      | unknown

A partial fill while a cancel is pending keeps ``pending_cancel``. ``pending_new``,
``pending_cancel`` and ``unknown`` are working (non-terminal) states: the order may trade.
"""

from __future__ import annotations

import enum
import itertools
import os
from dataclasses import dataclass, field
from decimal import Decimal

from bot.errors import OrderStateError


class Side(str, enum.Enum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        """+1 for buy (inventory grows), -1 for sell."""
        return 1 if self is Side.BUY else -1


class OrderState(str, enum.Enum):
    NEW = "new"
    OPEN = "open"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"
    PENDING_NEW = "pending_new"  # placement sent, no answer yet
    PENDING_CANCEL = "pending_cancel"  # cancel sent, no answer yet
    UNKNOWN = "unknown"  # a request failed ambiguously: resolve by client id before acting

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = {OrderState.FILLED, OrderState.CANCELED, OrderState.REJECTED}
_RESOLVED = {OrderState.OPEN, OrderState.PARTIALLY_FILLED, OrderState.FILLED, OrderState.CANCELED, OrderState.REJECTED}
_ALLOWED: dict[OrderState, set[OrderState]] = {
    OrderState.NEW: {OrderState.OPEN, OrderState.REJECTED, OrderState.CANCELED, OrderState.PARTIALLY_FILLED, OrderState.FILLED,
                     OrderState.PENDING_NEW, OrderState.UNKNOWN},
    OrderState.PENDING_NEW: _RESOLVED | {OrderState.UNKNOWN},
    OrderState.UNKNOWN: _RESOLVED | {OrderState.UNKNOWN},
    OrderState.OPEN: {OrderState.PARTIALLY_FILLED, OrderState.FILLED, OrderState.CANCELED, OrderState.PENDING_CANCEL},
    OrderState.PARTIALLY_FILLED: {OrderState.PARTIALLY_FILLED, OrderState.FILLED, OrderState.CANCELED, OrderState.PENDING_CANCEL},
    OrderState.PENDING_CANCEL: {OrderState.PENDING_CANCEL, OrderState.CANCELED, OrderState.FILLED, OrderState.OPEN,
                                OrderState.PARTIALLY_FILLED, OrderState.UNKNOWN},
    OrderState.FILLED: set(),
    OrderState.CANCELED: set(),
    OrderState.REJECTED: set(),
}

_counter = itertools.count(1)
_prefix = f"mm{os.getpid() % 100000:05d}"


def new_client_id() -> str:
    """A client order id unique within this process (prefix + counter); 32 chars max for ccxt venues."""
    return f"{_prefix}x{next(_counter)}"


@dataclass
class Order:
    """A limit order. ``post_only`` orders must never take liquidity."""

    symbol: str
    side: Side
    price: Decimal
    size: Decimal
    client_id: str = field(default_factory=new_client_id)
    post_only: bool = True
    level: int = 0  # quote level index (0 = closest to mid)
    state: OrderState = OrderState.NEW
    filled: Decimal = Decimal(0)
    exchange_id: str | None = None
    created_ns: int = 0
    updated_ns: int = 0
    reason: str = ""  # why rejected / canceled
    cancel_requested: bool = False  # a cancel was sent and not yet confirmed

    @property
    def remaining(self) -> Decimal:
        return self.size - self.filled

    @property
    def is_working(self) -> bool:
        """True while the order can still trade (new, open or partially filled)."""
        return not self.state.terminal

    def transition(self, new: OrderState, ts_ns: int, reason: str = "") -> None:
        """Move to ``new``; raises :class:`OrderStateError` for a forbidden transition."""
        if new not in _ALLOWED[self.state]:
            raise OrderStateError(f"order {self.client_id}: illegal transition {self.state.value} -> {new.value}")
        self.state = new
        self.updated_ns = ts_ns
        if reason:
            self.reason = reason

    def apply_fill(self, size: Decimal, ts_ns: int) -> None:
        """Add an execution of ``size`` and move to partially_filled or filled."""
        if size <= 0:
            raise OrderStateError(f"order {self.client_id}: fill size must be positive, got {size}")
        if self.filled + size > self.size:
            raise OrderStateError(f"order {self.client_id}: fill {size} exceeds remaining {self.remaining}")
        self.filled += size
        if self.filled == self.size:
            self.transition(OrderState.FILLED, ts_ns)
        elif self.state is OrderState.PENDING_CANCEL:
            self.transition(OrderState.PENDING_CANCEL, ts_ns)  # still cancelling what is left
        else:
            self.transition(OrderState.PARTIALLY_FILLED, ts_ns)


@dataclass(frozen=True)
class Fill:
    """One execution of one of our orders.

    Attributes:
        exchange: venue name (``"paper"`` for simulated fills).
        trade_id: the venue's trade id; (exchange, trade_id) is unique.
        client_id: our order's client id.
        price: execution price, quote per base (Decimal).
        size: executed size, base units (Decimal).
        fee: fee paid in quote currency (negative = rebate received).
        liquidity: ``"maker"`` or ``"taker"``.
        ts_ns: execution time, ns since epoch.
        mid: mid price when the fill happened (for spread-capture attribution), quote per base.
    """

    exchange: str
    trade_id: str
    client_id: str
    symbol: str
    side: Side
    price: Decimal
    size: Decimal
    fee: Decimal
    liquidity: str
    ts_ns: int
    mid: float

    @property
    def notional(self) -> Decimal:
        return self.price * self.size

    @property
    def spread_capture(self) -> float:
        """Edge against the mid at fill time, quote currency: (mid - price)*size for a buy."""
        return (self.mid - float(self.price)) * float(self.size) * self.side.sign
