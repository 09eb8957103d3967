"""The compiled decision functions (strategies/kernels.py) equal the plain-Python reference
(tests/strategy_reference.py, the code before the move) to the bit, on randomized inputs and
on the edge cases: quotes at the touch, post-only crossing, inventory at the limit, sizes
below the market minimum. Prices quote per base, sizes base units."""

import math
from decimal import Decimal as D

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.market import MarketInfo
from bot.orderbook import OrderBook
from models.forecast import Forecast
from strategies import avellaneda_stoikov as AS
from strategies import glft
from strategies import kernels as K
from strategies import quoting
from strategies.market_maker import MarketMaker
from strategies.base import QuoteLevel
from strategies.params import ModelParams, QuoteControls, StrategyParams
from strategies.quoting import Sizing
from tests import strategy_reference as ref

SET = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
pos = st.floats(1e-3, 1e3, allow_nan=False, allow_infinity=False)


@SET
@given(s=st.floats(1.0, 1e5), q=st.floats(-50, 50), gamma=st.floats(1e-4, 50), sigma=st.floats(1e-4, 100),
       tau=st.floats(0, 1e4), A=pos, k=pos, size=st.floats(1e-5, 10), drift=st.floats(-5, 5),
       model=st.sampled_from(["avellaneda_stoikov", "symmetric", "glft"]))
def test_model_prices_equal_reference_to_the_bit(s, q, gamma, sigma, tau, A, k, size, drift, model):
    want = ref.model_prices(model, s, q, gamma, sigma, tau, A, k, size, drift)
    got = K.model_prices(K.MODEL_CODES[model], s, q, gamma, sigma, tau, A, k, size, drift)
    assert got == want or all(math.isnan(a) and math.isnan(b) for a, b in zip(got, want))
    assert AS.reservation_price(s, q, gamma, sigma, tau) == ref.reservation_price(s, q, gamma, sigma, tau)
    assert AS.optimal_spread(gamma, sigma, tau, k, size) == ref.optimal_spread(gamma, sigma, tau, k, size)
    assert glft.half_spreads(q, gamma, sigma, A, k, size) == ref.half_spreads(q, gamma, sigma, A, k, size)


@SET
@given(fs=st.none() | pos, use=st.booleans(), fixed=st.none() | pos, ew=st.none() | pos,
       fd=st.none() | st.floats(-10, 10), w=st.floats(0, 3))
def test_forecast_adjustment_equals_reference(fs, use, fixed, ew, fd, w):
    nan = math.nan
    sigma, drift = K.forecast_adjust(nan if fs is None else fs, use, nan if fixed is None else fixed,
                                     nan if ew is None else ew, nan if fd is None else fd, w)
    want_sigma, want_drift = ref.forecast_adjust(fs, use, fixed, ew, fd, w)
    assert (None if math.isnan(sigma) else sigma) == want_sigma and drift == want_drift


TICKS = ["0.01", "0.1", "0.5", "1", "0.00001", "0.03", "25"]
LOTS = ["0.001", "0.00001", "1", "0.1", "0.5", "0.003"]


@st.composite
def cases(draw):
    tick, lot = D(draw(st.sampled_from(TICKS))), D(draw(st.sampled_from(LOTS)))
    min_size = draw(st.sampled_from([D(0), lot, 5 * lot, D("0.01"), D("2")]))
    min_notional = draw(st.sampled_from([D(0), D(5), D(100), D("0.5")]))
    fee = draw(st.sampled_from([-0.0001, 0.0, 0.0002, 0.001]))
    mkt = MarketInfo("X/Y", "X", "Y", tick, lot, min_size, min_notional, maker_fee=fee)
    c = QuoteControls(order_size=1.0, max_inventory=10.0, levels=draw(st.integers(1, 5)),
                      level_spacing_ticks=draw(st.integers(1, 10)),
                      level_size_growth=draw(st.sampled_from([0.5, 1.0, 1.5, 2.0])),
                      inventory_size_shape=draw(st.sampled_from([0.0, 0.5, 3.0])),
                      min_spread_bps=draw(st.sampled_from([0.0, 1.0, 50.0])),
                      min_edge_bps=draw(st.sampled_from([0.0, 0.5, 5.0])), post_only=draw(st.booleans()))
    order_size = draw(st.sampled_from([float(lot), 3 * float(lot), 0.0013, 0.7, 1.0, 7.3]))
    max_inv = order_size * draw(st.sampled_from([0.5, 1.0, 3.0, 10.0]))
    sizing = Sizing(order_size, max_inv, "test")
    tf = float(tick)
    bb_t = draw(st.integers(1, 10_000_000))
    ba_t = bb_t + draw(st.integers(1, 20))
    bb, ba = bb_t * tf, ba_t * tf
    mid = 0.5 * (bb + ba)
    # model prices around the touch: inside, at, beyond, and crossing the book
    bid = draw(st.sampled_from([bb, ba, mid, bb - 3 * tf, ba + 2 * tf])) + draw(st.floats(-2, 2)) * tf
    ask = draw(st.sampled_from([ba, bb, mid, ba + 3 * tf, bb - 2 * tf])) + draw(st.floats(-2, 2)) * tf
    q = draw(st.sampled_from([0.0, max_inv, -max_inv, 0.5 * max_inv, -0.3 * max_inv, 1.2 * max_inv])) * draw(
        st.sampled_from([1.0, 1.0, 0.999]))
    books = draw(st.sampled_from([(bb, ba), (bb, None), (None, ba), (None, None)]))
    return mkt, c, sizing, bid, ask, mid, q, books


@SET
@given(case=cases())
def test_controls_equal_reference_to_the_bit(case):
    mkt, c, sizing, bid, ask, mid, q, (bb, ba) = case
    got = quoting.build_levels(bid, ask, mid, q, mkt, c, bb, ba, sizing)
    want = ref.build_levels(bid, ask, mid, q, mkt, c, bb, ba, sizing)
    assert got == want


MKT = MarketInfo("X/Y", "X", "Y", D("0.01"), D("0.001"), D("0.002"), D("0.5"))
C = QuoteControls(order_size=0.01, max_inventory=0.05)
SZ = Sizing(0.01, 0.05, "test")


def both(bid, ask, q=0.0, c=C, sizing=SZ, mkt=MKT, bb=99.99, ba=100.01):
    got = quoting.build_levels(bid, ask, 0.5 * (bb + ba), q, mkt, c, bb, ba, sizing)
    assert got == ref.build_levels(bid, ask, 0.5 * (bb + ba), q, mkt, c, bb, ba, sizing)
    return got


def test_quotes_at_the_touch_stay_on_the_touch():
    bids, asks = both(99.99, 100.01)
    assert (bids[0].price, asks[0].price) == (D("99.99"), D("100.01"))


def test_post_only_pulls_a_crossing_quote_one_tick_off_the_opposite_best():
    bids, asks = both(100.5, 99.5)  # both sides cross the book
    # bid to one tick under the best ask, ask to one over the best bid: the same tick, so the ask goes one up
    assert (bids[0].price, asks[0].price) == (D("100"), D("100.01"))
    bids, asks = both(100.5, 99.5, c=C.model_copy(update={"post_only": False}))
    assert (bids[0].price, asks[0].price) == (D("100.5"), D("100.51"))  # never a locked pair of our own


def test_inventory_at_the_limit_quotes_only_the_side_that_reduces_it():
    bids, asks = both(99.9, 100.1, q=0.05)
    assert bids == [] and asks[0].size == D("0.01")
    bids, asks = both(99.9, 100.1, q=-0.05)
    assert asks == [] and bids[0].size == D("0.01")
    bids, asks = both(99.9, 100.1, q=0.0435)  # room 0.0065 -> 6 lots, above the 0.002 minimum
    assert bids[0].size == D("0.006")


def test_sizes_below_the_market_minimum_are_not_quoted():
    tiny = Sizing(0.001, 0.05, "test")  # one lot, below min_size 0.002
    assert both(99.9, 100.1, sizing=tiny) == ([], [])
    small = Sizing(0.004, 0.05, "test")  # 0.004 * 100 = 0.4 < 0.5 notional
    assert both(99.9, 100.1, sizing=small) == ([], [])
    bids, asks = both(99.9, 100.1, sizing=Sizing(0.005, 0.05, "t"))  # 0.005 * 99.9 = 0.4995 < 0.5 <= 0.005 * 100.1
    assert bids == [] and asks == [QuoteLevel(D("100.1"), D("0.005"))]


@pytest.mark.parametrize("model", ["avellaneda_stoikov", "glft", "symmetric"])
def test_market_maker_decisions_equal_the_reference_over_a_random_walk(model):
    """MarketMaker.on_update (the kernels) against the reference composition, with forecasts,
    moving books and inventory, three levels, fees and inventory-shaped sizes."""
    mkt = MarketInfo("BTC/USDT", "BTC", "USDT", D("0.1"), D("0.001"), D("0.001"), D("5"), maker_fee=0.0001)
    p = ModelParams(model=model, gamma=0.5, A=5.0, k=2.0, horizon="rolling", tau_s=3.0, initial_sigma=4.0,
                    drift_weight=0.7)
    c = QuoteControls(order_size=0.01, max_inventory=0.05, levels=3, level_size_growth=1.5,
                      inventory_size_shape=1.0, min_edge_bps=0.2)
    mm = MarketMaker(StrategyParams(pricing=p, controls=c), mkt)
    rng = np.random.default_rng(7)
    mid_t, ts = 600_000, 1_700_000_000_000_000_000
    for i in range(400):
        mid_t += int(rng.integers(-3, 4))
        spread = int(rng.integers(1, 4))
        bb, ba = (mid_t - spread) / 10, (mid_t + spread) / 10
        ob = OrderBook("BTC/USDT")
        ob.apply_snapshot([[bb, 1.0]], [[ba, 1.0]])
        q = float(rng.choice([0.0, 0.05, -0.05, 0.012, -0.031]))
        fc = Forecast(drift=float(rng.normal()) if i % 3 else None, sigma=float(rng.uniform(0.5, 20)) if i % 5 else None)
        ts += 100_000_000
        got = mm.on_update(ob, q, ts, fc)
        s = 0.5 * (bb + ba)
        sigma, drift = ref.forecast_adjust(fc.sigma, p.use_forecast_sigma, p.sigma, mm.vol.sigma(), fc.drift, p.drift_weight)
        r, bid, ask = ref.model_prices(model, s, q, p.gamma, sigma, p.tau_s, mm.A, mm.k, mm.sizing.order_size, drift)
        bids, asks = ref.build_levels(bid, ask, s, q, mkt, c, bb, ba, mm.sizing)
        assert (got.bids, got.asks) == (bids, asks), i
        assert (got.reservation, got.half_spread_bid, got.half_spread_ask, got.sigma, got.drift) == (
            r, s - bid, ask - s, sigma, drift), i


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), window_s=st.sampled_from([0.5, 5.0, 60.0]),
       step=st.sampled_from([0.01, 0.05, 1.0]), n_depths=st.integers(3, 12))
def test_trade_depth_counting_equals_the_deque_reference(seed, window_s, step, n_depths):
    """IntensityEstimator's compiled counting (kernels.count_trades) against the old deque code:
    unknown sides, NaN mids, times going backwards, trades beyond the grid, > 1024 in the window."""
    from strategies.intensity import IntensityEstimator

    rng = np.random.default_rng(seed)
    est = IntensityEstimator(window_s, step, n_depths)
    want = ref.IntensityCounts(window_s, step, n_depths)
    t = 1_700_000_000_000_000_000
    for _ in range(int(rng.integers(1, 40))):
        n = int(rng.integers(0, 300))
        grid = 50_000_000  # times on a 50 ms grid: trades exactly at the window's edge happen
        t += grid * int(rng.integers(0, 40))
        ts = t + grid * np.sort(rng.integers(-1, 10, n))
        ts[rng.random(n) < 0.05] -= 20 * grid  # out of order
        mid = float(rng.choice([100.0, math.nan])) if rng.random() < 0.1 else 100.0
        price = mid + rng.normal(0, 5 * step * n_depths / 3, n).round(2)
        side = rng.choice([1, -1, 0], n, p=[0.45, 0.45, 0.1]).astype(np.int8)
        est.update_many(ts, price, side, mid)
        want.update_many(ts.tolist(), price.tolist(), side.tolist(), mid)
        assert est._counts.tolist() == want.counts and est.n_trades == len(want.q)
        assert (est._now_ns, est._first_ns) == (want.now, want.first)


def test_market_maker_counts_trade_objects_and_trade_arrays_alike():
    """on_trades with Trade objects (live feeds) and with TradeArrays (replays) count the same
    trades (unknown sides skipped) and fit the same A and k."""
    from bot.market_data.base import Trade, TradeArrays

    mkt = MarketInfo("B/U", "B", "U", D("0.01"), D("0.001"))
    p = ModelParams(model="glft", initial_sigma=1.0, calibrate_intensity=True, intensity_window_s=20.0,
                    intensity_n_depths=8, intensity_min_trades=5, intensity_refresh_s=1.0)
    c = QuoteControls(order_size=0.01, max_inventory=1.0)
    a, b = (MarketMaker(StrategyParams(pricing=p, controls=c), mkt) for _ in range(2))
    ob = OrderBook("B/U")
    ob.apply_snapshot([[99.99, 1.0]], [[100.01, 1.0]])
    rng = np.random.default_rng(3)
    t = 1_700_000_000_000_000_000
    for i in range(300):
        t += 100_000_000
        for m in (a, b):
            m.on_update(ob, 0.0, t)
        n = int(rng.integers(0, 6))
        ts = t + np.sort(rng.integers(0, 90_000_000, n))
        px = 100.0 + rng.normal(0, 0.04, n).round(2)
        sd = rng.choice([1, -1, 0], n, p=[0.45, 0.45, 0.1]).astype(np.int8)
        arr = TradeArrays(ts, px, np.full(n, 0.01), sd, np.arange(n))
        a.on_trades(list(arr), t + 100_000_000)
        b.on_trades(arr, t + 100_000_000)
        assert a.intensity._counts.tolist() == b.intensity._counts.tolist(), i
        assert a.intensity.n_trades == b.intensity.n_trades == sum(a.intensity._counts.tolist())
        assert (a.A, a.k) == (b.A, b.k)
    assert a.A != p.A  # the fit ran
