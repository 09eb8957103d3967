"""The market-making strategy: a pricing model (Avellaneda-Stoikov, GLFT, or the symmetric
baseline: the AS spread centred on the mid) plus controls.

Per update (see :meth:`MarketMaker.on_update`):
    mid s from the book -> sigma (forecast, fixed, or EWMA of the mid) -> drift (forecast or 0)
    -> model bid/ask -> controls (:mod:`strategies.quoting`) -> :class:`Quotes`.
The forecast adjustment, the model and the controls are the compiled pure functions of
:mod:`strategies.kernels` (``forecast_adjust``, then ``decide``); this class keeps the state
(EWMA, A/k, sizing, horizon) and turns integer ticks/lots into Decimal quote levels.

Both models price orders of the run's level-0 order size (base units): GLFT through its lot
delta, AS through gamma*size (:mod:`strategies.avellaneda_stoikov`), so the two agree in
scale at zero inventory for any order size.

With ``calibrate_intensity`` the strategy refits A and k from public trades
(:meth:`MarketMaker.on_trades`, called by the engine before ``on_update``).

The drift forecast shifts the centre of the quotes by ``drift_weight * drift`` (quote per
base); a volatility forecast replaces sigma. A crossed or one-sided book gives no quotes.

Start of a run: the finite AS horizon ends ``session_s`` seconds after :meth:`begin` (the
run's length, given by whoever builds the strategy; a finite horizon without one is a
config error). Without a fixed sigma, a forecast sigma or ``initial_sigma`` the strategy
does not quote until the EWMA has its samples (replays feed the recorded history first,
:meth:`warm_up`). On the first two-sided book the order size is resolved for the market
(:func:`strategies.quoting.resolve_sizing`) and the config is checked against the market
(:func:`fit_warnings`): what does not fit is logged as a warning and kept in :meth:`status`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from bot.errors import ConfigError
from bot.market import MarketInfo
from bot.market_data.base import Trade, TradeArrays
from bot.orderbook import OrderBook
from models.forecast import Forecast
from strategies import avellaneda_stoikov as AS
from strategies import glft
from strategies import kernels as K
from strategies.base import Quotes
from strategies.intensity import IntensityEstimator, side_sign
from strategies.params import StrategyParams
from strategies.quoting import (Sizing, levels_from_buffer, market_min_size, new_levels_buffer, pack_config,
                                resolve_sizing)
from strategies.volatility import EwmaVolatility

log = logging.getLogger("mmbot.strategy")


def uses_finite_horizon(params: StrategyParams) -> bool:
    """True when the pricing needs the time left to the end of the run (AS or symmetric, finite)."""
    return params.pricing.model != "glft" and params.pricing.horizon == "finite"


def check_session(params: StrategyParams, session_s: float | None) -> None:
    """ConfigError when a finite horizon is asked of a run without an end (``session_s`` None)."""
    if uses_finite_horizon(params) and (session_s is None or not math.isfinite(session_s)):
        raise ConfigError(
            "invalid config: strategy.pricing.horizon: 'finite' needs a run with an end, but this run is open-ended "
            "(duration_s is null); set duration_s, or use horizon: rolling with tau_s")


def model_spread(params: StrategyParams, sigma: float, tau: float, A: float, k: float, size: float) -> float:
    """The pricing model's total spread at zero inventory, quote per base."""
    p = params.pricing
    if p.model == "glft":
        db, da = glft.half_spreads(0.0, p.gamma, sigma, A, k, size)
        return db + da
    return AS.optimal_spread(p.gamma, sigma, tau, k, size)


def fit_warnings(params: StrategyParams, market: MarketInfo, mid: float, sizing: Sizing, sigma: float | None,
                 tau: float, A: float, k: float) -> list[str]:
    """What in the config does not fit ``market`` at ``mid`` (quote per base): one sentence each."""
    c, p = params.controls, params.pricing
    out: list[str] = []
    tick, lot = market.tick_f, float(market.lot)  # type: ignore[attr-defined]
    mn = market_min_size(market, mid)
    if sizing.order_size < mn - 1e-12:
        out.append(f"order size {sizing.order_size:g} {market.base} ({sizing.source}) is below the market's minimum order "
                   f"{mn:g} {market.base}: no order will be placed")
    elif abs(sizing.order_size / lot - round(sizing.order_size / lot)) > 1e-6:
        out.append(f"order size {sizing.order_size:g} {market.base} is not a multiple of the lot {lot:g}: orders are rounded "
                   f"down to {math.floor(sizing.order_size / lot + 1e-9) * lot:g}")
    if sizing.max_inventory < sizing.order_size:
        out.append(f"max inventory {sizing.max_inventory:g} {market.base} is below the order size {sizing.order_size:g}")
    spread = model_spread(params, sigma or 0.0, tau, A, k, sizing.order_size)
    if spread < tick:
        out.append(f"the model's spread at zero inventory ({spread:.3g} {market.quote}) is finer than the tick "
                   f"{tick:g}: quotes are rounded out to the tick (gamma={p.gamma:g}, k={k:g} were not made for this market)")
    if p.calibrate_intensity and p.intensity_depth_step is not None and p.intensity_depth_step < tick - 1e-12:
        out.append(f"strategy.pricing.intensity_depth_step {p.intensity_depth_step:g} is finer than the tick {tick:g}")
    if c.min_spread_bps > 0 and 1e-4 * c.min_spread_bps * mid < tick:
        out.append(f"strategy.controls.min_spread_bps {c.min_spread_bps:g} is finer than the tick {tick:g} at mid {mid:g}")
    return out


class MarketMaker:
    def __init__(self, params: StrategyParams, market: MarketInfo, session_s: float | None = None) -> None:
        """``session_s``: the run's length, seconds (None = open-ended); the finite horizon ends
        that long after :meth:`begin`."""
        check_session(params, session_s)
        self.params = params
        self.p = params.pricing
        self.c = params.controls
        self.market = market
        self.session_s = session_s
        self.vol = EwmaVolatility(self.p.vol_halflife_s, self.p.vol_sample_s, self.p.initial_sigma)
        self.start_ns: int | None = None
        self.end_ns: int | None = None
        self.A, self.k = self.p.A, self.p.k  # current intensity parameters (calibrated if enabled)
        self.intensity: IntensityEstimator | None = None
        if self.p.calibrate_intensity:
            step = self.p.intensity_depth_step or market.tick_f  # type: ignore[attr-defined]
            self.intensity = IntensityEstimator(self.p.intensity_window_s, step, self.p.intensity_n_depths)
        self._next_fit_ns = 0
        self._mid: float | None = None
        self._last_key: tuple | None = None
        self._last_quotes: Quotes | None = None
        self.sizing: Sizing | None = None
        self._cfg: np.ndarray | None = None  # packed config of strategies.kernels (set with the sizing)
        self._out: np.ndarray | None = None  # the kernels' (4, levels) int64 output: ticks and lots
        self.warnings: list[str] = []
        self.horizon_ended_ns: int | None = None
        self.decisions = 0
        self.decisions_warming_up = 0

    def begin(self, now_ns: int) -> None:
        """Start a session at ``now_ns`` (int ns): the finite horizon ends ``session_s`` later."""
        self.start_ns = now_ns
        if self.session_s is not None and math.isfinite(self.session_s):
            self.end_ns = now_ns + int(self.session_s * 1e9)

    def warm_up(self, ts_ns: np.ndarray, mids: np.ndarray) -> int:
        """Feed recorded mids (quote per base) at ``ts_ns`` (int ns) before the first decision
        into the volatility estimator; returns the samples taken."""
        return self.vol.warm_up(ts_ns, mids)

    def on_trades(self, trades: Sequence[Trade], now_ns: int) -> None:
        """Public trades since the last update (aggressor side), for the A/k estimator.

        Depth is measured from the mid of the previous decision (the book before the trades)."""
        est = self.intensity
        if est is None or not trades or self._mid is None:
            return
        mid = self._mid
        if isinstance(trades, TradeArrays):  # side 0 (unknown) is skipped by the counting kernel
            est.update_many(trades.ts_ns, trades.price, trades.side, mid)
        else:  # one kernel call for the batch (equal to one update() per trade)
            known = [t for t in trades if t.side]
            if known:
                est.update_many(np.array([t.ts_ns for t in known], dtype=np.int64),
                                np.array([float(t.price) for t in known]),
                                np.array([side_sign(t.side) for t in known], dtype=np.int64), mid)
        if now_ns >= self._next_fit_ns and est.n_trades >= self.p.intensity_min_trades:
            self._next_fit_ns = now_ns + int(self.p.intensity_refresh_s * 1e9)
            fit = est.estimate(now_ns)
            if fit is not None:
                self.A, self.k = fit

    def sigma(self, forecast: Forecast | None) -> float | None:
        """Quote per base per sqrt(s): the forecast's, the fixed one, or the EWMA (None while
        the EWMA warms up without an ``initial_sigma``)."""
        sigma, _ = self._adjust(forecast)
        return None if math.isnan(sigma) else sigma

    def _adjust(self, forecast: Forecast | None) -> tuple[float, float]:
        """(sigma, drift) by :func:`strategies.kernels.forecast_adjust` (sigma NaN: warming up)."""
        p = self.p
        fs = fd = math.nan
        if forecast is not None:
            if forecast.sigma is not None:
                fs = float(forecast.sigma)
            if forecast.drift is not None:
                fd = float(forecast.drift)
        ew = self.vol.sigma()
        return K.forecast_adjust(fs, p.use_forecast_sigma, math.nan if p.sigma is None else float(p.sigma),
                                 math.nan if ew is None else float(ew), fd, float(p.drift_weight))

    def _tau(self, now_ns: int) -> float:
        p = self.p
        if p.model == "glft":
            return 0.0
        if p.horizon != "finite":
            return p.tau_s
        if self.end_ns is None:
            self.begin(now_ns)
        tau = max(self.end_ns - now_ns, 0) * 1e-9  # type: ignore[operator]
        if tau == 0.0 and self.horizon_ended_ns is None:
            self.horizon_ended_ns = now_ns
            log.warning("finite horizon reached (the run's %.0f s are over): tau = 0, quotes carry no inventory skew",
                        self.session_s or 0.0)
        return tau

    def _start(self, s: float, now_ns: int, sigma: float | None) -> None:
        self.sizing = resolve_sizing(self.c, self.market, s)
        self._cfg = pack_config(self.market, self.c, self.sizing, self.p.model, self.p.gamma)
        self._out = new_levels_buffer(self.c)
        self.warnings = fit_warnings(self.params, self.market, s, self.sizing, sigma, self._tau(now_ns), self.A, self.k)
        for w in self.warnings:
            log.warning("config does not fit %s: %s", self.market.symbol, w)

    def on_update(self, book: OrderBook, inventory: float, now_ns: int, forecast: Forecast | None = None) -> Quotes:
        bb, ba = book.bids.best_price(), book.asks.best_price()
        if bb is None or ba is None:
            return Quotes(note="one-sided book")
        if bb >= ba:
            return Quotes(note="crossed book")
        s = 0.5 * (bb + ba)
        self._mid = s
        self.vol.update(s, now_ns)
        sigma, drift = self._adjust(forecast)
        if self.sizing is None:
            self._start(s, now_ns, None if math.isnan(sigma) else sigma)
        self.decisions += 1
        if math.isnan(sigma):
            self.decisions_warming_up += 1
            return Quotes(mid=s, note=f"warming up sigma: {self.vol.n}/{self.vol.min_samples} samples")
        q = float(inventory)
        tau = self._tau(now_ns)
        # the quotes are a pure function of these inputs: reuse the last result when unchanged
        key = (bb, ba, q, sigma, drift, self.A, self.k, tau)
        if key == self._last_key:
            return self._last_quotes  # type: ignore[return-value]
        # pricing model and controls: one compiled call (strategies.kernels.decide)
        r, bid, ask, nb, na = K.decide(self._cfg, s, float(bb), float(ba), q, sigma, drift, tau,
                                       float(self.A), float(self.k), self._out)
        bids, asks = levels_from_buffer(self._out, nb, na, self.market)
        self._last_key = key
        note = "horizon ended: tau = 0" if self.horizon_ended_ns is not None else ""
        self._last_quotes = Quotes(bids, asks, s, r, s - bid, ask - s, sigma, drift, note)
        return self._last_quotes

    def status(self) -> dict:
        """The strategy's state for the run summary: sizes, sigma source and warm-up, horizon, fit warnings."""
        p = self.p
        if p.sigma is not None:
            src = "fixed"
        elif self.vol.ready:
            src = "ewma" + (f" (warmed up on {self.vol.warmup_samples} recorded samples)" if self.vol.warmup_samples else "")
        elif p.initial_sigma is not None:
            src = "initial_sigma (EWMA warming up)"
        else:
            src = f"warming up ({self.vol.n}/{self.vol.min_samples} samples, not quoting)"
        if p.model == "glft":
            horizon = "-"
        elif p.horizon == "finite":
            horizon = f"finite, {self.session_s:g} s" + (" (ended)" if self.horizon_ended_ns is not None else "")
        else:
            horizon = f"rolling, tau {p.tau_s:g} s"
        sz = self.sizing
        return {
            "model": p.model,
            "order_size": sz.order_size if sz else None,
            "order_size_from": sz.source if sz else None,
            "max_inventory": sz.max_inventory if sz else None,
            "sigma_source": src,
            "sigma_ewma": self.vol.sigma() if self.vol.ready else None,
            "decisions_not_quoted_warming_up": self.decisions_warming_up,
            "A": self.A,
            "k": self.k,
            "horizon": horizon,
            "warnings": list(self.warnings),
        }


def build_strategy(params: StrategyParams, market: MarketInfo, session_s: float | None = None) -> MarketMaker:
    """The configured strategy for ``market``; ``session_s`` is the run's length, seconds (None = open-ended)."""
    return MarketMaker(params, market, session_s)
