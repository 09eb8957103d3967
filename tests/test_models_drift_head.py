"""The correction architecture's drift head ``plain`` (``--drift-head plain``): the volatility
head stays the correction of the baseline variance, the drift head predicts the drift itself
(no OFI-regression offset, no pull towards it). Exported TorchScript (step and batch) and the
numba step agree on it; the OFI regression's drift column does not move its drift output (it
moves the ``correction`` head's by exactly its change); models saved without the key load as
``correction``; training runs end to end (fit, ``mmbot train``, leave-one-market-out) on a
small slice of a real Binance capture."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bot.errors import DataError
from models import baseline_inputs as bi
from models.batch_forecast import batch_forward
from models.calibrate import build_dataset, model_inputs
from models.cli import train
from models.export import load_model, save_model
from models.features import FeatureConfig, Normalizer, schema
from models.forecaster import load_forecaster
from models.inference import predict_batch
from models.lstm import LSTMNet, StepModule, net_from_params
from models.multimarket import load_market, lomo, lomo_table
from models.targets import variance_floor
from models.train import TrainConfig, fit
from models_helpers import binance_slice, replay_online

CFG = FeatureConfig(sample_s=0.1, n_levels=5, rv_windows=(5, 20, 50))


@pytest.fixture(scope="module")
def binance(tmp_path_factory):
    rec, ev, meta = binance_slice(tmp_path_factory.mktemp("bn"))  # 2.5 minutes
    ds = build_dataset(ev, meta, CFG, "1s", 50)
    use = ds.usable()
    tr = use.copy()
    tr[int(ds.n * 0.6):] = False
    tr &= ds.end_row < int(ds.n * 0.6)
    return rec, ev, meta, ds, tr


def _model(ds, tr, path: Path, drift_head: str, trained: bool = True, seed: int = 0):
    floor = variance_floor(ds.tg.var[tr])
    X, kw, spec = model_inputs(ds, TrainConfig(arch="correction"), tr, floor)
    torch.manual_seed(seed)
    net = LSTMNet(X.shape[1], 6, 1, 0.0, True, offset_cols=kw["offset_cols"], drift_head=drift_head).eval()
    if trained:
        with torch.no_grad():
            net.head.weight.normal_(0, 0.3)
            net.head.bias.normal_(0, 0.1)
            net.skip.weight.normal_(0, 0.05)
    norm = Normalizer.fit(X[tr])
    for j in kw["mask_cols"]:
        norm.mean[j], norm.std[j] = 0.0, 1e30
    meta = {"features": schema(CFG), "normalization": norm.to_dict(), "horizon": "1s", "horizon_s": 1.0,
            "horizon_steps": 10, "sample_s": CFG.sample_s, "warmup_steps": 50, "arch": net.arch(),
            "var_floor_bp2": floor, "baseline": {"lambda_per_row": 0.99, "init_r2_bp2": 1.0},
            "scales": {"drift_scale": 2.0, "var_scale": 3.0}, "name": "dh",
            "baseline_inputs": {"names": bi.input_names(CFG), "spec": spec.to_dict()}}
    return save_model(StepModule(net, norm.mean, norm.std, norm.clip, 2.0, 3.0), meta, path), X


def test_plain_drift_head_on_every_backend_and_without_the_ofi_offset(binance, tmp_path):
    _, _, _, ds, tr = binance
    mu_c, lv_c = bi.offset_columns(CFG)
    out = {}
    for dh in ("plain", "correction"):
        path, X = _model(ds, tr, tmp_path / f"{dh}.pt", dh)
        module, meta = load_model(path)
        assert meta["arch"]["kind"] == "correction" and meta["arch"]["drift_head"] == dh
        a = predict_batch(module, meta["arch"], 10.0, X, "numba")
        b = predict_batch(module, meta["arch"], 10.0, X, "torchscript")
        c = batch_forward(module, X.astype(np.float32), [0], 1, 6, chunk_rows=97)
        assert np.allclose(a, b, rtol=1e-4, atol=1e-4), dh
        assert np.allclose(a, c, rtol=1e-4, atol=1e-4), dh
        # the OFI regression's drift column moved by +5 bp (the network does not see it: masked)
        X2 = X.copy()
        X2[:, mu_c] += 5.0
        for backend in ("numba", "torchscript"):
            a2 = predict_batch(module, meta["arch"], 10.0, X2, backend)
            assert np.allclose(a2[:, 1], a[:, 1], rtol=1e-4, atol=1e-4)  # variance: unchanged either way
            shift = 0.0 if dh == "plain" else 5.0
            assert np.allclose(a2[:, 0] - a[:, 0], shift, atol=1e-3), (dh, backend)
        out[dh] = a
    # same weights: the two heads differ exactly by the OFI regression's drift
    assert np.allclose(out["correction"][:, 0] - out["plain"][:, 0], X[:, mu_c], atol=1e-3)
    assert np.allclose(out["correction"][:, 1], out["plain"][:, 1], atol=1e-5)
    # untrained (zero head and skip): zero drift and the baseline's log variance
    path, X = _model(ds, tr, tmp_path / "u.pt", "plain", trained=False)
    module, meta = load_model(path)
    for backend in ("numba", "torchscript"):
        u = predict_batch(module, meta["arch"], 10.0, X, backend)
        assert np.allclose(u[:, 0], 0.0, atol=1e-6) and np.allclose(u[:, 1], X[:, lv_c], atol=1e-5)
    # the training network rebuilt from the exported weights keeps its drift head; a model saved
    # before the option (no drift_head key) is a correction of the OFI drift, as it was
    assert net_from_params(list(module.params()), meta["arch"])[0].drift_head == "plain"
    old = {k: v for k, v in meta["arch"].items() if k != "drift_head"}
    net_old = net_from_params(list(module.params()), old)[0]
    assert net_old.drift_head == "correction" and net_old.drift_offset
    meta_old = dict(meta, arch=old)
    p_old = save_model(module, meta_old, tmp_path / "old.pt")
    m_old, mo = load_model(p_old)
    assert "drift_head" not in mo["arch"]
    meta_bad = dict(meta, arch=dict(meta["arch"], drift_head="deep"))
    p_bad = save_model(module, meta_bad, tmp_path / "bad.pt")
    with pytest.raises(DataError, match="unknown drift head 'deep'"):
        load_model(p_bad)
    with pytest.raises(ValueError, match="drift_head"):
        LSTMNet(X.shape[1], 4, offset_cols=(0, 1), drift_head="deep")


def test_fit_with_plain_drift_head_matches_its_export(binance, tmp_path):
    """Trained (a few epochs): the fit's own predictions equal the exported module's on both
    backends, and its drift does not follow the OFI regression's drift column."""
    _, _, _, ds, tr = binance
    floor = variance_floor(ds.tg.var[tr])
    cfg = TrainConfig(arch="correction", drift_head="plain", hidden=6, lookback=16, batch=4, max_epochs=3,
                      patience=3, threads=1, corr_l2=1.0)
    X, kw, spec = model_inputs(ds, cfg, tr, floor)
    n = ds.n
    va = ds.usable() & (np.arange(n) >= int(n * 0.6)) & (np.arange(n) < int(n * 0.8))
    res = fit(X, ds.tg.drift, ds.tg.var, tr, va, int(n * 0.6), cfg, floor, warmup=ds.warmup, **kw)
    assert res.net.drift_head == "plain" and not res.net.drift_offset and res.net.arch()["drift_head"] == "plain"
    mu, var = res.predict(X)
    meta = {"features": schema(CFG), "normalization": res.normalizer.to_dict(), "horizon": "1s", "horizon_s": 1.0,
            "horizon_steps": 10, "sample_s": CFG.sample_s, "warmup_steps": 50, "arch": res.net.arch(),
            "var_floor_bp2": floor, "baseline": {"lambda_per_row": 0.99, "init_r2_bp2": 1.0},
            "baseline_inputs": {"names": bi.input_names(CFG), "spec": spec.to_dict()}}
    module, meta = load_model(save_model(res.step_module(), meta, tmp_path / "fit.pt"))
    for backend in ("numba", "torchscript"):
        y = predict_batch(module, meta["arch"], res.normalizer.clip, X, backend)
        assert np.allclose(y[:, 0], mu, rtol=1e-3, atol=1e-3), backend
        assert np.allclose(y[:, 1], np.log(var), rtol=1e-3, atol=1e-3), backend
    mu_c, _ = bi.offset_columns(CFG)
    X2 = X.copy()
    X2[:, mu_c] += 5.0
    assert np.allclose(res.predict(X2)[0], mu, atol=1e-6)


def test_train_and_lomo_with_plain_drift_head(binance, tmp_path):
    """``mmbot train --arch correction --drift-head plain`` end to end (metadata, command, the
    forecaster runs it online), and the leave-one-market-out table reports the drift head's
    Diebold-Mariano p-value and R^2 per market."""
    rec, ev, rmeta, _, _ = binance
    reg = tmp_path / "reg"
    res = train([rec], registry=reg, arch="correction", drift_head="plain", until="6m", sample_s=0.1, horizon="1s",
                rv_windows="5,20,50", hidden=6, lookback=16, batch=8, max_epochs=2, patience=2, folds=1, threads=1,
                progress=False, json_out=True)
    module, meta = load_model(reg / "v0001" / "model.pt")
    assert meta["arch"]["drift_head"] == "plain" and meta["train"]["drift_head"] == "plain"
    assert "--drift-head plain" in meta["command"]
    assert 0.0 <= res["diebold_mariano"]["drift"]["p"] <= 1.0
    assert json.loads((reg / "v0001" / "model.json").read_text())["arch"]["drift_head"] == "plain"
    f = load_forecaster(reg / "v0001" / "model.pt")
    e = ev[: len(ev) // 3]
    grid = np.arange(e["local_ts"][0] // f.S + 1, e["local_ts"][-1] // f.S) * f.S
    fcs = replay_online(e, rmeta["tick_size"], rmeta["lot_size"], grid, f.update)
    assert fcs[-1].sigma is not None and fcs[-1].sigma > 0 and np.isfinite(fcs[-1].drift)
    # LOMO over three 50 s pieces of the capture (one market each; the pieces do not overlap)
    fc = FeatureConfig(sample_s=0.2, n_levels=5, rv_windows=(10, 40))
    from models_helpers import write_recording

    t0 = int(ev["local_ts"][0])
    mk = []
    for i in range(3):
        part = ev[(ev["local_ts"] >= t0 + i * 50 * 10**9) & (ev["local_ts"] < t0 + (i + 1) * 50 * 10**9)]
        p = write_recording(part, rmeta, tmp_path / f"piece{i}")
        mk.append(load_market(p, fc, "1s", 40, name=f"piece {i}"))
    cfg = TrainConfig(arch="correction", drift_head="plain", hidden=4, lookback=8, batch=4, max_epochs=2,
                      patience=1, threads=1)
    rows = lomo(mk, cfg, calib_frac=0.3)
    assert len(rows) == 3
    for r in rows:
        assert "error" not in r, r
        assert 0.0 <= r["dm_drift"]["p"] <= 1.0 and np.isfinite(r["metrics"]["model"]["r2"])
    table = lomo_table(rows, "correction, drift head plain")
    assert "model R^2" in table
    row = next(x for x in table.split("Drift (")[1].splitlines() if x.startswith("| piece 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    r1 = next(r for r in rows if r["market"] == "piece 1")
    assert float(cells[7]) == pytest.approx(r1["dm_drift"]["p"], rel=1e-2)
    assert float(cells[8]) == pytest.approx(r1["metrics"]["model"]["r2"], abs=1e-4)


def test_unknown_drift_head_is_one_line_exit_2(tmp_path):
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-m", "models.cli", "train", str(tmp_path), "--arch", "correction",
                        "--drift-head", "deep"], cwd=root, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert p.stderr.strip() == "error: --drift-head must be 'correction' or 'plain', got 'deep'"
    p = subprocess.run([sys.executable, "-m", "models.cli", "train", str(tmp_path), "--arch", "plain",
                        "--drift-head", "correction"], cwd=root, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert p.stderr.strip() == "error: --drift-head applies to --arch correction only (the plain arch's drift head is always plain)"


def test_plain_drift_head_l2_pulls_towards_zero_drift(binance):
    """With ``--drift-head plain`` the drift L2 (``--corr-l2-drift``) penalises the drift
    forecast itself: a strong one keeps it near zero drift (not near the OFI regression)."""
    _, _, _, ds, tr = binance
    floor = variance_floor(ds.tg.var[tr])
    n = ds.n
    va = np.zeros(n, bool)  # no validation rows: the epoch with the lowest training loss is kept
    spread = {}
    for l2 in (0.0, 1e4):
        cfg = TrainConfig(arch="correction", drift_head="plain", hidden=6, lookback=16, batch=4, max_epochs=4,
                          patience=4, min_epochs=4, threads=1, corr_l2=0.0, corr_l2_drift=l2, lr=1e-2)
        X, kw, _ = model_inputs(ds, cfg, tr, floor)
        res = fit(X, ds.tg.drift, ds.tg.var, tr, va, int(n * 0.6), cfg, floor, warmup=ds.warmup, **kw)
        assert res.best_epoch >= 1
        mu, _ = res.predict(X)
        spread[l2] = float(np.std(mu[ds.warmup:]))
    assert spread[1e4] < 0.2 * spread[0.0], spread
