"""Several markets in one dataset and the leave-one-market-out evaluation, on two real Binance
captures of the same minutes (spot BTC/USDT and ETH/USDT): each market is scored against its
own baselines with Diebold-Mariano tests, and the model tested on one market never sees the
other market's data from that market's test span on (changing it changes nothing)."""

from __future__ import annotations

import numpy as np
import pytest

from bot.recording.io import open_recording
from models.features import FeatureConfig
from models.multimarket import Market, fit_markets, load_market, lomo, lomo_table
from models.train import TrainConfig
from models_helpers import BINANCE_SPOT, DATA, binance_recording, change_future, need, write_recording

ETH = [DATA / "binance/spot/ethusdt_20240808.gz", DATA / "binance/spot/ethusdt_20240809.gz"]
FCFG = FeatureConfig(sample_s=0.5, n_levels=5, rv_windows=(10, 40))
CFG = TrainConfig(arch="correction", hidden=6, lookback=16, batch=4, max_epochs=2, patience=1, threads=1)


@pytest.fixture(scope="module")
def recs(tmp_path_factory):
    need(*ETH)
    from bot.importers.binance import import_binance

    d = tmp_path_factory.mktemp("mm")
    btc = binance_recording(d / "btc")
    import_binance(ETH, d / "eth")
    return btc, d / "eth"


def _markets(btc, eth, hours=0.1):
    return [load_market(btc, FCFG, "5s", 40, name="spot BTC", max_hours=hours),
            load_market(eth, FCFG, "5s", 40, name="spot ETH", max_hours=hours)]


def test_lomo_scores_each_market_against_its_baselines(recs):
    btc, eth = recs
    rows = lomo(_markets(btc, eth), CFG, calib_frac=0.3)
    assert [r["market"] for r in rows] and {r["market"] for r in rows} == {"spot BTC", "spot ETH"}
    for r in rows:
        assert "error" not in r, r
        # trained on the other market only, cut at this market's test start (same minutes)
        assert len(r["trained_on"]) == 1 and r["market"] not in r["trained_on"][0]
        assert "(before the test start)" in r["trained_on"][0]
        m = r["metrics"]
        assert set(m) >= {"model", "ewma", "ewma_fit", "garch", "har", "zero", "ofi_linear", "imb_logistic"}
        assert np.isfinite(m["model"]["qlike"]) and m["model"]["qlike"] > 0 and 0 <= m["model"]["f1"] <= 1
        assert r["best_vol"] in ("ewma", "ewma_fit", "garch", "har")
        assert r["corr_baseline"] == "combo"  # minutes of data: the combination, not a selection
        assert np.isfinite(m["own_baseline"]["qlike"])  # the correction's baseline alone, for comparison
        assert m[r["best_vol"]]["qlike"] == min(m[k]["qlike"] for k in ("ewma", "ewma_fit", "garch", "har"))
        for d in (r["dm_vol"], r["dm_drift"]):
            assert d["n"] == r["test_rows"] and (np.isnan(d["p"]) or 0 <= d["p"] <= 1)
    table = lomo_table(rows, "correction")
    assert "| spot BTC |" in table and "| spot ETH |" in table and "held-out markets" in table


def test_no_cross_market_lookahead(recs, tmp_path):
    """The results on the held-out market do not move when the other market's recording is
    changed beyond recognition after the held-out market's test span starts."""
    btc, eth = recs
    a = _markets(btc, eth)
    rows = {r["market"]: r for r in lomo(a, CFG, calib_frac=0.3)}
    held = a[0]
    use = np.flatnonzero(held.ds.usable())
    c_end = int(use[0]) + int((int(use[-1]) + 1 - int(use[0])) * 0.3)
    t_test = int(held.ds.ff.ts_ns[c_end])
    r = open_recording(eth)
    ev2 = change_future(r.events(), t_test - FCFG.sample_ns)
    eth2 = write_recording(ev2, r.meta, tmp_path / "eth2")
    b = [load_market(btc, FCFG, "5s", 40, name="spot BTC", max_hours=0.1),
         load_market(eth2, FCFG, "5s", 40, name="spot ETH", max_hours=0.1)]
    rows2 = {r["market"]: r for r in lomo(b, CFG, calib_frac=0.3)}
    assert rows2["spot BTC"]["metrics"] == rows["spot BTC"]["metrics"]
    assert rows2["spot BTC"]["dm_vol"] == rows["spot BTC"]["dm_vol"]
    # ... while the market that was changed is scored differently
    assert rows2["spot ETH"]["metrics"]["model"] != rows["spot ETH"]["metrics"]["model"]


def test_markets_are_standardised_separately(recs):
    """Each market's inputs and targets are standardised on its own rows (BTC and ETH differ in
    spread and volatility levels); the network sees them stacked, through an identity
    normaliser, with the level-dependent columns masked."""
    from models.baseline_inputs import masked_columns
    from models.multimarket import _standardise

    btc, eth = recs
    ms = _markets(btc, eth, hours=0.05)
    stds = []
    for m in ms:
        rows = m.ds.usable()
        st = _standardise(m.ds, CFG, rows)
        span = np.zeros(m.ds.n, bool)
        span[m.ds.warmup : int(np.flatnonzero(rows)[-1]) + 1] = True
        live = [j for j in range(st.Z.shape[1]) if j not in masked_columns(FCFG) and st.X[span, j].std() > 1e-9]
        Z = st.Z[span][:, live]
        assert np.allclose(Z.mean(axis=0), 0.0, atol=0.05) and np.all(np.abs(Z.std(axis=0) - 1.0) < 0.3)
        assert np.all(np.abs(st.Z[:, masked_columns(FCFG)[0]]) < 1e-20)  # "ret" (bp): masked, level-dependent
        assert abs(np.nanstd(st.drift[rows]) - 1.0) < 1e-9
        stds.append(st.X[span, 1].mean())  # spread, bp
    assert abs(np.log(stds[0] / stds[1])) > 0.1  # the raw levels do differ between the markets
    res, kw = fit_markets([m.ds for m in ms], CFG)
    assert res.normalizer.mean.max() == 0.0 and kw["offset_cols"] is not None
