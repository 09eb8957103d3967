"""Study (issue 10): does information INSIDE each grid second forecast the next horizon's
realised variance better than the baselines, on markets the predictor was not tuned on?

For every market (an ``mmbot import`` recording directory) this builds exactly the dataset,
the calibration / test split and the baselines of the leave-one-market-out (LOMO) evaluation
(:func:`models.multimarket.load_market`, :func:`models.multimarket.calib_rows`,
:func:`models.calibrate.fit_baselines`, the floor of :func:`models.targets.variance_floor` on
the calibration rows), and scores simple causal predictors built from what happens between
two grid times:

* ``tick_rv``: per grid row k, the sum of squared log changes (bp^2) of the recorded mid over
  every exchange message in (t_{k-1}, t_k] (:func:`models.targets.mid_changes`), i.e. the
  realised variance of the mid sampled at every book update;
* ``n_mid``: the number of those mid changes.

Predictors (variance over the horizon of H rows, bp^2, plus the floor; all causal: the value at
row k uses rows <= k only):

* ``tick_ewma``: H x EWMA_fast(tick_rv) x ratio, ratio = EWMA_slow(r2) / EWMA_slow(tick_rv),
  r2 the squared 1 s grid return: tick-level activity rescaled to the 1 s-return variance by
  a causal running ratio (scale-free: no per-market fit; microstructure noise in the tick mid
  only enters through the slowly varying ratio);
* ``tick_fitc``: H x EWMA_fast(tick_rv) x c, c fitted on the calibration rows (QLIKE-optimal
  scale, c = mean(v / h));
* ``nmid_ewma``: the same as ``tick_ewma`` with the count of mid changes in place of tick_rv;
* ``tick_mix``: the geometric mean of ``tick_ewma`` and RiskMetrics' EWMA (a baseline).
* ``r2_ewma`` (control): H x EWMA of the squared 1 s returns, its half-life chosen like the
  others (shows what the choice of half-life alone gives, without intra-second information).

* ``loglin``: log h = log(H x slow EWMA of r2 + floor) + theta . x, x = 1 and log(fast / slow
  EWMA) of r2, tick_rv and n_mid at three fast half-lives; theta minimises the mean QLIKE of the
  other markets (each weighing alike).

Every predictor has one or two hyperparameters (fast and slow half-lives); they are chosen
leave-one-market-out: for the held-out market, the half-lives with the lowest mean QLIKE ratio
(predictor / RiskMetrics EWMA) over the OTHER markets' usable rows (a market whose capture
overlaps the held-out one's span: only rows whose horizon ends before its test start), so
nothing about the held-out market is used (``loglin``'s theta likewise). Reported per market: QLIKE of each predictor, of the best of the
four baselines (EWMA 0.94, fitted EWMA, GARCH, HAR-RV, chosen after the fact on the test rows,
as in the LOMO table), the ratio and the Diebold-Mariano test against that best baseline.

Usage (REC/x = ``mmbot import`` of capture x; 25 s for the ten markets of docs/forecaster.md):

    python bench/intrasecond_vol.py REC/bitstamp REC/usdm_btc_0718 ... [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import baselines as bl  # noqa: E402
from models import calibrate as cal  # noqa: E402
from models import dm as dm_  # noqa: E402
from models.features import FeatureConfig  # noqa: E402
from models.multimarket import calib_rows, load_market  # noqa: E402
from models.targets import BP, mid_changes, variance_floor  # noqa: E402

FAST_HL = (2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)  # seconds
SLOW_HL = (60.0, 300.0, 1800.0)


def intrasecond(m) -> dict:
    """Per grid row: tick_rv (bp^2), n_mid (count) over (t_{k-1}, t_k]."""
    ds = m.ds
    ts, mid = mid_changes(m.events, m.meta.get("tick_size"))
    T = ds.ff.ts_ns
    r = np.zeros(len(mid))
    r[1:] = np.log(mid[1:] / mid[:-1]) * BP
    row = np.searchsorted(T, ts, side="left")
    ok = (row < len(T)) & (ts > T[0] - int(ds.ff.cfg.sample_ns))
    ok[0] = False  # the first change has no predecessor
    tick = np.bincount(row[ok], weights=r[ok] ** 2, minlength=len(T))
    cnt = np.bincount(row[ok], minlength=len(T)).astype(float)
    return {"tick_rv": tick, "n_mid": cnt}


def ewma(x: np.ndarray, hl_s: float, sample_s: float, init: float) -> np.ndarray:
    return bl._ewma(np.ascontiguousarray(x, float), bl.lambda_from_halflife(hl_s, sample_s), float(init))


def predictors(m, intra: dict, floor: float, calib: np.ndarray, H: int) -> dict:
    """name -> {params tuple -> forecast array (bp^2, floor included)}."""
    ds = m.ds
    s = ds.ff.cfg.sample_s
    r2 = ds.ff.ret_bp ** 2
    w = np.zeros(ds.n, bool)
    w[: ds.warmup] = True  # warm-up rows: before every calibration and test row
    out: dict = {"tick_ewma": {}, "tick_fitc": {}, "nmid_ewma": {}, "tick_mix": {}, "r2_ewma": {}}
    rm = ds.ff.ret_bp ** 2
    rm_f = bl.ewma_var(rm, bl.ewma_lambda(s), H, float(np.mean(r2[w]))) + floor
    v = ds.tg.var + floor
    for hf in FAST_HL:  # control: the same EWMA of 1 s returns, half-life chosen on the other markets
        out["r2_ewma"][(hf,)] = bl.ewma_var(r2, bl.lambda_from_halflife(hf, s), H, float(np.mean(r2[w]))) + floor
    for key, x in (("tick", intra["tick_rv"]), ("nmid", intra["n_mid"])):
        xi = float(np.mean(x[w])) + 1e-12
        ri = float(np.mean(r2[w])) + 1e-12
        for hf in FAST_HL:
            fast = ewma(x, hf, s, xi)
            if key == "tick":
                raw = H * fast
                c = float(np.mean(v[calib] / (raw[calib] + floor)))
                out["tick_fitc"][(hf,)] = c * raw + floor
            for hs in SLOW_HL:
                ratio = ewma(r2, hs, s, ri) / (ewma(x, hs, s, xi) + 1e-12)
                f = H * fast * ratio + floor
                out[f"{key}_ewma"][(hf, hs)] = f
                if key == "tick":
                    out["tick_mix"][(hf, hs)] = np.sqrt(f * rm_f)
    return out


LOGLIN_HL = (2.0, 10.0, 60.0)  # fast half-lives (s) of the log-linear model's inputs
LOGLIN_SLOW = 300.0  # the running level (s)


def loglin_design(m, intra: dict, floor: float, H: int) -> tuple[np.ndarray, np.ndarray]:
    """(offset, X): log h = offset + X @ theta, offset = log(H x slow EWMA of r2 + floor), X = 1 and
    log(fast EWMA / slow EWMA) of r2, tick_rv and n_mid for each fast half-life (scale-free)."""
    ds = m.ds
    s = ds.ff.cfg.sample_s
    w = np.zeros(ds.n, bool)
    w[: ds.warmup] = True
    cols = [np.ones(ds.n)]
    off = None
    for x in (ds.ff.ret_bp ** 2, intra["tick_rv"], intra["n_mid"]):
        xi = float(np.mean(x[w])) + 1e-12
        slow = ewma(x, LOGLIN_SLOW, s, xi)
        if off is None:
            off = np.log(H * slow + floor)
        eps = 1e-3 * xi
        for hf in LOGLIN_HL:
            cols.append(np.log((ewma(x, hf, s, xi) + eps) / (slow + eps)))
    return off, np.column_stack(cols)


def fit_loglin(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], l2: float = 1e-3) -> np.ndarray:
    """theta minimising the mean over markets of each market's mean QLIKE (v, offset, X per market;
    every market weighs alike). Convex in theta."""
    from scipy.optimize import minimize

    k = parts[0][2].shape[1]

    def f(th):
        tot, g = 0.0, np.zeros(k)
        for v, off, X in parts:
            eta = off + X @ th
            e = v * np.exp(-eta)
            tot += float(np.mean(e + eta - np.log(v) - 1.0))
            g += X.T @ (1.0 - e) / len(v)
        tot /= len(parts)
        g /= len(parts)
        return tot + l2 * float(th[1:] @ th[1:]), g + 2 * l2 * np.r_[0.0, th[1:]]

    return minimize(f, np.zeros(k), jac=True, method="L-BFGS-B").x


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="+", type=Path)
    ap.add_argument("--horizon", default="10s")
    ap.add_argument("--calib-frac", type=float, default=0.3)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    fcfg = FeatureConfig(sample_s=1.0, rv_windows=(10, 60))
    warmup = max(max(fcfg.rv_windows), 128)  # as lomo_command with lookback 128
    res = []
    for p in a.data:
        m = load_market(p, fcfg, a.horizon, warmup, name=p.name)
        ds = m.ds
        calib, test, c_end = calib_rows(ds, a.calib_frac)
        floor = variance_floor(ds.tg.var[calib])
        H = ds.horizon(calib)[0]
        b = cal.fit_baselines(ds, calib, floor)
        v = ds.tg.var[test] + floor
        base = {k: dm_.qlike_rows(v, h[test]) for k, h in b["var"].items()}
        best = min(base, key=lambda k: base[k].mean())
        intra = intrasecond(m)
        pr = predictors(m, intra, floor, calib, H)
        off, X = loglin_design(m, intra, floor, H)
        res.append({"market": m.name, "n_test": int(test.sum()), "H": H, "best": best, "base": base, "pred": pr,
                    "test": test, "use": ds.usable(), "ts": ds.ff.ts_ns, "t_test": int(ds.ff.ts_ns[c_end]),
                    "vall": ds.tg.var + floor, "rm": b["var"]["ewma"], "off": off, "X": X})
        print(f"{m.name}: {int(test.sum())} test rows, best baseline {best} {base[best].mean():.4f}", file=sys.stderr)
    rows = []
    names = list(res[0]["pred"])
    for i, r in enumerate(res):
        q_best = r["base"][r["best"]].mean()
        v = r["vall"][r["test"]]
        row = {"market": r["market"], "n_test": r["n_test"], "best": r["best"], "best_qlike": float(q_best),
               "baselines": {k: float(x.mean()) for k, x in r["base"].items()}}
        # the other markets' rows usable for choosing: a market captured during the held-out one's
        # span only before its test start (no look at what happened on the test span)
        sel = []
        for j, o in enumerate(res):
            if j == i:
                continue
            ov = o["ts"][0] <= r["ts"][-1] and o["ts"][-1] >= r["ts"][0]
            rows_o = o["use"] & ((o["ts"] < r["t_test"] - int(o["H"] * 1e9)) if ov else True)
            if rows_o.sum() > 50:
                sel.append((o, rows_o))
        for name in names:
            params = list(r["pred"][name])
            score = {pp: np.mean([np.mean(dm_.qlike_rows(o["vall"][ro], o["pred"][name][pp][ro]))
                                  / np.mean(dm_.qlike_rows(o["vall"][ro], o["rm"][ro])) for o, ro in sel])
                     for pp in params}
            pp = min(score, key=score.get)
            L = dm_.qlike_rows(v, r["pred"][name][pp][r["test"]])
            d = dm_.diebold_mariano(L, r["base"][r["best"]], r["H"])
            row[name] = {"params": list(pp), "qlike": float(L.mean()), "ratio": float(L.mean() / q_best),
                         "dm": d["dm"], "p": d["p"]}
        th = fit_loglin([(o["vall"][ro], o["off"][ro], o["X"][ro]) for o, ro in sel])
        h = np.exp(r["off"] + r["X"] @ th)
        L = dm_.qlike_rows(v, h[r["test"]])
        d = dm_.diebold_mariano(L, r["base"][r["best"]], r["H"])
        row["loglin"] = {"params": [round(float(t), 3) for t in th], "qlike": float(L.mean()),
                         "ratio": float(L.mean() / q_best), "dm": d["dm"], "p": d["p"]}
        rows.append(row)
    names = names + ["loglin"]
    short = {"ewma": "EWMA 0.94", "ewma_fit": "EWMA fit", "garch": "GARCH", "har": "HAR-RV"}
    print("| held-out | test rows | best baseline | " + " | ".join(f"{n} (ratio, DM p)" for n in names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for row in rows:
        cells = [f"{row[n]['qlike']:.4f} ({row[n]['ratio']:.3f}, {row[n]['dm']:+.2f} p {row[n]['p']:.2g})" for n in names]
        print(f"| {row['market']} | {row['n_test']} | {row['best_qlike']:.4f} ({short[row['best']]}) | " + " | ".join(cells) + " |")
    print()
    for n in names:
        rat = [row[n]["ratio"] for row in rows]
        print(f"{n}: beats the best baseline on {sum(x < 1 for x in rat)} of {len(rat)}; mean ratio {np.mean(rat):.3f}; "
              f"geometric mean {math.exp(np.mean(np.log(rat))):.3f}; parameters per market "
              f"{[row[n]['params'] for row in rows]}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
