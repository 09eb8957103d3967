"""Reference forecasters for measuring what a forecast is worth in trading (``mmbot backtest
--compare lstm,baseline,oracle``): the same :class:`models.forecast.Forecaster` interface as
:class:`models.forecaster.LstmForecaster`, on the same grid and horizon, so the strategy is
the same and only the forecast differs.

Grid and horizon are the model's (:class:`GridSpec`, read from the model's metadata): grid
step ``sample_s`` seconds (grid times ``k * sample_ns``), horizon ``H = horizon_steps`` grid
steps = ``horizon_s`` seconds, no forecast (``Forecast(None, None)``: the strategy uses its
own estimator) until ``warmup_steps`` grid rows have been crossed, exactly like the LSTM's
warm-up (which counts the grid rows it has seen since its first update).

Units (as :class:`models.forecast.Forecast`): ``drift`` = expected change of the mid over the
horizon, quote per base; ``sigma`` = volatility of the mid, quote per base per sqrt(second),
from a variance V of the mid log return over the horizon (bp^2) by
``sigma = mid * sqrt(V / 1e8 / horizon_s)``.

* :class:`BaselineForecaster` (causal): zero drift; V = H * EWMA of the squared 1-grid-step
  log returns of the mid (bp^2), the RiskMetrics recursion with the model's fitted per-row
  decay (``meta["baseline"]["lambda_per_row"]``), seeded with the mean squared return over the
  warm-up rows (not with the training market's level), plus the model's variance floor.
  The mid at a grid time is the book's mid at the decision that crossed it (as the LSTM's
  features take it).
* :class:`OracleForecaster` (SEES THE FUTURE, an upper bound): at decision time t the realized
  drift ``mid(t + horizon_s) - mid(t)`` and the realized variance
  ``sum_k (1e4 * log(mid(t + k*sample_s) / mid(t + (k-1)*sample_s)))^2`` for k = 1..H (bp^2),
  the mid being the recording's (:class:`MidSeries`: the mid after the last recorded event at
  or before that time). Near the end of the recording (t + horizon_s after the last event) it
  has no view (``Forecast(None, None)``). Source ``"oracle (sees the future)"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from models.forecast import Forecast

BP = 1e4


@dataclass(frozen=True)
class GridSpec:
    """The forecaster's grid: ``sample_ns`` (ns) per row, ``H`` rows per horizon of
    ``horizon_s`` seconds, ``warmup_steps`` rows without a forecast, the per-row EWMA decay
    ``lam`` and the variance floor ``var_floor_bp2`` (bp^2) of the model."""

    sample_ns: int
    H: int
    horizon_s: float
    warmup_steps: int
    lam: float
    var_floor_bp2: float = 0.0

    @classmethod
    def from_meta(cls, meta: dict) -> "GridSpec":
        """From an exported model's metadata (:mod:`models.export`)."""
        sample_s = float(meta.get("sample_s", meta["features"]["config"]["sample_s"]))
        return cls(sample_ns=int(round(sample_s * 1e9)), H=int(meta["horizon_steps"]), horizon_s=float(meta["horizon_s"]),
                   warmup_steps=int(meta["warmup_steps"]),
                   lam=float(meta.get("baseline", {}).get("lambda_per_row", 0.94 ** sample_s)),
                   var_floor_bp2=float(meta.get("var_floor_bp2", 0.0)))


def sigma_from_var(mid: float, var_bp2: float, horizon_s: float) -> float:
    """Quote per base per sqrt(second) from a log-return variance over ``horizon_s`` (bp^2)."""
    return mid * math.sqrt(var_bp2 / (BP * BP) / horizon_s)


class _GridCounter:
    """Counts the grid rows crossed since the first update (the LSTM's warm-up clock)."""

    def __init__(self, spec: GridSpec) -> None:
        self.spec = spec
        self.last_g: int | None = None
        self.rows = 0

    def advance(self, now_ns: int) -> int:
        """Grid rows crossed by this update (at least 1 on the first call)."""
        g = now_ns // self.spec.sample_ns
        n = 1 if self.last_g is None else max(g - self.last_g, 0)
        if self.last_g is None or g > self.last_g:
            self.last_g = g
        self.rows += n
        return n


class BaselineForecaster:
    """Zero drift and EWMA sigma on the model's grid, computed causally (module docstring)."""

    name = "baseline"

    def __init__(self, spec: GridSpec) -> None:
        self.spec = spec
        self.clock = _GridCounter(spec)
        self.prev_mid: float | None = None
        self.sum_r2 = 0.0  # bp^2, over the warm-up rows
        self.n_r2 = 0
        self.ewma: float | None = None  # bp^2 per row, once warmed up
        self.forecast = Forecast(None, None, spec.horizon_s, "baseline-warmup")

    def update(self, book, now_ns: int, trades: Sequence = ()) -> Forecast | None:
        n = self.clock.advance(now_ns)
        if n == 0:
            return self.forecast
        mid = book.mid()
        if mid is None or not mid > 0:  # one-sided book: no new row, keep the last forecast
            return self.forecast
        s = self.spec
        for _ in range(n):  # rows skipped between decisions carry a zero return (mid unchanged)
            r = 0.0 if self.prev_mid is None else math.log(mid / self.prev_mid) * BP
            self.prev_mid = mid
            if self.ewma is None:
                self.sum_r2 += r * r
                self.n_r2 += 1
                if self.clock.rows >= s.warmup_steps:
                    self.ewma = self.sum_r2 / self.n_r2
            else:
                self.ewma = s.lam * self.ewma + (1.0 - s.lam) * r * r
        if self.ewma is None:
            return self.forecast
        var = s.H * self.ewma + s.var_floor_bp2
        self.forecast = Forecast(0.0, sigma_from_var(mid, var, s.horizon_s), s.horizon_s, "baseline (ewma, zero drift)")
        return self.forecast

    def status(self) -> dict:
        return {"source": self.forecast.source, "rows": self.clock.rows, "ewma_bp2_per_row": self.ewma}


class MidSeries:
    """The recording's mid (quote per base) as a step function of local time (ns): the mid
    after the last event at or before t; events that leave the book one-sided or crossed
    keep the previous mid. NaN before the first two-sided book."""

    def __init__(self, ts_ns: np.ndarray, mid: np.ndarray) -> None:
        ts = np.asarray(ts_ns, dtype=np.int64)
        m = np.asarray(mid, dtype=np.float64).copy()
        ok = np.isfinite(m)
        idx = np.where(ok, np.arange(len(m)), -1)
        np.maximum.accumulate(idx, out=idx)  # forward-fill the last finite mid
        m = np.where(idx >= 0, m[np.maximum(idx, 0)], np.nan)
        self.ts = ts
        self.mid = m
        self.t_first = int(ts[0]) if len(ts) else 0
        self.t_last = int(ts[-1]) if len(ts) else 0

    @classmethod
    def from_recording(cls, path) -> "MidSeries":
        """Load a recording directory whole and replay its top of book (numba)."""
        from paper_trading.backtest import load_recording, recorded_mids

        events, meta = load_recording(path)
        return cls(*recorded_mids(events, float(meta["tick_size"])))

    def at(self, t_ns) -> np.ndarray | float:
        """Mid at time(s) ``t_ns`` (NaN before the first event or first two-sided book)."""
        t = np.asarray(t_ns, dtype=np.int64)
        i = np.searchsorted(self.ts, t, side="right") - 1
        out = np.where(i >= 0, self.mid[np.maximum(i, 0)], np.nan)
        return float(out) if out.ndim == 0 else out


class OracleForecaster:
    """The realized future over the horizon (SEES THE FUTURE; module docstring)."""

    name = "oracle"

    def __init__(self, spec: GridSpec, mids: MidSeries) -> None:
        self.spec = spec
        self.mids = mids
        self.clock = _GridCounter(spec)
        self.offsets = np.arange(spec.H + 1, dtype=np.int64) * spec.sample_ns
        self.no_view = 0  # decisions after the warm-up without a view (end of data, no mid)
        self.forecast = Forecast(None, None, spec.horizon_s, "oracle-warmup")

    def realized(self, t_ns: int) -> tuple[float, float] | None:
        """(drift quote per base, variance bp^2) realized over (t, t + horizon]; None when the
        horizon reaches past the recording's last event or a mid is missing."""
        if t_ns + int(self.offsets[-1]) > self.mids.t_last:
            return None
        m = self.mids.at(t_ns + self.offsets)
        if not np.all(np.isfinite(m)) or not np.all(m > 0):
            return None
        r = np.diff(np.log(m)) * BP
        return float(m[-1] - m[0]), float(np.dot(r, r))

    def update(self, book, now_ns: int, trades: Sequence = ()) -> Forecast | None:
        self.clock.advance(now_ns)
        s = self.spec
        if self.clock.rows < s.warmup_steps:
            return self.forecast
        out = self.realized(now_ns)
        if out is None:
            self.no_view += 1
            self.forecast = Forecast(None, None, s.horizon_s, "oracle (no future left)")
            return self.forecast
        drift, var = out
        mid0 = float(self.mids.at(now_ns))
        self.forecast = Forecast(drift, sigma_from_var(mid0, var, s.horizon_s), s.horizon_s, "oracle (sees the future)")
        return self.forecast

    def status(self) -> dict:
        """``source``: what drove the quotes after the warm-up (the run's last forecast may be
        the end of data's "no future left"); ``decisions_without_view`` counts those."""
        src = "oracle (sees the future)" if self.clock.rows >= self.spec.warmup_steps else self.forecast.source
        return {"source": src, "rows": self.clock.rows, "decisions_without_view": self.no_view}
