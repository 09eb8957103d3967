"""The market-making strategy: model prices, forecast hooks and quoting controls."""

import math
from decimal import Decimal

import numpy as np
import pytest

from bot.market import MarketInfo
from bot.orderbook import OrderBook
from models.forecast import Forecast
from strategies import avellaneda_stoikov as AS
from strategies.market_maker import MarketMaker
from strategies.params import ModelParams, QuoteControls, StrategyParams
from strategies.volatility import EwmaVolatility

MKT = MarketInfo("SIM/USD", "SIM", "USD", Decimal("0.01"), Decimal("0.1"))


def book(bid=99.99, ask=100.01, size=5.0):
    ob = OrderBook("SIM/USD")
    ob.apply_snapshot([[bid, size]], [[ask, size]])
    return ob


def mm(market=MKT, session_s=None, **kw):
    pricing = {k: v for k, v in kw.items() if k in ModelParams.model_fields}
    controls = {k: v for k, v in kw.items() if k in QuoteControls.model_fields}
    pricing.setdefault("sigma", 2.0)
    pricing.setdefault("horizon", "rolling")
    pricing.setdefault("tau_s", 0.5)
    if not {"order_size_quote", "order_size_min_multiple"} & set(controls):
        controls.setdefault("order_size", 1.0)
    if "max_inventory_orders" not in controls:
        controls.setdefault("max_inventory", 10.0)
    params = StrategyParams(pricing=ModelParams(**pricing), controls=QuoteControls(**controls))
    return MarketMaker(params, market, session_s)


def test_as_quotes_rounded_outwards_around_reservation():
    s = mm()
    q = s.on_update(book(), 2.0, 0)
    r, bid, ask = AS.quotes(100.0, 2.0, 0.1, 2.0, 0.5, 1.5)
    assert q.reservation == pytest.approx(r)
    assert q.bids[0].price == Decimal(str(math.floor(bid * 100) / 100))
    assert q.asks[0].price == Decimal(str(math.ceil(ask * 100) / 100))
    assert q.bids[0].price % MKT.tick == 0 and q.asks[0].price % MKT.tick == 0


def test_inventory_skews_quotes_down_when_long():
    s = mm()
    flat, long = s.on_update(book(), 0.0, 0), s.on_update(book(), 3.0, 0)
    assert long.bids[0].price < flat.bids[0].price and long.asks[0].price < flat.asks[0].price


def test_drift_forecast_shifts_and_sigma_forecast_replaces():
    s = mm()
    base = s.on_update(book(), 0.0, 0)
    up = s.on_update(book(), 0.0, 0, Forecast(drift=0.3))
    assert up.reservation == pytest.approx(base.reservation + 0.3)
    wide = s.on_update(book(), 0.0, 0, Forecast(sigma=4.0))
    assert wide.sigma == 4.0 and wide.asks[0].price - wide.bids[0].price > base.asks[0].price - base.bids[0].price


def test_without_forecast_sigma_comes_from_ewma_of_the_mid():
    s = mm(sigma=None, vol_sample_s=1.0, vol_halflife_s=1e6, initial_sigma=9.0)
    assert s.on_update(book(), 0, 0).sigma == 9.0  # warm-up value
    rng = np.random.default_rng(1)
    mid, t = 100.0, 0
    for _ in range(3000):
        t += 1_000_000_000
        mid += 0.05 * rng.standard_normal()  # sigma = 0.05 per sqrt(second)
        q = s.on_update(book(mid - 0.01, mid + 0.01), 0.0, t)
    assert q.sigma == pytest.approx(0.05, rel=0.1)


def test_ewma_rejects_bad_parameters():
    with pytest.raises(ValueError):
        EwmaVolatility(halflife_s=0)


def test_glft_model_is_symmetric_when_flat_and_skews_with_inventory():
    s = mm(model="glft", A=140.0)
    flat = s.on_update(book(), 0.0, 0)
    assert flat.half_spread_bid == pytest.approx(flat.half_spread_ask)
    long = s.on_update(book(), 2.0, 0)
    assert long.half_spread_bid > long.half_spread_ask


def test_max_inventory_stops_the_growing_side_and_caps_size():
    s = mm(max_inventory=5.0, order_size=2.0)
    q = s.on_update(book(), 5.0, 0)
    assert q.bids == [] and q.asks
    q = s.on_update(book(), 4.0, 0)
    assert q.bids[0].size == Decimal("1")  # room of 1 base unit left
    q = s.on_update(book(), -5.0, 0)
    assert q.asks == [] and q.bids


def test_inventory_shaped_sizes():
    s = mm(max_inventory=10.0, order_size=2.0, inventory_size_shape=1.0)
    q = s.on_update(book(), 5.0, 0)
    assert q.bids[0].size == Decimal("1.2")  # 2*exp(-0.5) = 1.213 -> down to lot 0.1
    assert q.asks[0].size == Decimal("2")


def test_levels_spacing_and_growth():
    s = mm(levels=3, level_spacing_ticks=5, level_size_growth=2.0, order_size=1.0, max_inventory=100.0)
    q = s.on_update(book(), 0.0, 0)
    assert [lv.size for lv in q.bids] == [Decimal("1"), Decimal("2"), Decimal("4")]
    assert q.bids[0].price - q.bids[1].price == Decimal("0.05")
    assert q.asks[2].price - q.asks[0].price == Decimal("0.10")


def test_min_spread_and_fee_aware_edge():
    tight = mm(gamma=50.0, k=1000.0, sigma=0.0)  # the model alone would quote ~0 spread
    q = tight.on_update(book(99.5, 100.5), 0.0, 0)
    assert q.asks[0].price - q.bids[0].price <= Decimal("0.02")
    wide = mm(gamma=50.0, k=1000.0, sigma=0.0, min_spread_bps=20.0)
    q = wide.on_update(book(99.5, 100.5), 0.0, 0)
    assert q.asks[0].price - q.bids[0].price >= Decimal("0.20")
    feemkt = MarketInfo("SIM/USD", "SIM", "USD", Decimal("0.01"), Decimal("0.1"), maker_fee=0.001)
    q = mm(market=feemkt, gamma=50.0, k=1000.0, sigma=0.0, min_edge_bps=5.0).on_update(book(99.5, 100.5), 0.0, 0)
    # each side at least (10 bp fee + 5 bp edge) = 0.15 from the mid of 100
    assert q.bids[0].price <= Decimal("99.85") and q.asks[0].price >= Decimal("100.15")


def test_post_only_quotes_never_cross_the_book():
    s = mm(sigma=0.0, gamma=50.0, k=1000.0)
    # a large drift view pushes the model's bid above the best ask
    q = s.on_update(book(99.99, 100.01), 0.0, 0, Forecast(drift=1.0))
    assert q.bids[0].price < Decimal("100.01") and q.asks[0].price > Decimal("99.99")


def test_crossed_or_one_sided_book_gives_no_quotes():
    s = mm()
    assert s.on_update(book(100.0, 100.0), 0.0, 0).bids == []
    ob = OrderBook()
    ob.apply_snapshot([[1.0, 1.0]], [])
    q = s.on_update(ob, 0.0, 0)
    assert q.bids == [] and q.asks == [] and q.note == "one-sided book"


def test_finite_horizon_spread_shrinks_toward_the_end():
    s = mm(horizon="finite", session_s=10.0)
    s.begin(0)
    early = s.on_update(book(), 0.0, 0)
    late = s.on_update(book(), 0.0, 9_000_000_000)
    assert (late.half_spread_bid + late.half_spread_ask) < (early.half_spread_bid + early.half_spread_ask)
    assert (early.half_spread_ask + early.half_spread_bid) == pytest.approx(AS.optimal_spread(0.1, 2.0, 10.0, 1.5))


def test_order_size_above_max_inventory_is_a_config_error():
    with pytest.raises(ValueError, match="max_inventory"):
        QuoteControls(order_size=5.0, max_inventory=1.0)


def test_intensity_calibration_from_trades_moves_k():
    from bot.market_data.base import Trade

    rng = np.random.default_rng(0)
    s = mm(model="glft", A=1.0, k=100.0, calibrate_intensity=True, intensity_window_s=1000.0,
           intensity_depth_step=0.05, intensity_n_depths=20, intensity_refresh_s=1.0, intensity_min_trades=50)
    s.on_update(book(), 0.0, 0)
    t = 0
    for step in range(400):  # 400 s of trades: rate 5/s, depths ~ exponential with k = 4
        t += 1_000_000_000
        depths = rng.exponential(1 / 4.0, size=rng.poisson(5))
        trades = [Trade(t, 100.0 + d, 0.1, "buy") for d in depths]
        s.on_trades(trades, t)
        s.on_update(book(), 0.0, t)
    assert s.k == pytest.approx(4.0, rel=0.15) and s.A == pytest.approx(5.0, rel=0.2)
