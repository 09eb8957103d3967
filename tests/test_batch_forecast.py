"""Forecasts precomputed with the TorchScript batch forward (models.batch_forecast) equal the
step path -- the engine stepping the forecaster at each decision of a backtest -- on a real
recording slice (the first 30,000 lines of the Binance USD-M BTC/USDT capture), guard included.

Tolerances: against the TorchScript step backend the batch forward runs the very same step
inside ``forward_seq``, so forecasts, guard state and the backtest are compared exactly;
against the numba step backend (float32 arithmetic in another order) drift and sigma agree to
1e-5 relative and the sources (model or baseline, per head) are the same."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bot.app import FROM_CONFIG
from bot.config import build_forecaster
from forecast_helpers import forecast_config, short_warmup_model
from models.batch_forecast import TableForecaster, batch_forward
from paper_trading.backtest import build_replay_engine, precomputed_forecaster
from paper_trading.tune.runner import SummaryStore
from real_data import needs
from tune_helpers import btc_slice

pytestmark = needs("binance/usdm/btcusdt_20240808.gz")


class Recorder:
    """The forecaster the engine steps, keeping what it returned at each decision."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.seen: list = []

    def update(self, book, now_ns, trades=()):
        f = self.inner.update(book, now_ns, trades)
        self.seen.append((now_ns, f))
        return f

    def status(self):
        return self.inner.status()


def _run(rec, cfg, forecaster, **kw):
    engine, _ = build_replay_engine(str(rec), cfg, SummaryStore(), mode="backtest", speed=0.0, forecaster=forecaster, **kw)
    engine.handle_signals = False
    return asyncio.run(engine.run()), engine


def _backtest(rec, cfg, forecaster, **kw):
    return _run(rec, cfg, forecaster, **kw)[0]


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    return btc_slice(tmp_path_factory)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return short_warmup_model(tmp_path_factory)


def _lines(caplog):
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "mmbot.forecaster"]


def test_batch_forecasts_equal_the_engine_stepping_the_torchscript_forecaster(rec, model, caplog):
    cfg = forecast_config(model, "torchscript")
    caplog.set_level(logging.INFO, logger="mmbot.forecaster")
    batch = precomputed_forecaster(rec, cfg, use_cache=False)
    assert isinstance(batch, TableForecaster)
    assert not _lines(caplog)  # the guard's lines are kept for the run, not logged while precomputing
    step = Recorder(build_forecaster(cfg))
    stepped = _backtest(rec, cfg, step)
    step_lines = _lines(caplog)
    caplog.clear()
    table = dict(zip(batch.table.ts_ns.tolist(), batch.table.forecasts()))
    assert [t for t, _ in step.seen] == batch.table.ts_ns.tolist()  # the same decision grid
    assert all(table[t] == f for t, f in step.seen)  # drift, sigma, horizon, source: exactly
    assert sum(f.sigma is not None for _, f in step.seen) > 50  # the model forecasts on this slice
    # the guard: same switches, same state at the end -- and it did switch here
    assert batch.status() == step.status()
    assert sum(batch.status()["guard_switches"].values()) > 0
    assert batch.table.switches() == step.inner.switches
    srcs = {f.source for _, f in step.seen}
    assert "lstm-warmup" in srcs and len(srcs) >= 3, srcs  # warm-up, then model and baseline heads
    # the backtest on the precomputed forecasts is the backtest with the model inside, and it
    # shows the guard's switches and log lines as the run reaches them
    fed, engine = _run(rec, cfg, batch)
    for k in ("fills", "pnl", "orders_placed", "orders_canceled", "volume_quote", "inventory", "forecaster"):
        assert fed[k] == stepped[k], k
    assert stepped["fills"] > 0
    assert _lines(caplog) == step_lines and any(lv == logging.WARNING for lv, _ in step_lines)
    assert engine.forecaster.switches == step.inner.switches
    assert batch.switches == []  # each run reads the shared table with a reader of its own


def test_precomputed_for_a_replay_from_a_later_start_and_grid_check(rec, model, tmp_path, monkeypatch):
    """``forecaster=PRECOMPUTED`` computes the forecasts of that very replay (here from 40 s
    into the slice), equal to stepping the model there; a table of another grid is refused."""
    from bot.recording.io import open_recording
    from paper_trading.backtest import PRECOMPUTED

    monkeypatch.setenv("MMBOT_CACHE_DIR", str(tmp_path / "cache"))
    cfg = forecast_config(model, "torchscript")
    start = int(open_recording(rec).meta["first_local_ts"]) + 40_000_000_000
    step = Recorder(build_forecaster(cfg))
    stepped = _backtest(rec, cfg, step, start_ns=start)
    pre, engine = _run(rec, cfg, PRECOMPUTED, start_ns=start)
    assert isinstance(engine.forecaster, TableForecaster)
    assert engine.forecaster.table.ts_ns.tolist() == [t for t, _ in step.seen]
    assert engine.forecaster.table.forecasts() == [f for _, f in step.seen]
    for k in ("fills", "pnl", "orders_placed", "forecaster"):
        assert pre[k] == stepped[k], k
    with pytest.raises(ValueError, match="decision grid"):
        _run(rec, cfg, engine.forecaster)  # computed for the later start, used from the beginning


def test_batch_forecasts_equal_the_numba_step_path_to_float32_rounding(rec, model):
    cfg = forecast_config(model, "numba")
    batch = precomputed_forecaster(rec, cfg, use_cache=False)
    step = Recorder(build_forecaster(cfg))
    _backtest(rec, cfg, step)
    ts, fs = batch.table.ts_ns.tolist(), batch.table.forecasts()
    assert ts == [t for t, _ in step.seen]
    for a, (_, b) in zip(fs, step.seen):
        assert a.source == b.source and a.horizon_s == b.horizon_s
        for x, y in ((a.drift, b.drift), (a.sigma, b.sigma)):
            assert (x is None) == (y is None)
            if x is not None:
                assert x == pytest.approx(y, rel=1e-5, abs=1e-9)
    assert batch.status()["guard_switches"] == step.status()["guard_switches"]


def test_chunking_carries_the_lstm_state(model):
    """The batch forward over chunks of 7 rows equals one chunk, and a state reset restarts from zero."""
    import numpy as np

    from models.export import load_model

    module, meta = load_model(model)
    a = meta["arch"]
    rows = np.random.default_rng(3).normal(size=(50, int(a["n_features"]))).astype(np.float32)
    whole = batch_forward(module, rows, [0], int(a["layers"]), int(a["hidden"]), chunk_rows=1000)
    chunked = batch_forward(module, rows, [0], int(a["layers"]), int(a["hidden"]), chunk_rows=7)
    assert np.array_equal(whole, chunked)
    reset = batch_forward(module, rows, [0, 20], int(a["layers"]), int(a["hidden"]), chunk_rows=7)
    assert np.array_equal(reset[:20], whole[:20])
    assert np.array_equal(reset[20:], batch_forward(module, rows[20:], [0], int(a["layers"]), int(a["hidden"])))
    assert not np.array_equal(reset[20:], whole[20:])


def test_torch_thread_count_is_left_as_the_user_set_it(rec, model):
    import torch

    before = torch.get_num_threads()
    want = 2 if before != 2 else 1
    torch.set_num_threads(want)
    try:
        precomputed_forecaster(rec, forecast_config(model, "torchscript"), use_cache=False)
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)


def test_no_forecaster_and_missing_model(rec, tmp_path):
    from bot.errors import DataError

    assert precomputed_forecaster(rec, forecast_config("none")) is None
    with pytest.raises(DataError, match="nope.pt: model file not found"):
        precomputed_forecaster(rec, forecast_config(tmp_path / "nope.pt"))
    assert FROM_CONFIG is not None


def test_table_forecaster_reads_any_order_across_blocks(monkeypatch, caplog):
    """In order, out of order, across blocks; unknown times give None; switches and log lines
    appear once, when the run reaches their decision."""
    import random

    from models.batch_forecast import ForecastTable
    from models.forecast import Forecast

    ts = [1_000 + 100 * i for i in range(1000)]
    fs = [None if i % 97 == 0 else Forecast(None if i % 5 == 0 else 0.5 * i, None if i < 20 else 0.01 * i, 1.0,
                                            "lstm-warmup" if i < 20 else ("lstm" if i % 3 else "vol:ewma,drift:lstm"))
          for i in range(1000)]
    table = ForecastTable.from_forecasts(ts, fs, {"rows": 1}, switches=[(30, (4_000, "vol", True, 1.5)), (600, (61_000, "drift", False, 0.9))],
                                         logs=[(30, logging.WARNING, "vol switch"), (600, logging.WARNING, "drift back")])
    monkeypatch.setattr(TableForecaster, "BLOCK", 64)
    f = table.forecaster()
    caplog.set_level(logging.INFO, logger="mmbot.forecaster")
    assert [f.update(None, t) for t in ts[:31]] == fs[:31]
    assert f.switches == [(4_000, "vol", True, 1.5)] and [r.getMessage() for r in caplog.records] == ["vol switch"]
    assert [f.update(None, t) for t in ts[31:]] == fs[31:]
    assert len(f.switches) == 2 and [r.getMessage() for r in caplog.records] == ["vol switch", "drift back"]
    g = table.forecaster()
    order = list(range(1000))
    random.Random(5).shuffle(order)
    assert [g.update(None, ts[i]) for i in order] == [fs[i] for i in order]
    assert g.update(None, 1_050) is None and g.update(None, 10**12) is None and g.update(None, 0) is None
    assert table.forecasts() == fs and f.status() == {"rows": 1}
