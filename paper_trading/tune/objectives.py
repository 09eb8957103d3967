"""Objectives of a trial, computed from its per-fold results.

A :class:`FoldResult` holds what one backtest of one segment produced (no order log): the
final PnL (quote currency, mark-to-market at the last mid, fees included), traded notional
(quote currency), fills, and the PnL snapshot series (every ``pnl_snapshot_interval_s`` of
recorded time: ts ns, inventory base units, PnL quote currency).

Objectives over the folds seen so far (so that each fold can be reported to the pruner):

``pnl`` (maximise, quote currency)
    sum of the folds' PnL.
``risk_adjusted_pnl`` (maximise, quote currency)
    PnL minus a running inventory penalty: ``sum(pnl) - phi * integral(q(t)^2 dt)`` with q in
    base units, t in seconds and ``phi`` (``--risk-penalty``) in quote / (base^2 s); the
    inventory is taken piecewise constant between snapshots (Cartea-Jaimungal's running
    penalty).
``sharpe`` (maximise, dimensionless, annualised)
    Sharpe of per-minute PnL changes, as ``mmbot report`` computes it per run (last snapshot
    at or before each minute; mean / std(ddof=1) * sqrt(525600)); the per-minute changes of
    all folds are pooled. Minimum-sample rule: undefined (NaN, the trial fails) with fewer
    than ``min_sharpe_minutes`` changes; the CLI refuses before any trial when the folds
    cannot supply that many.
``pnl_per_volume`` (maximise, basis points)
    ``1e4 * sum(pnl) / sum(traded notional)``; NaN (the trial fails) without any fill.
``inventory_risk`` (minimise, base units)
    root mean square inventory over time, sqrt(integral(q^2 dt) / duration): the second
    objective of a PnL-versus-risk Pareto front.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from paper_trading.metrics import MINUTES_PER_YEAR, minute_pnl_diffs

DIRECTIONS = {
    "pnl": "maximize",
    "risk_adjusted_pnl": "maximize",
    "sharpe": "maximize",
    "pnl_per_volume": "maximize",
    "inventory_risk": "minimize",
}
UNITS = {"pnl": "quote", "risk_adjusted_pnl": "quote", "sharpe": "annualised", "pnl_per_volume": "bp", "inventory_risk": "base"}


@dataclass
class FoldResult:
    pnl: float  # quote currency
    volume_quote: float  # traded notional, quote currency
    fills: int
    snap_ts: np.ndarray = field(repr=False)  # int64 ns
    snap_q: np.ndarray = field(repr=False)  # base units
    snap_pnl: np.ndarray = field(repr=False)  # quote currency
    events: int = 0  # recording rows replayed (venue events)
    first_ts: int = 0  # first / last recorded local time the backtest consumed, ns
    last_ts: int = 0

    @property
    def duration_s(self) -> float:
        return float(self.snap_ts[-1] - self.snap_ts[0]) / 1e9 if self.snap_ts.size > 1 else 0.0

    @property
    def q2_integral(self) -> float:
        """integral of q(t)^2 dt, base^2 * s (q piecewise constant between snapshots)."""
        if self.snap_ts.size < 2:
            return 0.0
        dt = np.diff(self.snap_ts).astype(np.float64) / 1e9
        return float((self.snap_q[:-1] ** 2 * dt).sum())

    def minute_diffs(self) -> np.ndarray:
        return minute_pnl_diffs(self.snap_ts, self.snap_pnl)


def check_names(names: list[str]) -> list[str]:
    from bot.errors import ConfigError

    if not 1 <= len(names) <= 2:
        raise ConfigError(f"--objective takes one objective or two (a Pareto front), got {len(names)}: {', '.join(names)}")
    for n in names:
        if n not in DIRECTIONS:
            raise ConfigError(f"--objective: unknown objective {n!r} (one of {', '.join(DIRECTIONS)})")
    if len(set(names)) != len(names):
        raise ConfigError(f"--objective names {names[0]!r} twice")
    return names


def evaluate(name: str, folds: list[FoldResult], *, risk_penalty: float, min_sharpe_minutes: int) -> float:
    """Objective ``name`` over ``folds`` (see the module docstring); NaN when undefined."""
    pnl = sum(f.pnl for f in folds)
    if name == "pnl":
        return pnl
    q2 = sum(f.q2_integral for f in folds)
    if name == "risk_adjusted_pnl":
        return pnl - risk_penalty * q2
    if name == "inventory_risk":
        dur = sum(f.duration_s for f in folds)
        return math.sqrt(q2 / dur) if dur > 0 else math.nan
    if name == "pnl_per_volume":
        vol = sum(f.volume_quote for f in folds)
        return 1e4 * pnl / vol if vol > 0 else math.nan
    if name == "sharpe":
        d = np.concatenate([f.minute_diffs() for f in folds]) if folds else np.zeros(0)
        if d.size < max(min_sharpe_minutes, 2):
            return math.nan
        sd = float(d.std(ddof=1))
        if not math.isfinite(sd) or sd <= 1e-12 * max(1.0, float(np.abs(d).max())):
            return math.nan
        return float(d.mean()) / sd * math.sqrt(MINUTES_PER_YEAR)
    raise ValueError(name)


def summary(folds: list[FoldResult], *, risk_penalty: float, min_sharpe_minutes: int) -> dict:
    """Every objective plus totals, for the summary row of a trial (plain floats)."""
    out = {n: evaluate(n, folds, risk_penalty=risk_penalty, min_sharpe_minutes=min_sharpe_minutes) for n in DIRECTIONS}
    out["fills"] = sum(f.fills for f in folds)
    out["volume_quote"] = sum(f.volume_quote for f in folds)
    out["events"] = sum(f.events for f in folds)
    out["sharpe_minutes"] = int(sum(f.minute_diffs().size for f in folds))
    return out
