"""The market-source interface every feed implements (simulated, ccxt polling, replay, ws).

A source owns one :class:`~bot.orderbook.OrderBook` and updates it in place; each call to
:meth:`MarketSource.next` returns a :class:`MarketEvent` after the book has changed, or
``None`` when the feed has ended (end of a recording, duration elapsed, source closed).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bot.market import MarketInfo
from bot.orderbook import OrderBook


@dataclass(slots=True)
class Trade:
    """A public trade. price quote/base, size base units, ``side`` = aggressor ('buy'|'sell')."""

    ts_ns: int
    price: float
    size: float
    side: str
    trade_id: str = ""


class TradeArrays(Sequence[Trade]):
    """Public trades held as numpy arrays (replays: no Python object per trade unless asked).

    A ``Sequence[Trade]``: indexing builds a :class:`Trade`. ``side`` is +1 buy aggressor,
    -1 sell, 0 unknown; ``ts_ns`` int ns; ``price`` quote/base; ``size`` base units."""

    __slots__ = ("ts_ns", "price", "size", "side", "trade_id")

    def __init__(self, ts_ns: np.ndarray, price: np.ndarray, size: np.ndarray, side: np.ndarray, trade_id: np.ndarray) -> None:
        self.ts_ns, self.price, self.size, self.side, self.trade_id = ts_ns, price, size, side, trade_id

    def __len__(self) -> int:
        return len(self.ts_ns)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        s = int(self.side[i])
        return Trade(int(self.ts_ns[i]), float(self.price[i]), float(self.size[i]),
                     "buy" if s > 0 else "sell" if s < 0 else "", str(int(self.trade_id[i])))


@dataclass(slots=True)
class MarketEvent:
    """One market update.

    Attributes:
        book: the source's book after the update (same object every time: copy to keep).
        ts_ns: exchange (or simulated) time of the update, ns since epoch.
        recv_ns: local receive time, ns since epoch (equal to ``ts_ns`` in simulation).
        trades: public trades that arrived with this update (a list of :class:`Trade`, or a
            :class:`TradeArrays` in replays).
        fair: simulation only: the latent "true" mid s_t of the simulated market (quote per
            base), which the intensity fill model measures distances from. None elsewhere.
        dt_s: simulation only: length of the step this event closes, seconds.
    """

    book: OrderBook
    ts_ns: int
    recv_ns: int
    trades: Sequence[Trade] = field(default_factory=list)
    fair: float | None = None
    dt_s: float = 0.0


class MarketSource(abc.ABC):
    """Async market feed for one symbol."""

    market: MarketInfo
    book: OrderBook

    @abc.abstractmethod
    async def start(self) -> MarketInfo:
        """Connect, load the market's metadata and the initial book. Raises ExchangeError."""

    @abc.abstractmethod
    async def next(self) -> MarketEvent | None:
        """Wait for the next update; None when the feed has ended."""

    async def close(self) -> None:
        """Release connections. Safe to call twice."""
