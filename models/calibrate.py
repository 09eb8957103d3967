"""Calibration: datasets, walk-forward cross-validation of the LSTM against the baselines,
metrics, and the Optuna (TPE) hyperparameter search.

Walk-forward. The usable rows (after the feature warm-up, with a target) are split in time:
an initial training window (``initial_frac`` of the rows) and ``n_folds`` equal test blocks
after it. Fold i trains on everything before its test block (``expanding``) or on the
``initial_frac`` window just before it (``rolling``), keeps the last ``val_frac`` of that
span for early stopping, and is scored on its test block. Purging: a training (validation)
row is used only if its target's horizon ends before the validation (test) span starts,
so no target overlaps later data. Normalisation statistics, target scales and every
baseline are fitted on the fold's training rows only; so is an event horizon's length in
seconds and grid rows (the median over the training rows, :meth:`Dataset.horizon`).

Metrics, on the test rows of each fold:

* variance (targets v and forecasts h both in bp^2, with the training variance floor added
  to both): ``qlike`` = mean(v/h - log(v/h) - 1) and ``mse_var`` = mean((v - h)^2);
* drift (bp): ``mse``, ``r2`` = 1 - SSE / sum((y - mean y)^2) (out of sample; negative when
  worse than the test mean), ``dir_acc`` = over rows where the mid moved, the share of
  forecasts with the right sign (a 0 forecast counts 1/2), ``f1`` = macro F1 over the three
  classes down / unchanged / up. A regression forecast is turned into a class with a dead
  zone |mu| < tau, tau chosen on the training rows for the best macro F1.

Optuna: TPE over hidden size, lookback (truncated-BPTT length), learning rate, dropout, weight
decay and horizon, scored on the initial training window only (inner walk-forward with 2 folds), so
the outer test folds stay out of sample. The objective is horizon-free: QLIKE of the LSTM
over QLIKE of the HAR-RV baseline (the strongest simple one on our data) plus drift MSE of
the LSTM over the mean squared drift (the zero forecast's MSE).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from models import baselines as bl
from models import dm as dm_
from models.features import FeatureConfig, FeatureFrame, offline_features
from models.targets import Horizon, Targets, direction_classes, make_targets, variance_floor
from models.train import FitResult, TrainConfig, fit

VOL_MODELS = ("lstm", "ewma", "ewma_fit", "garch", "har")
DRIFT_MODELS = ("lstm", "zero", "ofi_linear", "imb_logistic")


# ----------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """Features and targets of one recording on the grid."""

    ff: FeatureFrame
    tg: Targets
    end_row: np.ndarray  # per row, the grid row at which its target's horizon ends
    warmup: int
    meta: dict = field(default_factory=dict)
    events: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.ff)

    def horizon(self, rows: np.ndarray) -> tuple[int, float]:
        """(grid rows, seconds) of the horizon for a model fitted on ``rows`` (a boolean mask).

        A seconds horizon is fixed. An event horizon's length varies per row: it is the median
        duration over ``rows``, which must be training rows only (never test rows, never rows
        after the span being fitted), so that nothing fitted depends on later data."""
        hz = self.tg.horizon
        if hz.unit == "s":
            return hz.steps(self.ff.cfg.sample_s), hz.value
        hs = self.tg.horizon_s(rows)
        if not math.isfinite(hs):
            raise ValueError(f"no rows with an {hz} target to measure the horizon's length on")
        return max(1, int(round(hs / self.ff.cfg.sample_s))), hs

    def usable(self) -> np.ndarray:
        m = self.tg.valid.copy()
        m[: self.warmup] = False
        return m


def load_events(path: str | Path, since_ns: int | None = None, until_ns: int | None = None):
    """(events, meta) of a recording directory."""
    from bot.errors import DataError
    from bot.recording.io import open_recording

    p = Path(path)
    if not p.is_dir():
        raise DataError(f"{p}: not a recording directory (import raw data first: mmbot import ...)")
    rec = open_recording(p)
    ev = rec.events()
    if len(ev) == 0:
        raise DataError(f"{p}: the recording holds no events")
    return ev, dict(rec.meta)


def build_dataset(events: np.ndarray, meta: dict, fcfg: FeatureConfig, horizon: "Horizon | str", warmup: int,
                  since_ns: int | None = None, until_ns: int | None = None, ff: FeatureFrame | None = None) -> Dataset:
    """Features (``ff`` if given, else computed over [since, until]) and targets. Targets end
    at the span's end (``until_ns`` and ``ff``'s last grid time): with ``--until`` no target
    sees the recording after the cut, for seconds and event horizons alike."""
    hz = Horizon.parse(horizon)
    tick = meta.get("tick_size")
    if ff is None:
        ff = offline_features(events, fcfg, tick, t_start_ns=since_ns, t_end_ns=until_ns)
    tg = make_targets(ff, hz, events, tick, end_ns=until_ns)
    n = len(ff)
    if hz.unit == "s":
        end_row = np.arange(n) + hz.steps(fcfg.sample_s)
    else:
        end_t = ff.ts_ns + np.nan_to_num(tg.duration_s * 1e9, nan=np.inf).clip(max=9e18).astype(np.int64)
        end_row = np.searchsorted(ff.ts_ns, end_t, side="left")
    return Dataset(ff, tg, end_row, warmup, meta, events if hz.unit != "s" else None)


# ----------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------
def f1_macro(y: np.ndarray, p: np.ndarray) -> float:
    f = []
    for c in (-1, 0, 1):
        tp = np.sum((p == c) & (y == c))
        fp = np.sum((p == c) & (y != c))
        fn = np.sum((p != c) & (y == c))
        f.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f))


def dir_accuracy(y: np.ndarray, mu: np.ndarray) -> float:
    moved = np.abs(y) > 1e-6
    if not moved.any():
        return float("nan")
    s = np.sign(mu[moved])
    t = np.sign(y[moved])
    return float(np.mean(np.where(s == 0, 0.5, (s == t).astype(float))))


def classify(mu: np.ndarray, tau: float) -> np.ndarray:
    return np.where(mu > tau, 1, np.where(mu < -tau, -1, 0))


def fit_tau(y: np.ndarray, mu: np.ndarray) -> float:
    """Dead zone of a regression forecast with the best macro F1 on (training) rows."""
    a = np.abs(mu)
    if len(a) == 0 or not np.any(a > 0):
        return 0.0
    cands = np.unique(np.quantile(a, np.linspace(0.0, 0.99, 34)))
    cls = direction_classes(y)
    best = (-1.0, 0.0)
    for t in cands:
        f = f1_macro(cls, classify(mu, t))
        if f > best[0]:
            best = (f, float(t))
    return best[1]


def vol_metrics(v: np.ndarray, h: np.ndarray, floor: float) -> dict:
    vv = v + floor
    return {"qlike": bl.qlike(vv, h), "mse_var": float(np.mean((vv - h) ** 2))}


def drift_metrics(y: np.ndarray, mu: np.ndarray, cls_pred: np.ndarray) -> dict:
    sse = float(np.sum((y - mu) ** 2))
    sst = float(np.sum((y - y.mean()) ** 2))
    return {"mse": sse / len(y), "r2": 1.0 - sse / sst if sst > 0 else float("nan"),
            "dir_acc": dir_accuracy(y, mu), "f1": f1_macro(direction_classes(y), cls_pred)}


# ----------------------------------------------------------------------------------------
# folds
# ----------------------------------------------------------------------------------------
@dataclass
class Fold:
    index: int
    train: tuple[int, int]  # [start, end) rows of the training span (incl. validation)
    val_start: int
    test: tuple[int, int]


def make_folds(ds: Dataset, n_folds: int, initial_frac: float = 0.5, scheme: str = "expanding",
               val_frac: float = 0.15, span: tuple[int, int] | None = None) -> list[Fold]:
    if scheme not in ("expanding", "rolling"):
        raise ValueError("scheme must be 'expanding' or 'rolling'")
    use = np.flatnonzero(ds.usable())
    if len(use) == 0:
        raise ValueError("no usable rows (recording too short for the warm-up and horizon?)")
    a, b = (int(use[0]), int(use[-1]) + 1) if span is None else span
    n = b - a
    init = int(n * initial_frac)
    step = (n - init) // n_folds
    if init < 10 or step < 10:
        raise ValueError(f"too few rows ({n}) for {n_folds} folds")
    folds = []
    for i in range(n_folds):
        s = a + init + i * step
        e = s + step if i < n_folds - 1 else b
        t0 = a if scheme == "expanding" else max(a, s - init)
        v0 = s - int((s - t0) * val_frac)
        folds.append(Fold(i + 1, (t0, s), v0, (s, e)))
    return folds


def _masks(ds: Dataset, t0: int, v0: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation loss rows with purged horizons."""
    use = ds.usable()
    idx = np.arange(ds.n)
    tr = use & (idx >= t0) & (idx < v0) & (ds.end_row < v0)
    va = use & (idx >= v0) & (idx < s) & (ds.end_row < s)
    return tr, va


# ----------------------------------------------------------------------------------------
# one fold: LSTM and baselines
# ----------------------------------------------------------------------------------------
@dataclass
class FoldResult:
    fold: Fold
    metrics: dict  # model -> metric -> value
    lstm_epochs: int
    lstm_seconds: float
    baselines_info: dict
    series: dict | None = None  # test-row series for plots (last fold)
    history: list = field(default_factory=list)
    losses: dict = field(default_factory=dict)  # "qlike"/"sqerr" -> model -> per test row loss
    horizon_rows: int = 1


def fit_baselines(ds: Dataset, tr: np.ndarray, floor: float | None = None) -> dict:
    """Fit every baseline on training rows ``tr``; returns forecasts for all rows (variance
    forecasts include the floor) and info."""
    ff, tg = ds.ff, ds.tg
    H, _ = ds.horizon(tr)  # events: the median length over these training rows only
    ret = ff.ret_bp
    r2 = ret * ret
    sample_s = ff.cfg.sample_s
    if floor is None:
        floor = variance_floor(tg.var[tr])
    fit_rows = np.zeros(ds.n, bool)
    fit_rows[: int(np.flatnonzero(tr)[-1]) + 1] = True
    fit_rows[: ds.warmup] = False
    init = float(np.mean(r2[fit_rows])) if fit_rows.any() else 1.0
    out: dict = {"floor": floor, "var": {}, "drift": {}, "cls": {}, "info": {}}
    lam = bl.ewma_lambda(sample_s)
    out["var"]["ewma"] = bl.ewma_var(r2, lam, H, init) + floor
    hl = bl.fit_ewma_halflife(r2, tg.var, tr, H, sample_s, floor, init)
    lam_fit = bl.lambda_from_halflife(hl, sample_s)
    out["var"]["ewma_fit"] = bl.ewma_var(r2, lam_fit, H, init) + floor
    out["info"]["ewma"] = {"lambda_per_row": lam, "halflife_s": math.log(0.5) / math.log(lam) * sample_s}
    out["info"]["ewma_fit"] = {"lambda_per_row": lam_fit, "halflife_s": hl}
    try:
        g = bl.Garch.fit(ret[fit_rows])
        out["var"]["garch"] = g.var(ret, H) + floor
        out["info"]["garch"] = g.to_dict()
    except Exception as e:  # noqa: BLE001 - report a failed fit, do not stop the run
        out["var"]["garch"] = out["var"]["ewma"]
        out["info"]["garch"] = {"error": f"fit failed ({e}); EWMA used in its place"}
    har = bl.Har.fit(r2, tg.var, tr, H)
    out["var"]["har"] = har.var(r2, 0.0) + floor
    out["info"]["har"] = {"coef": [float(c) for c in har.coef]}
    y = tg.drift
    out["drift"]["zero"] = np.zeros(ds.n)
    out["cls"]["zero"] = np.zeros(ds.n, int)
    names = ff.names
    ofi = bl.OfiLinear.fit(ff.X, y, tr, names.index("ofi"), H)
    mu = ofi.predict(ff.X)
    out["drift"]["ofi_linear"] = mu
    out["cls"]["ofi_linear"] = classify(mu, fit_tau(y[tr], mu[tr]))
    out["info"]["ofi_linear"] = {"coef": [float(c) for c in ofi.coef]}
    cols = [names.index(c) for c in names if c.startswith("imb_")] + [names.index("micro_off")]
    lg = bl.ImbLogistic.fit(ff.X, y, tr, cols)
    mu, cls = lg.predict(ff.X)
    out["drift"]["imb_logistic"] = mu
    out["cls"]["imb_logistic"] = cls
    out["info"]["imb_logistic"] = {"class_drift_bp": [float(c) for c in lg.class_drift]}
    return out


def run_fold(ds: Dataset, fold: Fold, cfg: TrainConfig, progress: bool = False, keep_series: bool = False,
             baselines: bool = True) -> tuple[FoldResult, FitResult]:
    t0, s = fold.train
    tr, va = _masks(ds, t0, fold.val_start, s)
    if tr.sum() < 10:
        raise ValueError(f"fold {fold.index}: too few training rows")
    floor = variance_floor(ds.tg.var[tr])
    X, kw, spec = model_inputs(ds, cfg, tr | va, floor, t0)
    res = fit(X, ds.tg.drift, ds.tg.var, tr, va, fold.val_start, cfg, floor, stream_start=t0,
              warmup=ds.warmup, progress=progress, label=f"fold {fold.index}", **kw)
    mu, var = res.predict(X)
    a, b = fold.test
    te = np.zeros(ds.n, bool)
    te[a:b] = True
    te &= ds.usable()
    y, v = ds.tg.drift[te], ds.tg.var[te]
    trv = tr | va
    metrics: dict = {}
    tau = fit_tau(ds.tg.drift[trv], mu[trv])
    lstm_m = vol_metrics(v, var[te], floor)
    lstm_m.update(drift_metrics(y, mu[te], classify(mu[te], tau)))
    metrics["lstm"] = lstm_m
    info = {}
    losses = {"qlike": {"lstm": dm_.qlike_rows(v + floor, var[te])}, "sqerr": {"lstm": (y - mu[te]) ** 2}}
    if baselines:
        b_ = fit_baselines(ds, trv, floor)
        for name, h in b_["var"].items():
            metrics[name] = vol_metrics(v, h[te], floor)
            losses["qlike"][name] = dm_.qlike_rows(v + floor, h[te])
        for name, m in b_["drift"].items():
            metrics.setdefault(name, {}).update(drift_metrics(y, m[te], b_["cls"][name][te]))
            losses["sqerr"][name] = (y - m[te]) ** 2
        info = b_["info"]
    if spec is not None:
        info["correction"] = {"best_var_baseline": spec.best, "best_epoch": res.best_epoch}
    series = None
    if keep_series:
        series = {"ts_ns": ds.ff.ts_ns[te], "var": v + floor, "lstm_var": var[te], "drift": y, "lstm_drift": mu[te]}
        if baselines:
            series.update({f"{k}_var": h[te] for k, h in b_["var"].items()})
    fr = FoldResult(fold, metrics, res.best_epoch, res.seconds, info, series, res.history, losses,
                    ds.horizon(trv)[0])
    return fr, res


def model_inputs(ds: Dataset, cfg: TrainConfig, rows: np.ndarray, floor: float, span_start: int = 0):
    """(input matrix, extra fit() arguments, baseline spec or None) for ``cfg.arch``.

    plain: the features. correction: the features and the baseline inputs
    (:mod:`models.baseline_inputs`), the baselines fitted on ``rows`` (training + validation
    rows of the fold; the best variance baseline is chosen on them too)."""
    if cfg.arch == "plain":
        return ds.ff.X, {}, None
    if cfg.arch != "correction":
        raise ValueError(f"arch must be 'plain' or 'correction', got {cfg.arch!r}")
    from models import baseline_inputs as bi

    ff = ds.ff
    H, _ = ds.horizon(rows)
    fit_rows = np.zeros(ds.n, bool)
    fit_rows[span_start : int(np.flatnonzero(rows)[-1]) + 1] = True
    fit_rows[: ds.warmup] = False
    spec = bi.fit_spec(ff.ret_bp, ff.X, ff.names.index("ofi"), ds.tg.var, ds.tg.drift, rows, fit_rows, H, floor,
                       ff.cfg.sample_s, ff.cfg.rv_windows, best=cfg.base, tick_units=ff.tick_units)
    X = bi.full_inputs(ff.X, spec, ff.names, ff.tick_units)
    return X, {"offset_cols": bi.offset_columns(ff.cfg), "mask_cols": bi.masked_columns(ff.cfg)}, spec


def walk_forward(ds: Dataset, cfg: TrainConfig, n_folds: int = 4, initial_frac: float = 0.5, scheme: str = "expanding",
                 progress: bool = False, log=None) -> list[FoldResult]:
    out = []
    folds = make_folds(ds, n_folds, initial_frac, scheme, cfg.val_frac)
    for f in folds:
        t = time.perf_counter()
        fr, _ = run_fold(ds, f, cfg, progress=progress, keep_series=(f.index == len(folds)))
        out.append(fr)
        if log is not None:
            m = fr.metrics
            log(f"fold {f.index}/{len(folds)}: test rows {f.test[0]}..{f.test[1]}, LSTM QLIKE {m['lstm']['qlike']:.4f} "
                f"(EWMA {m['ewma']['qlike']:.4f}, GARCH {m['garch']['qlike']:.4f}, HAR {m['har']['qlike']:.4f}), "
                f"drift R2 {m['lstm']['r2']:+.4f}, {time.perf_counter() - t:.1f} s")
    return out


def summarize(results: list[FoldResult]) -> dict:
    """Mean of every metric over folds, per model."""
    models: dict = {}
    for r in results:
        for name, m in r.metrics.items():
            for k, v in m.items():
                models.setdefault(name, {}).setdefault(k, []).append(v)
    return {name: {k: float(np.nanmean(v)) for k, v in ms.items()} for name, ms in models.items()}


# ----------------------------------------------------------------------------------------
# Optuna
# ----------------------------------------------------------------------------------------
def tune(events: np.ndarray, meta: dict, fcfg: FeatureConfig, base: TrainConfig, horizons: list[str], n_trials: int,
         initial_frac: float = 0.5, tune_epochs: int = 20, seed: int = 0, since_ns=None, until_ns=None,
         ff: FeatureFrame | None = None, log=None, timeout_s: float | None = None) -> tuple[TrainConfig, str, list[dict]]:
    """TPE search; returns (best TrainConfig, best horizon, trials table)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if ff is None:
        ff = offline_features(events, fcfg, meta.get("tick_size"), t_start_ns=since_ns, t_end_ns=until_ns)
    cache: dict = {}
    warm_max = max(fcfg.rv_windows)

    def dataset(h: str, lookback: int) -> Dataset:
        key = (h, lookback)
        if key not in cache:
            cache[key] = build_dataset(events, meta, fcfg, h, max(warm_max, lookback), ff=ff)
        return cache[key]

    def objective(trial) -> float:
        h = trial.suggest_categorical("horizon", list(horizons))
        cfg = replace(base, hidden=trial.suggest_categorical("hidden", [8, 16, 32, 64]),
                      lookback=trial.suggest_categorical("lookback", [16, 32, 64, 128]),
                      lr=trial.suggest_float("lr", 3e-4, 1e-2, log=True),
                      dropout=trial.suggest_float("dropout", 0.0, 0.4),
                      weight_decay=trial.suggest_float("weight_decay", 1e-5, 1e-1, log=True), max_epochs=tune_epochs,
                      patience=min(base.patience, 5))
        ds = dataset(h, cfg.lookback)
        use = np.flatnonzero(ds.usable())
        a = int(use[0])
        b = a + int((int(use[-1]) + 1 - a) * initial_frac)
        folds = make_folds(ds, 2, 0.5, "expanding", cfg.val_frac, span=(a, b))
        scores = []
        for f in folds:
            t0, s = f.train
            tr, va = _masks(ds, t0, f.val_start, s)
            floor = variance_floor(ds.tg.var[tr])
            X, kw, _ = model_inputs(ds, cfg, tr | va, floor, t0)
            res = fit(X, ds.tg.drift, ds.tg.var, tr, va, f.val_start, cfg, floor, stream_start=t0, warmup=ds.warmup, **kw)
            mu, var = res.predict(X)
            te = np.zeros(ds.n, bool)
            te[f.test[0] : f.test[1]] = True
            te &= ds.usable() & (ds.end_row < b)
            r2 = ds.ff.ret_bp ** 2
            har = bl.Har.fit(r2, ds.tg.var, tr | va, ds.horizon(tr | va)[0]).var(r2, 0.0) + floor
            v, y = ds.tg.var[te], ds.tg.drift[te]
            q = bl.qlike(v + floor, var[te]) / bl.qlike(v + floor, har[te])
            d = float(np.mean((y - mu[te]) ** 2) / np.mean(y**2)) if np.mean(y**2) > 0 else 1.0
            scores.append(q + d)
        score = float(np.mean(scores))
        if log is not None:
            log(f"trial {trial.number}: {trial.params} -> {score:.4f}")
        return score

    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.optimize(objective, n_trials=n_trials, timeout=timeout_s)
    bp = study.best_params
    best = replace(base, hidden=bp["hidden"], lookback=bp["lookback"], lr=bp["lr"], dropout=bp["dropout"],
                   weight_decay=bp["weight_decay"])
    trials = [{"number": t.number, "value": t.value, **t.params} for t in study.trials if t.value is not None]
    return best, bp["horizon"], trials


# ----------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------
_VOL_LABEL = {"lstm": "LSTM", "ewma": "EWMA (RiskMetrics 0.94/s)", "ewma_fit": "EWMA (fitted half-life)",
              "garch": "GARCH(1,1)", "har": "HAR-RV"}
_DRIFT_LABEL = {"lstm": "LSTM", "zero": "zero (random walk)", "ofi_linear": "linear on OFI",
                "imb_logistic": "logistic on imbalance"}


def _fmt(v: float, k: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if k in ("r2",):
        return f"{v:+.4f}"
    if k in ("dir_acc", "f1"):
        return f"{v:.3f}"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.3e}"
    return f"{v:.4f}"


def _best(s: dict, models, metric: str, lower: bool) -> str | None:
    """The baseline (not the LSTM) with the best mean ``metric``; NaN counts as worst."""
    cands = [m for m in models if m != "lstm" and m in s and metric in s[m]]
    if not cands:
        return None
    sign = 1.0 if lower else -1.0
    return min(cands, key=lambda m: sign * s[m][metric] if math.isfinite(s[m][metric]) else math.inf)


def _verdict_line(results: list[FoldResult], s: dict, what: str, models, labels: dict, metric: str, name: str,
                  lower: bool, unit: str = "") -> str | None:
    """One verdict sentence about one metric: the LSTM's mean against the best baseline's by
    that same metric, and in how many folds the LSTM is the best model by it."""
    b = _best(s, models, metric, lower)
    if b is None or metric not in s.get("lstm", {}):
        return None
    lv, bv = s["lstm"][metric], s[b][metric]
    better = (lv < bv) if lower else (lv > bv)

    def best_in(r: FoldResult) -> bool:
        others = [r.metrics[m][metric] for m in models if m != "lstm" and metric in r.metrics.get(m, {})]
        others = [o for o in others if math.isfinite(o)]
        x = r.metrics["lstm"][metric]
        return math.isfinite(x) and all((x < o) if lower else (x > o) for o in others)

    wins = sum(best_in(r) for r in results)
    group = "volatility" if models is VOL_MODELS else "drift"
    f = lambda v: _fmt(v, metric)  # noqa: E731
    return (f"{what}: the LSTM's mean {name} is {f(lv)}{unit} against {f(bv)} for the best baseline by {name} "
            f"({labels[b]}): {'better' if better else 'WORSE'} on average; the LSTM is the best {group} model by "
            f"{name} in {wins} of {len(results)} folds.")


def verdict(results: list[FoldResult]) -> list[str]:
    """Plain sentences: where the LSTM wins and where it loses, per fold and on average. One
    metric per sentence: each compares the LSTM with the baseline that is best by that metric."""
    s = summarize(results)
    specs = [("Volatility", VOL_MODELS, _VOL_LABEL, "qlike", "QLIKE", True, ""),
             ("Drift", DRIFT_MODELS, _DRIFT_LABEL, "mse", "MSE", True, " bp^2"),
             ("Drift", DRIFT_MODELS, _DRIFT_LABEL, "r2", "out-of-sample R^2", False, ""),
             ("Direction", DRIFT_MODELS, _DRIFT_LABEL, "dir_acc", "directional accuracy", False, ""),
             ("Direction", DRIFT_MODELS, _DRIFT_LABEL, "f1", "macro F1", False, "")]
    lines = [_verdict_line(results, s, *spec) for spec in specs]
    return [x for x in lines if x] + dm_lines(results)


def dm_tests(results: list[FoldResult]) -> dict:
    """Diebold-Mariano tests of the LSTM against the best baseline (by mean loss over the
    folds), per head, on the test rows of every fold pooled (Newey-West variance, lags at
    least the horizon's rows - 1): {"vol": {...}, "drift": {...}}, each with the baseline's
    name, the statistic, the two-sided p-value, the mean loss difference and the rows."""
    if not results or not results[0].losses:
        return {}
    s = summarize(results)
    out = {}
    for head, models, metric, loss in (("vol", VOL_MODELS, "qlike", "qlike"), ("drift", DRIFT_MODELS, "mse", "sqerr")):
        b = _best(s, models, metric, True)
        if b is None or any(b not in r.losses.get(loss, {}) for r in results):
            continue
        la = np.concatenate([r.losses[loss]["lstm"] for r in results])
        lb = np.concatenate([r.losses[loss][b] for r in results])
        H = max(r.horizon_rows for r in results)
        out[head] = {"baseline": b, **dm_.diebold_mariano(la, lb, H)}
    return out


def dm_lines(results: list[FoldResult]) -> list[str]:
    t = dm_tests(results)
    lines = []
    for head, what, labels, loss in (("vol", "Volatility", _VOL_LABEL, "QLIKE"), ("drift", "Drift", _DRIFT_LABEL, "squared error")):
        if head not in t:
            continue
        d = t[head]
        if not math.isfinite(d["dm"]):
            lines.append(f"{what}: Diebold-Mariano test against {labels[d['baseline']]} undefined ({d['n']} rows).")
            continue
        who = "the LSTM" if d["dm"] < 0 else labels[d["baseline"]]
        sig = "significant at 5 %" if d["p"] < 0.05 else "not significant at 5 %"
        lines.append(f"{what}: Diebold-Mariano test of the LSTM against {labels[d['baseline']]} on {loss} "
                     f"({d['n']} test rows, Newey-West, {d['lags']} lags): DM = {d['dm']:+.2f}, p = {d['p']:.3g} "
                     f"(two-sided): lower loss for {who}, {sig}.")
    return lines


def beats_baselines(results: list[FoldResult]) -> tuple[bool, str]:
    """Whether the walk-forward evaluation shows the LSTM beating the best baselines on both
    heads (mean QLIKE below the best volatility baseline's, mean drift MSE below the best drift
    baseline's), and a sentence saying why or why not. No evaluation: False."""
    if not results:
        return False, "it has no walk-forward evaluation (--folds 0, or fine-tuned with --init-from)"
    s = summarize(results)
    parts, wins = [], []
    for head, models, labels, metric, name in (("volatility", VOL_MODELS, _VOL_LABEL, "qlike", "QLIKE"),
                                               ("drift", DRIFT_MODELS, _DRIFT_LABEL, "mse", "MSE")):
        b = _best(s, models, metric, True)
        lv = s.get("lstm", {}).get(metric, float("nan"))
        if b is None:
            wins.append(False)
            parts.append(f"{head}: no baseline to compare with")
            continue
        bv = s[b][metric]
        ok = math.isfinite(lv) and lv < bv
        wins.append(ok)
        parts.append(f"{head} {name} {_fmt(lv, metric)} {'<' if ok else 'is not below'} {_fmt(bv, metric)} ({labels[b]})")
    if all(wins):
        return True, "it beats the best baselines in the walk-forward evaluation: " + "; ".join(parts)
    return False, "its walk-forward evaluation does not show it beating the best baselines: " + "; ".join(parts)


def write_report(out_dir: Path, *, title: str, command: str, meta: dict, results: list[FoldResult],
                 final: FitResult | None, trials: list[dict] | None = None, notes: list[str] | None = None,
                 registry_note: str | None = None) -> Path:
    """Markdown report + PNG plots into ``out_dir``; returns the report path. ``registry_note``:
    whether the model was made the registry's default, and why (shown under the title)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    L: list[str] = [f"# {title}", ""]
    if registry_note:
        L += [f"**{registry_note}**", ""]
    L += ["Reproduce:", "", "```sh", command, "```", ""]
    d = meta.get("data", {})
    L += ["## Data and setup", "",
          f"* data: `{d.get('source')}` ({d.get('exchange')} {d.get('symbol')}), {d.get('start')} to {d.get('end')}, "
          f"{d.get('rows')} grid rows of {meta.get('sample_s')} s",
          f"* horizon: {meta.get('horizon')} ({meta.get('horizon_s'):.4g} s, {meta.get('horizon_steps')} grid rows); "
          f"warm-up {meta.get('warmup_steps')} rows",
          f"* features ({len(meta['features']['names'])}): {', '.join(meta['features']['names'])}",
          f"* model: LSTM ({meta['arch'].get('kind', 'plain')}) hidden {meta['arch']['hidden']}, layers {meta['arch']['layers']}, dropout {meta['arch']['dropout']}; "
          f"training: {json.dumps(meta.get('train', {}))}", ""]
    if results:
        f0 = results[0].fold
        L += ["## Walk-forward evaluation", "",
              f"{len(results)} folds, {meta.get('metrics', {}).get('scheme', 'expanding')} training window; each fold "
              f"trains on the rows before its test block (last {meta.get('train', {}).get('val_frac', 0.15):.0%} of them "
              f"for early stopping) and is scored on the block. First test block starts at row {f0.test[0]}. Targets "
              "whose horizon crosses into the next span are purged from training and validation. Variance metrics "
              f"add the training variance floor ({meta.get('var_floor_bp2', 0):.3g} bp^2) to targets and forecasts.", ""]
        L += ["### Volatility (realised variance over the horizon, bp^2)", ""]
        hdr = "| model | " + " | ".join(f"fold {r.fold.index} QLIKE" for r in results) + " | mean QLIKE | mean MSE |"
        L += [hdr, "|" + "---|" * (len(results) + 3)]
        s = summarize(results)
        for m in VOL_MODELS:
            if m not in s:
                continue
            cells = [_fmt(r.metrics[m]["qlike"], "qlike") for r in results]
            L.append(f"| {_VOL_LABEL[m]} | " + " | ".join(cells) + f" | **{_fmt(s[m]['qlike'], 'qlike')}** | {_fmt(s[m]['mse_var'], 'mse')} |")
        L += ["", "### Drift (mid log return over the horizon, bp) and direction", ""]
        hdr = "| model | " + " | ".join(f"fold {r.fold.index} R^2" for r in results) + " | mean MSE | mean R^2 | dir. acc. | F1 (3 classes) |"
        L += [hdr, "|" + "---|" * (len(results) + 5)]
        for m in DRIFT_MODELS:
            if m not in s:
                continue
            cells = [_fmt(r.metrics[m]["r2"], "r2") for r in results]
            L.append(f"| {_DRIFT_LABEL[m]} | " + " | ".join(cells) + f" | {_fmt(s[m]['mse'], 'mse')} | **{_fmt(s[m]['r2'], 'r2')}** | "
                     f"{_fmt(s[m]['dir_acc'], 'dir_acc')} | {_fmt(s[m]['f1'], 'f1')} |")
        L += ["", "### Verdict", ""] + [f"* {v}" for v in verdict(results)] + [""]
        L += ["Per fold: LSTM best epoch / training seconds: " +
              ", ".join(f"fold {r.fold.index}: {r.lstm_epochs} / {r.lstm_seconds:.1f} s" for r in results), ""]
        info = results[-1].baselines_info
        if info:
            L += ["Baselines fitted on the last fold: " + "; ".join(f"{k} {json.dumps(v, default=float)}" for k, v in info.items()), ""]
        _plots(out_dir, results, final)
        L += ["![QLIKE per fold](qlike_folds.png)", "", "![Last fold](last_fold.png)", ""]
    if final is not None:
        L += ["## The exported model", "",
              f"Trained on all rows (validation: the last {final.cfg.val_frac:.0%}), best epoch {final.best_epoch}, "
              f"validation loss {final.best_val:.4f}, {final.seconds:.1f} s.", ""]
        if results:
            L += ["![Training curve](training.png)", ""]
    if trials:
        L += ["## Hyperparameter search (Optuna TPE, on the initial training window only)", "",
              "| trial | score | " + " | ".join(k for k in trials[0] if k not in ("number", "value")) + " |",
              "|" + "---|" * (len(trials[0])) ]
        for t in sorted(trials, key=lambda t: t["value"]):
            L.append(f"| {t['number']} | {t['value']:.4f} | " + " | ".join(
                f"{t[k]:.4g}" if isinstance(t[k], float) else str(t[k]) for k in t if k not in ("number", "value")) + " |")
        L.append("")
    if notes:
        L += ["## Notes", ""] + [f"* {n}" for n in notes] + [""]
    p = out_dir / "report.md"
    p.write_text("\n".join(L), encoding="utf-8")
    return p


def _plots(out_dir: Path, results: list[FoldResult], final: FitResult | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8})
    models = [m for m in VOL_MODELS if m in results[0].metrics and "qlike" in results[0].metrics[m]]
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=80)
    w = 0.8 / len(models)
    lo = min(r.metrics[m]["qlike"] for r in results for m in models)
    hi = max(r.metrics[m]["qlike"] for r in results for m in models)
    top = min(hi, 3 * lo) * 1.05
    for i, m in enumerate(models):
        vals = [r.metrics[m]["qlike"] for r in results]
        x = np.arange(len(results)) + i * w
        ax.bar(x, vals, w, label=_VOL_LABEL[m])
        for xi, v in zip(x, vals):
            if v > top:  # clipped bar: print its value
                ax.text(xi, top * 0.97, f"{v:.3g}", ha="center", va="top", fontsize=6, rotation=90, color="white")
    ax.set_xticks(np.arange(len(results)) + 0.4 - w / 2, [f"fold {r.fold.index}" for r in results])
    ax.set_ylabel("QLIKE (lower is better)")
    ax.set_ylim(0.9 * lo, top)
    ax.legend(fontsize=6, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    fig.savefig(out_dir / "qlike_folds.png")
    plt.close(fig)
    s = results[-1].series
    if s:
        t = (s["ts_ns"] - s["ts_ns"][0]) / 3.6e12
        k = max(1, len(t) // 600)
        fig, axs = plt.subplots(2, 1, figsize=(6, 4), dpi=80, sharex=True)
        sm = lambda a: np.convolve(a, np.ones(k) / k, mode="same")  # noqa: E731
        axs[0].plot(t, np.sqrt(sm(s["var"])), lw=0.6, color="k", label="realised (smoothed)")
        for m, c in (("lstm", "C3"), ("har", "C0"), ("garch", "C2")):
            key = "lstm_var" if m == "lstm" else f"{m}_var"
            if key in s:
                axs[0].plot(t, np.sqrt(sm(s[key])), lw=0.6, color=c, label=_VOL_LABEL[m])
        axs[0].set_ylabel("vol over horizon, bp")
        axs[0].legend(fontsize=6)
        axs[1].plot(t, sm(s["drift"]), lw=0.5, color="k", label="realised drift (smoothed)")
        axs[1].plot(t, sm(s["lstm_drift"]), lw=0.6, color="C3", label="LSTM drift")
        axs[1].set_ylabel("drift, bp")
        axs[1].set_xlabel("hours into the last test block")
        axs[1].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out_dir / "last_fold.png")
        plt.close(fig)
    if final is not None and final.history:
        h = final.history
        fig, ax = plt.subplots(figsize=(5, 2.5), dpi=80)
        ax.plot([r["epoch"] for r in h], [r["train_loss"] for r in h], label="train")
        if "val_loss" in h[0]:
            ax.plot([r["epoch"] for r in h], [r["val_loss"] for r in h], label="validation")
        ax.axvline(final.best_epoch, color="gray", ls=":", lw=0.8)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (QLIKE + drift MSE)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "training.png")
        plt.close(fig)
