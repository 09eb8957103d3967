"""Realized volatility of the mid, estimated online with an EWMA.

The mid is sampled every ``sample_s`` seconds (the last mid at or before each sample time;
sampling on a grid keeps bid-ask bounce at tick level from inflating the estimate). Each
sample contributes (delta mid)^2 / delta t to an exponentially weighted mean of the
variance rate, with the weight given by a half-life in seconds:

    w = 1 - exp(-ln 2 * dt / halflife_s)
    acc <- (1 - w) * acc + w * (dmid^2 / dt);   norm <- (1 - w) * norm + w
    var_rate = acc / norm      (bias-corrected: a plain weighted mean of the samples so far)

``sigma()`` returns sqrt(var_rate): quote currency per base unit per sqrt(second), the
unit the Avellaneda-Stoikov and GLFT formulas take. Until ``min_samples`` samples have
arrived the estimator is not :attr:`ready` and ``sigma()`` returns ``initial_sigma``, which
may be ``None`` ("no estimate yet": the strategy then does not quote). :meth:`warm_up` feeds
recorded history (e.g. the part of a recording before a replay's first decision) so that
the estimate comes from the market being traded rather than from a configured guess.
"""

from __future__ import annotations

import math

import numpy as np

from strategies.kernels import ewma_step


class EwmaVolatility:
    __slots__ = ("sample_ns", "halflife_s", "initial_sigma", "min_samples", "_last_t", "_last_mid", "_acc", "_norm", "n",
                 "warmup_samples")

    def __init__(self, halflife_s: float = 60.0, sample_s: float = 1.0, initial_sigma: float | None = 0.0,
                 min_samples: int = 10) -> None:
        if halflife_s <= 0 or sample_s <= 0:
            raise ValueError("halflife_s and sample_s must be positive")
        self.halflife_s = halflife_s
        self.sample_ns = int(sample_s * 1e9)
        self.initial_sigma = initial_sigma
        self.min_samples = min_samples
        self._last_t: int | None = None
        self._last_mid = 0.0
        self._acc = 0.0
        self._norm = 0.0
        self.n = 0
        self.warmup_samples = 0  # samples that came from :meth:`warm_up` (recorded history)

    def update(self, mid: float, now_ns: int) -> None:
        """Feed the current mid (quote per base) at time ``now_ns`` (int ns since the epoch)."""
        if self._last_t is None:
            self._last_t, self._last_mid = now_ns, mid
            return
        if now_ns - self._last_t < self.sample_ns:
            return
        # the compiled step the compiled backtest loop calls too (paper_trading.compiled_loop)
        t, m, self._acc, self._norm, self.n = ewma_step(self._last_t, self._last_mid, self._acc, self._norm, self.n,
                                                        float(mid), int(now_ns), self.sample_ns, float(self.halflife_s))
        self._last_t, self._last_mid = int(t), float(m)

    def warm_up(self, ts_ns: np.ndarray, mids: np.ndarray) -> int:
        """Feed recorded mids (quote per base) at times ``ts_ns`` (int ns, non-decreasing),
        taking the last mid at or before each point of the sampling grid that starts at the
        first time. NaN mids (a one-sided book) are skipped. Returns the samples added."""
        ts = np.asarray(ts_ns, dtype=np.int64)
        m = np.asarray(mids, dtype=np.float64)
        ok = np.isfinite(m)
        ts, m = np.maximum.accumulate(ts)[ok] if ts.size else ts, m[ok]  # a late row counts at the latest time seen
        if ts.size == 0:
            return 0
        grid = np.arange(int(ts[0]), int(ts[-1]) + 1, self.sample_ns, dtype=np.int64)
        idx = np.searchsorted(ts, grid, side="right") - 1
        n0 = self.n
        for t, i in zip(grid.tolist(), idx.tolist()):
            self.update(float(m[i]), t)
        self.warmup_samples += self.n - n0
        return self.n - n0

    @property
    def ready(self) -> bool:
        """True once ``min_samples`` samples have been seen."""
        return self.n >= self.min_samples

    def sigma(self) -> float | None:
        """The estimate, quote per base per sqrt(s); ``initial_sigma`` (maybe None) until ready."""
        if self.n < self.min_samples:
            return self.initial_sigma
        return math.sqrt(self._acc / self._norm)
