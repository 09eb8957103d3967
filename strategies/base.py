"""The strategy interface: market update in, desired quotes out.

The engine calls :meth:`Strategy.on_update` on every book update with the book, our
inventory (base units, float), the clock (ns since epoch) and an optional forecast, and
gets back the quotes it wants working. It never places orders itself: the order manager
turns the difference between desired and working quotes into cancels and placements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from collections.abc import Sequence
from typing import Protocol

from bot.market_data.base import Trade
from bot.orderbook import OrderBook
from models.forecast import Forecast


@dataclass(frozen=True, slots=True)
class QuoteLevel:
    """One desired order: price (quote per base, on the tick) and size (base units, on the lot)."""

    price: Decimal
    size: Decimal


@dataclass(slots=True)
class Quotes:
    """Desired quotes, best level first on each side, plus what the model computed.

    ``reservation`` and the half-spreads are in quote currency per base unit; ``sigma`` in
    quote per base per sqrt(second). An empty side means "do not quote this side"."""

    bids: list[QuoteLevel] = field(default_factory=list)
    asks: list[QuoteLevel] = field(default_factory=list)
    mid: float = float("nan")
    reservation: float = float("nan")
    half_spread_bid: float = float("nan")
    half_spread_ask: float = float("nan")
    sigma: float = float("nan")
    drift: float = 0.0
    note: str = ""


class Strategy(Protocol):
    def on_update(self, book: OrderBook, inventory: float, now_ns: int, forecast: Forecast | None = None) -> Quotes: ...

    def on_trades(self, trades: Sequence[Trade], now_ns: int) -> None:
        """Public trades that arrived with the update (called before ``on_update``)."""
