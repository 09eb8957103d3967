"""Several markets in one dataset, and the leave-one-market-out (LOMO) evaluation.

Each market (a recording: venue, symbol, span) gets its own features and targets on the
common grid and horizon, and its own standardisation, fitted on its own rows only:

* inputs: the :class:`~models.features.Normalizer` (z-scores; with ``--arch correction`` also
  the baselines of :mod:`models.baseline_inputs`, fitted on the market's own rows);
* targets: drift / the market's drift std, variance / its mean variance (bp^2), so one loss
  weighs every market alike.

With ``--arch correction`` every market uses the same variance baseline (by default the
combination, ``combo``), so that a correction learned on some markets means the same on
another; chosen per market (``--base auto``), "log V / V_best" would compare different things.

The standardised markets are stacked in time order of their starts. Training streams run
through the stack, so the recurrent state crosses from the end of one market into the
first rows of the next; those are the next market's warm-up rows (no loss), so nothing is
learned across the seam. No target spans two markets (targets are computed per market).

Leave-one-market-out (:func:`lomo`): for each market M, the model is trained on the other
markets and tested on M. A market whose span overlaps M's (captured at the same time, e.g.
the perpetual or another coin on the same venue) is used only up to M's test start, so it
cannot leak what happened on M's test span (correlated moves, shared volatility) into the
model; markets captured at other times are used whole. M's first ``calib_frac`` of usable rows (its
calibration prefix, not scored) is what M's standardisation (inputs, target scales) and
M's baselines are fitted on, the baselines being fitted on the same rows as the model's
standardisation; the model is never trained on M. Scores on M's remaining rows: QLIKE and
MSE of the variance, drift MSE, R^2 and macro F1, and Diebold-Mariano tests against the
baseline with the lowest test loss per head (the strongest comparison, chosen after the
fact).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from models import calibrate as cal
from models import dm as dm_
from models.features import FeatureConfig, Normalizer, offline_features
from models.targets import Horizon, variance_floor
from models.train import FitResult, Scales, TrainConfig, fit


@dataclass
class Market:
    """One market's dataset (features and targets on the common grid)."""

    name: str
    ds: cal.Dataset
    events: np.ndarray
    meta: dict

    @property
    def start_ns(self) -> int:
        return int(self.ds.ff.ts_ns[0])


def load_market(path: str | Path, fcfg: FeatureConfig, horizon: str, warmup: int, name: str | None = None,
                max_hours: float | None = None) -> Market:
    """A recording directory as a :class:`Market` (the first ``max_hours`` only, if given)."""
    ev, meta = cal.load_events(path)
    until = None
    if max_hours is not None:
        until = int(ev["local_ts"][0] + max_hours * 3600e9)
    ds = cal.build_dataset(ev, meta, fcfg, horizon, warmup, until_ns=until)
    nm = name or f"{meta.get('exchange')} {meta.get('market', '')} {meta.get('symbol')}".replace("  ", " ")
    return Market(nm, ds, ev, meta)


def _cut(m: Market, t_end_ns: int) -> cal.Dataset | None:
    """The market's dataset restricted to grid times < ``t_end_ns`` (targets end there too)."""
    ff = m.ds.ff
    n = int(np.searchsorted(ff.ts_ns, t_end_ns, side="left"))
    if n >= len(ff):
        return m.ds
    if n <= m.ds.warmup + 10:
        return None
    return cal.build_dataset(m.events, m.meta, ff.cfg, m.ds.tg.horizon, m.ds.warmup, ff=ff.slice(0, n),
                             until_ns=int(ff.ts_ns[n - 1]))


@dataclass
class _Std:
    """One market's standardised inputs and targets and what standardised them."""

    X: np.ndarray  # raw model inputs
    Z: np.ndarray  # standardised (offset columns: standardised baseline offsets)
    drift: np.ndarray  # standardised
    var: np.ndarray  # standardised (floor included)
    scales: Scales
    floor: float
    spec: object
    kw: dict
    norm: Normalizer  # the inputs' standardisation (fitted on the given rows only)


def _standardise(ds: cal.Dataset, cfg: TrainConfig, rows: np.ndarray) -> _Std:
    """Fit the market's standardisation (and baseline inputs) on ``rows`` and apply it."""
    floor = variance_floor(ds.tg.var[rows])
    X, kw, spec = cal.model_inputs(ds, cfg, rows, floor)
    span = np.zeros(ds.n, bool)
    span[ds.warmup : int(np.flatnonzero(rows)[-1]) + 1] = True
    norm = Normalizer.fit(X[span & np.all(np.isfinite(X), axis=1)])
    for j in kw.get("mask_cols", ()):
        norm.mean[j], norm.std[j] = 0.0, 1e30
    sc = Scales.fit(ds.tg.drift[rows], ds.tg.var[rows], floor)
    Z = norm.transform(X)
    oc = kw.get("offset_cols")
    if oc is not None:
        Z[:, oc[0]] = X[:, oc[0]] / sc.drift_scale
        Z[:, oc[1]] = X[:, oc[1]] - math.log(sc.var_scale)
    return _Std(X, Z, ds.tg.drift / sc.drift_scale, (ds.tg.var + floor) / sc.var_scale, sc, floor, spec, kw, norm)


def _identity(n: int, offset_cols) -> Normalizer:
    std = np.ones(n)
    if offset_cols is not None:
        std[list(offset_cols)] = 1e30  # offsets: added to the output, not seen by the network
    return Normalizer(np.zeros(n), std, 1e6)


def calib_rows(ds: cal.Dataset, calib_frac: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(calibration rows, test rows, first test row) of a market: the first ``calib_frac`` of
    its usable rows calibrate (no calibration target reaches into the test rows)."""
    use = ds.usable()
    u = np.flatnonzero(use)
    c_end = int(u[0]) + int((int(u[-1]) + 1 - int(u[0])) * calib_frac)
    idx = np.arange(ds.n)
    return use & (idx < c_end) & (ds.end_row < c_end), use & (idx >= c_end), c_end


def train_val_rows(ds: cal.Dataset, val_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of one market: the last ``val_frac`` of its usable rows
    validate; no training row's target reaches into them."""
    use = ds.usable()
    u = np.flatnonzero(use)
    v0 = int(u[0]) + int((int(u[-1]) + 1 - int(u[0])) * (1.0 - val_frac))
    idx = np.arange(ds.n)
    return use & (idx < v0) & (ds.end_row < v0), use & (idx >= v0)


def fit_markets(datasets: list[cal.Dataset], cfg: TrainConfig, progress: bool = False, label: str = "markets",
                stds_out: list | None = None, balance: bool = False) -> tuple[FitResult, dict]:
    """Train one network on several markets (each standardised on its own rows; the last
    ``cfg.val_frac`` of each market's usable rows for early stopping). Returns the fit (its
    normaliser is the identity: inputs must be standardised per market) and the kwargs.
    ``stds_out``: if given, each market's :class:`_Std` (its standardisation) is appended.
    ``balance``: every market's rows weigh alike in the losses (weight = mean rows per market /
    the market's rows), instead of a long market dominating."""
    Zs, ds_, vs_, tr_, va_ = [], [], [], [], []
    kw: dict = {}
    for ds in datasets:
        tr, va = train_val_rows(ds, cfg.val_frac)
        st = _standardise(ds, cfg, tr | va)
        if stds_out is not None:
            stds_out.append(st)
        kw = st.kw
        Zs.append(st.Z)
        ds_.append(st.drift)
        vs_.append(st.var)
        tr_.append(tr)
        va_.append(va)
    Z = np.vstack(Zs)
    oc = kw.get("offset_cols")
    rw = None
    if balance:
        n_m = np.array([max(int(t.sum() + v.sum()), 1) for t, v in zip(tr_, va_)], float)
        rw = np.concatenate([np.full(len(t), n_m.mean() / n) for t, n in zip(tr_, n_m)])
    res = fit(Z, np.concatenate(ds_), np.concatenate(vs_), np.concatenate(tr_), np.concatenate(va_), len(Z), cfg, 0.0,
              progress=progress, label=label, offset_cols=oc, normalizer=_identity(Z.shape[1], oc),
              scales=Scales(1.0, 1.0, 0.0), row_weight=rw)
    return res, kw


SHRINK_GRID = np.linspace(0.0, 1.0, 11)


def fit_shrink(y_var: np.ndarray, log_base: np.ndarray, log_model: np.ndarray, y_drift: np.ndarray,
               mu_base: np.ndarray, mu_model: np.ndarray, floor: float) -> tuple[float, float]:
    """Shrinkage of the correction towards its baseline, fitted on calibration rows: the
    weights ``a_v``, ``a_d`` in [0, 1] (grid of 0.1) of ``log V = log V_base + a_v (log V_model -
    log V_base)`` with the lowest QLIKE and ``mu = mu_base + a_d (mu_model - mu_base)`` with the
    lowest MSE. 0 = the baseline alone: a market on which the correction does not help on its own
    first rows gets none. Units: variances bp^2 (logs of), drifts bp."""
    v = y_var + floor
    c = log_model - log_base
    ql = [float(np.mean(dm_.qlike_rows(v, np.exp(log_base + a * c)))) for a in SHRINK_GRID]
    d = mu_model - mu_base
    ms = [float(np.mean((y_drift - mu_base - a * d) ** 2)) for a in SHRINK_GRID]
    return float(SHRINK_GRID[int(np.argmin(ql))]), float(SHRINK_GRID[int(np.argmin(ms))])


GATE_CANDIDATES = ("ewma", "ewma_fit")  # baselines whose calibration-row QLIKE is (nearly) out of sample
GATE_STEP = 0.1


def fit_gate(y_var: np.ndarray, logs: list[np.ndarray], floor: float) -> list[float]:
    """Weights (non-negative, summing to 1, on a grid of ``GATE_STEP``) of a geometric
    combination ``log V = sum_i w_i log V_i`` of the candidate forecasts ``logs`` (log bp^2) with
    the lowest QLIKE on the given (calibration) rows. The first candidate is the model; the
    others the baselines of ``GATE_CANDIDATES``."""
    v = y_var + floor
    k = len(logs)
    n = int(round(1.0 / GATE_STEP))
    best, bw = math.inf, [1.0] + [0.0] * (k - 1)

    def rec(prefix: list[int], left: int):
        nonlocal best, bw
        if len(prefix) == k - 1:
            w = [x / n for x in prefix + [left]]
            q = float(np.mean(dm_.qlike_rows(v, np.exp(sum(wi * li for wi, li in zip(w, logs))))))
            if q < best - 1e-12:
                best, bw = q, w
            return
        for i in range(left, -1, -1):
            rec(prefix + [i], left - i)

    rec([], n)
    return bw


def lomo(markets: list[Market], cfg: TrainConfig, calib_frac: float = 0.3, log=None, progress: bool = False,
         shrink: bool = False, gate: bool = False, balance: bool = False) -> list[dict]:
    """Leave-one-market-out evaluation (see the module docstring); one result dict per market.
    ``shrink`` (correction arch): the correction on the held-out market is shrunk towards its
    baseline by weights fitted on its calibration rows (:func:`fit_shrink`), never on test rows.
    ``gate``: the volatility forecast is then the geometric combination of the model and the
    EWMA baselines with weights fitted on the calibration rows (:func:`fit_gate`)."""
    markets = sorted(markets, key=lambda m: m.start_ns)
    out = []
    for held in markets:
        t = time.perf_counter()
        ds = held.ds
        calib, test, c_end = calib_rows(ds, calib_frac)
        t_test = int(ds.ff.ts_ns[c_end])
        train_sets, used = [], []
        for m in markets:
            if m is held:
                continue
            t_end = int(ds.ff.ts_ns[-1])
            overlaps = m.start_ns <= t_end and int(m.ds.ff.ts_ns[-1]) >= held.start_ns
            d = _cut(m, t_test) if overlaps else m.ds
            if d is not None and d.usable().sum() > 50:
                train_sets.append(d)
                used.append(m.name if d is m.ds else f"{m.name} (before the test start)")
        row = {"market": held.name, "test_rows": int(test.sum()), "calib_rows": int(calib.sum()), "trained_on": used}
        if not train_sets or test.sum() < 20 or calib.sum() < 20:
            row["error"] = "no training market outside its test span" if not train_sets else "too few rows"
            out.append(row)
            continue
        res, kw = fit_markets(train_sets, cfg, progress=progress, label=f"without {held.name}", balance=balance)
        st = _standardise(ds, cfg, calib)
        mu_s, var_s = res.predict(st.Z)
        mu = mu_s * st.scales.drift_scale
        var = var_s * st.scales.var_scale
        floor = st.floor
        oc = st.kw.get("offset_cols")
        raw = None
        if shrink and oc is not None:
            lb, mb = st.X[:, oc[1]], st.X[:, oc[0]]
            if not res.net.drift_offset:  # drift head "plain": shrink the drift towards zero drift
                mb = np.zeros_like(mb)
            a_v, a_d = fit_shrink(ds.tg.var[calib], lb[calib], np.log(var[calib]), ds.tg.drift[calib], mb[calib],
                                  mu[calib], floor)
            raw = (var, mu)
            var = np.exp(lb + a_v * (np.log(var) - lb))
            mu = mb + a_d * (mu - mb)
            row["shrink"] = {"vol": a_v, "drift": a_d}
        b = cal.fit_baselines(ds, calib, floor)
        if gate:
            if raw is None:
                raw = (var, mu)
            logs = [np.log(var)] + [np.log(b["var"][k]) for k in GATE_CANDIDATES]
            w = fit_gate(ds.tg.var[calib], [x[calib] for x in logs], floor)
            var = np.exp(sum(wi * li for wi, li in zip(w, logs)))
            row["gate"] = dict(zip(("model",) + GATE_CANDIDATES, w))
        v, y = ds.tg.var[test], ds.tg.drift[test]
        tau = cal.fit_tau(ds.tg.drift[calib], mu[calib])
        met = {"model": {**cal.vol_metrics(v, var[test], floor), **cal.drift_metrics(y, mu[test], cal.classify(mu[test], tau))}}
        losses = {"qlike": {"model": dm_.qlike_rows(v + floor, var[test])}, "sqerr": {"model": (y - mu[test]) ** 2}}
        if raw is not None:  # the same model without the shrinkage
            row["unshrunk"] = {"qlike": cal.vol_metrics(v, raw[0][test], floor)["qlike"],
                               "mse": float(np.mean((y - raw[1][test]) ** 2))}
        if oc is not None:  # the correction model's own baseline, without the correction
            met["own_baseline"] = {**cal.vol_metrics(v, np.exp(st.X[test, oc[1]]), floor),
                                   **cal.drift_metrics(y, st.X[test, oc[0]], cal.classify(st.X[test, oc[0]], tau))}
        for name, h in b["var"].items():
            met[name] = cal.vol_metrics(v, h[test], floor)
            losses["qlike"][name] = dm_.qlike_rows(v + floor, h[test])
        for name, mb in b["drift"].items():
            met.setdefault(name, {}).update(cal.drift_metrics(y, mb[test], b["cls"][name][test]))
            losses["sqerr"][name] = (y - mb[test]) ** 2
        H = ds.horizon(calib)[0]
        best_v = min((k for k in cal.VOL_MODELS if k in met and k != "lstm"), key=lambda k: met[k]["qlike"])  # ex post
        best_d = min((k for k in cal.DRIFT_MODELS if k in met and k != "lstm"), key=lambda k: met[k]["mse"])
        row.update(metrics=met, best_vol=best_v, best_drift=best_d, epochs=res.best_epoch,
                   dm_vol=dm_.diebold_mariano(losses["qlike"]["model"], losses["qlike"][best_v], H),
                   dm_drift=dm_.diebold_mariano(losses["sqerr"]["model"], losses["sqerr"][best_d], H),
                   corr_baseline=getattr(st.spec, "best", None), seconds=round(time.perf_counter() - t, 1))
        out.append(row)
        if log is not None:
            log(f"{held.name}: QLIKE model {met['model']['qlike']:.4f} vs {best_v} {met[best_v]['qlike']:.4f} "
                f"(DM p {row['dm_vol']['p']:.3g}); drift MSE {met['model']['mse']:.4g} vs {best_d} {met[best_d]['mse']:.4g}; "
                f"{row['seconds']} s")
    return out


_SHORT = {"ewma": "EWMA 0.94", "ewma_fit": "EWMA fit", "garch": "GARCH", "har": "HAR-RV", "zero": "zero",
          "ofi_linear": "OFI lin.", "imb_logistic": "imb. logit"}


def lomo_table(rows: list[dict], arch: str) -> str:
    """Markdown tables of :func:`lomo`'s results (volatility, drift), with a summary line."""
    L = [f"Volatility ({arch}): QLIKE on each held-out market's test rows", "",
         "| held-out market | test rows | model | its own baseline | EWMA 0.94 | EWMA fit | GARCH | HAR-RV | best baseline | model / best | DM | p |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios, dwins = [], 0
    ok = [r for r in rows if "metrics" in r]
    for r in rows:
        if "metrics" not in r:
            L.append(f"| {r['market']} | {r['test_rows']} | {r.get('error')} | | | | | | | | | |")
            continue
        m = r["metrics"]
        b = r["best_vol"]
        ratio = m["model"]["qlike"] / m[b]["qlike"]
        ratios.append(ratio)
        d = r["dm_vol"]
        own = f"{m['own_baseline']['qlike']:.4f} ({r.get('corr_baseline')})" if "own_baseline" in m else "-"
        L.append(f"| {r['market']} | {r['test_rows']} | {m['model']['qlike']:.4f} | {own} | {m['ewma']['qlike']:.4f} | {m['ewma_fit']['qlike']:.4f} | "
                 f"{m['garch']['qlike']:.4f} | {m['har']['qlike']:.4f} | {_SHORT[b]} | {ratio:.3f} | {d['dm']:+.2f} | {d['p']:.3g} |")
    L += ["", f"Drift ({arch}): MSE (bp^2) and macro F1 (3 classes, dead zone fitted on the calibration prefix)", "",
          "| held-out market | model MSE | zero | OFI lin. | imb. logit | best baseline | DM | p | model R^2 | model F1 | best F1 |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ok:
        m = r["metrics"]
        b = r["best_drift"]
        d = r["dm_drift"]
        if m["model"]["mse"] < m["zero"]["mse"] and m["model"]["mse"] < m["ofi_linear"]["mse"]:
            dwins += 1
        bf = max((k for k in cal.DRIFT_MODELS if k in m and k != "lstm"), key=lambda k: m[k]["f1"])
        L.append(f"| {r['market']} | {m['model']['mse']:.4g} | {m['zero']['mse']:.4g} | {m['ofi_linear']['mse']:.4g} | "
                 f"{m['imb_logistic']['mse']:.4g} | {_SHORT[b]} | {d['dm']:+.2f} | {d['p']:.3g} | {m['model']['r2']:+.4f} | "
                 f"{m['model']['f1']:.3f} | "
                 f"{m[bf]['f1']:.3f} ({_SHORT[bf]}) |")
    if ratios:
        vw = sum(x < 1 for x in ratios)
        L += ["", f"Volatility: the model beats the best baseline on {vw} of {len(ratios)} held-out markets; mean "
                  f"QLIKE ratio model / best baseline {np.mean(ratios):.3f}. Drift: the model beats both zero drift and "
                  f"the OFI regression on MSE on {dwins} of {len(ok)} markets."]
    return "\n".join(L)


def arch_label(cfg: TrainConfig) -> str:
    """The architecture as the LOMO tables name it: ``plain``, ``correction`` or ``correction,
    drift head plain``."""
    if cfg.arch == "correction" and cfg.drift_head != "correction":
        return f"{cfg.arch}, drift head {cfg.drift_head}"
    return cfg.arch


def lomo_command(data: list[Path], arch: str = "correction", sample_s: float = 1.0, horizon: str = "10s",
                 rv_windows: str = "10,60", hidden: int = 8, lookback: int = 128, max_epochs: int = 30,
                 calib_frac: float = 0.3, max_hours: float | None = None, seed: int = 0, threads: int = 1,
                 progress: bool = False, log=print, dropout: float = 0.26, lr: float = 2.5e-3,
                 weight_decay: float = 4.3e-3, corr_l2: float = 1.0, patience: int = 8,
                 base: str = "combo", shrink: bool = False, gate: bool = False,
                 corr_l2_drift: float | None = None, balance: bool = False, tick_rv: bool = False,
                 drift_head: str = TrainConfig.drift_head) -> tuple[list[dict], str]:
    """Load the recordings, run :func:`lomo`, return (results, markdown table). The defaults
    are the shipped model's hyperparameters (found by its Optuna search on Bitstamp). ``tick_rv``:
    the intra-second features and baseline (:class:`models.features.FeatureConfig`)."""
    fcfg = FeatureConfig(sample_s=sample_s, rv_windows=tuple(int(w) for w in rv_windows.split(",")), tick_rv=tick_rv)
    cfg = TrainConfig(hidden=hidden, lookback=lookback, max_epochs=max_epochs, patience=patience, batch=16, arch=arch,
                      seed=seed, threads=threads, dropout=dropout, lr=lr, weight_decay=weight_decay, corr_l2=corr_l2, corr_l2_drift=corr_l2_drift,
                      base=base, drift_head=drift_head)
    warmup = max(max(fcfg.rv_windows), lookback)
    Horizon.parse(horizon)
    markets = []
    for p in data:
        m = load_market(p, fcfg, horizon, warmup, name=Path(p).name, max_hours=max_hours)
        log(f"{m.name}: {m.ds.n} rows, {int(m.ds.usable().sum())} usable")
        markets.append(m)
    rows = lomo(markets, cfg, calib_frac, log=log, progress=progress, shrink=shrink, gate=gate, balance=balance)
    return rows, lomo_table(rows, arch_label(cfg))


if __name__ == "__main__":  # python -m models.multimarket REC... [--arch plain|correction]
    import argparse
    import json

    ap = argparse.ArgumentParser(description="leave-one-market-out evaluation of the forecaster")
    ap.add_argument("data", nargs="+", type=Path)
    ap.add_argument("--arch", default="correction")
    ap.add_argument("--sample-s", type=float, default=1.0)
    ap.add_argument("--horizon", default="10s")
    ap.add_argument("--rv-windows", default="10,60")
    ap.add_argument("--hidden", type=int, default=8)
    ap.add_argument("--lookback", type=int, default=128)
    ap.add_argument("--max-epochs", type=int, default=30)
    ap.add_argument("--corr-l2", type=float, default=1.0)
    ap.add_argument("--corr-l2-drift", type=float, default=None, help="the drift correction's L2, or with --drift-head "
                    "plain the drift's own, towards zero drift (default: --corr-l2)")
    ap.add_argument("--base", default="combo", help="correction arch: the variance baseline of every market (auto = chosen per market)")
    ap.add_argument("--drift-head", choices=("correction", "plain"), default=TrainConfig.drift_head,
                    help="correction arch: the drift head corrects the OFI regression (correction) or predicts the drift "
                    "itself (plain); the volatility head stays a correction")
    ap.add_argument("--calib-frac", type=float, default=0.3)
    ap.add_argument("--max-hours", type=float, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--balance", action="store_true", help="every market weighs alike in the training loss")
    ap.add_argument("--tick-rv", action="store_true", help="intra-second features (tick-level realised variance) "
                    "and the tick baseline (--base tick | auto_tick)")
    ap.add_argument("--gate", action="store_true", help="volatility: combine the model with the EWMAs, weights fitted "
                    "on each held-out market's calibration rows")
    ap.add_argument("--shrink", action="store_true", help="correction arch: shrink the correction towards its baseline "
                    "by weights fitted on each held-out market's calibration rows")
    a = ap.parse_args()
    rows, table = lomo_command(a.data, a.arch, a.sample_s, a.horizon, a.rv_windows, a.hidden, a.lookback, a.max_epochs,
                               a.calib_frac, a.max_hours, corr_l2=a.corr_l2, base=a.base, shrink=a.shrink, gate=a.gate,
                               corr_l2_drift=a.corr_l2_drift, balance=a.balance, tick_rv=a.tick_rv,
                               drift_head=a.drift_head)
    print(table)
    if a.json:
        a.json.write_text(json.dumps(rows, default=float, indent=1))
