"""Export and inference: save/load round trip gives identical outputs, the stateful step and
the batch path agree exactly (per backend), schema mismatches and corrupt files are
refused with a clear DataError, the shipped default model loads and runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bot.errors import DataError
from models.export import load_model, save_model
from models.features import FEATURE_SCHEMA_VERSION, FeatureConfig, Normalizer, feature_names, schema
from models.forecaster import DEFAULT_MODEL, load_forecaster
from models.inference import StatefulPredictor, predict_batch
from models.lstm import LSTMNet, StepModule
from models_helpers import SyntheticMarket

CFG = FeatureConfig(sample_s=1.0, n_levels=3, rv_windows=(5, 20))


def make_meta(cfg: FeatureConfig, net: LSTMNet, norm: Normalizer, **kw) -> dict:
    meta = {"features": schema(cfg), "normalization": norm.to_dict(), "horizon": "5s", "horizon_s": 5.0,
            "horizon_steps": 5, "sample_s": cfg.sample_s, "warmup_steps": 20, "arch": net.arch(),
            "var_floor_bp2": 0.01, "baseline": {"lambda_per_row": 0.94, "init_r2_bp2": 1.0},
            "scales": {"drift_scale": 2.0, "var_scale": 3.0}, "name": "test"}
    meta.update(kw)
    return meta


def make_model(tmp_path, layers: int = 1, hidden: int = 8, seed: int = 0, **meta_kw):
    torch.manual_seed(seed)
    F = len(feature_names(CFG))
    net = LSTMNet(F, hidden, layers, 0.1).eval()
    with torch.no_grad():
        net.head.weight.normal_(0, 0.3)
        net.skip.weight.normal_(0, 0.1)
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 1, (500, F)) * rng.uniform(0.1, 5, F) + rng.normal(0, 3, F)
    norm = Normalizer.fit(X[:300])
    mod = StepModule(net, norm.mean, norm.std, norm.clip, 2.0, 3.0)
    path = save_model(mod, make_meta(CFG, net, norm, **meta_kw), tmp_path / f"m{layers}.pt")
    return path, mod, X


@pytest.mark.parametrize("layers", [1, 2])
def test_round_trip_and_batch_equals_stateful(tmp_path, layers):
    path, mod, X = make_model(tmp_path, layers)
    module, meta = load_model(path)
    assert meta["features"]["names"] == feature_names(CFG)
    assert json.loads(path.with_suffix(".json").read_text())["arch"] == meta["arch"]
    # the loaded (frozen TorchScript) module equals the eager one it was made from
    L, H = layers, meta["arch"]["hidden"]
    h = torch.zeros(L, H)
    c = torch.zeros(L, H)
    h2, c2 = h.clone(), c.clone()
    with torch.no_grad():
        for x in X[:50]:
            xt = torch.tensor(x, dtype=torch.float32)
            y1, h, c = mod(xt, h, c)
            y2, h2, c2 = module.forward(xt, h2, c2)
            assert torch.equal(y1, y2)
    # per backend: the one-step path and the batch path give exactly the same numbers
    for backend in ("torchscript", "numba"):
        p = StatefulPredictor(module, meta["arch"], 10.0, backend)
        steps = np.array([p.step(x) for x in X])
        batch = predict_batch(module, meta["arch"], 10.0, X, backend)
        assert np.array_equal(steps, batch), backend
    # and the two backends agree to float32 rounding
    a = predict_batch(module, meta["arch"], 10.0, X, "torchscript")
    b = predict_batch(module, meta["arch"], 10.0, X, "numba")
    assert np.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_schema_mismatch_is_refused(tmp_path):
    names = feature_names(CFG)
    swapped = names[:]
    swapped[0], swapped[1] = swapped[1], swapped[0]
    bad_schema = {"version": FEATURE_SCHEMA_VERSION, "names": swapped, "config": CFG.to_dict()}
    path, _, _ = make_model(tmp_path, features=bad_schema)
    with pytest.raises(DataError, match=r"m1\.pt: feature schema mismatch.*same names in another order"):
        load_model(path)
    with pytest.raises(DataError, match="feature schema mismatch"):
        load_forecaster(path)
    renamed = {"version": FEATURE_SCHEMA_VERSION, "names": names[:-1] + ["dt_trade_v0"], "config": CFG.to_dict()}
    path, _, _ = make_model(tmp_path, features=renamed)
    with pytest.raises(DataError, match=r"missing \['dt_trade'\]; unknown \['dt_trade_v0'\]"):
        load_model(path)
    old = {"version": FEATURE_SCHEMA_VERSION + 1, "names": names, "config": CFG.to_dict()}
    path, _, _ = make_model(tmp_path, features=old)
    with pytest.raises(DataError, match="feature schema version"):
        load_model(path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_bad_files_are_refused(tmp_path):
    with pytest.raises(DataError, match="nope.pt: model file not found"):
        load_forecaster(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a model" * 100)
    with pytest.raises(DataError, match="junk.pt: not a readable TorchScript model"):
        load_forecaster(junk)
    path, _, _ = make_model(tmp_path)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="cut.pt"):
        load_forecaster(cut)
    # a TorchScript file without our metadata
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(plain))
    with pytest.raises(DataError, match="plain.pt: no embedded meta.json"):
        load_forecaster(plain)
    with pytest.raises(DataError, match="is not a file|not a file"):
        load_forecaster(tmp_path)


def test_default_model_loads_and_drives_forecasts():
    assert DEFAULT_MODEL.exists(), "the shipped model models/pretrained/default.pt is missing"
    assert sum(p.stat().st_size for p in DEFAULT_MODEL.parent.iterdir()) < 2 * 1024 * 1024
    f = load_forecaster("default")
    mkt = SyntheticMarket(seed=3, mid=236.0)
    fc = None
    t = 1_430_438_400 * 10**9
    for k in range(f.warmup + 30):
        mkt.step(0.2)
        fc = f.update(mkt.book, t + k * f.S, [])
        if k < f.warmup - 1:
            assert fc.drift is None and fc.sigma is None  # warm-up: the strategy's own estimator
    assert fc is not None and fc.sigma is not None and fc.sigma > 0 and np.isfinite(fc.drift)
    assert fc.horizon_s == f.horizon_s
    # between grid times: the same forecast, no model step
    rows = f.rows
    assert f.update(mkt.book, t + (k + 0.5) * f.S // 1, []) is fc
    assert f.rows == rows
