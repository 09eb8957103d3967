"""Orders, their state machine, and fills.

An order carries our own ``client_id`` (unique across runs, processes and restarts of one
database, sent to the exchange as its client order id; see :class:`ClientIdFactory`) and,
once acknowledged, the exchange's ``exchange_id``. Prices are Decimal quote currency per
base unit; sizes Decimal base units; times ns since the epoch.

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
import secrets
import string
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

_B62 = string.digits + string.ascii_letters
_B36 = string.digits + string.ascii_lowercase
CLIENT_ID_MAX_LEN = 36  # Binance newClientOrderId: ^[.A-Z:/a-z0-9_-]{1,36}$; other venues allow as much or more


def random_prefix(n: int = 8) -> str:
    """``n`` random base-62 characters (62**8 ~ 2e14 values: collisions are negligible)."""
    return "".join(secrets.choice(_B62) for _ in range(n))


def _b36(n: int) -> str:
    if n < 0:
        raise ValueError(f"negative id component {n}")
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _B36[r] + out
        if n == 0:
            return out


class ClientIdFactory:
    """Client order ids ``mm<installation>-<run>-<counter>``, unique across processes and restarts.

    ``installation`` is a random base-62 prefix kept in the database (see
    :meth:`bot.persistence.store.Store.installation_id`), ``run`` the run's id in that database
    and ``counter`` the order's number within the run, both in base 36. Two runs never share a
    run id in one database, and two databases differ in their prefix, so an id is never reused
    (a venue may reject or, worse, de-duplicate a reused client id). Charset ``[A-Za-z0-9-]``;
    length <= 36 (2 + 8 + 1 + up to 7 for run ids < 36**7 + 1 + up to 10 for the counter; a
    longer id raises ``ValueError`` rather than being sent).
    """

    def __init__(self, installation: str, run_id: int) -> None:
        if not installation or any(c not in _B62 for c in installation):
            raise ValueError(f"installation prefix must be base-62 characters, got {installation!r}")
        self.prefix = f"mm{installation}-{_b36(run_id)}-"
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        cid = f"{self.prefix}{_b36(next(self._counter))}"
        if len(cid) > CLIENT_ID_MAX_LEN:
            raise ValueError(f"client order id {cid!r} is longer than {CLIENT_ID_MAX_LEN} characters")
        return cid


# orders made outside a run (tests, tools): a random per-process prefix, run 0
_default_ids = ClientIdFactory(random_prefix(), 0)


def new_client_id() -> str:
    """A client order id unique to this process (random prefix + counter), <= 36 chars."""
    return _default_ids()


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
        fee_cost, fee_currency: the fee as the venue charged it (amount in ``fee_currency``
            units; None for simulated venues, whose ``fee`` is charged in quote).
        fee_rate: quote per ``fee_currency`` unit used to value ``fee_cost`` as ``fee``
            (None with a non-quote ``fee_currency``: not converted, ``fee`` is 0 for it).
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
    fee_cost: Decimal | None = None
    fee_currency: str | None = None
    fee_rate: Decimal | None = None

    @property
    def notional(self) -> Decimal:
        return self.price * self.size

    @property
    def spread_capture(self) -> float:
        """Edge against the mid at fill time, quote currency: (mid - price)*size for a buy."""
        return (self.mid - float(self.price)) * float(self.size) * self.side.sign
