"""The strategy's decision logic as numba-compiled pure functions over scalars and arrays.

This module is THE implementation of the pricing models and the quoting controls: the
Python classes (:mod:`strategies.avellaneda_stoikov`, :mod:`strategies.glft`,
:mod:`strategies.quoting`, :class:`strategies.market_maker.MarketMaker`) call these
functions, and a compiled backtest loop can call them too, so paper, live and backtest run
one code path. Every function is pure (no state, no I/O); ``cache=True`` keeps the machine
code on disk so it is compiled once per installation.

Units (as in the rest of mmbot):
    s, mid, bid, ask, best_bid, best_ask   quote per base (float)
    q, size, order_size, max_inv, room     base units (float)
    gamma   1 / quote currency;  sigma  quote per base per sqrt(s);  tau  seconds
    A       fills per second;    k      1 / (quote per base)
    ticks   integer multiples of the market's tick; lots  integer multiples of its lot
    bps     1e-4 of the mid;     maker_fee  fraction of notional

A missing best bid/ask is passed as NaN. Floating point follows the old Python code
operation for operation (no fastmath), so results are identical to the bit.

Packed configuration for :func:`build_levels_packed` / :func:`decide` (float64 array, see
:data:`CFG_FIELDS`; integers in it are exact, they are below 2**53).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

MODEL_AS, MODEL_SYMMETRIC, MODEL_GLFT = 0, 1, 2
MODEL_CODES = {"avellaneda_stoikov": MODEL_AS, "symmetric": MODEL_SYMMETRIC, "glft": MODEL_GLFT}

#: Layout of the packed configuration array.
CFG_FIELDS = (
    "model", "gamma", "tick", "lot", "lot_num", "lot_den", "maker_fee", "min_spread_bps", "min_edge_bps",
    "post_only", "order_size", "max_inv", "size_shape", "levels", "spacing_ticks", "size_growth",
    "min_lots", "min_ticks_x_lots",
)
(C_MODEL, C_GAMMA, C_TICK, C_LOT, C_LOT_NUM, C_LOT_DEN, C_FEE, C_MIN_SPREAD, C_MIN_EDGE, C_POST_ONLY,
 C_SIZE, C_MAX_INV, C_SHAPE, C_LEVELS, C_SPACING, C_GROWTH, C_MIN_LOTS, C_MIN_TL) = range(len(CFG_FIELDS))


# -- pricing models ------------------------------------------------------------------------
@njit(cache=True)
def as_reservation_price(s, q, gamma, sigma, tau):
    """Avellaneda-Stoikov r = s - q*gamma*sigma^2*tau, quote per base."""
    return s - q * gamma * sigma * sigma * tau


@njit(cache=True)
def as_optimal_spread(gamma, sigma, tau, k, size):
    """AS total spread gamma*size*sigma^2*tau + (2/(gamma*size))*ln(1 + gamma*size/k), quote per base."""
    gs = gamma * size
    return gs * sigma * sigma * tau + (2.0 / gs) * math.log1p(gs / k)


@njit(cache=True)
def glft_half_spreads(q, gamma, sigma, A, k, delta):
    """GLFT closed form (delta_bid, delta_ask), quote per base, for orders of ``delta`` base units."""
    gd = gamma * delta
    c = math.log1p(gd / k) / gd
    omega = math.sqrt(sigma * sigma * gamma / (2.0 * A * k * delta) * (1.0 + gd / k) ** (1.0 + k / gd))
    return c + (2.0 * q + delta) * 0.5 * omega, c - (2.0 * q - delta) * 0.5 * omega


@njit(cache=True)
def model_prices(model, s, q, gamma, sigma, tau, A, k, size, drift):
    """(reservation, bid, ask) of the pricing model, quote per base, before any control.

    ``model``: MODEL_AS, MODEL_SYMMETRIC (AS spread centred on the mid) or MODEL_GLFT
    (``tau`` unused). ``drift`` (quote per base, already weighted) shifts the centre."""
    if model == MODEL_GLFT:
        db, da = glft_half_spreads(q, gamma, sigma, A, k, size)
        return s + drift - 0.5 * (db - da), s + drift - db, s + drift + da
    if model == MODEL_SYMMETRIC:
        r = s + drift
    else:
        r = as_reservation_price(s, q, gamma, sigma, tau) + drift
    half = 0.5 * as_optimal_spread(gamma, sigma, tau, k, size)
    return r, r - half, r + half


# -- controls ------------------------------------------------------------------------------
@njit(cache=True)
def min_distance(bid, ask, mid, maker_fee, min_spread_bps, min_edge_bps):
    """Bid/ask pushed to at least max(min_spread/2, (maker fee + min edge) * mid) from the mid."""
    min_half = max(0.5e-4 * min_spread_bps * mid, (maker_fee + 1e-4 * min_edge_bps) * mid)
    if min_half > 0.0:
        bid = min(bid, mid - min_half)
        ask = max(ask, mid + min_half)
    return bid, ask


@njit(cache=True)
def to_ticks(bid, ask, tick, post_only, best_bid, best_ask):
    """(bid_ticks, ask_ticks): bid rounded down, ask up; with ``post_only`` the bid at least one
    tick below the best ask and the ask one above the best bid (NaN = no such side); never a
    locked or crossed pair of our own (ask_ticks > bid_ticks)."""
    bid_t = math.floor(bid / tick + 1e-9)
    ask_t = math.ceil(ask / tick - 1e-9)
    if post_only:
        if not math.isnan(best_ask):
            bid_t = min(bid_t, int(np.rint(best_ask / tick)) - 1)
        if not math.isnan(best_bid):
            ask_t = max(ask_t, int(np.rint(best_bid / tick)) + 1)
    if ask_t <= bid_t:
        ask_t = bid_t + 1
    return bid_t, ask_t


@njit(cache=True)
def side_sizes(q, order_size, max_inv, shape):
    """(bid_size, ask_size), base units: the side that grows |q| shrunk by exp(-shape*|q|/max_inv)."""
    bid_size, ask_size = order_size, order_size
    if shape > 0.0:
        shrink = math.exp(-shape * abs(q) / max_inv)
        if q > 0:
            bid_size *= shrink
        elif q < 0:
            ask_size *= shrink
    return bid_size, ask_size


@njit(cache=True)
def fill_side(first_t, step_t, size0, room, levels, growth, lot, lot_num, lot_den, min_lots, min_tl, out_t, out_l):
    """Levels of one side into ``out_t`` (ticks) / ``out_l`` (lots); returns how many.

    Level i is at ``first_t + i*step_t`` ticks with ``size0*growth**i`` base units, capped by
    the ``room`` left to the inventory limit and rounded down to the lot. Stops at the first
    level at or below zero ticks, of zero lots, or below the market minimum (``min_lots``
    lots, ``min_tl`` ticks*lots of notional). ``lot_num/lot_den`` is the lot as an exact
    fraction: the room shrinks by exactly the Decimal size placed (correctly rounded)."""
    n = 0
    size = size0
    for i in range(levels):
        t = first_t + i * step_t
        if t <= 0:
            break
        lots = max(0, math.floor(min(size, room) / lot + 1e-9))
        if lots <= 0:
            break
        if lots < min_lots or float(t) * float(lots) < min_tl:
            break
        out_t[n] = t
        out_l[n] = lots
        n += 1
        room -= (lots * lot_num) / lot_den
        size *= growth
    return n


@njit(cache=True)
def build_levels_packed(cfg, bid, ask, mid, q, best_bid, best_ask, out):
    """All controls: model bid/ask -> ``out[0, :nb]`` bid ticks, ``out[1, :nb]`` bid lots,
    ``out[2, :na]`` ask ticks, ``out[3, :na]`` ask lots (``out`` int64, 4 x levels);
    returns (nb, na). ``cfg`` as :data:`CFG_FIELDS`."""
    bid, ask = min_distance(bid, ask, mid, cfg[C_FEE], cfg[C_MIN_SPREAD], cfg[C_MIN_EDGE])
    bid_t, ask_t = to_ticks(bid, ask, cfg[C_TICK], cfg[C_POST_ONLY] != 0.0, best_bid, best_ask)
    max_inv = cfg[C_MAX_INV]
    bid_size, ask_size = side_sizes(q, cfg[C_SIZE], max_inv, cfg[C_SHAPE])
    levels = int(cfg[C_LEVELS])
    spacing = int(cfg[C_SPACING])
    nb = fill_side(bid_t, -spacing, bid_size, max_inv - q, levels, cfg[C_GROWTH], cfg[C_LOT], cfg[C_LOT_NUM],
                   cfg[C_LOT_DEN], cfg[C_MIN_LOTS], cfg[C_MIN_TL], out[0], out[1])
    na = fill_side(ask_t, spacing, ask_size, max_inv + q, levels, cfg[C_GROWTH], cfg[C_LOT], cfg[C_LOT_NUM],
                   cfg[C_LOT_DEN], cfg[C_MIN_LOTS], cfg[C_MIN_TL], out[2], out[3])
    return nb, na


@njit(cache=True)
def decide(cfg, s, best_bid, best_ask, q, sigma, drift, tau, A, k, out):
    """One decision: pricing model + controls. Returns (reservation, model bid, model ask, nb, na)
    with the levels in ``out`` as :func:`build_levels_packed`."""
    r, bid, ask = model_prices(int(cfg[C_MODEL]), s, q, cfg[C_GAMMA], sigma, tau, A, k, cfg[C_SIZE], drift)
    nb, na = build_levels_packed(cfg, bid, ask, s, q, best_bid, best_ask, out)
    return r, bid, ask, nb, na


# -- forecast adjustment -------------------------------------------------------------------
@njit(cache=True)
def forecast_adjust(fc_sigma, use_forecast_sigma, fixed_sigma, ewma_sigma, fc_drift, drift_weight):
    """(sigma, drift) for the pricing model; NaN stands for "none".

    sigma: the forecast's (when ``use_forecast_sigma``), else the fixed one, else the EWMA's
    (NaN while it warms up: do not quote). drift: ``drift_weight * fc_drift``, 0 without a
    forecast drift; quote per base, it shifts the centre of the quotes."""
    if use_forecast_sigma and not math.isnan(fc_sigma):
        sigma = fc_sigma
    elif not math.isnan(fixed_sigma):
        sigma = fixed_sigma
    else:
        sigma = ewma_sigma
    drift = 0.0 if math.isnan(fc_drift) else drift_weight * fc_drift
    return sigma, drift


# -- A/k trade-depth counting (strategies.intensity) ---------------------------------------
@njit(cache=True)
def depth_bucket(delta, step, top):
    """Bucket of a trade at ``delta`` (quote per base) from the mid: floor(delta/step + 1e-9),
    0 for delta <= 0, clipped to ``top`` (a trade deeper than the grid counts for every depth)."""
    if not delta > 0:
        return 0
    x = math.floor(delta / step + 1e-9)
    return top if x >= top else int(x)


@njit(cache=True)
def expire_trades(ts_buf, b_buf, head, tail, counts, cutoff_ns):
    """Drop the trades at or before ``cutoff_ns`` (int ns) from the window buffer
    ``ts_buf/b_buf[head:tail]`` and their ``counts``; returns the new head."""
    while head < tail and ts_buf[head] <= cutoff_ns:
        counts[b_buf[head]] -= 1
        head += 1
    return head


@njit(cache=True)
def count_trades(ts_buf, b_buf, head, tail, counts, ts_ns, price, side, mid, step, top, now_ns, has_now, win_ns):
    """Append the trades (int ns times, prices quote per base, aggressor sides +1/-1, 0 =
    unknown: skipped) measured from one ``mid`` to the window buffer (room for all of them
    after ``tail`` is the caller's job), count their depth buckets, then expire what left the
    window ``(now - win_ns, now]``. A time earlier than ``now_ns`` counts as ``now_ns``; a NaN
    depth (unknown mid) is skipped but moves the clock. Returns (head, tail, now_ns, has_now,
    first_ns, has_first): ``first_ns`` is the first known-side trade's time."""
    first_ns = 0
    has_first = False
    for i in range(ts_ns.shape[0]):
        sd = side[i]
        if sd == 0:
            continue
        t = ts_ns[i]
        if has_now and t < now_ns:
            t = now_ns
        now_ns = t
        has_now = True
        if not has_first:
            first_ns = t
            has_first = True
        delta = (price[i] - mid) * sd
        if math.isnan(delta):
            continue
        b = depth_bucket(delta, step, top)
        ts_buf[tail] = t
        b_buf[tail] = b
        tail += 1
        counts[b] += 1
    if has_now:
        head = expire_trades(ts_buf, b_buf, head, tail, counts, now_ns - win_ns)
    return head, tail, now_ns, has_now, first_ns, has_first


# -- A/k fit and the EWMA of the mid (strategies.intensity, strategies.volatility) -----------
@njit(cache=True)
def intensity_fit(counts, depth_step, length_s):
    """(A [1/s], k [1/(quote per base)]) of the window's trade ``counts`` per depth bucket
    over ``length_s`` seconds: lambda_j = (trades at depth >= j*depth_step) / length_s, then
    the OLS of log(lambda_j) = log(A) - k*depth_j over the j with lambda_j > 0. (NaN, NaN)
    with fewer than 3 such points or a fitted k that is not > 0 (or not finite).
    :meth:`strategies.intensity.IntensityEstimator.estimate` and the compiled backtest loop
    both call this (sequential sums: one result to the bit on both paths)."""
    J = counts.shape[0]
    lam = np.empty(J)
    c = 0.0
    for j in range(J - 1, -1, -1):
        c += float(counts[j])
        lam[j] = c / length_s
    n = 0
    sx = 0.0
    sy = 0.0
    for j in range(J):
        if lam[j] > 0.0:
            n += 1
            sx += j * depth_step
            sy += math.log(lam[j])
    if n < 3:
        return math.nan, math.nan
    xbar = sx / n
    ybar = sy / n
    sxy = 0.0
    sxx = 0.0
    for j in range(J):
        if lam[j] > 0.0:
            dx = j * depth_step - xbar
            sxy += dx * (math.log(lam[j]) - ybar)
            sxx += dx * dx
    slope = sxy / sxx
    k = -slope
    a = math.exp(ybar - slope * xbar)
    if not (math.isfinite(k) and math.isfinite(a) and k > 0.0):
        return math.nan, math.nan
    return a, k


@njit(cache=True)
def ewma_step(last_t, last_mid, acc, norm, n, mid, now_ns, sample_ns, halflife_s):
    """One sample of the EWMA of the mid's variance rate (:class:`strategies.volatility.EwmaVolatility`,
    after its first mid): when ``now_ns - last_t >= sample_ns`` (int ns) the squared change of
    the mid (quote per base) per second enters with weight 1 - exp(-ln2 * dt / halflife_s).
    Returns (last_t, last_mid, acc, norm, n)."""
    elapsed = now_ns - last_t
    if elapsed < sample_ns:
        return last_t, last_mid, acc, norm, n
    dt = elapsed * 1e-9
    d = mid - last_mid
    w = 1.0 - math.exp(-math.log(2.0) * dt / halflife_s)
    rate = d * d / dt
    acc = (1.0 - w) * acc + w * rate
    norm = (1.0 - w) * norm + w
    return now_ns, mid, acc, norm, n + 1
