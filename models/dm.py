"""The Diebold-Mariano test of equal predictive accuracy, with a Newey-West (HAC) variance.

For two forecasts with per-row losses ``L_a`` and ``L_b`` on the same rows, ``d = L_a - L_b``.
Under H0 (equal expected loss) ``DM = mean(d) / sqrt(S / T)`` is asymptotically standard
normal, ``S`` the long-run variance of ``d``, estimated with Bartlett weights (Newey and West
1987) up to ``lags``. Forecasts over a horizon of H rows overlap, so ``d`` is autocorrelated
up to at least lag H - 1: the default lag is ``max(H - 1, floor(4 (T / 100)^(2/9)))``.

A negative DM means ``a`` has the lower loss. The p-value is two-sided.
"""

from __future__ import annotations

import math

import numpy as np


def newey_west_lrv(d: np.ndarray, lags: int) -> float:
    """Long-run variance of ``d`` (Bartlett kernel, ``lags`` autocovariances)."""
    d = np.asarray(d, np.float64)
    e = d - d.mean()
    T = len(e)
    s = float(e @ e) / T
    for k in range(1, min(lags, T - 1) + 1):
        s += 2.0 * (1.0 - k / (lags + 1.0)) * float(e[k:] @ e[:-k]) / T
    return s


def default_lags(T: int, horizon_rows: int = 1) -> int:
    return max(int(horizon_rows) - 1, int(math.floor(4.0 * (T / 100.0) ** (2.0 / 9.0))))


def diebold_mariano(loss_a: np.ndarray, loss_b: np.ndarray, horizon_rows: int = 1, lags: int | None = None) -> dict:
    """DM test of ``a`` against ``b``: {"dm", "p", "mean_diff", "lags", "n"}; NaN when undefined
    (fewer than 10 rows, or d constant)."""
    a = np.asarray(loss_a, np.float64)
    b = np.asarray(loss_b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    T = len(d)
    L = default_lags(T, horizon_rows) if lags is None else int(lags)
    out = {"dm": float("nan"), "p": float("nan"), "mean_diff": float(d.mean()) if T else float("nan"), "lags": L, "n": T}
    if T < 10:
        return out
    s = newey_west_lrv(d, L)
    if not (s > 0):
        return out
    dm = float(d.mean() / math.sqrt(s / T))
    out["dm"] = dm
    out["p"] = float(math.erfc(abs(dm) / math.sqrt(2.0)))
    return out


def qlike_rows(v: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Per-row QLIKE v/h - log(v/h) - 1 (v, h > 0, same units)."""
    x = np.asarray(v, np.float64) / np.asarray(h, np.float64)
    return x - np.log(x) - 1.0
