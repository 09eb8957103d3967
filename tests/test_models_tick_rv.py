"""Intra-second information (``FeatureConfig.tick_rv``, the ``tick`` baseline of the correction
architecture): the tick-level realised variance is the same online (the book observed on every
update through the replay venue) as offline, on real Binance and Bitstamp slices, and equals a
hand computation on a known path; the tick baseline is causal; a correction model using it gives
the same forecasts online (forecaster fed every event) as the batch over the offline matrix;
and models saved without the option (the shipped v1 model) keep their schema and forecasts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bot.market_data.base import Trade
from bot.recording.io import open_recording
from bot.recording.schema import ASK, BID, BUY, CLEAR, DEPTH, SNAPSHOT, TRADE, make_events
from models import baseline_inputs as bi
from models.calibrate import build_dataset, model_inputs
from models.export import check_schema, load_model, save_model
from models.features import (FeatureConfig, Normalizer, OnlineFeatures, feature_names, grid_times, offline_features,
                             schema)
from models.forecaster import DEFAULT_MODEL, GuardConfig, load_forecaster
from models.inference import predict_batch
from models.lstm import LSTMNet, StepModule
from models.targets import variance_floor
from models.train import TrainConfig
from models_helpers import binance_recording, bitstamp_recording, change_future

CFG = FeatureConfig(sample_s=0.5, n_levels=3, rv_windows=(4, 20), tick_rv=True)


@pytest.fixture(scope="module")
def binance(tmp_path_factory):
    r = open_recording(binance_recording(tmp_path_factory.mktemp("bn") / "rec"))
    ev = r.events()
    return ev[ev["local_ts"] <= ev["local_ts"][0] + 120 * 10**9], r.meta  # 2 minutes


def drive(ev, meta, grid, on_event):
    """Replay ``ev`` through the venue; call ``on_event(book, t, trades, is_grid)`` at every
    distinct local time and every grid time, in time order (a grid time equal to an event time:
    once, after that event), with the trades received since the previous call."""
    from paper_trading.venue import ArrayBookView, Venue

    v = Venue(ev, meta["tick_size"], meta["lot_size"])
    book = ArrayBookView(v)
    lts = ev["local_ts"]
    times = np.union1d(np.unique(lts), grid)
    is_grid = np.isin(times, grid)
    names = {1: "buy", -1: "sell"}
    i_prev = 0
    for t, g in zip(times.tolist(), is_grid.tolist()):
        v.advance_to(int(t))
        idx = np.flatnonzero(ev["kind"][i_prev : v.i] == TRADE) + i_prev
        i_prev = v.i
        trades = [Trade(int(lts[j]), float(ev["px"][j]), float(ev["qty"][j]), names.get(int(ev["side"][j]), ""))
                  for j in idx]
        on_event(book, int(t), trades, g)


def online_rows(ev, meta, cfg):
    on = OnlineFeatures(cfg)
    rows, units = [], []

    def f(book, t, trades, g):
        on.add_trades(trades)
        on.observe(book)
        if g:
            x = on.step(book, t)
            if x is not None:
                rows.append(x)
                units.append(on.tick_units)

    drive(ev, meta, grid_times(ev["local_ts"][0], ev["local_ts"][-1], cfg.sample_ns), f)
    return np.array(rows), np.array(units, np.int64)


@pytest.mark.parametrize("venue", ["binance", "bitstamp"])
def test_tick_rv_online_equals_offline(venue, binance, tmp_path):
    if venue == "binance":
        ev, meta = binance
        cfg = CFG
    else:
        r = open_recording(bitstamp_recording(tmp_path / "bs", max_lines=12_000))
        ev, meta = r.events(), r.meta
        cfg = FeatureConfig(sample_s=1.0, n_levels=3, rv_windows=(10, 60), tick_rv=True)
    ff = offline_features(ev, cfg, meta["tick_size"])
    X, U = online_rows(ev, meta, cfg)
    assert X.shape == ff.X.shape and len(X) > 100
    assert np.array_equal(U, ff.tick_units)  # exact integer sums
    assert np.allclose(X, ff.X, rtol=1e-12, atol=1e-12)
    assert feature_names(cfg)[-1] == "tick_rv" and ff.X.shape[1] == len(feature_names(cfg))
    # alive, and more than the grid return sees: the mid moves inside intervals whose return is 0
    assert (U > 0).mean() > 0.05
    assert np.any((U > 0) & (ff.r2_units == 0))
    # without the option: the features and their values of the models saved before it
    plain = offline_features(ev, FeatureConfig(**{**cfg.to_dict(), "tick_rv": False, "rv_windows": cfg.rv_windows}),
                             meta["tick_size"])
    assert plain.tick_units is None and np.array_equal(plain.X, ff.X[:, :-1])


def test_tick_rv_on_a_known_path():
    """Within one interval the mid goes 100 -> 100.01 -> 100 (grid return 0, two moves of
    variance): a crossed book in between is skipped (the way back is measured from the last
    valid mid), and several rows at one local time count as the book after the last of them."""
    s = 10**9
    t0 = 1_700_000_000 * s
    t12, t14, t15 = t0 + 12 * s // 10, t0 + 14 * s // 10, t0 + 15 * s // 10
    rows = [(CLEAR, BID, t0, 0.0, 0.0), (CLEAR, ASK, t0, 0.0, 0.0), (SNAPSHOT, BID, t0, 99.99, 1.0),
            (SNAPSHOT, ASK, t0, 100.01, 1.0),
            (DEPTH, BID, t0 + s // 10, 99.99, 2.0),  # no mid change
            # one local time: mid 100.005 after the first row, 100.01 after the last (counted: 100 -> 100.01)
            (DEPTH, BID, t12, 100.0, 1.0), (DEPTH, ASK, t12, 100.02, 1.0), (DEPTH, ASK, t12, 100.01, 0.0),
            (DEPTH, BID, t14, 100.03, 1.0),  # crossed: skipped
            (DEPTH, BID, t15, 100.03, 0.0), (DEPTH, BID, t15, 100.0, 0.0), (DEPTH, ASK, t15, 100.01, 1.0),
            (DEPTH, ASK, t15, 100.02, 0.0),  # back to 99.99 / 100.01
            (TRADE, BUY, t0 + 25 * s // 10, 100.01, 0.5)]
    k_, sd, ts, px, q = (np.array(c) for c in zip(*rows))
    ev = make_events(k_.astype(np.uint8), sd.astype(np.int8), ts, ts, px, q)
    cfg = FeatureConfig(sample_s=1.0, n_levels=1, rv_windows=(1,), tick_rv=True)
    ff = offline_features(ev, cfg, 0.01)
    k = int(np.searchsorted(ff.ts_ns, t0 + 2 * s))
    assert ff.ts_ns[k] == t0 + 2 * s and ff.X[k, 0] == 0.0  # the grid return of that interval is 0
    up = math.log(100.01 / 100.0) * 1e4
    dn = math.log(100.0 / 100.01) * 1e4
    want = round(up * up / 1e-9) + round(dn * dn / 1e-9)
    assert ff.tick_units[k] == want and ff.tick_units.sum() == want
    assert ff.X[k, -1] == pytest.approx(math.log1p(math.sqrt(want * 1e-9)), rel=1e-12)


def _spec(ds, rows):
    floor = variance_floor(ds.tg.var[rows])
    return model_inputs(ds, TrainConfig(arch="correction", base="tick"), rows, floor)


def test_tick_baseline_is_causal(binance):
    """Changing everything after a cut time changes neither the tick features nor the fitted tick
    baseline nor any baseline input at rows before the cut."""
    ev, meta = binance
    ds = build_dataset(ev, meta, CFG, "5s", 20)
    n = ds.n
    cut_row = n // 2
    cut = int(ds.ff.ts_ns[cut_row])
    rows = ds.usable() & (np.arange(n) < cut_row - 10) & (ds.end_row < cut_row)
    X1, kw, spec1 = _spec(ds, rows)
    ds2 = build_dataset(change_future(ev, cut), meta, CFG, "5s", 20)
    rows2 = np.zeros(ds2.n, bool)
    rows2[:n] = rows[: ds2.n]
    assert ds2.n > n and np.array_equal(rows2[:n], rows)  # the future was stretched: more rows
    X2, _, spec2 = _spec(ds2, rows2)
    assert spec1.best == "tick" and spec1.tick is not None and spec1.to_dict() == spec2.to_dict()
    past = ds.ff.ts_ns <= cut
    m = int(past.sum())
    assert np.array_equal(ds.ff.tick_units[:m], ds2.ff.tick_units[:m])
    assert np.array_equal(X1[:m], X2[:m])
    assert not np.array_equal(ds.ff.tick_units[m:], ds2.ff.tick_units[m:n])  # the future did change
    # and the baseline at row k is computed from rows <= k only (the recursion run on a prefix)
    comp = bi._components(spec1, ds.ff.X[:, 0], ds.ff.X[:, feature_names(CFG).index("ofi")], ds.ff.tick_units)
    pre = bi._components(spec1, ds.ff.X[:m, 0], ds.ff.X[:m, feature_names(CFG).index("ofi")], ds.ff.tick_units[:m])
    assert np.array_equal(comp[:m], pre) and np.all(np.isfinite(comp[:, 6])) and np.all(comp[:, 6] > 0)
    lv = bi.offset_columns(CFG)[1]
    assert np.allclose(X1[:, lv], np.log(comp[:, 6] + spec1.floor), rtol=1e-12, atol=1e-12)  # --base tick: its log var
    # the tick baseline needs the tick features
    with pytest.raises(ValueError, match="tick_rv"):
        bi.fit_spec(ds.ff.X[:, 0], ds.ff.X, feature_names(CFG).index("ofi"), ds.tg.var, ds.tg.drift, rows, rows, 10,
                    1.0, CFG.sample_s, CFG.rv_windows, best="auto_tick")


def test_tick_correction_model_online_equals_batch(binance, tmp_path):
    """A correction model on the tick baseline, run by the forecaster on every replayed event,
    gives the batch forecasts over the offline input matrix (numba and TorchScript alike)."""
    ev, meta = binance
    ds = build_dataset(ev, meta, CFG, "5s", 20)
    tr = ds.usable() & (np.arange(ds.n) < int(ds.n * 0.6))
    floor = variance_floor(ds.tg.var[tr])
    X, kw, spec = model_inputs(ds, TrainConfig(arch="correction", base="auto_tick"), tr, floor)
    assert spec.best == "tick"  # two minutes: too few rows to select, the tick baseline
    names = feature_names(CFG) + bi.input_names(CFG)
    assert X.shape[1] == len(names) and "b_tick_rel" in names and names.index("tick_rv") in bi.masked_columns(CFG)
    torch.manual_seed(0)
    net = LSTMNet(X.shape[1], 5, 1, 0.0, True, offset_cols=kw["offset_cols"]).eval()
    with torch.no_grad():
        net.head.weight.normal_(0, 0.3)
        net.skip.weight.normal_(0, 0.05)
    norm = Normalizer.fit(X[tr])
    for j in kw["mask_cols"]:
        norm.mean[j], norm.std[j] = 0.0, 1e30
    mod = StepModule(net, norm.mean, norm.std, norm.clip, 2.0, 3.0)
    mmeta = {"features": schema(CFG), "normalization": norm.to_dict(), "horizon": "5s", "horizon_s": 5.0,
             "horizon_steps": 10, "sample_s": CFG.sample_s, "warmup_steps": 20, "arch": net.arch(),
             "var_floor_bp2": floor, "baseline": {"lambda_per_row": 0.97, "init_r2_bp2": 1.0},
             "scales": {"drift_scale": 2.0, "var_scale": 3.0}, "name": "tick",
             "baseline_inputs": {"names": bi.input_names(CFG), "spec": spec.to_dict()}}
    path = save_model(mod, mmeta, tmp_path / "tick.pt")
    module, m2 = load_model(path)
    assert check_schema(m2, "tick.pt").tick_rv
    for backend in ("numba", "torchscript", "torchscript_async"):  # async: observed on the engine thread, rows on the worker
        f = load_forecaster(path, guard=GuardConfig(enabled=False), backend=backend)
        if backend == "torchscript_async":
            f.before_decision = lambda: f.worker.wait_idle(120.0)
        seen = []

        def on_event(book, t, trades, g):
            r0 = f.rows
            f.update(book, t, trades)
            if f.rows > r0:
                seen.append(f.last_model)

        drive(ev, meta, ds.ff.ts_ns, on_event)
        f.close()
        online = np.array(seen)
        off = predict_batch(module, m2["arch"], 10.0, X, "numba")
        assert online.shape == (len(X), 2), backend
        assert np.allclose(online[:, 0], off[:, 0], rtol=1e-5, atol=1e-5), backend
        assert np.allclose(np.log(online[:, 1]), off[:, 1], rtol=1e-5, atol=1e-5), backend


def test_models_saved_without_tick_rv_are_unchanged(binance):
    """The shipped (v1) model: its saved schema is what this code computes for its config (no
    ``tick_rv`` key, no extra feature), its spec-less config round-trips, and the forecaster run on
    a real slice gives the batch forecasts over the offline features (no book observed between
    grid times)."""
    ev, meta = binance
    module, m = load_model(DEFAULT_MODEL)
    cfg = check_schema(m, "default")
    assert not cfg.tick_rv and schema(cfg) == m["features"] and "tick_rv" not in cfg.to_dict()
    assert "tick_rv" not in feature_names(cfg)
    spec_d = {"H": 10, "floor": 0.1, "sample_s": 1.0, "rv_windows": [10, 60], "ewma_lam": 0.9, "rm_lam": 0.94,
              "init_r2": 1.0, "garch": None, "har_coef": [0.0, 1.0, 0.0, 0.0], "ofi_coef": [0.0, 0.0, 0.0], "ofi_col": 11,
              "best": "combo", "slow_lam": 0.999}
    assert bi.BaselineSpec.from_dict(spec_d).to_dict() == spec_d  # a spec saved before the tick baseline
    f = load_forecaster("default", guard=GuardConfig(enabled=False))
    assert not f._tick
    ff = offline_features(ev, cfg, meta["tick_size"])
    seen = []

    def on_event(book, t, trades, g):
        r0 = f.rows
        f.update(book, t, trades)
        if f.rows > r0:
            seen.append(f.last_model)

    drive(ev, meta, ff.ts_ns, on_event)
    off = predict_batch(module, m["arch"], f.clip, ff.X, "numba")
    online = np.array(seen)
    assert online.shape == (len(ff.X), 2)
    assert np.allclose(online[:, 0], off[:, 0], rtol=1e-5, atol=1e-5)
    assert np.allclose(np.log(online[:, 1]), off[:, 1], rtol=1e-5, atol=1e-5)


def test_train_with_tick_rv_through_the_cli(tmp_path):
    """``mmbot train --tick-rv --arch correction --base auto_tick``: the saved model carries the
    option in its schema, its baseline is the tick one (minutes of data: too few rows to select),
    the recorded command reproduces it, and the forecaster runs it on a replay."""
    from models.calibrate import load_events
    from models.cli import train

    rec = binance_recording(tmp_path / "rec")
    reg = tmp_path / "reg"
    train([rec], registry=reg, arch="correction", base="auto_tick", tick_rv=True, until="8m", sample_s=0.5,
          horizon="5s", rv_windows="4,20", hidden=6, lookback=16, batch=8, max_epochs=2, patience=1, folds=0,
          threads=1, progress=False, json_out=True)
    module, meta = load_model(reg / "v0001" / "model.pt")
    assert meta["features"]["config"]["tick_rv"] is True and meta["features"]["names"][-1] == "tick_rv"
    assert meta["baseline_inputs"]["spec"]["best"] == "tick" and meta["baseline_inputs"]["spec"]["tick"]
    assert "--tick-rv" in meta["command"].split() and "--base auto_tick" in meta["command"]
    f = load_forecaster(reg / "v0001" / "model.pt")
    assert f._tick
    ev, rmeta = load_events(rec)
    ev = ev[ev["local_ts"] <= ev["local_ts"][0] + 60 * 10**9]
    grid = grid_times(ev["local_ts"][0], ev["local_ts"][-1], f.S)
    out = []
    drive(ev, rmeta, grid, lambda book, t, trades, g: out.append(f.update(book, t, trades)))
    assert out[-1].sigma is not None and out[-1].sigma > 0 and math.isfinite(out[-1].drift)


def test_tick_base_without_tick_rv_is_one_line_exit_2(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-m", "models.cli", "train", str(tmp_path), "--arch", "correction", "--base", "tick"],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert p.stderr.strip() == "error: --base tick needs --tick-rv (the intra-second features it is computed from)"
