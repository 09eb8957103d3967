"""Shift detection: the Page-Hinkley test on a stream of numbers, and the forecaster's
detector built on it.

Page-Hinkley (Page 1954, Hinkley 1971) for an increase of the mean of ``x_t``::

    xbar_t = mean(x_1..x_t)                 (running mean since the last reset)
    m_t    = sum_{i<=t} (x_i - xbar_i - delta)
    M_t    = min_{i<=t} m_i
    alarm when m_t - M_t > threshold        (and at least ``min_obs`` samples seen)

``delta`` is the size of a mean change that is tolerated (in the units of x); ``threshold``
the cumulative excess that raises the alarm (units of x times samples). The change point
estimate is the sample after the one where ``M_t`` was last attained. A decrease is the same
test on ``-x``; ``direction="both"`` runs both.

The forecaster's detector (:class:`ShiftDetector`) scores each forecast when its horizon has
passed (rows = grid steps of the forecaster) and feeds two signals:

* ``loss``: the model's QLIKE minus the EWMA baseline's on that forecast (dimensionless;
  QLIKE(v, h) = v/h - log(v/h) - 1, with v the realised variance over the horizon plus the
  model's variance floor, bp^2). It rises when the model becomes worse than the baseline,
  which is what a regime the model was not trained on looks like.
* ``vol``: log(r^2 + floor / H) of each grid row's mid return r (bp): a change of the
  volatility regime, up or down, whatever the model does.

Either signal can be switched off; the first alarm wins, and both tests restart after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence


@dataclass
class PHConfig:
    """One Page-Hinkley test. ``delta``, ``threshold`` in the units of the signal (see the
    module docstring); ``min_obs`` samples before an alarm may be raised; ``direction`` of
    the mean change to detect."""

    enabled: bool = True
    delta: float = 0.05
    threshold: float = 50.0
    min_obs: int = 100
    direction: Literal["up", "down", "both"] = "up"


class PageHinkley:
    """Online Page-Hinkley test (see the module docstring). :meth:`add` returns True on an
    alarm; :attr:`change_index` is then the estimated first sample of the new regime
    (counted from the last reset, 0-based)."""

    def __init__(self, cfg: PHConfig) -> None:
        self.cfg = cfg
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m_up = self.M_up = 0.0
        self.m_dn = self.M_dn = 0.0
        self.at_up = self.at_dn = 0  # sample count when the minimum was last attained
        self.change_index: int | None = None
        self.alarm_direction: str | None = None

    def add(self, x: float) -> bool:
        if not math.isfinite(x):
            return False
        c = self.cfg
        self.n += 1
        self.mean += (x - self.mean) / self.n
        dev = x - self.mean
        fired = None
        if c.direction in ("up", "both"):
            self.m_up += dev - c.delta
            if self.m_up < self.M_up:
                self.M_up, self.at_up = self.m_up, self.n
            if self.m_up - self.M_up > c.threshold and self.n >= c.min_obs:
                fired = ("up", self.at_up)
        if fired is None and c.direction in ("down", "both"):
            self.m_dn += -dev - c.delta
            if self.m_dn < self.M_dn:
                self.M_dn, self.at_dn = self.m_dn, self.n
            if self.m_dn - self.M_dn > c.threshold and self.n >= c.min_obs:
                fired = ("down", self.at_dn)
        if fired is None:
            return False
        self.alarm_direction, self.change_index = fired
        return True

    @property
    def statistic(self) -> float:
        """The larger of m_t - M_t over the directions tested (alarm above ``threshold``)."""
        d = self.cfg.direction
        up = self.m_up - self.M_up if d in ("up", "both") else 0.0
        dn = self.m_dn - self.M_dn if d in ("down", "both") else 0.0
        return max(up, dn)


def page_hinkley(x: Iterable[float], cfg: PHConfig) -> tuple[int | None, int | None]:
    """Run the test over a whole sequence: (index of the first alarm, estimated change
    index), both 0-based into ``x``; (None, None) without an alarm."""
    ph = PageHinkley(cfg)
    for i, v in enumerate(x):
        if ph.add(float(v)):
            return i, ph.change_index
    return None, None


def qlike_terms(v: float, h: float) -> float:
    """QLIKE of one variance forecast ``h`` for the outcome ``v`` (both > 0, same units):
    v/h - log(v/h) - 1 (0 when h = v)."""
    x = v / h
    return x - math.log(x) - 1.0


@dataclass
class DetectorConfig:
    """The forecaster's shift detector: a Page-Hinkley test on the loss signal (model QLIKE
    minus the EWMA baseline's, per scored forecast) and one on the volatility signal
    (log squared return per grid row, both directions). ``cooldown_rows``: grid rows after an
    alarm during which no new alarm is raised (the retrainer works on the last one)."""

    loss: PHConfig = field(default_factory=lambda: PHConfig(True, 0.05, 50.0, 100, "up"))
    vol: PHConfig = field(default_factory=lambda: PHConfig(False, 0.5, 200.0, 300, "both"))
    cooldown_rows: int = 300


@dataclass
class Alarm:
    """A detected shift: the signal that fired, its direction, the grid row (of the
    forecaster's row count) at the alarm and the estimated first row of the new regime."""

    signal: str
    direction: str
    row: int
    change_row: int
    statistic: float


class ShiftDetector:
    """Both signals of :class:`DetectorConfig`; rows are counted by the caller (the grid row
    number of the forecaster when the sample was made)."""

    def __init__(self, cfg: DetectorConfig) -> None:
        self.cfg = cfg
        self.loss = PageHinkley(cfg.loss)
        self.vol = PageHinkley(cfg.vol)
        self.alarms: list[Alarm] = []
        self._quiet_until = -1
        self._start_loss = 0  # row of the first sample of each test since its reset
        self._start_vol = 0

    def _fire(self, name: str, ph: PageHinkley, start: int, row: int) -> Alarm:
        # one sample per row since ``start``: sample index i was made at row start + i (a loss
        # sample at row r scores a forecast whose horizon ended at r, so a regime starting at
        # row c first shows in the sample of row c too)
        a = Alarm(name, ph.alarm_direction or "", row, start + int(ph.change_index or 0), ph.statistic)
        self.alarms.append(a)
        self.loss.reset()
        self.vol.reset()
        self._quiet_until = row + self.cfg.cooldown_rows
        self._start_loss = self._start_vol = row + 1
        return a

    def add(self, row: int, loss_diff: float | None, log_r2: float | None) -> Alarm | None:
        """Feed one grid row's samples (None = not available this row); an :class:`Alarm` or None."""
        if row < self._quiet_until:
            return None
        if self.cfg.vol.enabled and log_r2 is not None:
            if self.vol.n == 0:
                self._start_vol = row
            if self.vol.add(log_r2):
                return self._fire("vol", self.vol, self._start_vol, row)
        if self.cfg.loss.enabled and loss_diff is not None:
            if self.loss.n == 0:
                self._start_loss = row
            if self.loss.add(loss_diff):
                return self._fire("loss", self.loss, self._start_loss, row)
        return None

    def status(self) -> dict:
        return {"alarms": len(self.alarms), "loss_stat": self.loss.statistic, "vol_stat": self.vol.statistic}


def alarms_for(samples: Sequence[tuple[float | None, float | None]], cfg: DetectorConfig) -> list[Alarm]:
    """Pure form: the alarms raised over rows 0..n-1 given (loss_diff, log_r2) per row."""
    d = ShiftDetector(cfg)
    for r, (l, v) in enumerate(samples):
        d.add(r, l, v)
    return d.alarms
