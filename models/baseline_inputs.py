"""Baseline forecasts as model inputs, for the correction architecture (``--arch correction``).

The correction model does not forecast from scratch: the volatility head predicts a
multiplicative correction of the best baseline's variance (log-additive:
``log V = log V_best + c_v``) and the drift head an additive correction of the OFI
regression's drift (``mu = mu_ofi + c_d``). With ``c = 0`` it *is* the baseline, and training
starts there (zero-initialised head and skip path) and is pulled back to it (L2 on ``c``).

Everything here is computed causally, one grid row at a time, by the same Python code online
(:class:`BaselineState`, in the forecaster) and offline (:func:`baseline_matrix`, a loop over
the rows), so the two paths are identical by construction (tested on a real recording
through the replay venue).

Fitted on training rows only (:func:`fit_spec`), stored in the model's metadata
(``baseline_inputs``):

* EWMA of squared grid returns, RiskMetrics (0.94 per second, nothing fitted: robust on a
  few minutes of data) and with the half-life of best training QLIKE;
* GARCH(1,1) (``arch``, zero mean), forecast = sum of the 1..H-step variances;
* HAR-RV (Corsi 2009) on the realised variance over the last H, 5H, 22H rows, with
  non-negative coefficients (NNLS; OLS on a short or calm span can forecast ~0 later);
* the linear regression of the drift on the row's OFI and its sum over the last H rows;
* ``best``: whichever of the four variance baselines, or their combination (``combo``: the
  median in logs, robust to one baseline that is far off, as GARCH or HAR-RV can be), has the lowest QLIKE out of sample within the
  training rows (fitted on their first 2/3, scored on the last 1/3; never test rows); with
  fewer than ``MIN_SELECT_ROWS`` rows in that last third, the combination (selection on a
  few minutes is noise). In-sample QLIKE would favour HAR-RV, which can overfit.
  ``ewma_mix`` (only when asked for, ``--base ewma_mix``): the geometric mean of the two EWMAs,
  for markets too short for GARCH and HAR-RV to fit; ``--base auto_mix``: the selection, with
  ``ewma_mix`` instead of ``combo`` when there are too few rows to select.
* ``tick`` (only with the ``tick_rv`` features, :class:`models.features.FeatureConfig`): the
  intra-second baseline, H x EWMA(tick_rv, half-life ``TICK_FAST_HL_S``) x EWMA(r2,
  ``TICK_SLOW_HL_S``) / EWMA(tick_rv, ``TICK_SLOW_HL_S``): the tick-level realised variance of
  each interval (squared mid changes on every book update, far less noisy than one squared grid
  return), brought to the grid returns' scale by their causal running ratio (the tick mid's
  microstructure noise enters only through that slowly moving ratio). Nothing is fitted on the
  market: the half-lives are constants, chosen leave-one-market-out in
  ``bench/intrasecond_vol.py`` (docs/forecaster.md). ``--base tick`` uses it on every market;
  ``--base auto_tick``: the selection (``tick`` among the candidates), ``tick`` when there are too
  few rows to select. It is never one of the comparator baselines of the evaluation.

Inputs appended to the 16 book features (names :func:`input_names`; units in brackets):

``b_rm_rel``, ``b_ewma_rel``, ``b_garch_rel``, ``b_har_rel``  log(variance / best's) [-]
``b_regime``    log(best variance / H x slow EWMA of squared returns, half-life 30 min) [-]
``b_ofi_z``     OFI drift / sqrt(best variance) [-]
``ret_z``       grid return / sqrt(slow EWMA of squared returns) [-]
``rv_rel_w``    log((sum of the last w squared returns / w + eps) / slow EWMA) per rv window [-]
``b_tick_rel``  log(tick baseline's variance / best's) [-] (only with the ``tick_rv`` features)
``b_mu``        the OFI regression's drift [bp]; masked from the network, added to its output
``b_logvar``    log(best baseline's variance + floor) [log bp^2]; masked, added to its output

The network sees scale-free inputs only: the level-dependent raw features (``ret``,
``rv_*``) and ``b_mu``/``b_logvar`` are masked (normalised to 0), so one model can be applied
to markets of another volatility level; their scale-free versions (``ret_z``, ``rv_rel_w``,
``b_regime``) carry the information.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np

from models.features import _Q, FeatureConfig, _r2_units, feature_names

VAR_BASELINES = ("ewma", "ewma_fit", "garch", "har")
SLOW_HALFLIFE_S = 1800.0
TICK_FAST_HL_S = 40.0  # the tick baseline's fast half-life, seconds
TICK_SLOW_HL_S = 300.0  # the half-life of its running ratio to the grid returns, seconds
MIN_SELECT_ROWS = 300  # fewer held-out training rows than this: no selection, the combination
_TINY = 1e-12  # bp^2 per row: keeps the tick baseline's ratio finite on a market without mid changes
_EPS_REL = 1e-6  # relative epsilon of the rv_rel features (fraction of the slow level)


def input_names(cfg: FeatureConfig) -> list[str]:
    """Names of the baseline inputs appended to :func:`models.features.feature_names`."""
    return (["b_rm_rel", "b_ewma_rel", "b_garch_rel", "b_har_rel", "b_regime", "b_ofi_z", "ret_z"]
            + [f"rv_rel_{w}" for w in cfg.rv_windows] + (["b_tick_rel"] if cfg.tick_rv else []) + ["b_mu", "b_logvar"])


def masked_columns(cfg: FeatureConfig) -> list[int]:
    """Columns of the full input (features + baseline inputs) that the network does not see."""
    names = feature_names(cfg) + input_names(cfg)
    return [i for i, n in enumerate(names) if n == "ret" or (n.startswith("rv_") and not n.startswith("rv_rel"))
            or n in ("b_mu", "b_logvar", "tick_rv")]


def offset_columns(cfg: FeatureConfig) -> tuple[int, int]:
    """(column of b_mu, column of b_logvar) in the full input."""
    names = feature_names(cfg) + input_names(cfg)
    return names.index("b_mu"), names.index("b_logvar")


@dataclass
class BaselineSpec:
    """Fitted baselines (see module docstring). Units: variances bp^2, returns bp, H grid rows."""

    H: int
    floor: float
    sample_s: float
    rv_windows: tuple[int, ...]
    ewma_lam: float
    rm_lam: float  # RiskMetrics decay per row (0.94 per second)
    init_r2: float
    garch: dict | None  # omega, alpha, beta (scaled units), scale, uncond (bp^2); None: failed fit -> EWMA
    har_coef: list[float]
    ofi_coef: list[float]
    ofi_col: int
    best: str
    slow_lam: float
    tick: dict | None = None  # the tick baseline: fast_lam, ratio_lam (per row), init_tick (bp^2 per row); None: off

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rv_windows"] = list(self.rv_windows)
        if d["tick"] is None:
            del d["tick"]  # specs saved before the tick baseline existed read the same
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BaselineSpec":
        d = dict(d)
        d["rv_windows"] = tuple(int(w) for w in d["rv_windows"])
        return cls(**d)


class BaselineState:
    """The baselines' recursions and rolling sums, one grid row per :meth:`step` (O(H) for the
    OFI sum, O(1) otherwise). ``step`` takes the row's ``ret`` (bp) and ``ofi`` features."""

    def __init__(self, spec: BaselineSpec) -> None:
        self.spec = spec
        s = spec
        self.windows = sorted({s.H, 5 * s.H, 22 * s.H} | set(s.rv_windows))
        self.reset()
        g = s.garch
        if g is not None:
            self._phi = g["alpha"] + g["beta"]
            self._ubar = g["uncond"] * g["scale"] ** 2

    def reset(self) -> None:
        s = self.spec
        self.hist: deque = deque(maxlen=max(self.windows))
        self.sums = {w: 0 for w in self.windows}
        self.ofi_hist: deque = deque(maxlen=s.H)
        self.ew = s.init_r2
        self.rm = s.init_r2
        self.slow = s.init_r2
        t = s.tick
        if t is not None:
            self.t_fast = self.t_slow = t["init_tick"]
            self.t_r2 = s.init_r2
        g = s.garch
        self.g = g["uncond"] * g["scale"] ** 2 if g is not None else 0.0

    def components(self, ret: float, ofi: float, tick_units: int = 0) -> tuple[float, ...]:
        """Advance one row; (RiskMetrics var, fitted ewma var, garch var, har var, slow r2 per
        row, ofi drift, tick var), bp^2 / bp; ``tick_units``: the row's tick-level variance
        (1e-9 bp^2 units, :attr:`models.features.OnlineFeatures.tick_units`); tick var is NaN
        when the spec has no tick baseline."""
        s = self.spec
        u = _r2_units(ret)
        r2 = u * _Q
        hist = self.hist
        k = len(hist)
        for w in self.windows:
            x = self.sums[w] + u
            if k >= w:
                x -= hist[k - w]
            self.sums[w] = x
        hist.append(u)
        self.ew = s.ewma_lam * self.ew + (1.0 - s.ewma_lam) * r2
        self.rm = s.rm_lam * self.rm + (1.0 - s.rm_lam) * r2
        self.slow = s.slow_lam * self.slow + (1.0 - s.slow_lam) * r2
        H = s.H
        v_ew = H * self.ew
        g = s.garch
        if g is None:
            v_g = v_ew
        else:
            sc2 = g["scale"] ** 2
            self.g = g["omega"] + g["alpha"] * r2 * sc2 + g["beta"] * self.g
            phi = self._phi
            if phi < 1.0 - 1e-9:
                tot = H * self._ubar + (self.g - self._ubar) * (1.0 - phi**H) / (1.0 - phi)
            else:
                tot = H * self.g
            v_g = max(tot, 0.0) / sc2
        c = s.har_coef
        v_h = max(c[0] + c[1] * self.sums[H] * _Q + c[2] * self.sums[5 * H] * _Q / 5.0
                  + c[3] * self.sums[22 * H] * _Q / 22.0, 0.0)
        self.ofi_hist.append(ofi)
        o = s.ofi_coef
        osum = 0.0
        for v in self.ofi_hist:
            osum += v
        mu = o[0] + o[1] * ofi + o[2] * osum
        t = s.tick
        v_t = math.nan
        if t is not None:
            x = tick_units * _Q
            self.t_fast = t["fast_lam"] * self.t_fast + (1.0 - t["fast_lam"]) * x
            self.t_slow = t["ratio_lam"] * self.t_slow + (1.0 - t["ratio_lam"]) * x
            self.t_r2 = t["ratio_lam"] * self.t_r2 + (1.0 - t["ratio_lam"]) * r2
            v_t = H * self.t_fast * (self.t_r2 + _TINY) / (self.t_slow + _TINY)
        return H * self.rm, v_ew, v_g, v_h, self.slow, mu, v_t

    def step(self, ret: float, ofi: float, tick_units: int = 0) -> list[float]:
        """The baseline inputs of one row (:func:`input_names` order); ``tick_units`` as in
        :meth:`components` (used only by a spec with the tick baseline)."""
        s = self.spec
        v_rm, v_ew, v_g, v_h, slow, mu, v_t = self.components(ret, ofi, tick_units)
        fl = s.floor
        vr, ve, vg, vh = v_rm + fl, v_ew + fl, v_g + fl, v_h + fl
        if s.best == "combo":  # the median of the four in logs (robust to one that is far off)
            a, b, c, d = sorted((math.log(vr), math.log(ve), math.log(vg), math.log(vh)))
            best = math.exp(0.5 * (b + c))
        elif s.best == "ewma_mix":  # geometric mean of the two EWMAs (nothing fitted but a half-life)
            best = math.sqrt(vr * ve)
        elif s.best == "tick":
            best = v_t + fl
        else:
            best = {"ewma": vr, "ewma_fit": ve, "garch": vg, "har": vh}[s.best]
        slow_v = s.H * slow + fl
        slow_r = slow + fl / s.H
        out = [math.log(vr / best), math.log(ve / best), math.log(vg / best), math.log(vh / best), math.log(best / slow_v),
               mu / math.sqrt(best), ret / math.sqrt(slow_r)]
        for w in s.rv_windows:
            out.append(math.log((self.sums[w] * _Q / w + _EPS_REL * slow_r) / slow_r))
        if s.tick is not None:
            out.append(math.log((v_t + fl) / best))
        out += [mu, math.log(best)]
        return out


def _ticks(n: int, tick_units: np.ndarray | None) -> list:
    return [0] * n if tick_units is None else [int(u) for u in tick_units.tolist()]


def baseline_matrix(spec: BaselineSpec, ret: np.ndarray, ofi: np.ndarray, tick_units: np.ndarray | None = None) -> np.ndarray:
    """The baseline inputs of every row (the same code as online, row by row)."""
    st = BaselineState(spec)
    return np.array([st.step(float(r), float(o), u) for r, o, u in zip(ret.tolist(), ofi.tolist(), _ticks(len(ret), tick_units))],
                    dtype=np.float64).reshape(len(ret), -1)


def _components(spec: BaselineSpec, ret: np.ndarray, ofi: np.ndarray, tick_units: np.ndarray | None = None) -> np.ndarray:
    st = BaselineState(spec)
    return np.array([st.components(float(r), float(o), u) for r, o, u in zip(ret.tolist(), ofi.tolist(), _ticks(len(ret), tick_units))]
                    ).reshape(len(ret), 7)


def fit_spec(ret: np.ndarray, ofi_X: np.ndarray, ofi_col: int, var_target: np.ndarray, drift_target: np.ndarray,
             rows: np.ndarray, fit_rows: np.ndarray, H: int, floor: float, sample_s: float,
             rv_windows: tuple[int, ...], best: str = "auto", tick_units: np.ndarray | None = None) -> BaselineSpec:
    """Fit the baselines on training rows and pick the best variance baseline (QLIKE out of
    sample within the training rows, see the module docstring).

    Args:
        ret: grid returns (bp) of every row; ofi_X: the feature matrix (its ``ofi_col`` is used).
        rows: boolean mask of training rows with targets (purged); fit_rows: rows whose returns
            the GARCH / EWMA initial level may use (the training span, after the warm-up).
        best: "auto" (select as above) or the baseline to use (e.g. "combo" for every market
            of a multi-market model, so that the correction means the same on each); "tick" and
            "auto_tick" need ``tick_units``.
        tick_units: per row the tick-level variance (:attr:`models.features.FeatureFrame.tick_units`):
            the spec then has the tick baseline (and its ``b_tick_rel`` input).
    """
    spec = _fit(ret, ofi_X, ofi_col, var_target, drift_target, rows, fit_rows, H, floor, sample_s, rv_windows, tick_units)
    fallback = "combo"
    if best in ("tick", "auto_tick") and spec.tick is None:
        raise ValueError(f"baseline {best!r} needs the tick_rv features (--tick-rv)")
    if best == "auto_mix":  # auto, but the EWMAs' mix when there are too few rows to select
        best, fallback = "auto", "ewma_mix"
    if best == "auto_tick":  # auto, the tick baseline when there are too few rows to select
        best, fallback = "auto", "tick"
    if best != "auto":
        if best not in VAR_BASELINES + ("combo", "ewma_mix", "tick"):
            raise ValueError(f"unknown baseline {best!r}")
        spec.best = best
        return spec
    # the best variance baseline: chosen out of sample within the training rows (fitted on
    # their first 2/3, scored on the last 1/3), since in-sample QLIKE favours HAR-RV's OLS,
    # which can forecast ~0 (the floor) out of sample; then every baseline is refitted on all rows
    idx = np.flatnonzero(rows)
    spec.best = fallback  # too few rows to tell the baselines apart: combine them
    if len(idx) < 3 * MIN_SELECT_ROWS:
        return spec
    cut = int(idx[int(len(idx) * 2 / 3)])
    early = rows.copy()
    early[cut - H :] = False
    late = rows.copy()
    late[:cut] = False
    ef = fit_rows.copy()
    ef[cut - H :] = False
    if late.sum() >= MIN_SELECT_ROWS and early.sum() >= MIN_SELECT_ROWS and ef.sum() >= MIN_SELECT_ROWS:
        sp = _fit(ret, ofi_X, ofi_col, var_target, drift_target, early, ef, H, floor, sample_s, rv_windows, tick_units)
        spec.best = _best(sp, ret, ofi_X[:, ofi_col], var_target, late, floor, tick_units)
    return spec


def combo(logs: np.ndarray) -> np.ndarray:
    """The combination of the four variance baselines, from their logs (rows x 4): the mean
    of the middle two, i.e. the median (what :meth:`BaselineState.step` computes per row)."""
    srt = np.sort(logs, axis=1)
    return np.exp(0.5 * (srt[:, 1] + srt[:, 2]))


def _best(spec: BaselineSpec, ret: np.ndarray, ofi: np.ndarray, var_target: np.ndarray, rows: np.ndarray, floor: float,
          tick_units: np.ndarray | None = None) -> str:
    from models import baselines as bl

    comp = _components(spec, ret, ofi, tick_units)
    v = var_target[rows] + floor
    logs = np.log(comp[rows, : len(VAR_BASELINES)] + floor)
    scores = {name: bl.qlike(v, np.exp(logs[:, i])) for i, name in enumerate(VAR_BASELINES)}
    scores["combo"] = bl.qlike(v, combo(logs))
    if spec.tick is not None:  # a candidate only when the spec has it (it is not in the combination)
        scores["tick"] = bl.qlike(v, comp[rows, 6] + floor)
    return min(scores, key=lambda k: scores[k] if math.isfinite(scores[k]) else math.inf)


def _fit(ret, ofi_X, ofi_col, var_target, drift_target, rows, fit_rows, H, floor, sample_s, rv_windows,
         tick_units=None) -> BaselineSpec:
    from models import baselines as bl

    ret = np.asarray(ret, np.float64)
    r2 = ret * ret
    init = float(np.mean(r2[fit_rows])) if fit_rows.any() else 1.0
    hl = bl.fit_ewma_halflife(r2, var_target, rows, H, sample_s, floor, init)
    try:
        g = bl.Garch.fit(ret[fit_rows])
        garch = {"omega": g.omega, "alpha": g.alpha, "beta": g.beta, "scale": g.scale, "uncond": g.uncond}
    except Exception:  # noqa: BLE001 - a failed GARCH fit falls back to the EWMA
        garch = None
    har = _har_nonneg(r2, var_target, rows, H)
    ofi = bl.OfiLinear.fit(ofi_X, drift_target, rows, ofi_col, H)
    spec = BaselineSpec(int(H), float(floor), float(sample_s), tuple(rv_windows), bl.lambda_from_halflife(hl, sample_s),
                        bl.ewma_lambda(sample_s), init, garch, [float(c) for c in har.coef], [float(c) for c in ofi.coef], int(ofi_col), "har",
                        0.5 ** (sample_s / SLOW_HALFLIFE_S))
    if tick_units is not None:
        t = np.asarray(tick_units, np.float64) * _Q
        spec.tick = {"fast_lam": bl.lambda_from_halflife(TICK_FAST_HL_S, sample_s),
                     "ratio_lam": bl.lambda_from_halflife(TICK_SLOW_HL_S, sample_s),
                     "init_tick": float(np.mean(t[fit_rows])) if fit_rows.any() else 1.0}
    return spec


def _har_nonneg(r2: np.ndarray, target: np.ndarray, rows: np.ndarray, H: int):
    """HAR-RV with non-negative coefficients (NNLS): plain OLS on a short or calm training span
    can give negative slopes and forecast ~0 variance in the next regime."""
    from scipy.optimize import nnls

    from models import baselines as bl

    A = bl.Har.design(r2, H)
    sc = np.maximum(np.abs(A[rows]).mean(axis=0), 1e-12)  # column scaling for the solver
    coef, _ = nnls(A[rows] / sc, target[rows])
    return bl.Har(coef / sc, H)


def full_inputs(X: np.ndarray, spec: BaselineSpec, names: list[str], tick_units: np.ndarray | None = None) -> np.ndarray:
    """Features + baseline inputs (the correction model's input matrix); ``tick_units`` (per
    row, :attr:`models.features.FeatureFrame.tick_units`) for a spec with the tick baseline."""
    if spec.tick is not None and tick_units is None:
        raise ValueError("a baseline spec with the tick baseline needs the rows' tick_units")
    B = baseline_matrix(spec, X[:, names.index("ret")], X[:, names.index("ofi")], tick_units)
    return np.hstack([X, B])
