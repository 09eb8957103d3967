"""The strategy's decision logic in plain Python, as it was before it moved to the compiled
functions of :mod:`strategies.kernels` (git history: strategies/quoting.py, market_maker.py,
avellaneda_stoikov.py, glft.py at the branch point). Used only by tests, as the reference
the kernels must equal to the bit. Prices quote per base, sizes base units, Decimal out."""

from __future__ import annotations

import math

from bot.market import MarketInfo
from strategies.base import QuoteLevel
from strategies.params import QuoteControls
from strategies.quoting import Sizing


def reservation_price(s, q, gamma, sigma, tau):
    return s - q * gamma * sigma * sigma * tau


def optimal_spread(gamma, sigma, tau, k, size=1.0):
    gs = gamma * size
    return gs * sigma * sigma * tau + (2.0 / gs) * math.log1p(gs / k)


def half_spreads(q, gamma, sigma, A, k, delta=1.0):
    gd = gamma * delta
    c = math.log1p(gd / k) / gd
    omega = math.sqrt(sigma * sigma * gamma / (2.0 * A * k * delta) * (1.0 + gd / k) ** (1.0 + k / gd))
    return c + (2.0 * q + delta) * 0.5 * omega, c - (2.0 * q - delta) * 0.5 * omega


def model_prices(model, s, q, gamma, sigma, tau, A, k, size, drift):
    """(reservation, bid, ask) as MarketMaker.on_update computed them."""
    if model == "glft":
        db, da = half_spreads(q, gamma, sigma, A, k, size)
        return s + drift - 0.5 * (db - da), s + drift - db, s + drift + da
    r = (s if model == "symmetric" else reservation_price(s, q, gamma, sigma, tau)) + drift
    half = 0.5 * optimal_spread(gamma, sigma, tau, k, size)
    return r, r - half, r + half


def build_levels(bid, ask, mid, q, market: MarketInfo, c: QuoteControls, best_bid, best_ask, sizing: Sizing):
    min_half = max(0.5e-4 * c.min_spread_bps * mid, (market.maker_fee + 1e-4 * c.min_edge_bps) * mid)
    if min_half > 0.0:
        bid = min(bid, mid - min_half)
        ask = max(ask, mid + min_half)
    tick = market.tick_f
    bid_t = math.floor(bid / tick + 1e-9)
    ask_t = math.ceil(ask / tick - 1e-9)
    if c.post_only:
        if best_ask is not None:
            bid_t = min(bid_t, round(best_ask / tick) - 1)
        if best_bid is not None:
            ask_t = max(ask_t, round(best_bid / tick) + 1)
    if ask_t <= bid_t:
        ask_t = bid_t + 1
    base = sizing.order_size
    max_inv = sizing.max_inventory
    bid_size, ask_size = base, base
    if c.inventory_size_shape > 0.0:
        shrink = math.exp(-c.inventory_size_shape * abs(q) / max_inv)
        if q > 0:
            bid_size *= shrink
        elif q < 0:
            ask_size *= shrink
    bids = _side(bid_t, -c.level_spacing_ticks, bid_size, max_inv - q, market, c)
    asks = _side(ask_t, c.level_spacing_ticks, ask_size, max_inv + q, market, c)
    return bids, asks


def _side(first_t, step_t, size0, room, market, c):
    out = []
    size = size0
    for i in range(c.levels):
        t = first_t + i * step_t
        if t <= 0:
            break
        lots = market.size_lots(min(size, room))
        if lots <= 0:
            break
        px = market.ticks_to_price(t)
        sz = market.lots_to_size(lots)
        if not market.is_tradeable(px, sz):
            break
        out.append(QuoteLevel(px, sz))
        room -= float(sz)
        size *= c.level_size_growth
    return out


def forecast_adjust(fc_sigma, use_forecast_sigma, fixed_sigma, ewma_sigma, fc_drift, drift_weight):
    """(sigma or None, drift) as MarketMaker.sigma and on_update chose them."""
    if fc_sigma is not None and use_forecast_sigma:
        sigma = fc_sigma
    elif fixed_sigma is not None:
        sigma = fixed_sigma
    else:
        sigma = ewma_sigma
    return sigma, (drift_weight * fc_drift if fc_drift is not None else 0.0)


class IntensityCounts:
    """The A/k estimator's trade counting before the kernels: a deque of (ts, bucket) and
    per-bucket counts (strategies/intensity.py at the branch point)."""

    def __init__(self, window_s, depth_step, n_depths):
        from collections import deque
        self.win_ns = int(round(float(window_s) * 1_000_000_000))
        self.step, self.top = float(depth_step), int(n_depths) - 1
        self.counts = [0] * int(n_depths)
        self.q = deque()
        self.now = self.first = None

    def advance(self, ts):
        if self.now is not None and ts < self.now:
            ts = self.now
        self.now = ts
        while self.q and self.q[0][0] <= ts - self.win_ns:
            self.counts[self.q.popleft()[1]] -= 1

    def update_many(self, ts_ns, price, side, mid):
        now, first = self.now, self.first
        for t, p, sd in zip(ts_ns, price, side):
            if not sd:
                continue
            if now is not None and t < now:
                t = now
            now = t
            if first is None:
                first = t
            delta = (p - mid) * sd
            if delta != delta:
                continue
            b = int(delta / self.step + 1e-9) if delta > 0 else 0
            b = b if b < self.top else self.top
            self.q.append((t, b))
            self.counts[b] += 1
        self.first = first
        if now is not None:
            self.advance(now)
