"""A seeded paper run (the real engine, paper exchange and forecaster) decides with the compiled
kernels exactly what the plain-Python reference (tests/strategy_reference.py, the code before
the kernels) decides from the same inputs, at every decision of the run; so the run's orders are
the ones the Python strategy placed. (Checked once more against the branch point's code: the
orders, fills and snapshots of seeded runs hash equal; see the commit message.)"""

import asyncio

import pytest

from bot.app import build_paper_engine
from bot.config import Config, with_overrides
from bot.persistence.store import open_store
from tests import strategy_reference as ref


def _checked(strat, seen):
    inner = strat.on_update

    def on_update(book, inventory, now_ns, forecast=None):
        got = inner(book, inventory, now_ns, forecast)
        if not (got.bids or got.asks):
            return got
        p, mkt = strat.p, strat.market
        bb, ba = book.bids.best_price(), book.asks.best_price()
        s = 0.5 * (bb + ba)
        sigma, drift = ref.forecast_adjust(
            forecast.sigma if forecast is not None else None, p.use_forecast_sigma, p.sigma, strat.vol.sigma(),
            forecast.drift if forecast is not None else None, p.drift_weight)
        if p.model == "glft":
            tau = 0.0
        elif p.horizon == "finite":
            tau = max(strat.end_ns - now_ns, 0) * 1e-9
        else:
            tau = p.tau_s
        r, bid, ask = ref.model_prices(p.model, s, inventory, p.gamma, sigma, tau, strat.A, strat.k,
                                       strat.sizing.order_size, drift)
        want = ref.build_levels(bid, ask, s, inventory, mkt, strat.c, bb, ba, strat.sizing)
        assert (got.bids, got.asks) == want, now_ns
        assert (got.reservation, got.half_spread_bid, got.half_spread_ask) == (r, s - bid, ask - s)
        seen["decisions"] += 1
        seen["forecast"] += forecast is not None and (forecast.drift is not None or forecast.sigma is not None)
        return got

    strat.on_update = on_update
    return strat


@pytest.mark.parametrize("over", [
    {"duration_s": 330.0},  # the defaults: AS, finite horizon, the LSTM forecaster (warm after 300 s)
    {"duration_s": 120.0, "forecaster.model": "none", "sim.seed": 5, "strategy.pricing.model": "glft",
     "strategy.controls.levels": 3},
])
def test_seeded_paper_run_decides_like_the_python_reference(tmp_path, over):
    cfg = with_overrides(Config(), **{"database.url": str(tmp_path / "k.db"), "sim.speed": 0.0, **over})
    store = open_store(cfg.database.url)
    seen = {"decisions": 0, "forecast": 0}
    try:
        engine = build_paper_engine(cfg, store, handle_signals=False)
        factory = engine.strategy_factory
        engine.strategy_factory = lambda market: _checked(factory(market), seen)
        summary = asyncio.run(engine.run())
    finally:
        store.close()
    assert summary["status"] == "completed" and summary["fills"] > 0
    assert seen["decisions"] > 500
    if "forecaster.model" not in over:
        assert seen["forecast"] > 0
