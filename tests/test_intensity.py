"""Fill-intensity estimation (strategies.intensity): recovery of known A and k from simulated
trades, online == batch, window expiry, degenerate inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bot.orders import Side
from strategies.intensity import IntensityEstimator, estimate_batch, fit_intensity

S = 10**9
T0 = 1_700_000_000 * S


def simulate(a: float, k: float, duration_s: float, seed: int, mid0: float = 100.0, tick_vol: float = 0.01):
    """Market orders arrive as a Poisson process of rate A; each reaches a depth ~ Exp(k) from
    the mid, so the number reaching depth >= d is Poisson with rate A exp(-k d). The mid is a
    random walk; sides are random; a few prices are inside the mid (depth clipped to 0)."""
    rng = np.random.default_rng(seed)
    n = rng.poisson(a * duration_s)
    ts = T0 + np.sort(rng.integers(0, int(duration_s * S), n))
    mid = mid0 + np.cumsum(rng.normal(0.0, tick_vol, n))
    depth = rng.exponential(1.0 / k, n)
    side = np.where(rng.random(n) < 0.5, 1, -1)
    price = mid + side * depth
    return ts, price, side, mid


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_recovers_a_and_k(seed):
    a_true, k_true = 2.0, 10.0  # 2 trades/s; depths in quote per base, mean depth 0.1
    ts, price, side, mid = simulate(a_true, k_true, 1800.0, seed)
    est = IntensityEstimator(window_s=1800.0, depth_step=0.02, n_depths=12, start_ns=T0)
    for i in range(ts.size):
        est.update(int(ts[i]), float(price[i]), 1.0, "buy" if side[i] > 0 else "sell", float(mid[i]))
    a, k = est.estimate(T0 + 1800 * S)
    assert a == pytest.approx(a_true, rel=0.10)
    assert k == pytest.approx(k_true, rel=0.10)
    ab, kb = estimate_batch(ts, price, side, mid, 1800.0, 0.02, 12, eval_ns=[T0 + 1800 * S], start_ns=T0)
    assert ab[0] == pytest.approx(a, rel=1e-12) and kb[0] == pytest.approx(k, rel=1e-12)


def test_online_and_batch_agree_at_every_trade():
    ts, price, side, mid = simulate(5.0, 20.0, 400.0, seed=11)
    ts[100:103] = ts[100]  # equal timestamps are added one at a time
    ts[200] = ts[199] - 5  # out of order: treated as the running maximum
    est = IntensityEstimator(window_s=60.0, depth_step=0.01, n_depths=10)
    online_a, online_k = [], []
    for i in range(ts.size):
        est.update(int(ts[i]), float(price[i]), 0.1, Side.BUY if side[i] > 0 else Side.SELL, float(mid[i]))
        r = est.estimate()
        online_a.append(np.nan if r is None else r[0])
        online_k.append(np.nan if r is None else r[1])
    sides = np.where(side > 0, "buy", "sell")
    a, k = estimate_batch(ts, price, sides, mid, 60.0, 0.01, 10)
    online_a, online_k = np.array(online_a), np.array(online_k)
    assert np.array_equal(np.isnan(a), np.isnan(online_a)) and np.isnan(a[0]) and not np.isnan(a[-1])
    assert np.allclose(a, online_a, rtol=1e-12, equal_nan=True)
    assert np.allclose(k, online_k, rtol=1e-12, equal_nan=True)
    # evaluation at arbitrary later times: the online estimator asked at the same times
    t_eval = ts[-1] + np.array([0, 10, 30, 59, 61]) * S
    ae, ke = estimate_batch(ts, price, side, mid, 60.0, 0.01, 10, eval_ns=t_eval)
    for t, x, y in zip(t_eval, ae, ke):
        r = est.estimate(int(t))
        assert (r is None and math.isnan(x)) or (r[0] == pytest.approx(x, rel=1e-12) and r[1] == pytest.approx(y, rel=1e-12))
    assert math.isnan(ae[-1])  # 61 s after the last trade the 60 s window is empty


def test_exact_fit_and_depth_buckets():
    # cumulative counts 16, 8, 4, 2 at depths 0, 0.1, 0.2, 0.3 over L = 10 s: A = 1.6, k = ln 2 / 0.1
    depths = [0.0] * 8 + [0.1] * 4 + [0.2] * 2 + [0.3, 0.75]  # 0.3 exactly (binary rounding) -> bucket 3
    est = IntensityEstimator(window_s=10.0, depth_step=0.1, n_depths=4, start_ns=T0)
    for i, d in enumerate(depths):
        sell = i % 2 == 1
        est.update(T0 + (i + 1) * S // 2, 100.0 - d if sell else 100.0 + d, 1.0, "sell" if sell else "buy", 100.0)
    assert est.n_trades == 16
    assert est.lambdas(T0 + 10 * S) == pytest.approx([1.6, 0.8, 0.4, 0.2])
    a, k = est.estimate(T0 + 10 * S)
    assert a == pytest.approx(1.6, rel=1e-12) and k == pytest.approx(math.log(2) / 0.1, rel=1e-12)


def test_deepest_price_of_a_message_and_negative_depth():
    est = IntensityEstimator(window_s=10.0, depth_step=1.0, n_depths=3, start_ns=T0)
    est.update(T0 + S, [100.5, 101.2, 102.4], 3.0, "buy", 100.0)  # deepest 102.4 -> depth 2.4 -> bucket 2
    est.update(T0 + S, [99.0, 98.1], 2.0, "sell", 100.0)  # deepest 98.1 -> depth 1.9 -> bucket 1
    est.update(T0 + S, 99.0, 1.0, "buy", 100.0)  # a buy below the mid: depth 0
    assert est.lambdas(T0 + 10 * S) == pytest.approx([0.3, 0.2, 0.1])


def test_window_expiry():
    est = IntensityEstimator(window_s=50.0, depth_step=0.1, n_depths=5, start_ns=T0)
    for i in range(100):  # deep trades in [0 s, 10 s)
        est.update(T0 + i * S // 10, 100.45, 1.0, "buy", 100.0)
    assert est.lambdas()[4] > 0
    for i in range(100):  # trades at the mid in [100 s, 110 s): the first 100 have expired
        est.update(T0 + 100 * S + i * S // 10, 100.0, 1.0, "sell", 100.0)
    assert est.n_trades == 100
    lam = est.lambdas()
    assert lam[0] == pytest.approx(100 / 50.0) and np.all(lam[1:] == 0)
    assert est.estimate() is None  # a single usable depth
    assert est.estimate(T0 + 170 * S) is None and est.n_trades == 0  # everything expired


def test_fewer_than_three_points_is_none():
    est = IntensityEstimator(window_s=60.0, depth_step=0.1, n_depths=6, start_ns=T0)
    assert est.estimate() is None  # no trades
    for i, d in enumerate([0.0, 0.05, 0.12, 0.15]):  # buckets 0, 0, 1, 1: two usable depths
        est.update(T0 + (i + 1) * S, 100.0 + d, 1.0, "buy", 100.0)
    assert est.estimate() is None
    ts = T0 + np.arange(1, 5) * S
    a, k = estimate_batch(ts, 100.0 + np.array([0.0, 0.05, 0.12, 0.15]), np.ones(4), np.full(4, 100.0), 60.0, 0.1, 6,
                          start_ns=T0)
    assert np.all(np.isnan(a)) and np.all(np.isnan(k))
    est.update(T0 + 5 * S, 100.21, 1.0, "buy", 100.0)  # a third depth
    assert est.estimate() is not None
    # a fit with k <= 0 (flat counts) is rejected
    a, k = fit_intensity(np.arange(4) * 0.1, np.array([1.0, 1.0, 1.0, 1.0]))
    assert np.isnan(a[0]) and np.isnan(k[0])


def test_bad_arguments():
    with pytest.raises(ValueError):
        IntensityEstimator(0.0, 0.1, 5)
    with pytest.raises(ValueError):
        IntensityEstimator(10.0, 0.1, 2)
    est = IntensityEstimator(10.0, 0.1, 5)
    with pytest.raises(ValueError):
        est.update(T0, 100.0, 1.0, "hold", 100.0)


def test_online_and_batch_agree_on_a_long_stream():
    # speed is measured by bench scripts, not asserted here
    ts, price, side, mid = simulate(50.0, 20.0, 2000.0, seed=5)  # ~1e5 trades
    est = IntensityEstimator(window_s=30.0, depth_step=0.01, n_depths=20)
    for a, b, c, d in zip(ts.tolist(), price.tolist(), side.tolist(), mid.tolist()):
        est.update(a, b, 1.0, c, d)
    a, k = estimate_batch(ts, price, side, mid, 30.0, 0.01, 20)
    r = est.estimate()
    assert r[0] == pytest.approx(a[-1], rel=1e-12) and r[1] == pytest.approx(k[-1], rel=1e-12)


def test_update_many_equals_sequential_updates():
    ts, price, side, mid = simulate(5.0, 10.0, 200.0, seed=11)
    a = IntensityEstimator(window_s=20.0, depth_step=0.05, n_depths=10)
    b = IntensityEstimator(window_s=20.0, depth_step=0.05, n_depths=10)
    m = 100.0  # one mid per batch, as the strategy measures from the previous decision's mid
    sides = np.where(np.asarray(side) > 0, 1, -1) if np.asarray(side).dtype.kind in "iuf" else np.array([1 if s == "buy" else -1 for s in side])
    for lo in range(0, len(ts), 37):
        hi = lo + 37
        for t, p, s in zip(ts[lo:hi].tolist(), price[lo:hi].tolist(), sides[lo:hi].tolist()):
            a.update(t, p, 1.0, s, m)
        b.update_many(ts[lo:hi], price[lo:hi], sides[lo:hi], m)
        assert a.n_trades == b.n_trades
        assert a.estimate() == b.estimate()
