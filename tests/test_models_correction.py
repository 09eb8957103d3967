"""The correction architecture (``--arch correction``): the baseline inputs are the same online
(through the replay venue) as offline; an untrained correction model *is* the best baseline
(both backends); training keeps the zero correction unless it beats it on validation; export,
load and the online forecaster run it; ``mmbot train --arch correction`` reports both heads
with a Diebold-Mariano test. And the Diebold-Mariano test itself."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bot.errors import DataError, MmbotError
from models import baseline_inputs as bi
from models.calibrate import build_dataset, load_events, model_inputs
from models.cli import train
from models.dm import diebold_mariano, newey_west_lrv
from models.export import load_model, save_model
from models.features import FeatureConfig, Normalizer, feature_names, grid_times, offline_features, schema
from models.forecaster import GuardConfig, load_forecaster
from models.inference import predict_batch
from models.lstm import LSTMNet, StepModule
from models.targets import variance_floor
from models.train import TrainConfig, fit
from models_helpers import binance_slice, replay_online

CFG = FeatureConfig(sample_s=0.1, n_levels=5, rv_windows=(5, 20, 50))


@pytest.fixture(scope="module")
def binance(tmp_path_factory):
    return binance_slice(tmp_path_factory.mktemp("bn"))  # 2.5 minutes


def _dataset(ev, meta):
    ds = build_dataset(ev, meta, CFG, "1s", 50)
    use = ds.usable()
    tr = use.copy()
    tr[int(ds.n * 0.6):] = False
    tr &= ds.end_row < int(ds.n * 0.6)
    return ds, tr


def _correction_model(ds, tr, tmp_path, hidden=6, seed=0, trained_weights=True):
    floor = variance_floor(ds.tg.var[tr])
    X, kw, spec = model_inputs(ds, TrainConfig(arch="correction"), tr, floor)
    torch.manual_seed(seed)
    net = LSTMNet(X.shape[1], hidden, 1, 0.0, True, offset_cols=kw["offset_cols"]).eval()
    if trained_weights:
        with torch.no_grad():
            net.head.weight.normal_(0, 0.3)
            net.head.bias.normal_(0, 0.1)
            net.skip.weight.normal_(0, 0.05)
    norm = Normalizer.fit(X[tr])
    for j in kw["mask_cols"]:
        norm.mean[j], norm.std[j] = 0.0, 1e30
    mod = StepModule(net, norm.mean, norm.std, norm.clip, 2.0, 3.0)
    meta = {"features": schema(CFG), "normalization": norm.to_dict(), "horizon": "1s", "horizon_s": 1.0,
            "horizon_steps": 10, "sample_s": CFG.sample_s, "warmup_steps": 50, "arch": net.arch(),
            "var_floor_bp2": floor, "baseline": {"lambda_per_row": 0.99, "init_r2_bp2": 1.0},
            "scales": {"drift_scale": 2.0, "var_scale": 3.0}, "name": "corr",
            "baseline_inputs": {"names": bi.input_names(CFG), "spec": spec.to_dict()}}
    path = save_model(mod, meta, tmp_path / "corr.pt")
    return path, X, spec


def test_baseline_inputs_and_forecasts_online_equal_offline(binance, tmp_path):
    """Replayed through the venue at the grid times, the forecaster computes the same baseline
    inputs as the offline matrix, so its forecasts equal the batch forecasts over that matrix."""
    rec, ev, meta = binance
    ds, tr = _dataset(ev, meta)
    path, X, spec = _correction_model(ds, tr, tmp_path)
    assert X.shape[1] == len(feature_names(CFG)) + len(bi.input_names(CFG))
    assert np.all(np.isfinite(X)) and np.all(X[:, len(feature_names(CFG)):].std(axis=0)[[4, 5, 6]] > 0)
    f = load_forecaster(path, guard=GuardConfig(enabled=False))
    assert f.base_inputs is not None
    grid = grid_times(ev["local_ts"][0], ev["local_ts"][-1], CFG.sample_ns)
    seen = []

    def step(book, t, trades):
        r0 = f.rows
        f.update(book, t, trades)
        if f.rows > r0:
            seen.append(f.last_model)

    replay_online(ev, meta["tick_size"], meta["lot_size"], grid, step)
    online = np.array(seen)
    module, m2 = load_model(path)
    off = predict_batch(module, m2["arch"], 10.0, X, "numba")
    assert online.shape == (len(X), 2)
    assert np.allclose(online[:, 0], off[:, 0], rtol=1e-6, atol=1e-6)
    assert np.allclose(np.log(online[:, 1]), off[:, 1], rtol=1e-6, atol=1e-6)
    # the baseline inputs themselves: online state fed the offline features == offline matrix
    st = bi.BaselineState(spec)
    B = np.array([st.step(float(x[0]), float(x[feature_names(CFG).index("ofi")])) for x in ds.ff.X])
    assert np.array_equal(B, X[:, len(feature_names(CFG)):])


def test_untrained_correction_model_is_the_best_baseline(binance, tmp_path, monkeypatch):
    """No correction (zero-initialised head and skip): the exported model outputs the OFI
    regression's drift and the best baseline's log variance, on both backends, which agree."""
    rec, ev, meta = binance
    ds, tr = _dataset(ev, meta)
    path, X, spec = _correction_model(ds, tr, tmp_path, trained_weights=False)
    module, m2 = load_model(path)
    mu_c, lv_c = bi.offset_columns(CFG)
    for backend in ("numba", "torchscript"):
        out = predict_batch(module, m2["arch"], 10.0, X, backend)
        assert np.allclose(out[:, 0], X[:, mu_c], rtol=1e-5, atol=1e-5), backend
        assert np.allclose(out[:, 1], X[:, lv_c], rtol=1e-5, atol=1e-5), backend
    # the baselines and the choice of the best one depend on training rows only: scrambling
    # every target and return after the training span changes nothing
    last = int(np.flatnonzero(tr)[-1]) + 1
    rng = np.random.default_rng(5)
    var2, drift2, X3 = ds.tg.var.copy(), ds.tg.drift.copy(), ds.ff.X.copy()
    var2[last:] = rng.permutation(var2[last:]) * 7.0
    drift2[last:] = -drift2[last:]
    X3[last:, 0] *= 3.0
    fr = np.zeros(ds.n, bool)
    fr[ds.warmup : last] = True
    args = (ds.ff.X[:, feature_names(CFG).index("ofi")], spec.H, spec.floor, CFG.sample_s, CFG.rv_windows)
    ofi = feature_names(CFG).index("ofi")
    monkeypatch.setattr(bi, "MIN_SELECT_ROWS", 100)  # this slice is short: select anyway
    s1 = bi.fit_spec(ds.ff.X[:, 0], ds.ff.X, ofi, ds.tg.var, ds.tg.drift, tr, fr, *args[1:])
    s2 = bi.fit_spec(X3[:, 0], X3, ofi, var2, drift2, tr, fr, *args[1:])
    assert s1.to_dict() == s2.to_dict() and s1.best in bi.VAR_BASELINES + ("combo",)
    # the selection: the candidate with the best QLIKE on the last third of the training rows,
    # for baselines fitted on the first two thirds (never on the test rows)
    idx = np.flatnonzero(tr)
    cut = int(idx[int(len(idx) * 2 / 3)])
    early, late, ef = tr.copy(), tr.copy(), fr.copy()
    early[cut - spec.H :] = False
    late[:cut] = False
    ef[cut - spec.H :] = False
    sp = bi._fit(ds.ff.X[:, 0], ds.ff.X, ofi, ds.tg.var, ds.tg.drift, early, ef, *args[1:])
    comp = bi._components(sp, ds.ff.X[:, 0], ds.ff.X[:, ofi])[:, :4] + spec.floor
    v = ds.tg.var[late] + spec.floor
    q = {n: np.mean(v / comp[late, i] - np.log(v / comp[late, i]) - 1) for i, n in enumerate(bi.VAR_BASELINES)}
    g = np.exp(np.median(np.log(comp[late]), axis=1))  # the combination: median in logs
    q["combo"] = np.mean(v / g - np.log(v / g) - 1)
    assert s1.best == min(q, key=q.get)
    monkeypatch.setattr(bi, "MIN_SELECT_ROWS", 10**6)  # too few rows: the combination
    sc = bi.fit_spec(ds.ff.X[:, 0], ds.ff.X, ofi, ds.tg.var, ds.tg.drift, tr, fr, *args[1:])
    assert sc.best == "combo"
    # whose variance, computed row by row, is the median of the four baselines in logs
    Xc = bi.full_inputs(ds.ff.X, sc, feature_names(CFG))
    comp = bi._components(sc, ds.ff.X[:, 0], ds.ff.X[:, ofi])[:, :4] + sc.floor
    assert np.allclose(Xc[:, lv_c], np.median(np.log(comp), axis=1), rtol=1e-12, atol=1e-12)
    forced = bi.fit_spec(ds.ff.X[:, 0], ds.ff.X, ofi, ds.tg.var, ds.tg.drift, tr, fr, *args[1:], best="garch")
    assert forced.best == "garch"
    # and a trained one runs equally on both backends
    path2, X2, _ = _correction_model(ds, tr, tmp_path / "t", trained_weights=True)
    module2, m3 = load_model(path2)
    a = predict_batch(module2, m3["arch"], 10.0, X2, "numba")
    b = predict_batch(module2, m3["arch"], 10.0, X2, "torchscript")
    assert np.allclose(a, b, rtol=1e-4, atol=1e-4) and not np.allclose(a[:, 1], X2[:, lv_c], atol=1e-3)


def test_training_keeps_no_correction_unless_it_wins_on_validation(binance):
    rec, ev, meta = binance
    ds, tr = _dataset(ev, meta)
    n = ds.n
    v0 = int(n * 0.5)
    idx = np.arange(n)
    trm = tr & (idx < v0) & (ds.end_row < v0)
    va = tr & (idx >= v0)
    floor = variance_floor(ds.tg.var[trm])
    cfg = TrainConfig(arch="correction", drift_head="correction", hidden=6, lookback=16, batch=4, max_epochs=2,
                      patience=1, lr=1e-9, threads=1)
    X, kw, spec = model_inputs(ds, cfg, trm | va, floor)
    res = fit(X, ds.tg.drift, ds.tg.var, trm, va, v0, cfg, floor, warmup=ds.warmup, **kw)
    assert res.best_epoch == 0  # a learning rate of 1e-9 cannot beat the baseline: no correction
    mu, var = res.predict(X)
    mu_c, lv_c = kw["offset_cols"]
    assert np.allclose(mu, X[:, mu_c], atol=1e-5) and np.allclose(np.log(var), X[:, lv_c], atol=1e-5)


def test_correction_model_with_other_baseline_inputs_is_refused(binance, tmp_path):
    rec, ev, meta = binance
    ds, tr = _dataset(ev, meta)
    path, _, _ = _correction_model(ds, tr, tmp_path)
    module, m = load_model(path)
    m["baseline_inputs"]["names"] = m["baseline_inputs"]["names"][:-1] + ["b_old"]
    bad = save_model(StepModule(LSTMNet(m["arch"]["n_features"], 6, offset_cols=(0, 1)), np.zeros(m["arch"]["n_features"]),
                                np.ones(m["arch"]["n_features"]), 10.0, 1.0, 1.0), m, tmp_path / "bad.pt")
    with pytest.raises(DataError, match=r"bad.pt: baseline inputs .*b_old.* differ"):
        load_forecaster(bad)


def test_train_correction_arch_through_the_cli(binance, tmp_path):
    rec, _, _ = binance
    reg = tmp_path / "reg"
    res = train([rec], registry=reg, arch="correction", until="6m", sample_s=0.1, horizon="1s", rv_windows="5,20,50",
                hidden=8, lookback=16, batch=8, max_epochs=3, patience=2, folds=2, progress=False, json_out=True)
    module, meta = load_model(reg / "v0001" / "model.pt")
    assert meta["arch"]["kind"] == "correction" and meta["baseline_inputs"]["spec"]["best"] in bi.VAR_BASELINES + ("combo",)
    assert "--arch correction" in meta["command"]
    report = (reg / "v0001" / "report.md").read_text()
    assert "LSTM (correction)" in report and report.count("Diebold-Mariano test of the LSTM against") == 2
    for head in ("vol", "drift"):
        d = res["diebold_mariano"][head]
        assert d["n"] > 100 and 0.0 <= d["p"] <= 1.0 and d["lags"] >= 9
        assert d["dm"] == meta["metrics"]["diebold_mariano"][head]["dm"]
    f = load_forecaster(reg / "v0001" / "model.pt")
    ev, rmeta = load_events(rec)
    ev = ev[: len(ev) // 5]
    grid = np.arange(ev["local_ts"][0] // f.S + 1, ev["local_ts"][-1] // f.S) * f.S
    fcs = replay_online(ev, rmeta["tick_size"], rmeta["lot_size"], grid, f.update)
    assert fcs[-1].sigma is not None and fcs[-1].sigma > 0 and math.isfinite(fcs[-1].drift)
    assert json.loads((reg / "v0001" / "model.json").read_text())["arch"]["kind"] == "correction"
    with pytest.raises(MmbotError, match="fine-tuning a correction model is not supported"):
        train([rec], registry=reg, init_from="v0001", since="3m", progress=False, json_out=True)


# ----------------------------------------------------------------------------------------
# Diebold-Mariano
# ----------------------------------------------------------------------------------------
def test_diebold_mariano_against_statsmodels_hac():
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(0)
    e = rng.normal(0, 1, 3000)
    d = np.empty_like(e)
    d[0] = e[0]
    for t in range(1, len(e)):  # autocorrelated loss differential with mean 0.05
        d[t] = 0.6 * d[t - 1] + e[t]
    d += 0.05
    la, lb = d + 1.0, np.ones_like(d)
    r = diebold_mariano(la, lb, lags=12)
    ols = sm.OLS(d, np.ones((len(d), 1))).fit(cov_type="HAC", cov_kwds={"maxlags": 12, "use_correction": False})
    assert math.isclose(r["dm"], float(ols.tvalues[0]), rel_tol=1e-9)
    assert math.isclose(r["p"], float(ols.pvalues[0]), rel_tol=1e-6)
    # the HAC variance is larger than the naive one for positively autocorrelated d
    assert newey_west_lrv(d, 12) > 2 * d.var()


def test_diebold_mariano_signs_and_degenerate_cases():
    rng = np.random.default_rng(1)
    v = rng.gamma(1.0, 1.0, 2000)
    good = (v - np.log(v) - 1)  # forecasting 1 when E[v] = 1
    bad = (v / 3 - np.log(v / 3) - 1)  # forecasting 3
    r = diebold_mariano(good, bad, horizon_rows=5)
    assert r["dm"] < -5 and r["p"] < 1e-6 and r["lags"] >= 4 and r["n"] == 2000
    r2 = diebold_mariano(bad, good, horizon_rows=5)
    assert r2["dm"] == -r["dm"] and r2["p"] == r["p"]
    assert math.isnan(diebold_mariano(good, good)["dm"])  # identical forecasts: undefined
    assert math.isnan(diebold_mariano(good[:5], bad[:5])["p"])  # too few rows


def test_unknown_arch_is_one_line_exit_2(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-m", "models.cli", "train", str(tmp_path), "--arch", "deep"], cwd=root,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert p.stderr.strip() == "error: --arch must be 'plain' or 'correction', got 'deep'"
