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
arrived, ``sigma()`` returns ``initial_sigma``.
"""

from __future__ import annotations

import math


class EwmaVolatility:
    __slots__ = ("sample_ns", "halflife_s", "initial_sigma", "min_samples", "_last_t", "_last_mid", "_acc", "_norm", "n")

    def __init__(self, halflife_s: float = 60.0, sample_s: float = 1.0, initial_sigma: float = 0.0, min_samples: int = 10) -> None:
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

    def update(self, mid: float, now_ns: int) -> None:
        """Feed the current mid (quote per base) at time ``now_ns``."""
        if self._last_t is None:
            self._last_t, self._last_mid = now_ns, mid
            return
        elapsed = now_ns - self._last_t
        if elapsed < self.sample_ns:
            return
        dt = elapsed * 1e-9
        d = mid - self._last_mid
        w = 1.0 - math.exp(-math.log(2.0) * dt / self.halflife_s)
        rate = d * d / dt
        self._acc = (1.0 - w) * self._acc + w * rate
        self._norm = (1.0 - w) * self._norm + w
        self.n += 1
        self._last_t, self._last_mid = now_ns, mid

    def sigma(self) -> float:
        if self.n < self.min_samples:
            return self.initial_sigma
        return math.sqrt(self._acc / self._norm)
