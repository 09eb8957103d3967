"""What a forecaster gives the strategy, and the interface it implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

from bot.orderbook import OrderBook

if TYPE_CHECKING:
    from bot.market_data.base import Trade


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
        inputs_ns: event time (ns since the epoch) of the grid row whose features the newest
            model output was computed from (on a ``lstm-stale`` or ``lstm-warmup`` forecast:
            the output that was too old or not yet warm to be used); None before the first
            output. The forecast's age at a decision at ``now_ns`` is ``now_ns - inputs_ns``
            (ns); the engine records it (``EngineState.forecast_age_ns``).
    """

    drift: float | None = None
    sigma: float | None = None
    horizon_s: float = 1.0
    source: str = ""
    inputs_ns: int | None = None


class Forecaster(Protocol):
    """Called once per strategy decision, before the strategy; must be O(1) per call.

    ``book`` is the OrderBook read interface at ``now_ns`` (ns since epoch); ``trades`` are the
    public trades received since the previous call (possibly none). The LSTM forecaster
    (:func:`models.forecaster.load_forecaster`) works on a fixed sampling grid: it runs one
    model step when a grid time is crossed and otherwise returns its latest forecast."""

    def update(self, book: OrderBook, now_ns: int, trades: "Sequence[Trade]" = ()) -> Forecast | None: ...
