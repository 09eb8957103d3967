"""Forecasts computed once per segment (TorchScript batch forward, on-disk cache) and shared by
trials give exactly the backtest that runs the forecaster inside the engine (the shipped LSTM
with its warm-up shortened from 300 to 20 one-second rows, so that it forecasts within the
two-minute recording; TorchScript step backend, which the batch forward equals exactly)."""

import asyncio
import logging

import pytest

from bot.config import build_forecaster, load_config, with_overrides
from forecast_helpers import short_warmup_model
from paper_trading.backtest import build_replay_engine
from paper_trading.tune.folds import Recording, make_plan
from paper_trading.tune.runner import SummaryStore, Worker
from tune_helpers import CAPTURE, ROOT, btc_slice

pytestmark = pytest.mark.skipif(not CAPTURE.exists(), reason=f"real market data not found at {CAPTURE}")


def test_shared_forecasts_equal_the_forecaster_in_the_engine(tmp_path_factory, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MMBOT_CACHE_DIR", str(tmp_path / "cache"))
    rec = btc_slice(tmp_path_factory)
    model = short_warmup_model(tmp_path_factory)
    from bot.recording.io import open_recording

    meta = open_recording(rec).meta
    plan = make_plan([Recording(str(rec), meta["first_local_ts"], meta["last_local_ts"])], 1, 0.0, 13)
    seg = plan.folds[0][0]
    base = with_overrides(load_config(ROOT / "config" / "backtest.yaml"),
                          **{"paper.maker_fee": 0.0, "forecaster.model": str(model), "forecaster.backend": "torchscript"})
    w = Worker(plan)
    for gamma in (2.0, 100.0):
        cfg = with_overrides(base, **{"strategy.pricing.gamma": gamma})
        shared = w.run_segment(cfg, seg)
        ev, meta = w.recording(seg.rec)
        st = SummaryStore()
        engine, _ = build_replay_engine(str(rec), cfg, st, mode="backtest", speed=0.0, events_meta=(ev, meta),
                                        forecaster=build_forecaster(cfg), start_ns=seg.start_ns)
        engine.handle_signals = False
        direct = asyncio.run(engine.run())
        assert direct["forecaster"]["warmed_up"] is True
        assert shared.fills == direct["fills"] > 0
        assert shared.pnl == direct["pnl"]
        assert list(shared.snap_pnl) == st.pnl
    assert len(w._forecasts) == 1  # one forecast pass for both trials
    (fc,) = w._forecasts.values()
    assert sum(1 for f in fc.by_ts.values() if f is not None and f.sigma is not None) > 50
    # on disk: a second worker (another process or a later study) reads them instead of computing
    assert len(list((tmp_path / "cache" / "forecasts").glob("*.npz"))) == 1
    w2 = Worker(plan)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="paper_trading.backtest"):
        again = w2.run_segment(with_overrides(base, **{"strategy.pricing.gamma": 2.0}), seg)
    assert any("forecasts from the cache" in r.getMessage() for r in caplog.records)
    (fc2,) = w2._forecasts.values()
    assert fc2.by_ts == fc.by_ts and again.fills > 0


def test_forecasts_change_the_backtest(tmp_path_factory, tmp_path, monkeypatch):
    """The comparison above is not vacuous: without the forecasts the same trial differs."""
    monkeypatch.setenv("MMBOT_CACHE_DIR", str(tmp_path / "cache"))
    rec = btc_slice(tmp_path_factory)
    model = short_warmup_model(tmp_path_factory)
    from bot.recording.io import open_recording

    meta = open_recording(rec).meta
    plan = make_plan([Recording(str(rec), meta["first_local_ts"], meta["last_local_ts"])], 1, 0.0, 13)
    base = with_overrides(load_config(ROOT / "config" / "backtest.yaml"), **{"paper.maker_fee": 0.0, "strategy.pricing.gamma": 2.0})
    w = Worker(plan)
    on = w.run_segment(with_overrides(base, **{"forecaster.model": str(model)}), plan.folds[0][0])
    off = w.run_segment(with_overrides(base, **{"forecaster.model": "none"}), plan.folds[0][0])
    assert list(on.snap_pnl) != list(off.snap_pnl)
