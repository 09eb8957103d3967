"""The market-making strategy: a pricing model (Avellaneda-Stoikov, GLFT, or the symmetric
baseline: the AS spread centred on the mid) plus controls.

Per update (see :meth:`MarketMaker.on_update`):
    mid s from the book -> sigma (forecast, fixed, or EWMA of the mid) -> drift (forecast or 0)
    -> model bid/ask -> :func:`strategies.quoting.build_levels` -> :class:`Quotes`.

With ``calibrate_intensity`` the strategy refits A and k from public trades
(:meth:`MarketMaker.on_trades`, called by the engine before ``on_update``).

The drift forecast shifts the centre of the quotes by ``drift_weight * drift`` (quote per
base); a volatility forecast replaces sigma. A crossed or one-sided book gives no quotes.
"""

from __future__ import annotations

from collections.abc import Sequence

from bot.market import MarketInfo
from bot.market_data.base import Trade, TradeArrays
from bot.orderbook import OrderBook
from models.forecast import Forecast
from strategies import avellaneda_stoikov as AS
from strategies import glft
from strategies.base import Quotes
from strategies.intensity import IntensityEstimator
from strategies.params import StrategyParams
from strategies.quoting import build_levels
from strategies.volatility import EwmaVolatility


class MarketMaker:
    def __init__(self, params: StrategyParams, market: MarketInfo) -> None:
        self.params = params
        self.p = params.pricing
        self.c = params.controls
        self.market = market
        self.vol = EwmaVolatility(self.p.vol_halflife_s, self.p.vol_sample_s, self.p.initial_sigma)
        self.end_ns: int | None = None
        self.A, self.k = self.p.A, self.p.k  # current intensity parameters (calibrated if enabled)
        self.intensity: IntensityEstimator | None = None
        if self.p.calibrate_intensity:
            self.intensity = IntensityEstimator(self.p.intensity_window_s, self.p.intensity_depth_step, self.p.intensity_n_depths)
        self._next_fit_ns = 0
        self._mid: float | None = None
        self._last_key: tuple | None = None
        self._last_quotes: Quotes | None = None

    def begin(self, now_ns: int) -> None:
        """Start a session: the finite AS horizon ends ``tau_s`` seconds from now."""
        self.end_ns = now_ns + int(self.p.tau_s * 1e9)

    def on_trades(self, trades: Sequence[Trade], now_ns: int) -> None:
        """Public trades since the last update (aggressor side), for the A/k estimator.

        Depth is measured from the mid of the previous decision (the book before the trades)."""
        est = self.intensity
        if est is None or not trades or self._mid is None:
            return
        mid = self._mid
        if isinstance(trades, TradeArrays):
            est.update_many(trades.ts_ns, trades.price, trades.side, mid)
        else:
            for t in trades:
                if t.side:
                    est.update(t.ts_ns, t.price, t.size, t.side, mid)
        if now_ns >= self._next_fit_ns and est.n_trades >= self.p.intensity_min_trades:
            self._next_fit_ns = now_ns + int(self.p.intensity_refresh_s * 1e9)
            fit = est.estimate(now_ns)
            if fit is not None:
                self.A, self.k = fit

    def sigma(self, forecast: Forecast | None) -> float:
        if forecast is not None and forecast.sigma is not None and self.p.use_forecast_sigma:
            return forecast.sigma
        if self.p.sigma is not None:
            return self.p.sigma
        return self.vol.sigma()

    def on_update(self, book: OrderBook, inventory: float, now_ns: int, forecast: Forecast | None = None) -> Quotes:
        bb, ba = book.bids.best_price(), book.asks.best_price()
        if bb is None or ba is None:
            return Quotes(note="one-sided book")
        if bb >= ba:
            return Quotes(note="crossed book")
        s = 0.5 * (bb + ba)
        self._mid = s
        self.vol.update(s, now_ns)
        p = self.p
        sigma = self.sigma(forecast)
        drift = 0.0
        if forecast is not None and forecast.drift is not None:
            drift = p.drift_weight * forecast.drift
        q = inventory
        tau = 0.0
        if p.model != "glft":
            if p.horizon == "finite":
                if self.end_ns is None:
                    self.begin(now_ns)
                tau = max(self.end_ns - now_ns, 0) * 1e-9  # type: ignore[operator]
            else:
                tau = p.tau_s
        # the quotes are a pure function of these inputs: reuse the last result when unchanged
        key = (bb, ba, q, sigma, drift, self.A, self.k, tau)
        if key == self._last_key:
            return self._last_quotes  # type: ignore[return-value]
        if p.model == "glft":
            db, da = glft.half_spreads(q, p.gamma, sigma, self.A, self.k, self.c.order_size)
            r = s + drift - 0.5 * (db - da)
            bid, ask = s + drift - db, s + drift + da
        else:
            r = (s if p.model == "symmetric" else AS.reservation_price(s, q, p.gamma, sigma, tau)) + drift
            half = 0.5 * AS.optimal_spread(p.gamma, sigma, tau, self.k)
            bid, ask = r - half, r + half
        bids, asks = build_levels(bid, ask, s, q, self.market, self.c, bb, ba)
        self._last_key = key
        self._last_quotes = Quotes(bids, asks, s, r, s - bid, ask - s, sigma, drift)
        return self._last_quotes


def build_strategy(params: StrategyParams, market: MarketInfo) -> MarketMaker:
    return MarketMaker(params, market)
