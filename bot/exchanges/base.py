"""The exchange interface: the paper exchange and live ccxt adapters implement it alike.

All calls are async. Orders are :class:`bot.orders.Order` objects owned by the caller (the
order manager); the exchange answers with an :class:`OrderAck` and never mutates them.
Executions arrive as :class:`bot.orders.Fill` objects on :attr:`Exchange.fills`, an
``asyncio.Queue`` the engine drains after every market event (a live adapter fills it from
a websocket or polling task; the paper exchange fills it while matching market data).
Order state changes that happen later than the request's answer (an order accepted after
an entry latency, rejected on arrival, a cancel taking effect) arrive as
:class:`OrderAck` objects on :attr:`Exchange.order_updates`; the engine drains fills first,
then updates, so that a fill before a cancel is applied in that order.
"""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass
from decimal import Decimal

from bot.market import MarketInfo
from bot.market_data.base import MarketEvent
from bot.orders import Fill, Order, OrderState


@dataclass(frozen=True, slots=True)
class OrderAck:
    """The exchange's answer to place/cancel, or a row of open orders.

    ``state`` is the order's state at the exchange after the request; ``filled`` its
    cumulative executed size (base units); ``reason`` explains a rejection."""

    client_id: str
    state: OrderState
    ts_ns: int
    exchange_id: str | None = None
    filled: Decimal = Decimal(0)
    reason: str = ""


class Exchange(abc.ABC):
    name: str = "exchange"

    def __init__(self) -> None:
        self.fills: asyncio.Queue[Fill] = asyncio.Queue()
        self.order_updates: asyncio.Queue[OrderAck] = asyncio.Queue()

    async def start(self, market: MarketInfo) -> None:
        """Called once by the engine after the market source has started (connect, load
        balances, reconcile open orders)."""

    @abc.abstractmethod
    async def place(self, order: Order, now_ns: int) -> OrderAck:
        """Submit a limit order. A post-only order that would cross is answered ``rejected``."""

    @abc.abstractmethod
    async def cancel(self, order: Order, now_ns: int) -> OrderAck:
        """Cancel; an order that already traded out is answered with its final state."""

    @abc.abstractmethod
    async def cancel_all(self, symbol: str, now_ns: int) -> list[OrderAck]:
        """Cancel every open order of ``symbol``."""

    @abc.abstractmethod
    async def open_orders(self, symbol: str) -> list[OrderAck]:
        """The venue's view of our working orders."""

    @abc.abstractmethod
    async def balances(self) -> dict[str, Decimal]:
        """Total balance per currency code."""

    async def on_market(self, event: MarketEvent) -> None:
        """Called by the engine with every market event before the strategy runs.

        Simulated venues match resting orders here; live venues ignore it."""

    async def close(self) -> None:
        """Release connections."""
