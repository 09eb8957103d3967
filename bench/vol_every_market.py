"""Study (issue 10, round 2): can a causal volatility forecast beat the best of EWMA / GARCH /
HAR-RV on EVERY held-out market, and why does the tick baseline lose on three of them?

Same datasets, calibration prefix, test rows, floor and comparator baselines as the
leave-one-market-out (LOMO) table (:func:`models.multimarket.load_market`,
:func:`models.multimarket.calib_rows`, :func:`models.calibrate.fit_baselines`; the comparator
is the best of the four on the test rows, chosen after the fact). All forecasts are variances
over the horizon of H grid rows (bp^2, the floor included) and causal (row k uses rows <= k);
EWMAs start from the mean over the market's calibration span, as :class:`BaselineState` does.

Predictor family (``family``):

* ``t{f}_{s}``: H x EWMA_f(tick RV) x EWMA_s(r2) / EWMA_s(tick RV), half-lives f, s seconds
  (``t40_300`` is the product's tick baseline; checked equal to
  :class:`models.baseline_inputs.BaselineState`'s on every row);
* ``r{f}``: H x EWMA_f(r2); and the four comparator baselines themselves.

Sections (``main`` prints each as markdown):

1. **Level or dynamics?** per market: the tick baseline's QLIKE ratio to the best baseline,
   the same times the best constant c (c = mean(v / h) on the test rows: an oracle on the
   level), and the flat forecast at the test rows' mean (an oracle level without dynamics).
2. **Ex-post bound**: the convex log pool ``log h = a + sum_j w_j log h_j`` (w_j >= 0, summing
   to 1: a combination of forecasts; a = 0, or a free scale) of the whole family that minimises
   the WORST ratio over the short (Binance) captures, fitted on their test rows themselves (a
   convex problem: QLIKE is convex in (a, w)); and the best pool of three members on a 0.1
   grid. If even this optimum loses somewhere, no combination of these predictors wins on every
   market, whatever is chosen honestly. (Without the constraints, weights of +-900 on
   differences of nearly collinear EWMAs fit the ten test sets: a regression with 20
   coefficients on about 250 independent horizons, not a forecast.) ``--activity`` adds
   predictors from other activity measures (trade count, |traded volume|, squared spread),
   scaled to r2 like the tick family (``n10`` .. ``s160``).
3. **Nested candidates** (every choice on the other markets only: rows after their
   calibration prefix, a market captured at the same time only before the held-out test
   start): the credibility-weighted ratio (the running ratio r2 / tick RV shrunk towards the
   other markets' ratio with a prior worth n0 seconds), a log pool of the tick baseline and
   the EWMAs (``combo_tick``, weights on a 0.1 grid), an online exponential-weights
   combination of tick half-lives (weights from each one's discounted matured QLIKE on the
   market itself), and the convex pool of section 2 with the weights that minimise the worst
   ratio over the other markets (``minimax``).

Usage (REC/x = ``mmbot import`` of capture x, as in docs/forecaster.md; 15 s):

    python bench/vol_every_market.py REC/usdm_btc_0718 ... [--activity] [--json out.json]

Bitstamp 2015 can be given too; it is left out of sections 2 and 3 (the product selects its
baseline on its own 26,000 calibration rows there: HAR-RV).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import baselines as bl  # noqa: E402
from models import calibrate as cal  # noqa: E402
from models import dm as dm_  # noqa: E402
from models.features import _Q, FeatureConfig  # noqa: E402
from models.multimarket import calib_rows, load_market  # noqa: E402
from models.targets import variance_floor  # noqa: E402

TICK_FAST = (10.0, 20.0, 40.0, 80.0, 160.0)  # s
TICK_SLOW = (300.0, 1800.0)
R2_HL = (20.0, 40.0, 80.0, 120.0, 300.0)
SHORT_ROWS = 3000  # markets with fewer calibration + test rows: the short captures (sections 2, 3)


def _ewma(x: np.ndarray, hl_s: float, sample_s: float, init: float) -> np.ndarray:
    return bl._ewma(np.ascontiguousarray(x, float), bl.lambda_from_halflife(hl_s, sample_s), float(init))


def load(path: Path, horizon: str = "10s", calib_frac: float = 0.3, activity: bool = False) -> dict:
    """One market: targets, test rows, comparator baselines and the log forecasts of the family."""
    fcfg = FeatureConfig(sample_s=1.0, rv_windows=(10, 60), tick_rv=True)
    m = load_market(path, fcfg, horizon, max(max(fcfg.rv_windows), 128), name=path.name)  # as lomo_command
    ds = m.ds
    calib, test, c_end = calib_rows(ds, calib_frac)
    floor = variance_floor(ds.tg.var[calib])
    H = ds.horizon(calib)[0]
    base = cal.fit_baselines(ds, calib, floor)["var"]
    s = fcfg.sample_s
    r2 = ds.ff.ret_bp ** 2
    t = ds.ff.tick_units.astype(np.float64) * _Q
    fit = np.zeros(ds.n, bool)  # the span BaselineState's initial levels come from
    fit[: int(np.flatnonzero(calib)[-1]) + 1] = True
    fit[: ds.warmup] = False
    it, ir = float(t[fit].mean()), float(r2[fit].mean())
    fam = {}
    for f in TICK_FAST:
        for sl in TICK_SLOW:
            fam[f"t{f:g}_{sl:g}"] = H * _ewma(t, f, s, it) * (_ewma(r2, sl, s, ir) + 1e-12) / (_ewma(t, sl, s, it) + 1e-12) + floor
    for f in R2_HL:
        fam[f"r{f:g}"] = H * _ewma(r2, f, s, ir) + floor
    fam.update(base)
    if activity:  # trade count, |traded volume| and squared spread (bp^2) per row, on the r2 scale like the tick family
        X, nm = ds.ff.X, ds.ff.names
        for key, x in (("n", np.expm1(X[:, nm.index("n_trades")])), ("f", np.abs(np.sinh(X[:, nm.index("flow")]))),
                       ("s", X[:, nm.index("spread_bps")] ** 2)):
            xi = float(x[fit].mean()) + 1e-9
            for f in (10.0, 40.0, 160.0):
                fam[f"{key}{f:g}"] = H * _ewma(x, f, s, xi) * (_ewma(r2, 300.0, s, ir) + 1e-12) / (_ewma(x, 300.0, s, xi) + 1e-12) + floor
    v = ds.tg.var + floor
    q_base = {k: dm_.qlike_rows(v[test], h[test]) for k, h in base.items()}
    best = min(q_base, key=lambda k: q_base[k].mean())
    return {"name": m.name, "ds": ds, "ds_path": path, "v": v, "calib": calib, "test": test, "c_end": c_end, "H": H, "floor": floor,
            "ts": ds.ff.ts_ns, "use": ds.usable(), "r2": r2, "tick": t, "base": base, "best": best,
            "best_loss": q_base[best], "L": {k: np.log(h) for k, h in fam.items()}, "short": int(ds.usable().sum()) < SHORT_ROWS}


def check_product_tick(m: dict) -> float:
    """Largest relative difference between ``t40_300`` and the product's tick baseline
    (:class:`models.baseline_inputs.BaselineState`, spec fitted on the calibration rows)."""
    from models import baseline_inputs as bi

    ds = m["ds"]
    ff = ds.ff
    fit = np.zeros(ds.n, bool)
    fit[: int(np.flatnonzero(m["calib"])[-1]) + 1] = True
    fit[: ds.warmup] = False
    spec = bi.fit_spec(ff.ret_bp, ff.X, ff.names.index("ofi"), ds.tg.var, ds.tg.drift, m["calib"], fit, m["H"], m["floor"],
                       ff.cfg.sample_s, ff.cfg.rv_windows, best="tick", tick_units=ff.tick_units)
    comp = bi._components(spec, ff.ret_bp, ff.X[:, ff.names.index("ofi")], ff.tick_units)
    mine = np.exp(m["L"]["t40_300"]) - m["floor"]
    return float(np.max(np.abs(comp[:, 6] - mine) / (np.abs(comp[:, 6]) + m["floor"])))


def ratio_dm(m: dict, h: np.ndarray) -> tuple[float, float]:
    """(QLIKE ratio to the best baseline, DM p) of forecast ``h`` (all rows) on the test rows."""
    te = m["test"]
    L = dm_.qlike_rows(m["v"][te], h[te])
    return float(L.mean() / m["best_loss"].mean()), dm_.diebold_mariano(L, m["best_loss"], m["H"])["p"]


def diagnose(ms: list[dict]) -> list[dict]:
    out = []
    for m in ms:
        te = m["test"]
        v = m["v"][te]
        h = np.exp(m["L"]["t40_300"])
        c = float(np.mean(v / h[te]))
        out.append({"market": m["name"], "best": m["best"], "tick": ratio_dm(m, h)[0], "c": c, "tick_c": ratio_dm(m, c * h)[0],
                    "flat": ratio_dm(m, np.full(len(h), v.mean()))[0]})
    return out


def _pool_q(m: dict, rows: np.ndarray, names: list[str], W: np.ndarray, a: np.ndarray | float = 0.0) -> np.ndarray:
    """Mean QLIKE on ``rows`` of the log pools a + W @ logs (one per row of W)."""
    Lg = np.array([m["L"][k][rows] for k in names])
    eta = W @ Lg + np.asarray(a, float).reshape(-1, 1)
    v = m["v"][rows]
    return (v * np.exp(-eta) + eta).mean(axis=1) - np.log(v).mean() - 1.0


def ex_post_bound(ms: list[dict], triples: bool = True) -> dict:
    """min over (a, w) of max over markets of QLIKE(pool) / QLIKE(best baseline), on the test rows."""
    from scipy.optimize import minimize

    names = list(ms[0]["L"])
    K = len(names)
    data = []
    for m in ms:
        te = m["test"]
        data.append((np.array([m["L"][k][te] for k in names]), m["v"][te], m["best_loss"].mean()))

    def ratios(x):
        a, w = x[0], x[1:K + 1]
        out, grads = [], []
        for Lg, v, b in data:
            eta = a + w @ Lg
            e = v * np.exp(-eta)
            out.append(float((e + eta - np.log(v) - 1.0).mean() / b))
            g = 1.0 - e
            grads.append(np.r_[g.mean(), (Lg * g).mean(axis=1)] / b)
        return np.array(out), np.array(grads)

    def solve(intercept: bool):
        x0 = np.zeros(K + 2)  # a, w, t
        x0[1 + names.index("t40_300")] = 1.0
        x0[-1] = ratios(x0[:-1])[0].max()
        cons = [{"type": "ineq", "fun": lambda x: x[-1] - ratios(x[:-1])[0],
                 "jac": lambda x: np.hstack([-ratios(x[:-1])[1], np.ones((len(data), 1))])},
                {"type": "eq", "fun": lambda x: np.sum(x[1:K + 1]) - 1.0, "jac": lambda x: np.r_[0.0, np.ones(K), 0.0]}]
        bounds = [(None, None) if intercept else (0.0, 0.0)] + [(0.0, None)] * K + [(None, None)]
        r = minimize(lambda x: x[-1], x0, jac=lambda x: np.r_[np.zeros(K + 1), 1.0], constraints=cons, bounds=bounds,
                     method="SLSQP", options={"maxiter": 1000, "ftol": 1e-12})
        rat = ratios(r.x[:-1])[0]
        return {"worst": float(rat.max()), "ratios": rat.tolist(), "success": bool(r.success), "intercept": float(r.x[0]),
                "weights": {k: round(float(w), 3) for k, w in zip(names, r.x[1:K + 1]) if w > 1e-3}}

    out = {"convex": solve(False), "convex_scaled": solve(True)}
    # the best pool of at most three members, weights on a 0.1 grid summing to one, no intercept
    grid = np.array([(i / 10, j / 10, (10 - i - j) / 10) for i in range(11) for j in range(11 - i)])
    best3 = (math.inf, None, None)
    for tri in itertools.combinations(names, 3) if triples else ():
        R = np.array([_pool_q(m, m["test"], list(tri), grid) / m["best_loss"].mean() for m in ms]).T
        i = int(np.argmin(R.max(axis=1)))
        if R[i].max() < best3[0]:
            best3 = (float(R[i].max()), dict(zip(tri, grid[i].tolist())), R[i].tolist())
    out.update(best3_max=best3[0], best3=best3[1], best3_ratios=best3[2])
    return out


def _others(ms: list[dict], held: dict) -> list[tuple[dict, np.ndarray]]:
    """The other markets' rows usable for choosing: after their calibration prefix; a market
    captured during the held-out one's span only while its horizon ends before the test start."""
    t_test = int(held["ts"][held["c_end"]])
    out = []
    for o in ms:
        if o is held:
            continue
        ov = o["ts"][0] <= held["ts"][-1] and o["ts"][-1] >= held["ts"][0]
        rows = o["use"] & (np.arange(len(o["v"])) >= o["c_end"])
        if ov:
            rows &= o["ts"] < t_test - int(o["H"] * 1e9)
        if rows.sum() >= 50:
            out.append((o, rows))
    return out


def _best_q(o: dict, rows: np.ndarray) -> float:
    return min(float(dm_.qlike_rows(o["v"][rows], h[rows]).mean()) for h in o["base"].values())


def credibility_tick(m: dict, prior: float, n0: float, fast_s: float = 40.0, slow_s: float = 300.0) -> np.ndarray:
    """H x EWMA_fast(tick RV) x R, R = (S_r2 + n0 tbar prior) / (S_tick + n0 tbar): the running
    (decayed, half-life slow_s) ratio r2 / tick RV, shrunk towards ``prior`` with a weight of n0
    seconds of tick RV at the calibration level tbar."""
    t, r2, H = m["tick"], m["r2"], m["H"]
    lam = bl.lambda_from_halflife(slow_s, 1.0)
    fit = np.zeros(len(t), bool)
    fit[: int(np.flatnonzero(m["calib"])[-1]) + 1] = True
    fit[: m["ds"].warmup] = False
    tbar = float(t[fit].mean())
    St = bl._ewma(t, lam, 0.0) / (1.0 - lam)  # decayed sums
    Sr = bl._ewma(r2, lam, 0.0) / (1.0 - lam)
    R = (Sr + n0 * tbar * prior) / (St + n0 * tbar + 1e-12)
    return H * _ewma(t, fast_s, 1.0, tbar) * R + m["floor"]


def _ratio_all(o: dict, rows: np.ndarray) -> float:
    return float(o["r2"][rows].sum() / max(o["tick"][rows].sum(), 1e-12))


def hedge(m: dict, names: list[str], eta: float, hl_s: float) -> np.ndarray:
    """Online exponential weights over the forecasts ``names``: at row k the forecasts of row
    k - H have matured (their target, the sum of r2 over rows k-H+1..k, is known); each one's
    QLIKE enters a discounted mean (half-life hl_s); weights ~ exp(-eta x that mean); the
    forecast is the weighted mean of the logs. Causal."""
    Lg = np.array([m["L"][k] for k in names])
    lam = bl.lambda_from_halflife(hl_s, 1.0)
    H, n = m["H"], Lg.shape[1]
    cs = np.r_[0.0, np.cumsum(m["r2"])]
    S = np.zeros(len(names))
    out = np.empty(n)
    for k in range(n):
        j = k - H
        if j >= 0:
            x = (cs[k + 1] - cs[j + 1] + m["floor"]) * np.exp(-Lg[:, j])
            S = lam * S + (1.0 - lam) * (x - np.log(x) - 1.0)
        w = np.exp(-eta * (S - S.min()))
        out[k] = float(w @ Lg[:, k]) / float(w.sum())
    return np.exp(out)


def nested(ms: list[dict]) -> list[dict]:
    """Section 3: each candidate's settings chosen on the other markets (mean ratio to their
    best baseline on their rows), then scored on the held-out market's test rows."""
    pool_names = ["t40_300", "ewma", "ewma_fit", "r40"]
    grid = np.array([w for w in itertools.product(*(np.arange(11),) * 3) if sum(w) <= 10], float) / 10
    grid = np.hstack([grid, 1.0 - grid.sum(axis=1, keepdims=True)])
    hedge_names = ["t20_300", "t40_300", "t80_300", "t160_300"]
    hedge_grid = [(eta, hl) for eta in (1.0, 3.0, 10.0, 30.0) for hl in (30.0, 120.0, 600.0)]
    hedge_cache: dict = {}
    rows = []
    for m in ms:
        oth = _others(ms, m)
        row = {"market": m["name"], "best": m["best"], "best_qlike": float(m["best_loss"].mean())}
        row["tick"] = ratio_dm(m, np.exp(m["L"]["t40_300"]))
        # credibility-weighted ratio: prior = geometric mean of the other markets' ratios
        prior = math.exp(np.mean([math.log(_ratio_all(o, r)) for o, r in oth]))
        sc = {n0: np.mean([ratio_dm_rows(o, r, credibility_tick(o, prior, n0)) for o, r in oth]) for n0 in (0.0, 30.0, 100.0, 300.0, 1000.0)}
        n0 = min(sc, key=sc.get)
        row["cred"] = ratio_dm(m, credibility_tick(m, prior, n0)) + (n0, round(prior, 3))
        # combo_tick: log pool of the tick baseline and the EWMAs
        S = np.mean([_pool_q(o, r, pool_names, grid) / _best_q(o, r) for o, r in oth], axis=0)
        w = grid[int(np.argmin(S))]
        row["combo_tick"] = ratio_dm(m, np.exp(sum(wi * m["L"][k] for wi, k in zip(w, pool_names)))) + (dict(zip(pool_names, w.round(1).tolist())),)
        # online exponential weights over tick half-lives
        def hf(o, p):
            key = (o["name"], p)
            if key not in hedge_cache:
                hedge_cache[key] = hedge(o, hedge_names, *p)
            return hedge_cache[key]
        sh = {p: np.mean([ratio_dm_rows(o, r, hf(o, p)) for o, r in oth]) for p in hedge_grid}
        p = min(sh, key=sh.get)
        row["hedge"] = ratio_dm(m, hf(m, p)) + (p,)
        # the convex pool of section 2 with the weights that minimise the worst ratio over the other markets
        oth2 = []
        for o, r in oth:
            o2 = dict(o, test=r)
            o2["best_loss"] = min((dm_.qlike_rows(o["v"][r], h[r]) for h in o["base"].values()), key=np.mean)
            oth2.append(o2)
        c = ex_post_bound(oth2, triples=False)["convex"]
        row["minimax"] = ratio_dm(m, np.exp(sum(w * m["L"][k] for k, w in c["weights"].items()))) + (c["weights"],)
        rows.append(row)
    return rows


def ratio_dm_rows(o: dict, rows: np.ndarray, h: np.ndarray) -> float:
    return float(dm_.qlike_rows(o["v"][rows], h[rows]).mean() / _best_q(o, rows))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="+", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--activity", action="store_true", help="section 2 also with trade-count, traded-volume and spread "
                    "predictors (n10 .. s160) in the family")
    a = ap.parse_args()
    ms = [load(p) for p in a.data]
    short = [m for m in ms if m["short"]]
    chk = max(check_product_tick(m) for m in ms)
    print(f"t40_300 vs the product's tick baseline (BaselineState): max relative difference {chk:.2e}\n")
    d = diagnose(ms)
    print("1. Level or dynamics? QLIKE ratio to the best baseline on the test rows\n")
    print("| market | best baseline | tick baseline | x best constant c (c) | flat at the test mean |\n|---|---|---|---|---|")
    for r in d:
        print(f"| {r['market']} | {r['best']} | {r['tick']:.3f} | {r['tick_c']:.3f} ({r['c']:.2f}) | {r['flat']:.3f} |")
    b = ex_post_bound(short)
    for k, what in (("convex", "no intercept"), ("convex_scaled", "and a free scale (intercept)")):
        c = b[k]
        print(f"\n2. Ex-post bound over {len(short)} short captures: the convex log pool of the {len(ms[0]['L'])} predictors "
              f"(weights >= 0 summing to 1, {what}, fitted on the test rows) with the lowest worst ratio: worst {c['worst']:.3f} "
              f"(solver ok: {c['success']}); per market {[round(x, 3) for x in c['ratios']]}; weights {c['weights']}, "
              f"intercept {c['intercept']:.3f}")
    print(f"   best pool of three (0.1 grid, no intercept): worst {b['best3_max']:.3f} {b['best3']} "
          f"{[round(x, 3) for x in b['best3_ratios']]}\n")
    if a.activity:
        act = ex_post_bound([load(m["ds_path"], activity=True) for m in short], triples=False)
        for k in ("convex", "convex_scaled"):
            c = act[k]
            print(f"   with the activity predictors ({k}): worst {c['worst']:.3f} {[round(x, 3) for x in c['ratios']]} {c['weights']}")
        b["activity"] = act
    nr = nested(short)
    print("3. Nested candidates: ratio to the best baseline (DM p) [choice on the other markets]\n")
    print("| market | best baseline | tick (round 1) | credibility ratio | combo_tick | online weights | minimax pool |\n"
          "|---|---|---|---|---|---|---|")
    for r in nr:
        print(f"| {r['market']} | {r['best_qlike']:.4f} ({r['best']}) | {r['tick'][0]:.3f} ({r['tick'][1]:.2g}) | "
              f"{r['cred'][0]:.3f} ({r['cred'][1]:.2g}) [n0 {r['cred'][2]:g}, prior {r['cred'][3]}] | "
              f"{r['combo_tick'][0]:.3f} ({r['combo_tick'][1]:.2g}) {r['combo_tick'][2]} | "
              f"{r['hedge'][0]:.3f} ({r['hedge'][1]:.2g}) {r['hedge'][2]} | {r['minimax'][0]:.3f} ({r['minimax'][1]:.2g}) |")
    for k in ("tick", "cred", "combo_tick", "hedge", "minimax"):
        x = np.array([r[k][0] for r in nr])
        print(f"{k}: wins on {int((x < 1).sum())} of {len(x)}, mean ratio {x.mean():.3f}, worst {x.max():.3f}")
    if a.json:
        a.json.write_text(json.dumps({"diagnosis": d, "bound": b, "nested": nr}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
