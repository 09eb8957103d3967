"""Baselines, fitted and evaluated on the same walk-forward folds as the LSTM.

Every baseline is fitted on the training rows of a fold only and then produces a forecast
for every row of the series from information up to that row (recursions run over the whole
series, so a test row's forecast uses the data before it, as online).

Volatility (forecast: realised variance over the horizon, bp^2, from grid returns in bp):

* ``ewma``: RiskMetrics, sigma^2_k = lam sigma^2_{k-1} + (1 - lam) r_k^2, forecast H sigma^2_k.
  RiskMetrics' lambda = 0.94 is per observation; we apply it per ``ref_s`` seconds of clock
  time (default 1 s) and adapt it to the sampling interval: lam = 0.94 ** (sample_s / ref_s),
  which keeps the memory (half-life 11.2 ref_s) fixed in seconds whatever the grid.
* ``ewma_fit``: the same with the half-life chosen on the training rows (best QLIKE over a
  grid of half-lives). The online misspecification guard compares the LSTM with this one.
* ``garch``: GARCH(1,1) with zero mean and normal errors, fitted with the ``arch`` package
  on the training returns (best likelihood over four optimiser starts); forecast = the sum of the 1..H step-ahead conditional variances.
* ``har``: HAR-RV (Corsi 2009) on the horizon: v_k+ = b0 + b1 RV_H + b2 RV_5H / 5 + b3 RV_22H / 22
  (realised variances over the last H, 5H and 22H rows), OLS on training rows.

Drift (forecast: mid log return over the horizon, bp) and direction (3 classes):

* ``zero``: random walk, 0 (always "unchanged").
* ``ofi_linear``: OLS of the drift target on the sampled OFI of the row and its sum over the
  last H rows (the linear price-impact relation of Cont, Kukanov and Stoikov).
* ``imb_logistic``: multinomial logistic regression of the direction (down, unchanged, up) on
  the book-imbalance features (``imb_1..n``, ``micro_off``); drift forecast = sum over
  classes of P(class) x mean training drift of that class; direction = most probable class.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numba as nb
import numpy as np
import torch

from models.targets import direction_classes

RISKMETRICS_LAMBDA = 0.94


@nb.njit(cache=True)
def _ewma(r2, lam, init):
    out = np.empty_like(r2)
    s = init
    for k in range(r2.shape[0]):
        s = lam * s + (1.0 - lam) * r2[k]
        out[k] = s
    return out


def ewma_lambda(sample_s: float, ref_s: float = 1.0, lam_ref: float = RISKMETRICS_LAMBDA) -> float:
    """Per-row decay for the grid interval: lam_ref per ref_s seconds of clock time."""
    return lam_ref ** (sample_s / ref_s)


def lambda_from_halflife(halflife_s: float, sample_s: float) -> float:
    return 0.5 ** (sample_s / halflife_s)


def ewma_var(r2_bp: np.ndarray, lam: float, H: int, init: float) -> np.ndarray:
    """Variance forecast over H rows at every row (bp^2)."""
    return H * _ewma(np.ascontiguousarray(r2_bp, dtype=np.float64), float(lam), float(init))


def qlike(v: np.ndarray, h: np.ndarray) -> float:
    """Mean QLIKE loss v/h - log(v/h) - 1 (0 for a perfect forecast); v, h > 0."""
    x = v / h
    return float(np.mean(x - np.log(x) - 1.0))


def fit_ewma_halflife(r2_bp: np.ndarray, target: np.ndarray, rows: np.ndarray, H: int, sample_s: float,
                      floor: float, init: float) -> float:
    """Half-life (s) with the best training QLIKE among a log grid of 2 .. 7200 s."""
    best = (math.inf, 60.0)
    v = target[rows] + floor
    for hl in np.geomspace(max(2 * sample_s, 2.0), 7200.0, 24):
        lam = lambda_from_halflife(float(hl), sample_s)
        f = ewma_var(r2_bp, lam, H, init)[rows] + floor
        q = qlike(v, f)
        if q < best[0]:
            best = (q, float(hl))
    return best[1]


@nb.njit(cache=True)
def _garch_filter(r2, omega, alpha, beta, s0):
    """sigma^2_{k+1|k} for every k (the variance of the next row given rows <= k)."""
    out = np.empty_like(r2)
    s = s0
    for k in range(r2.shape[0]):
        s = omega + alpha * r2[k] + beta * s
        out[k] = s
    return out


@dataclass
class Garch:
    omega: float
    alpha: float
    beta: float
    scale: float  # returns were multiplied by this before fitting
    uncond: float  # unconditional variance of the unscaled returns (bp^2)
    converged: bool = True

    @classmethod
    def fit(cls, ret_bp: np.ndarray) -> "Garch":
        from arch import arch_model

        r = np.asarray(ret_bp, dtype=np.float64)
        sd = float(r.std()) or 1.0
        scale = 1.0 / sd  # fit on unit-variance returns: the optimiser is happiest there
        am = arch_model(r * scale, mean="Zero", vol="GARCH", p=1, q=1, dist="normal", rescale=False)
        best = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # SLSQP can stall at its starting point on zero-inflated tick returns: try a few
            # starts (arch's default and three persistence levels), keep the best likelihood
            starts = [None] + [np.array([(1.0 - a - b), a, b]) for a, b in ((0.05, 0.9), (0.1, 0.8), (0.2, 0.5))]
            for sv in starts:
                try:
                    res = am.fit(disp="off", show_warning=False, starting_values=sv, options={"maxiter": 300})
                except Exception:  # noqa: BLE001 - try the next start
                    continue
                if np.isfinite(res.loglikelihood) and (best is None or res.loglikelihood > best.loglikelihood):
                    best = res
        if best is None:
            raise RuntimeError("GARCH(1,1) fit failed from every start")
        res = best
        p = res.params
        om, a, b = float(p["omega"]), float(p["alpha[1]"]), float(p["beta[1]"])
        unc = om / (1.0 - a - b) if a + b < 1.0 else float(np.mean((r * scale) ** 2))
        return cls(om, a, b, scale, unc / scale**2, int(getattr(res, "convergence_flag", 0)) == 0)

    def var(self, ret_bp: np.ndarray, H: int) -> np.ndarray:
        """Variance over the next H rows given rows <= k, bp^2."""
        r2 = (np.asarray(ret_bp, dtype=np.float64) * self.scale) ** 2
        s1 = _garch_filter(r2, self.omega, self.alpha, self.beta, self.uncond * self.scale**2)
        phi = self.alpha + self.beta
        ubar = self.uncond * self.scale**2
        if phi < 1.0 - 1e-9:
            tot = H * ubar + (s1 - ubar) * (1.0 - phi**H) / (1.0 - phi)
        else:
            tot = H * s1
        return np.maximum(tot, 0.0) / self.scale**2

    def to_dict(self) -> dict:
        return {"omega": self.omega, "alpha": self.alpha, "beta": self.beta, "persistence": self.alpha + self.beta,
                "converged": self.converged}


def _lstsq(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(A, y, rcond=None)[0]


def _rolling_sum(x: np.ndarray, w: int) -> np.ndarray:
    cs = np.cumsum(x)
    out = cs.copy()
    out[w:] -= cs[:-w]
    return out


@dataclass
class Har:
    coef: np.ndarray
    H: int

    @staticmethod
    def design(r2_bp: np.ndarray, H: int) -> np.ndarray:
        r2 = np.asarray(r2_bp, dtype=np.float64)
        return np.column_stack([np.ones(len(r2)), _rolling_sum(r2, H), _rolling_sum(r2, 5 * H) / 5.0,
                                _rolling_sum(r2, 22 * H) / 22.0])

    @classmethod
    def fit(cls, r2_bp: np.ndarray, target: np.ndarray, rows: np.ndarray, H: int) -> "Har":
        A = cls.design(r2_bp, H)
        return cls(_lstsq(A[rows], target[rows]), H)

    def var(self, r2_bp: np.ndarray, floor: float) -> np.ndarray:
        return np.maximum(self.design(r2_bp, self.H) @ self.coef, floor)


@dataclass
class OfiLinear:
    coef: np.ndarray
    H: int
    col: int

    @staticmethod
    def design(X: np.ndarray, col: int, H: int) -> np.ndarray:
        o = X[:, col]
        return np.column_stack([np.ones(len(o)), o, _rolling_sum(o, H)])

    @classmethod
    def fit(cls, X: np.ndarray, drift: np.ndarray, rows: np.ndarray, col: int, H: int) -> "OfiLinear":
        A = cls.design(X, col, H)
        return cls(_lstsq(A[rows], drift[rows]), H, col)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.design(X, self.col, self.H) @ self.coef


@dataclass
class ImbLogistic:
    """Multinomial logistic regression (L2-regularised, fitted with L-BFGS in torch)."""

    W: np.ndarray  # (3, d + 1)
    mean: np.ndarray
    std: np.ndarray
    cols: list[int]
    class_drift: np.ndarray  # mean training drift of classes (down, unchanged, up)

    @classmethod
    def fit(cls, X: np.ndarray, drift: np.ndarray, rows: np.ndarray, cols: list[int], l2: float = 1e-3) -> "ImbLogistic":
        A = X[rows][:, cols]
        mean, std = A.mean(0), A.std(0)
        std = np.where(std > 1e-12, std, 1.0)
        Z = torch.tensor(np.column_stack([np.ones(len(A)), (A - mean) / std]), dtype=torch.float64)
        y = torch.tensor(direction_classes(drift[rows]) + 1, dtype=torch.long)
        W = torch.zeros(3, Z.shape[1], dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([W], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(Z @ W.T, y) + l2 * (W[:, 1:] ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        cls_ = direction_classes(drift[rows])
        cd = np.array([drift[rows][cls_ == c].mean() if np.any(cls_ == c) else 0.0 for c in (-1, 0, 1)])
        return cls(W.detach().numpy(), mean, std, list(cols), cd)

    def proba(self, X: np.ndarray) -> np.ndarray:
        A = (X[:, self.cols] - self.mean) / self.std
        logits = np.column_stack([np.ones(len(A)), A]) @ self.W.T
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(drift bp, class in {-1, 0, 1})."""
        p = self.proba(X)
        return p @ self.class_drift, p.argmax(1) - 1
