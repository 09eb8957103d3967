"""Training targets at a configurable horizon, on the feature grid.

For row k (grid time t_k, mid m_k):

* drift target  ``y_k = 1e4 * log(m_{end} / m_k)``: the mid log return over the horizon, in
  basis points;
* variance target ``v_k = sum of squared grid returns over (t_k, t_end]``: the realised
  variance over the horizon, bp^2 (its square root is the realised volatility).

The horizon is given either in seconds (``"10s"``: ``end = k + H`` with ``H = horizon_s /
sample_s`` grid rows) or in events (``"50ev"``: ``end`` = the time of the 50th change of the
recorded mid after t_k; the returns are then the recorded mid changes, not grid returns, and
the horizon's length in seconds varies; :func:`event_targets` also returns it).

Targets use only data after t_k, features only data up to t_k; rows whose horizon runs past
the end of the span get NaN targets (never filled in). The span ends at the feature frame's
last grid time (``--until`` cuts the frame): an event horizon counts only mid changes at or
before it, whatever the recording holds after it. Nothing here is used as a feature.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from models.features import BP, FeatureFrame, rv_window_units

_HORIZON_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(s|sec|ev|events?)\s*$", re.I)


@dataclass(frozen=True)
class Horizon:
    """A forecast horizon: ``value`` seconds (unit ``"s"``) or mid-change events (``"ev"``)."""

    value: float
    unit: str = "s"

    @classmethod
    def parse(cls, text: "str | float | Horizon") -> "Horizon":
        if isinstance(text, Horizon):
            return text
        if isinstance(text, (int, float)):
            return cls(float(text), "s")
        m = _HORIZON_RE.match(str(text))
        if not m:
            raise ValueError(f"horizon {text!r}: expected e.g. '10s' or '50ev'")
        v = float(m.group(1))
        unit = "s" if m.group(2).lower().startswith("s") else "ev"
        if v <= 0:
            raise ValueError(f"horizon {text!r} must be positive")
        if unit == "ev" and v != int(v):
            raise ValueError(f"horizon {text!r}: an event count must be an integer")
        return cls(v, unit)

    def __str__(self) -> str:
        return f"{self.value:g}{self.unit}"

    def steps(self, sample_s: float) -> int:
        """Grid rows of a seconds horizon."""
        if self.unit != "s":
            raise ValueError("steps() needs a horizon in seconds")
        h = int(round(self.value / sample_s))
        if h < 1 or abs(h * sample_s - self.value) > 1e-9 * max(1.0, self.value):
            raise ValueError(f"horizon {self.value:g} s is not a whole number of {sample_s:g} s grid steps")
        return h


@dataclass
class Targets:
    """drift (bp), var (bp^2), duration_s per row (NaN where the horizon leaves the data)."""

    drift: np.ndarray
    var: np.ndarray
    duration_s: np.ndarray
    horizon: Horizon

    @property
    def valid(self) -> np.ndarray:
        return np.isfinite(self.drift) & np.isfinite(self.var)

    def horizon_s(self, rows: np.ndarray | None = None) -> float:
        """The horizon in seconds (events: the median duration over ``rows``)."""
        if self.horizon.unit == "s":
            return self.horizon.value
        d = self.duration_s if rows is None else self.duration_s[rows]
        d = d[np.isfinite(d)]
        return float(np.median(d)) if len(d) else float("nan")


def make_targets(ff: FeatureFrame, horizon: "Horizon | str", events: np.ndarray | None = None,
                 tick_size: float | None = None, end_ns: int | None = None) -> Targets:
    """Targets for every row of ``ff``. An event horizon needs the recording's ``events``.

    ``end_ns`` (local time, ns): the end of the span; no target uses data after it (default
    and upper bound: the last grid time of ``ff``): rows whose horizon ends after it get NaN."""
    hz = Horizon.parse(horizon)
    n = len(ff)
    if hz.unit == "s":
        H = hz.steps(ff.cfg.sample_s)
        drift = np.full(n, np.nan)
        var = np.full(n, np.nan)
        if n > H:
            drift[: n - H] = np.log(ff.mid[H:] / ff.mid[: n - H]) * BP
            # var over (k, k+H] = window sum of H squared returns ending at row k+H (exact ints)
            var[: n - H] = rv_window_units(ff, H)[H:]
            if end_ns is not None:
                late = np.zeros(n, bool)
                late[: n - H] = ff.ts_ns[H:] > end_ns
                drift[late] = np.nan
                var[late] = np.nan
        dur = np.where(np.isfinite(drift), hz.value, np.nan)
        return Targets(drift, var, dur, hz)
    if events is None:
        raise ValueError("an event horizon needs the recording's events")
    ev_ts, ev_mid = mid_changes(events, tick_size)
    if n:
        cut = int(ff.ts_ns[-1]) if end_ns is None else min(int(end_ns), int(ff.ts_ns[-1]))
        k = int(np.searchsorted(ev_ts, cut, side="right"))  # changes at or before the span end
        ev_ts, ev_mid = ev_ts[:k], ev_mid[:k]
    d, v, dur = event_targets(ff.ts_ns, ff.mid, ev_ts, ev_mid, int(hz.value))
    return Targets(d, v, dur, hz)


def mid_changes(events: np.ndarray, tick_size: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(local time, new mid) of every change of the recorded mid, looking at the book only at
    the end of each exchange message (two-sided, uncrossed books only)."""
    from bot.recording.book_replay import message_ends, replay_top

    top = replay_top(events, tick_size)
    ends = message_ends(events)
    ok = ends & np.isfinite(top["bid_px"]) & np.isfinite(top["ask_px"]) & ~top["crossed"]
    ts = events["local_ts"][ok]
    mid = 0.5 * (top["bid_px"][ok] + top["ask_px"][ok])
    if len(mid) == 0:
        return ts, mid
    ch = np.ones(len(mid), bool)
    ch[1:] = mid[1:] != mid[:-1]
    ch[0] = False
    return np.ascontiguousarray(ts[ch]), np.ascontiguousarray(mid[ch])


def event_targets(grid_ts: np.ndarray, grid_mid: np.ndarray, ev_ts: np.ndarray, ev_mid: np.ndarray,
                  H: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets over the next H mid changes after each grid time: (drift bp, var bp^2,
    duration s). The path is m_k, then the changed mids; var sums its squared log steps."""
    n = len(grid_ts)
    drift = np.full(n, np.nan)
    var = np.full(n, np.nan)
    dur = np.full(n, np.nan)
    if len(ev_ts) == 0:
        return drift, var, dur
    i0 = np.searchsorted(ev_ts, grid_ts, side="right")  # first change after t_k
    iend = i0 + H - 1
    ok = iend < len(ev_ts)
    lr = np.zeros(len(ev_mid))
    lr[1:] = np.log(ev_mid[1:] / ev_mid[:-1]) * BP
    cs = np.concatenate([[0.0], np.cumsum(lr * lr)])
    k = np.flatnonzero(ok)
    a, b = i0[k], iend[k]
    first = np.log(ev_mid[a] / grid_mid[k]) * BP  # from m_k to the first change
    drift[k] = np.log(ev_mid[b] / grid_mid[k]) * BP
    var[k] = first * first + (cs[b + 1] - cs[a + 1])
    dur[k] = (ev_ts[b] - grid_ts[k]) * 1e-9
    return drift, var, dur


def variance_floor(var_train: np.ndarray) -> float:
    """Floor added to variance targets and forecasts (bp^2): 1 % of the mean training
    realised variance, so that QLIKE is finite on horizons without a mid change."""
    v = var_train[np.isfinite(var_train)]
    m = float(v.mean()) if len(v) else 1.0
    return max(1e-2 * m, 1e-12)


def direction_classes(drift_bp: np.ndarray) -> np.ndarray:
    """3 classes of the drift target: -1 down, 0 unchanged, +1 up (the mid moves in ticks, so
    'unchanged' is exact: |y| below 1e-6 bp)."""
    return np.where(drift_bp > 1e-6, 1, np.where(drift_bp < -1e-6, -1, 0))
