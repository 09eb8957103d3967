"""The market-making strategy: model prices, forecast hooks and quoting controls."""

import math
from pathlib import Path
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


# -- issue 7: size-aware AS, the run's horizon, sigma warm-up, sizes that follow the market ----
BTC = MarketInfo("BTC/USDT", "BTC", "USDT", Decimal("0.1"), Decimal("0.001"))


def backtest_params(**pricing):
    from bot.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "config" / "backtest.yaml")
    p = cfg.strategy.model_dump()
    p["pricing"].update({"sigma": 5.0, "calibrate_intensity": False, **pricing})
    return StrategyParams.model_validate(p)


@pytest.mark.parametrize("model,expected", [("avellaneda_stoikov", 6.954), ("glft", 6.651), ("symmetric", 6.954)])
def test_as_and_glft_quote_btc_orders_a_few_usdt_wide(model, expected):
    """backtest.yaml (gamma 20/USDT, k 0.3, A 60, tau 1 s, 0.001 BTC) with sigma 5: the unit-size
    AS spread was 500 USDT; now every model quotes about 7 USDT wide, rounded out to the tick."""
    s = MarketMaker(backtest_params(model=model), BTC)
    q = s.on_update(book(59999.9, 60000.1), 0.0, 0)
    assert q.half_spread_bid + q.half_spread_ask == pytest.approx(expected, abs=1e-3)
    quoted = float(q.asks[0].price - q.bids[0].price)
    assert expected <= quoted <= expected + 0.2 + 1e-9
    assert q.bids[0].size == Decimal("0.001")


def test_finite_horizon_ends_with_the_run_not_at_tau_s(caplog):
    s = mm(horizon="finite", tau_s=600.0, session_s=1200.0)
    s.begin(0)
    q = s.on_update(book(), 1.0, 900 * 10**9)  # 300 s left: past tau_s, still skewed
    assert q.reservation == pytest.approx(AS.reservation_price(100.0, 1.0, 0.1, 2.0, 300.0))
    assert q.note == "" and s.status()["horizon"] == "finite, 1200 s"
    with caplog.at_level("WARNING", logger="mmbot.strategy"):
        for t in (1200, 1300, 1400):
            q = s.on_update(book(), 1.0, t * 10**9)
    assert q.reservation == pytest.approx(100.0) and q.note == "horizon ended: tau = 0"
    assert [r.message for r in caplog.records].count(
        "finite horizon reached (the run's 1200 s are over): tau = 0, quotes carry no inventory skew") == 1
    assert s.status()["horizon"].endswith("(ended)")


def test_finite_horizon_is_refused_for_an_open_ended_run():
    from bot.errors import ConfigError

    with pytest.raises(ConfigError, match=r"strategy\.pricing\.horizon: 'finite' needs a run with an end"):
        mm(horizon="finite")
    mm(horizon="rolling")  # fine without an end
    mm(model="glft", horizon="finite")  # GLFT has no horizon


def test_paper_run_horizon_follows_duration(tmp_path):
    import asyncio

    from bot.app import build_paper_engine
    from bot.config import Config, with_overrides
    from bot.errors import ConfigError
    from bot.persistence.store import open_store

    cfg = with_overrides(Config(), **{"database.url": str(tmp_path / "p.db"), "duration_s": 30.0, "sim.speed": 0.0,
                                      "forecaster.model": "none", "strategy.pricing.tau_s": 10.0})
    store = open_store(cfg.database.url)
    try:
        engine = build_paper_engine(cfg, store, handle_signals=False, forecaster=None)
        summary = asyncio.run(engine.run())
    finally:
        store.close()
    strat = engine.strategy
    assert strat.end_ns - strat.start_ns == 30 * 10**9  # not tau_s (10 s)
    assert strat.session_s == 30.0 and summary["strategy"]["horizon"].startswith("finite, 30 s")
    # a live run without duration_s is open-ended: refused before anything connects
    live = with_overrides(cfg, **{"exchange": "binance", "symbol": "BTC/USDT", "market_data.transport": "rest"})
    live = live.model_copy(update={"duration_s": None})
    with pytest.raises(ConfigError, match="open-ended"):
        build_paper_engine(live, open_store(str(tmp_path / "l.db")), handle_signals=False, forecaster=None)


def test_no_quotes_until_sigma_is_estimated():
    s = mm(sigma=None, initial_sigma=None, vol_sample_s=1.0)
    q = s.on_update(book(), 0.0, 0)
    assert q.bids == [] and q.asks == [] and q.note == "warming up sigma: 0/10 samples"
    assert "not quoting" in s.status()["sigma_source"]
    for i in range(1, 10):
        q = s.on_update(book(99.99 + 0.01 * (i % 2), 100.01 + 0.01 * (i % 2)), 0.0, i * 10**9)
    assert q.bids == [] and q.note == "warming up sigma: 9/10 samples"
    q = s.on_update(book(), 0.0, 10 * 10**9)
    assert q.bids and q.asks and q.note == "" and q.sigma > 0
    assert s.status()["decisions_not_quoted_warming_up"] == 10 and s.status()["sigma_source"] == "ewma"
    # a forecast's sigma, a fixed sigma or an explicit initial_sigma quote at once
    assert mm(sigma=None, initial_sigma=None).on_update(book(), 0.0, 0, Forecast(sigma=0.5)).bids
    assert mm(sigma=None, initial_sigma=0.3).on_update(book(), 0.0, 0).sigma == 0.3


def test_recorded_history_warms_sigma_up_before_the_first_decision():
    rng = np.random.default_rng(3)
    ts = np.arange(0, 30 * 10**9, 50_000_000)  # 30 s of mids every 50 ms
    mids = 60000.0 + np.cumsum(0.5 * rng.standard_normal(ts.size))  # ~2.2 USDT per sqrt(s)
    mids[5] = np.nan  # a one-sided moment is skipped
    s = MarketMaker(backtest_params(sigma=None, initial_sigma=None), BTC)
    assert s.warm_up(ts, mids) == 29
    q = s.on_update(book(mids[-1] - 0.05, mids[-1] + 0.05), 0.0, int(ts[-1]) + 10**8)
    assert q.bids and q.asks and 1.0 < q.sigma < 4.0
    assert s.status()["sigma_source"] == "ewma (warmed up on 29 recorded samples)"


def test_order_size_follows_the_market():
    from strategies.quoting import market_min_size, resolve_sizing

    c = QuoteControls()  # the defaults (config/paper.yaml): 1 x the market minimum, 10 orders of inventory
    sim = MarketInfo("SIM/USD", "SIM", "USD", Decimal("0.01"), Decimal("1"))
    assert (resolve_sizing(c, sim, 100.0).order_size, resolve_sizing(c, sim, 100.0).max_inventory) == (1.0, 10.0)
    z = resolve_sizing(c, BTC, 60000.0)
    assert (z.order_size, z.max_inventory) == (0.001, pytest.approx(0.01))
    spot = MarketInfo("BTC/USDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.00001"), min_notional=Decimal("5"))
    assert market_min_size(spot, 60000.0) == pytest.approx(0.00009)  # 5 USDT / 60000 rounded up to the lot
    assert resolve_sizing(QuoteControls(order_size_min_multiple=2), spot, 60000.0).order_size == pytest.approx(0.00018)
    z = resolve_sizing(QuoteControls(order_size_quote=100.0, max_inventory_orders=5), spot, 60000.0)
    assert z.order_size == pytest.approx(0.00166) and z.max_inventory == pytest.approx(0.0083)  # 100/60000 down to the lot
    z = resolve_sizing(QuoteControls(order_size=0.5, max_inventory=2.0), spot, 60000.0)
    assert (z.order_size, z.max_inventory, z.source) == (0.5, 2.0, "order_size")
    s = MarketMaker(StrategyParams(pricing=ModelParams(sigma=2.0, horizon="rolling")), BTC)
    q = s.on_update(book(59999.9, 60000.1), 0.0, 0)
    assert q.bids[0].size == Decimal("0.001") and s.status()["order_size_from"] == "1 x market minimum 0.001 BTC"
    assert s.on_update(book(59999.9, 60000.1), 0.01, 10**9).bids == []  # 10 orders long: no more bids


def test_config_that_does_not_fit_the_market_warns_at_start(caplog):
    params = StrategyParams(pricing=ModelParams(model="glft", gamma=0.1, k=1000.0, A=10.0, sigma=0.001, calibrate_intensity=True,
                                                intensity_depth_step=0.01),
                            controls=QuoteControls(order_size=0.0004, max_inventory=0.01))
    s = MarketMaker(params, BTC)
    with caplog.at_level("WARNING", logger="mmbot.strategy"):
        q = s.on_update(book(59999.9, 60000.1), 0.0, 0)
        s.on_update(book(59999.9, 60000.1), 0.0, 10**9)
    w = s.status()["warnings"]
    assert len(w) == 3 and len(caplog.records) == 3  # logged once, at the first book
    assert "order size 0.0004 BTC (order_size) is below the market's minimum order 0.001 BTC" in w[0]
    assert "finer than the tick 0.1" in w[1] and "intensity_depth_step 0.01 is finer than the tick 0.1" in w[2]
    assert all("config does not fit BTC/USDT" in r.message for r in caplog.records)
    assert q.bids == []  # below the minimum: nothing placed
    ok = MarketMaker(StrategyParams(pricing=ModelParams(sigma=2.0, horizon="rolling")), BTC)
    ok.on_update(book(59999.9, 60000.1), 0.0, 0)
    assert ok.status()["warnings"] == []


def test_cli_refuses_a_finite_horizon_on_an_open_ended_run(tmp_path):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    cfg = tmp_path / "live.yaml"  # nothing listens on the URL: the error must come before any connection
    cfg.write_text("exchange: binance\nsymbol: BTC/USDT\nduration_s: null\n"
                   "market_data:\n  transport: rest\n  api_url: http://127.0.0.1:9\nforecaster:\n  model: none\n")
    out = subprocess.run([sys.executable, "-m", "bot.cli", "paper", "--config", str(cfg), "--db", str(tmp_path / "x.db"), "--json"],
                         capture_output=True, text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert "strategy.pricing.horizon: 'finite' needs a run with an end" in out.stderr and "duration_s is null" in out.stderr
