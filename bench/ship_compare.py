"""Candidate shipped model against the current one, market by market (issue 10, item 2).

For every held-out market of the leave-one-market-out (LOMO) evaluation
(:func:`models.multimarket.lomo`, the same datasets, order, calibration prefix, test rows,
floor and seed, so the candidate's numbers are those of ``mmbot train ... --lomo``):

* ``candidate``: the network trained on the other markets with the given configuration (the
  CLI LOMO's model for that market), standardised on the market's calibration rows;
* ``current``: the model file given (default: the shipped ``models/pretrained/default.pt``)
  recalibrated for the market as ``mmbot train REC --init-from default --recalibrate`` does
  (:func:`models.multitrain.recalibrate`: the same network, the market's standardisation
  fitted on the SAME calibration rows; no training), run over the whole recording.

Both are scored on the same test rows (the candidate's; timestamps of the 1 s grid matched):
volatility QLIKE (bp^2 variances, the floor of the LOMO added to the target) and drift MSE
(bp^2), with a Diebold-Mariano test of candidate against current (negative = the candidate's
loss is lower). Caveats (printed with the table): the current model's 300-row realised-variance
window is not full on the first 300 rows of a recording (its online warm-up would not forecast
there at all; here it does, which can only help it), and the current model was trained on the
whole Bitstamp day, so on Bitstamp it is scored in sample.

    python bench/ship_compare.py REC/bitstamp REC/usdm_btc_0718 ... [--model PATH] [--json OUT]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import dm as dm_  # noqa: E402
from models import multimarket as mm  # noqa: E402
from models.features import FeatureConfig  # noqa: E402
from models.multitrain import train_config_of, unscaled_net  # noqa: E402
from models.train import FitResult, Scales, TrainConfig  # noqa: E402


def current_forecasts(path: Path, model: Path, warmup: int, calib_ts: np.ndarray):
    """(grid ts_ns, drift bp, variance bp^2) of ``model`` recalibrated on the grid rows whose
    times are ``calib_ts`` (as :func:`models.multitrain.recalibrate`)."""
    from models.export import load_model

    module, pmeta = load_model(model)
    fcfg = FeatureConfig.from_dict(pmeta["features"]["config"])
    cfg = train_config_of(pmeta)
    a = pmeta["arch"]
    m = mm.load_market(path, fcfg, pmeta["horizon"], warmup)
    ds = m.ds
    calib = np.isin(ds.ff.ts_ns, calib_ts) & ds.usable()
    st = mm._standardise(ds, cfg, calib)
    net = unscaled_net(module, {**pmeta, "arch": copy.deepcopy(a)})
    fr = FitResult(net, st.norm, Scales(st.scales.drift_scale, st.scales.var_scale, st.floor), cfg)
    mu, var = fr.predict(st.X)
    return ds.ff.ts_ns, mu, var


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", nargs="+", type=Path)
    ap.add_argument("--model", type=Path, default=Path(__file__).resolve().parents[1] / "models/pretrained/default.pt")
    ap.add_argument("--base", default="auto_tick")
    ap.add_argument("--corr-l2", type=float, default=100.0)
    ap.add_argument("--drift-head", default="plain")
    ap.add_argument("--corr-l2-drift", type=float, default=None, help="the drift head's L2 (default: --corr-l2)")
    ap.add_argument("--calib-frac", type=float, default=0.3)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    fcfg = FeatureConfig(sample_s=1.0, rv_windows=(10, 60), tick_rv=True)
    cfg = TrainConfig(hidden=8, lookback=128, max_epochs=30, patience=8, batch=16, arch="correction", seed=0,
                      threads=1, dropout=0.26, lr=2.5e-3, weight_decay=4.3e-3, corr_l2=a.corr_l2, base=a.base, corr_l2_drift=a.corr_l2_drift,
                      drift_head=a.drift_head)
    warmup = max(max(fcfg.rv_windows), cfg.lookback)
    markets = []
    for p in a.data:
        m = mm.load_market(p, fcfg, "10s", warmup, name=p.name)
        m.path = p
        markets.append(m)
    markets = sorted(markets, key=lambda m: m.start_ns)  # as lomo()
    out = []
    for held in markets:
        t0 = time.perf_counter()
        ds = held.ds
        calib, test, c_end = mm.calib_rows(ds, a.calib_frac)
        t_test = int(ds.ff.ts_ns[c_end])
        train_sets = []
        for m in markets:
            if m is held:
                continue
            overlaps = m.start_ns <= int(ds.ff.ts_ns[-1]) and int(m.ds.ff.ts_ns[-1]) >= held.start_ns
            d = mm._cut(m, t_test) if overlaps else m.ds
            if d is not None and d.usable().sum() > 50:
                train_sets.append(d)
        res, _ = mm.fit_markets(train_sets, cfg, label=f"without {held.name}")
        st = mm._standardise(ds, cfg, calib)
        mu_s, var_s = res.predict(st.Z)
        mu_n, var_n = mu_s * st.scales.drift_scale, var_s * st.scales.var_scale
        ts_c, mu_c, var_c = current_forecasts(held.path, a.model, warmup, ds.ff.ts_ns[calib])
        pos = np.searchsorted(ts_c, ds.ff.ts_ns)
        pos = np.minimum(pos, len(ts_c) - 1)
        same = ts_c[pos] == ds.ff.ts_ns
        rows = test & same & np.isfinite(var_n)
        rows &= np.isfinite(np.where(same, var_c[pos], np.nan))
        v, y = ds.tg.var[rows] + st.floor, ds.tg.drift[rows]
        vn, vc = var_n[rows], var_c[pos][rows]
        dn, dc = mu_n[rows], mu_c[pos][rows]
        H = ds.horizon(calib)[0]
        qn, qc = dm_.qlike_rows(v, vn), dm_.qlike_rows(v, vc)
        en, ec = (y - dn) ** 2, (y - dc) ** 2
        r = {"market": held.name, "rows": int(rows.sum()), "test_rows": int(test.sum()),
             "qlike_candidate": float(qn.mean()), "qlike_current": float(qc.mean()),
             "dm_vol": dm_.diebold_mariano(qn, qc, H),
             "mse_candidate": float(en.mean()), "mse_current": float(ec.mean()),
             "mse_zero": float(np.mean(y ** 2)), "dm_drift": dm_.diebold_mariano(en, ec, H),
             "seconds": round(time.perf_counter() - t0, 1)}
        out.append(r)
        print(f"{r['market']}: QLIKE cand {r['qlike_candidate']:.4f} cur {r['qlike_current']:.4f} "
              f"(DM p {r['dm_vol']['p']:.3g}); MSE cand {r['mse_candidate']:.4g} cur {r['mse_current']:.4g}; "
              f"{r['seconds']} s", file=sys.stderr, flush=True)
    L = ["| held-out | rows | QLIKE candidate | QLIKE current (recalibrated) | ratio | DM, p | drift MSE candidate "
         "| current | zero | ratio | DM, p |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    wv = wd = 0
    rv, rd = [], []
    for r in out:
        q = r["qlike_candidate"] / r["qlike_current"]
        e = r["mse_candidate"] / r["mse_current"]
        rv.append(q)
        rd.append(e)
        wv += q < 1
        wd += e < 1
        L.append(f"| {r['market']} | {r['rows']} | {r['qlike_candidate']:.4f} | {r['qlike_current']:.4f} | {q:.3f} | "
                 f"{r['dm_vol']['dm']:+.2f}, {r['dm_vol']['p']:.2g} | {r['mse_candidate']:.4g} | {r['mse_current']:.4g} | "
                 f"{r['mse_zero']:.4g} | {e:.3f} | {r['dm_drift']['dm']:+.2f}, {r['dm_drift']['p']:.2g} |")
    L.append(f"| candidate better on | | | | {wv} of {len(out)}, mean ratio {np.mean(rv):.3f} | | | | | "
             f"{wd} of {len(out)}, mean ratio {np.mean(rd):.3f} | |")
    print("\n".join(L))
    if a.json:
        a.json.write_text(json.dumps(out, default=float, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
