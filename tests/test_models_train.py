"""A short training run on a real slice (tiny model, few epochs) through ``mmbot train``:
walk-forward against the baselines, export, registry, report; fine-tuning on the latest
window; the Optuna search; the baselines on data with known answers."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from models import baselines as bl
from models import calibrate as _cal
from models.calibrate import build_dataset, f1_macro, load_events, make_folds, run_fold
from models.cli import parse_time, train
from models.export import load_model
from models.features import FeatureConfig
from models.forecaster import load_forecaster
from models.registry import Registry
from models.train import TrainConfig
from models_helpers import binance_recording, replay_online

TINY = dict(sample_s=0.1, horizon="1s", rv_windows="5,20,50", hidden=8, lookback=16, batch=8, max_epochs=3,
            patience=2, folds=2, progress=False, json_out=True)


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    return binance_recording(tmp_path_factory.mktemp("bn") / "rec")


def test_train_on_a_real_slice(rec, tmp_path, capsys):
    reg = tmp_path / "reg"
    res = train([rec], registry=reg, out=tmp_path / "out", name="tiny", until="5m", **TINY)
    assert res["version"] == "v0001"
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["version"] == "v0001"
    # the report: the model against every baseline, per fold, and an honest verdict
    report = (reg / "v0001" / "report.md").read_text()
    for label in ("LSTM", "EWMA (RiskMetrics", "GARCH(1,1)", "HAR-RV", "zero (random walk)", "linear on OFI",
                  "logistic on imbalance", "fold 2 QLIKE", "Verdict", "mmbot train"):
        assert label in report, label
    assert (reg / "v0001" / "qlike_folds.png").exists() and (tmp_path / "out" / "tiny.pt").exists()
    # the model: metadata, loadable, runs online on the same recording
    module, meta = load_model(reg / "v0001" / "model.pt")
    assert meta["horizon_steps"] == 10 and meta["sample_s"] == 0.1 and meta["data"]["symbol"] == "BTCUSDT"
    assert meta["metrics"]["folds"] == 2 and "lstm" in meta["metrics"]["walk_forward_mean"]
    assert set(meta["versions"]) >= {"torch", "numpy", "mmbot"}
    f = load_forecaster(reg / "v0001" / "model.pt")
    ev, rmeta = load_events(rec)
    ev = ev[: len(ev) // 4]
    grid = np.arange(ev["local_ts"][0] // f.S + 1, ev["local_ts"][-1] // f.S) * f.S
    fcs = replay_online(ev, rmeta["tick_size"], rmeta["lot_size"], grid, f.update)
    assert fcs[-1].sigma is not None and fcs[-1].sigma > 0
    # regime adaptation: fine-tune v0001 on the latest 3 minutes -> v0002 with its parent
    res2 = train([rec], registry=reg, init_from="v0001", since="3m", **TINY)
    assert res2["version"] == "v0002"
    versions = Registry(reg).versions()
    assert [v["version"] for v in versions] == ["v0001", "v0002"] and versions[1]["parent"] == "v0001"
    _, meta2 = load_model(reg / "v0002" / "model.pt")
    assert meta2["data"]["start_ns"] > meta["data"]["start_ns"]
    assert meta2["normalization"] == meta["normalization"]  # fine-tuning keeps the parent's scaling


def test_optuna_search_runs(rec, tmp_path):
    res = train([rec], registry=tmp_path / "reg", trials=2, tune_epochs=2, horizons="1s,2s", **{**TINY, "folds": 0})
    meta = load_model(tmp_path / "reg" / res["version"] / "model.pt")[1]
    assert len(meta["optuna"]["trials"]) == 2 and meta["horizon"] in ("1s", "2s")
    assert "--trials 2" in meta["command"]


def test_folds_are_purged_and_normalisation_is_training_only(rec):
    ev, meta = load_events(rec)
    fc = FeatureConfig(sample_s=0.1, rv_windows=(5, 20))
    ds = build_dataset(ev, meta, fc, "1s", 20)
    H = ds.H
    assert H == 10  # 1 s on a 0.1 s grid
    folds = make_folds(ds, 3, 0.5)
    assert all(a.test[1] == b.test[0] for a, b in zip(folds, folds[1:]))
    cfg = TrainConfig(hidden=4, lookback=8, batch=4, max_epochs=1, min_epochs=1)
    fold = folds[0]
    t0, s = fold.train
    v0 = fold.val_start
    assert t0 < v0 < s
    # the purge: the H rows before the validation span (and before the test span), whose
    # targets reach into it, are usable rows of the span that no loss sees
    use = ds.usable()
    tr, va = _cal._masks(ds, t0, v0, s)
    gap_tr, gap_va = np.arange(v0 - H, v0), np.arange(s - H, s)
    assert use[gap_tr].all() and use[gap_va].all()  # rows that would be trained on without the purge
    assert not tr[gap_tr].any() and not va[gap_va].any()
    assert int(np.flatnonzero(tr)[-1]) == v0 - H - 1 and int(np.flatnonzero(va)[-1]) == s - H - 1
    assert (ds.end_row[tr] < v0).all() and (ds.end_row[va] < s).all()

    fr, res = run_fold(ds, fold, cfg, baselines=False)
    assert np.allclose(res.normalizer.mean, ds.ff.X[t0:v0].mean(axis=0))  # training rows only (not validation, not test)
    assert np.isfinite(fr.metrics["lstm"]["qlike"])

    # and the fit really never sees them: absurd targets in both gaps change nothing, the
    # same absurd target on one training row before the gap changes the fit
    def poisoned(rows):
        drift, var = ds.tg.drift.copy(), ds.tg.var.copy()
        drift[rows], var[rows] = 1e6, 1e12
        return replace(ds, tg=replace(ds.tg, drift=drift, var=var))

    mu0, var0 = res.predict(ds.ff.X)
    fr1, res1 = run_fold(poisoned(np.r_[gap_tr, gap_va]), fold, cfg, baselines=False)
    mu1, var1 = res1.predict(ds.ff.X)
    assert res1.history == res.history and np.array_equal(mu1, mu0) and np.array_equal(var1, var0)
    assert fr1.metrics == fr.metrics
    inside = int(np.flatnonzero(tr)[len(np.flatnonzero(tr)) // 2])
    _, res2 = run_fold(poisoned([inside]), fold, cfg, baselines=False)
    assert res2.history != res.history and not np.array_equal(res2.predict(ds.ff.X)[0], mu0)


def test_baselines_on_known_data():
    rng = np.random.default_rng(0)
    # GARCH(1,1) with omega 0.05, alpha 0.1, beta 0.85 is recovered by the arch fit
    n = 20_000
    r = np.empty(n)
    s2 = 1.0
    for i in range(n):
        r[i] = rng.normal() * np.sqrt(s2)
        s2 = 0.05 + 0.1 * r[i] ** 2 + 0.85 * s2
    g = bl.Garch.fit(r)
    assert g.alpha == pytest.approx(0.1, abs=0.03) and g.beta == pytest.approx(0.85, abs=0.05)
    assert g.var(r, 1)[-1] == pytest.approx(0.05 + 0.1 * r[-1] ** 2 + 0.85 * s2 / 1, rel=0.5)
    # RiskMetrics decay per second of clock time, adapted to the grid
    assert bl.ewma_lambda(1.0) == pytest.approx(0.94) and bl.ewma_lambda(0.1) ** 10 == pytest.approx(0.94)
    # HAR on a persistent variance process beats the unconditional mean
    v = np.exp(np.convolve(rng.normal(0, 1, 5000), np.ones(50) / 7, mode="same"))
    r2 = v * rng.chisquare(1, 5000)
    tgt = np.r_[np.convolve(r2, np.ones(5), mode="valid")[1:], [np.nan] * 5]
    rows = np.isfinite(tgt) & (np.arange(5000) > 200)
    h = bl.Har.fit(r2, tgt, rows, 5).var(r2, 1e-6)
    assert bl.qlike(tgt[rows] + 1e-6, h[rows]) < bl.qlike(tgt[rows] + 1e-6, np.full(rows.sum(), tgt[rows].mean()))
    # logistic regression on an informative imbalance feature
    X = rng.normal(0, 1, (3000, 2))
    y = np.where(X[:, 0] + 0.3 * rng.normal(size=3000) > 0.5, 1.0, np.where(X[:, 0] < -0.5, -1.0, 0.0))
    lg = bl.ImbLogistic.fit(X, y, np.ones(3000, bool), [0, 1])
    mu, cls = lg.predict(X)
    assert f1_macro(np.sign(y).astype(int), cls) > 0.7 and np.corrcoef(mu, y)[0, 1] > 0.7


def test_parse_time():
    end = 10_000 * 10**9
    assert parse_time("6h", 0, end) == end - 6 * 3600 * 10**9
    assert parse_time("2015-05-01T12:00", 0, end) == 1430481600 * 10**9
    assert parse_time(None, 0, end) is None
