"""What a forecaster gives the strategy, and the interface it implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bot.orderbook import OrderBook


@dataclass(frozen=True, slots=True)
class Forecast:
    """A short-horizon forecast of the mid price.

    Attributes:
        drift: expected change of the mid over ``horizon_s``, quote currency per base unit
            (absolute, not a return). None = no drift view (treated as 0).
        sigma: volatility of the mid, quote currency per base unit per sqrt(second).
            None = no volatility view (the strategy's own estimator is used).
        horizon_s: the forecast horizon, seconds.
        source: who made it (e.g. ``"lstm"``, ``"ewma"``), for logs.
    """

    drift: float | None = None
    sigma: float | None = None
    horizon_s: float = 1.0
    source: str = ""


class Forecaster(Protocol):
    """Called once per market update, before the strategy; must be O(1) per call."""

    def update(self, book: OrderBook, now_ns: int) -> Forecast | None: ...
