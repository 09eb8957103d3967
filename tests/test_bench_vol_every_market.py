"""bench/vol_every_market.py (issue 10, round 2 study) on a real Binance capture: its tick
predictor ``t40_300`` is the product's tick baseline (:class:`models.baseline_inputs.BaselineState`)
row for row; the nested candidates (credibility-weighted ratio, online exponential weights) are
causal; the ex-post bound is no worse than its starting member, the tick baseline."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from models_helpers import binance_recording

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import vol_every_market as vm  # noqa: E402


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    return vm.load(binance_recording(tmp_path_factory.mktemp("bn") / "rec"))  # spot BTC 2024-08-08, 11 min


def test_tick_predictor_is_the_product_tick_baseline(market):
    assert market["short"] and market["test"].sum() > 300
    assert vm.check_product_tick(market) < 1e-9
    r, p = vm.ratio_dm(market, np.exp(market["L"]["t40_300"]))
    assert r > 0 and 0 <= p <= 1


def _future_changed(m: dict, k: int) -> dict:
    """A copy of market ``m`` whose rows after ``k`` (returns, tick RV, every forecast) differ."""
    rng = np.random.default_rng(3)
    m2 = dict(m)
    n = len(m["r2"])
    m2["r2"] = m["r2"].copy()
    m2["r2"][k + 1 :] = m["r2"][k + 1 :] * rng.uniform(0.0, 20.0, n - k - 1) + 5.0
    m2["tick"] = m["tick"].copy()
    m2["tick"][k + 1 :] = m["tick"][k + 1 :] * rng.uniform(0.0, 20.0, n - k - 1) + 1.0
    m2["L"] = {name: np.r_[x[: k + 1], x[k + 1 :] + rng.normal(0.0, 2.0, n - k - 1)] for name, x in m["L"].items()}
    return m2


def test_nested_candidates_are_causal(market):
    k = int(market["c_end"]) + 50
    m2 = _future_changed(market, k)
    names = ["t20_300", "t40_300", "t160_300"]
    for f in (lambda m: vm.credibility_tick(m, 1.3, 100.0), lambda m: vm.hedge(m, names, 10.0, 120.0)):
        a, b = f(market), f(m2)
        assert np.array_equal(a[: k + 1], b[: k + 1])
        assert not np.allclose(a[k + 1 :], b[k + 1 :])  # the future did change them
    # the online weights move: early rows (no matured forecast) are the plain mean of the logs
    h = vm.hedge(market, names, 10.0, 120.0)
    H = market["H"]
    assert np.allclose(np.log(h[:H]), np.mean([market["L"][x][:H] for x in names], axis=0))
    assert not np.allclose(np.log(h), np.mean([market["L"][x] for x in names], axis=0))


def test_ex_post_bound_no_worse_than_the_tick_baseline(market):
    ms = [market, _future_changed(market, int(market["c_end"]) + 100)]
    for m in ms[1:]:
        te = m["test"]
        m["v"] = m["v"].copy()
        m["v"][te] = m["v"][te] * 1.5
        m["best_loss"] = min((vm.dm_.qlike_rows(m["v"][te], h[te]) for h in m["base"].values()), key=np.mean)
    b = vm.ex_post_bound(ms, triples=False)
    tick = max(vm.ratio_dm(m, np.exp(m["L"]["t40_300"]))[0] for m in ms)
    for k in ("convex", "convex_scaled"):
        assert b[k]["worst"] <= tick + 1e-6
        assert abs(sum(b[k]["weights"].values()) - 1.0) < 0.01
    assert b["convex_scaled"]["worst"] <= b["convex"]["worst"] + 1e-6
