"""``mmbot train`` on several markets (real Binance captures, raw files grouped into markets):
one model out, carrying its first market's own standardisation, that the forecaster loads
and steps; a bad input named in one line; a held-out market standardised on its calibration
rows only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bot.recording.io import open_recording
from models.features import FeatureConfig
from models_helpers import BINANCE_SPOT, DATA, change_future, need, replay_online, write_recording

ROOT = Path(__file__).resolve().parents[1]
ETH = [DATA / "binance/spot/ethusdt_20240808.gz", DATA / "binance/spot/ethusdt_20240809.gz"]
ARGS = dict(arch="correction", sample_s=0.5, horizon="5s", rv_windows="10,40", hidden=6, lookback=16, batch=4,
            max_epochs=2, patience=1, threads=1, progress=False, json_out=True)


def test_group_inputs():
    from models.multitrain import group_inputs

    need(*BINANCE_SPOT, *ETH)
    g = group_inputs([*BINANCE_SPOT, *ETH])
    assert g == [list(BINANCE_SPOT), list(ETH)]  # two files of one capture = one market


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    need(*BINANCE_SPOT, *ETH)
    from models.cli import train

    reg = tmp_path_factory.mktemp("reg")
    res = train([*BINANCE_SPOT, *ETH], registry=reg, **ARGS)
    return res, reg


def test_two_markets_one_model_the_forecaster_loads_and_steps(trained, tmp_path):
    from bot.importers.binance import import_binance
    from models.export import load_model
    from models.forecaster import GuardConfig, load_forecaster
    from models.features import grid_times
    from models.multimarket import _standardise, load_market, train_val_rows
    from models.train import TrainConfig

    res, reg = trained
    assert len(res["markets"]) == 2 and res["markets"][0] != res["markets"][1]
    module, meta = load_model(Path(res["model"]))
    assert meta["data"]["calibrated_for"] == res["markets"][0] and len(meta["markets"]) == 2
    assert (reg / res["version"] / "report.md").exists() and "several markets" in (reg / res["version"] / "report.md").read_text()
    assert "index.json" in {p.name for p in reg.iterdir()}
    # the exported standardisation is the first market's own, fitted on its rows alone
    rec = import_binance(BINANCE_SPOT, tmp_path / "btc")
    fcfg = FeatureConfig(sample_s=0.5, n_levels=5, rv_windows=(10, 40))
    m = load_market(tmp_path / "btc", fcfg, "5s", 40)
    tr, va = train_val_rows(m.ds, TrainConfig().val_frac)
    st = _standardise(m.ds, TrainConfig(arch="correction", lookback=16, base="combo"), tr | va)
    assert np.allclose(meta["normalization"]["mean"], st.norm.mean) and np.allclose(meta["scales"]["drift_scale"], st.scales.drift_scale)
    assert not np.allclose(meta["markets"][1]["normalization"]["mean"], st.norm.mean)
    # the forecaster loads it and steps it on the first 90 s of that market
    f = load_forecaster(res["model"], guard=GuardConfig(enabled=False))
    r = open_recording(tmp_path / "btc")
    ev = r.events()
    ev = ev[ev["local_ts"] <= ev["local_ts"][0] + 90 * 10**9]
    seen = []

    def step(book, t, trades):
        out = f.update(book, t, trades)
        if out is not None:
            seen.append(out)

    replay_online(ev, r.meta["tick_size"], r.meta["lot_size"], grid_times(ev["local_ts"][0], ev["local_ts"][-1], fcfg.sample_ns), step)
    f.close()
    assert f.rows > meta["warmup_steps"] and seen
    assert rec


def test_bad_input_names_the_file(tmp_path):
    need(*BINANCE_SPOT)
    bad = tmp_path / "junk_20240808.gz"
    bad.write_bytes(b"this is not a capture\n")
    p = subprocess.run([sys.executable, "-m", "bot.cli", "train", str(bad), *map(str, BINANCE_SPOT), "--registry",
                        str(tmp_path / "reg"), "--no-progress", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 2, p.stderr
    assert str(bad) in p.stderr and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_held_out_market_standardised_on_calibration_rows_only(tmp_path):
    """A held-out market's standardisation (inputs, target scales, baselines) does not move when
    its recording is changed beyond recognition after its calibration rows."""
    from bot.importers.binance import import_binance
    from models.multimarket import _standardise, load_market
    from models.train import TrainConfig

    need(*ETH)
    fcfg = FeatureConfig(sample_s=0.5, n_levels=5, rv_windows=(10, 40))
    cfg = TrainConfig(arch="correction", lookback=16, base="combo")
    import_binance(ETH, tmp_path / "eth")
    m = load_market(tmp_path / "eth", fcfg, "5s", 40, max_hours=0.05)
    use = np.flatnonzero(m.ds.usable())
    c_end = int(use[0]) + int((int(use[-1]) + 1 - int(use[0])) * 0.3)
    calib = m.ds.usable() & (np.arange(m.ds.n) < c_end) & (m.ds.end_row < c_end)
    r = open_recording(tmp_path / "eth")
    cut = int(m.ds.ff.ts_ns[c_end])
    ev2 = change_future(r.events(), cut)
    m2 = load_market(write_recording(ev2, r.meta, tmp_path / "eth2"), fcfg, "5s", 40, max_hours=0.05)
    calib2 = calib[: m2.ds.n] if m2.ds.n >= m.ds.n else None
    assert calib2 is not None and np.array_equal(m2.ds.ff.ts_ns[:c_end], m.ds.ff.ts_ns[:c_end])
    a, b = _standardise(m.ds, cfg, calib), _standardise(m2.ds, cfg, calib2)
    assert np.array_equal(a.norm.mean, b.norm.mean) and np.array_equal(a.norm.std, b.norm.std)
    assert a.scales == b.scales and a.floor == b.floor and a.spec.to_dict() == b.spec.to_dict()
    # ... whereas fitting on all rows would see the change
    full = _standardise(m2.ds, cfg, m2.ds.usable())
    assert not np.allclose(full.norm.mean, a.norm.mean)


def test_fit_shrink_picks_no_correction_when_it_hurts():
    from models.multimarket import fit_shrink

    rng = np.random.default_rng(0)
    base = np.full(500, np.log(4.0))
    v = 4.0 * rng.chisquare(1, 500)  # the baseline is right
    a_v, a_d = fit_shrink(v, base, base + 1.5, rng.normal(size=500), np.zeros(500), np.full(500, 3.0), 0.0)
    assert a_v == 0.0 and a_d == 0.0
    a_v, _ = fit_shrink(v, base - 1.5, base, rng.normal(size=500), np.zeros(500), np.zeros(500), 0.0)
    assert a_v == 1.0  # the correction fixes the baseline: kept whole


def test_lomo_table_in_the_report_with_three_markets(tmp_path):
    from bot.errors import MmbotError
    from models.cli import train

    usdm = DATA / "binance/usdm/btcusdt_20240808.gz"
    need(*BINANCE_SPOT, *ETH, usdm)
    with pytest.raises(MmbotError, match="--lomo needs at least 3 markets"):
        train([*BINANCE_SPOT, *ETH], registry=tmp_path / "r0", lomo=True, **ARGS)
    res = train([*BINANCE_SPOT, *ETH, usdm], registry=tmp_path / "reg", lomo=True, shrink=True, **ARGS)
    assert len(res["markets"]) == 3 and len(res["lomo"]) == 3
    report = Path(res["report"]).read_text()
    assert "Leave-one-market-out" in report and "held-out markets" in report and "--lomo" in report and "--shrink" in report
    for r in res["lomo"]:
        assert "error" not in r, r
        assert 0.0 <= r["shrink"]["vol"] <= 1.0 and (np.isnan(r["dm_vol"]["p"]) or 0.0 <= r["dm_vol"]["p"] <= 1.0)
        assert f"| {r['market']} |" in report
    assert res["default"] is False or all(
        r["metrics"]["model"]["qlike"] < r["metrics"][r["best_vol"]]["qlike"] for r in res["lomo"])


def test_auto_mix_falls_back_to_the_ewmas_geometric_mean(tmp_path):
    """--base auto_mix on minutes of data (too few rows to select): the baseline is the geometric
    mean of the RiskMetrics and fitted EWMAs, row by row."""
    import models.baseline_inputs as bi
    from bot.importers.binance import import_binance
    from models.features import feature_names
    from models.multimarket import load_market
    from models.targets import variance_floor

    need(*ETH)
    import_binance(ETH, tmp_path / "eth")
    fcfg = FeatureConfig(sample_s=0.5, n_levels=5, rv_windows=(10, 40))
    ds = load_market(tmp_path / "eth", fcfg, "5s", 40, max_hours=0.05).ds
    tr = ds.usable()
    fr = np.zeros(ds.n, bool)
    fr[ds.warmup : int(np.flatnonzero(tr)[-1]) + 1] = True
    names = feature_names(fcfg)
    ofi = names.index("ofi")
    args = (ds.horizon(tr)[0], variance_floor(ds.tg.var[tr]), fcfg.sample_s, fcfg.rv_windows)
    sp = bi.fit_spec(ds.ff.X[:, 0], ds.ff.X, ofi, ds.tg.var, ds.tg.drift, tr, fr, *args, best="auto_mix")
    assert sp.best == "ewma_mix"
    assert bi.fit_spec(ds.ff.X[:, 0], ds.ff.X, ofi, ds.tg.var, ds.tg.drift, tr, fr, *args).best == "combo"
    X = bi.full_inputs(ds.ff.X, sp, names)
    comp = bi._components(sp, ds.ff.X[:, 0], ds.ff.X[:, ofi])[:, :2] + sp.floor
    assert np.allclose(X[:, bi.offset_columns(fcfg)[1]], 0.5 * np.log(comp).sum(axis=1), rtol=1e-12, atol=1e-12)


def test_drift_correction_has_its_own_l2():
    import torch

    from models.train import _loss

    out = torch.tensor([[[1.0, 2.0]]])
    args = (torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 1.0, torch.zeros(1, 1, 2))
    same, _, _ = _loss(out, *args, 1.0)
    sep, _, _ = _loss(out, *args, 1.0, 0.0)
    more, _, _ = _loss(out, *args, 1.0, 3.0)
    assert float(same - sep) == pytest.approx(1.0) and float(more - same) == pytest.approx(2.0)


def test_recalibrate_for_a_market_from_its_first_rows(trained, tmp_path):
    """--recalibrate: the two-market model (calibrated for BTC) recalibrated for ETH on ETH's
    first 30 % of rows: ETH's own standardisation, nothing after those rows used, the same
    network (the drift head rescaled to ETH's drift scale), loadable and stepped online."""
    from bot.importers.binance import import_binance
    from models.cli import train
    from models.export import load_model
    from models.forecaster import GuardConfig, load_forecaster
    from models.multimarket import _standardise, calib_rows, load_market
    from models.train import TrainConfig

    res, reg = trained
    fcfg = FeatureConfig(sample_s=0.5, n_levels=5, rv_windows=(10, 40))
    import_binance(ETH, tmp_path / "eth")
    out = train([tmp_path / "eth"], registry=reg, init_from=res["version"], recalibrate=True, calib_frac=0.3, **ARGS)
    module0, meta0 = load_model(Path(res["model"]))
    module, meta = load_model(Path(out["model"]))
    assert meta["parent"] == res["version"] and meta["data"]["calibrated_for"] == out["calibrated_for"]
    m = load_market(tmp_path / "eth", fcfg, "5s", 40)
    calib, _, c_end = calib_rows(m.ds, 0.3)
    st = _standardise(m.ds, TrainConfig(arch="correction", lookback=16, base="combo"), calib)
    assert np.allclose(meta["normalization"]["mean"], st.norm.mean) and meta["scales"]["drift_scale"] == st.scales.drift_scale
    assert meta["baseline_inputs"]["spec"] == st.spec.to_dict() and meta["data"]["end_ns"] < int(m.ds.ff.ts_ns[c_end])
    p0, p1 = list(module0.params()), list(module.params())
    L = meta["arch"]["layers"]
    for a, b in zip(p0[2 : 2 + 4 * L], p1[2 : 2 + 4 * L]):
        assert np.array_equal(a.numpy(), b.numpy())  # the same LSTM
    r = st.scales.drift_scale / meta0["scales"]["drift_scale"]
    hw0, hw1 = p0[2 + 4 * L].numpy(), p1[2 + 4 * L].numpy()
    assert np.allclose(hw1[0], hw0[0] * r, rtol=1e-5, atol=1e-7) and np.allclose(hw1[1], hw0[1])
    f = load_forecaster(out["model"], guard=GuardConfig(enabled=False))
    ev = open_recording(tmp_path / "eth").events()
    ev = ev[ev["local_ts"] <= ev["local_ts"][0] + 60 * 10**9]
    from models.features import grid_times

    seen = []
    rec = open_recording(tmp_path / "eth")
    replay_online(ev, rec.meta["tick_size"], rec.meta["lot_size"], grid_times(ev["local_ts"][0], ev["local_ts"][-1], fcfg.sample_ns),
                  lambda book, t, trades: seen.append(f.update(book, t, trades)))
    f.close()
    assert any(x is not None for x in seen)


def test_row_weight_zero_is_the_same_as_leaving_rows_out(tmp_path):
    """fit(row_weight=...) (what --balance uses): rows of weight 0 count as rows left out."""
    from bot.importers.binance import import_binance
    from models.multimarket import load_market, train_val_rows
    from models.train import Scales, TrainConfig, fit

    need(*ETH)
    import_binance(ETH, tmp_path / "eth")
    fcfg = FeatureConfig(sample_s=0.5, n_levels=5, rv_windows=(10, 40))
    ds = load_market(tmp_path / "eth", fcfg, "5s", 40, max_hours=0.05).ds
    cfg = TrainConfig(hidden=4, lookback=16, batch=4, max_epochs=2, patience=1, threads=1)
    tr, va = train_val_rows(ds, cfg.val_frac)
    w = np.ones(ds.n)
    w[: ds.n // 2] = 0.0
    sc = Scales(1.0, 1.0, 0.0)
    v0 = int(np.flatnonzero(va)[0])
    a = fit(ds.ff.X, ds.tg.drift, ds.tg.var, tr, va, v0, cfg, 0.0, scales=sc, row_weight=w)
    b = fit(ds.ff.X, ds.tg.drift, ds.tg.var, tr & (w > 0), va & (w > 0), v0, cfg, 0.0, scales=sc)
    c = fit(ds.ff.X, ds.tg.drift, ds.tg.var, tr, va, v0, cfg, 0.0, scales=sc)
    sa, sb, s_c = (x.net.state_dict() for x in (a, b, c))
    assert all(np.array_equal(sa[k].numpy(), sb[k].numpy()) for k in sa)
    assert not all(np.array_equal(sa[k].numpy(), s_c[k].numpy()) for k in sa)
