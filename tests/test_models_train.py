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
from models.calibrate import Fold, FoldResult, _masks, build_dataset, f1_macro, load_events, make_folds, run_fold, verdict
from models.cli import parse_time, train
from models.export import load_model
from models.features import FeatureConfig
from models.forecaster import load_forecaster
from models.registry import Registry
from models.train import TrainConfig
from models_helpers import binance_recording, change_future, replay_online, write_recording

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
    # the registry's default moves to v0001 only if its evaluation beats the best baselines on both heads
    wf = meta["metrics"]["walk_forward_mean"]
    good = (wf["lstm"]["qlike"] < min(wf[m]["qlike"] for m in ("ewma", "ewma_fit", "garch", "har"))
            and wf["lstm"]["mse"] < min(wf[m]["mse"] for m in ("zero", "ofi_linear", "imb_logistic")))
    assert res["default"] == good and Registry(reg).default_version() == ("v0001" if good else None)
    assert res["default_note"] in report
    # regime adaptation: fine-tune v0001 on the latest 3 minutes -> v0002 with its parent; no
    # walk-forward evaluation, so it becomes the default only because it is told to
    res2 = train([rec], registry=reg, init_from="v0001", since="3m", make_default=True, **TINY)
    assert res2["version"] == "v0002"
    versions = Registry(reg).versions()
    assert [v["version"] for v in versions] == ["v0001", "v0002"] and versions[1]["parent"] == "v0001"
    assert res2["default"] and Registry(reg).default_version() == "v0002" and "--make-default" in res2["default_note"]
    assert Registry(reg).resolve("default") == reg / "v0002" / "model.pt"
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
    H, horizon_s = ds.horizon(ds.usable())
    assert H == 10 and horizon_s == 1.0  # 1 s on a 0.1 s grid
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


@pytest.fixture(scope="module")
def short_events(rec):
    """The first 4 minutes of the Binance capture and the recording's metadata."""
    ev, meta = load_events(rec)
    return ev[ev["local_ts"] <= ev["local_ts"][0] + 240 * 10**9], meta


def _whole_second(ns: int) -> int:
    return ns // 10**9 * 10**9


def test_until_hides_the_future_from_training_with_an_event_horizon(short_events, tmp_path):
    """``mmbot train --until T --horizon 20ev`` on two recordings that differ only after T
    gives the same model, the same horizon and the same walk-forward numbers: no target, no
    early-stopping row and no horizon length sees data after the cut."""
    import datetime as dt

    import torch

    ev, meta = short_events
    cut = _whole_second(int(ev["local_ts"][0]) + 170 * 10**9)
    ev2 = change_future(ev, cut)
    until = dt.datetime.fromtimestamp(cut / 1e9, dt.timezone.utc).isoformat()
    args = {**TINY, "horizon": "20ev", "threads": 1, "until": until}
    res, models = [], []
    for i, e in enumerate((ev, ev2)):
        r = write_recording(e, meta, tmp_path / f"rec{i}")
        res.append(train([r], registry=tmp_path / f"reg{i}", **args))
        models.append(load_model(res[-1]["model"]))
    (m1, meta1), (m2, meta2) = models
    assert meta1["data"]["end_ns"] <= cut and meta1["data"]["rows"] == meta2["data"]["rows"]
    for key in ("horizon_s", "horizon_steps", "normalization", "scales", "var_floor_bp2", "baseline", "metrics"):
        assert meta1[key] == meta2[key], key
    tr1, tr2 = ({k: v for k, v in m["train_result"].items() if k != "seconds"} for m in (meta1, meta2))
    assert tr1 == tr2
    p1, p2 = list(m1.params()), list(m2.params())
    assert len(p1) == len(p2) and all(torch.equal(a, b) for a, b in zip(p1, p2))
    assert res[0]["verdict"] == res[1]["verdict"]


def test_event_horizon_length_comes_from_training_rows(short_events):
    """A fold's horizon length (event horizons: the median duration) and its baselines come from
    its training rows: changing the test block and later data changes neither."""
    import torch

    ev, meta = short_events
    fc = FeatureConfig(sample_s=0.1, rv_windows=(5, 20))
    ds = build_dataset(ev, meta, fc, "20ev", 20)
    use = np.flatnonzero(ds.usable())
    a = int(use[0])
    s = a + (int(use[-1]) + 1 - a) // 2
    cut = int(ds.ff.ts_ns[s - 1])
    ds2 = build_dataset(change_future(ev, cut, drop=0.0), meta, fc, "20ev", 20)
    assert np.array_equal(ds.ff.X[:s], ds2.ff.X[:s])
    # the future is slower (time stretched): over all rows, test block included, the median moves
    assert ds2.tg.horizon_s() > ds.tg.horizon_s() + 10 * fc.sample_s
    fold = Fold(1, (a, s), s - (s - a) // 7, (s, s + 300))
    tr, va = _masks(ds, a, fold.val_start, s)
    tr2, va2 = _masks(ds2, a, fold.val_start, s)
    assert np.array_equal(tr, tr2[: ds.n]) and np.array_equal(va, va2[: ds.n]) and not (tr2 | va2)[ds.n :].any()
    assert ds.horizon(tr | va) == ds2.horizon(tr2 | va2)
    cfg = TrainConfig(hidden=4, lookback=8, batch=4, max_epochs=2, min_epochs=1, threads=1)
    (fr1, res1), (fr2, res2) = run_fold(ds, fold, cfg), run_fold(ds2, fold, cfg)
    assert fr1.baselines_info == fr2.baselines_info
    assert all(torch.equal(x, y) for x, y in zip(res1.net.state_dict().values(), res2.net.state_dict().values()))


def _fold_result(i: int, drift: dict) -> FoldResult:
    """A fold's metrics: the volatility models fixed, the drift models' (mse, r2) given."""
    m = {name: {"qlike": q, "mse_var": 1.0} for name, q in (("lstm", 1.1), ("ewma", 1.5), ("ewma_fit", 1.2),
                                                              ("garch", 1.3), ("har", 1.0))}
    for name, (mse, r2) in drift.items():
        m.setdefault(name, {}).update(mse=mse, r2=r2, dir_acc=0.5 + r2, f1=0.3 + r2)
    return FoldResult(Fold(i, (0, 10), 8, (10, 20)), m, 1, 0.1, {})


def test_verdict_one_metric_per_line():
    """Over folds of different variance, the best drift baseline by mean MSE (OFI) is not the
    best by mean R^2 (logistic): each verdict line names the baseline that is best by the
    metric it prints, and prints no other metric."""
    # fold 1: test variance 10 bp^2 (R^2 = 1 - MSE/10); fold 2: variance 1
    f1 = _fold_result(1, {"lstm": (9.2, 0.08), "zero": (10.0, 0.0), "ofi_linear": (9.0, 0.10), "imb_logistic": (9.5, 0.05)})
    f2 = _fold_result(2, {"lstm": (0.95, 0.05), "zero": (1.0, 0.0), "ofi_linear": (0.99, 0.01), "imb_logistic": (0.90, 0.10)})
    lines = verdict([f1, f2])
    metrics = ("QLIKE", "MSE", "R^2", "accuracy", "F1")
    for line in lines:
        assert sum(k in line for k in metrics) == 1, line
    mse = next(x for x in lines if "MSE" in x)
    r2 = next(x for x in lines if "R^2" in x)
    assert "linear on OFI" in mse and "4.9950" in mse and "5.0750" in mse and "WORSE" in mse
    assert "logistic on imbalance" in r2 and "+0.0750" in r2 and "+0.0650" in r2 and "WORSE" in r2
    assert "HAR-RV" in lines[0] and "WORSE" in lines[0] and "0 of 2 folds" in lines[0]


def test_a_model_worse_than_the_baselines_is_registered_but_not_made_the_default(rec, tmp_path, capsys):
    """``mmbot train`` registers every model, but moves the registry's default pointer only to
    one that beats the baselines (or with --make-default), and says so in its output and report."""
    reg = tmp_path / "reg"
    args = {**TINY, "json_out": False, "until": "7m", "max_epochs": 1}
    first = train([rec], registry=reg, make_default=True, **{**args, "folds": 0})
    assert first["default"] and Registry(reg).default_version() == "v0001"
    assert "--make-default was given, although it has no walk-forward evaluation" in first["default_note"]
    capsys.readouterr()
    # an untrained network (learning rate 1e-9): worse than the baselines in its own report
    res = train([rec], registry=reg, lr=1e-9, **args)
    assert res["version"] == "v0002" and not res["default"]
    assert [v["version"] for v in Registry(reg).versions()] == ["v0001", "v0002"]  # registered ...
    assert Registry(reg).default_version() == "v0001"  # ... but the default did not move
    assert Registry(reg).resolve("default") == reg / "v0001" / "model.pt"
    note = res["default_note"]
    assert "v0002 is registered but NOT made the default model" in note and "The default stays v0001" in note
    assert " ".join(capsys.readouterr().err.split()).count("NOT made the default") == 1
    assert note in (reg / "v0002" / "report.md").read_text()


def test_beats_baselines_needs_both_heads():
    from models.calibrate import beats_baselines

    vol_and_drift = _fold_result(1, {"lstm": (0.5, 0.5), "zero": (1.0, 0.0), "ofi_linear": (0.9, 0.1), "imb_logistic": (0.8, 0.2)})
    ok, why = beats_baselines([vol_and_drift])
    assert not ok and "volatility QLIKE 1.1000 is not below 1.0000 (HAR-RV)" in why
    vol_and_drift.metrics["lstm"]["qlike"] = 0.9
    ok, why = beats_baselines([vol_and_drift])
    assert ok and "volatility QLIKE 0.9000 < 1.0000" in why and "drift MSE 0.5000 < 0.8000" in why
    vol_and_drift.metrics["lstm"]["mse"] = 0.85  # drift now worse than logistic
    ok, why = beats_baselines([vol_and_drift])
    assert not ok and "drift MSE 0.8500 is not below 0.8000 (logistic on imbalance)" in why
    assert beats_baselines([])[0] is False
