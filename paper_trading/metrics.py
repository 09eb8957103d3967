"""Backtest / paper-run metrics computed from the SQLite record alone.

:func:`compute_metrics` extends the PnL split of :func:`bot.persistence.report.build_report`
(``mmbot report``) with inventory, risk and quoting statistics. Units follow the project
conventions: prices quote per base, sizes and inventory base units, cash / PnL / fees quote
currency, durations seconds; timestamps in the database are int ns since the epoch.

The run's time span
    The metrics use the **event clock**: the span runs from the earliest to the latest
    timestamp found in ``pnl_snapshots``, ``order_events`` and ``fills`` of the run (the
    engine writes a snapshot when the run starts and a final one at shutdown, so normally
    this is first snapshot -> last snapshot). ``runs.started_ns`` / ``runs.ended_ns`` are
    *not* used: they are wall-clock times, while a simulated or replayed run stamps events
    with the simulated / recorded time.

Inventory (base units), from ``pnl_snapshots``
    Each snapshot's inventory holds until the next snapshot, so it is weighted by the gap to
    the next snapshot (the last snapshot is weighted by the gap to the end of the span,
    normally 0). ``mean_inventory`` is the time-weighted mean of the signed inventory,
    ``mean_abs_inventory`` the time-weighted mean of its absolute value. With a single
    snapshot (zero total weight) both are that snapshot's value.

Sharpe ratio (dimensionless, annualised, of PnL *changes*, not of returns)
    The mark-to-market PnL series (``pnl_snapshots.pnl``, quote currency) is resampled onto a
    1-minute grid t0, t0 + 60 s, ... (t0 = first snapshot, the last partial minute is
    dropped) by taking the last snapshot at or before each grid time. With d = the
    per-minute differences, ``sharpe = mean(d) / std(d, ddof=1) * sqrt(525600)`` (525600 =
    minutes per year: crypto trades 24/7; no risk-free rate, PnL is not divided by capital).
    ``None`` when there are fewer than ``MIN_SHARPE_MINUTES`` (30) one-minute differences (a
    Sharpe ratio from a few minutes is noise, and annualising it gives numbers in the
    thousands) or when the differences have zero standard deviation; ``sharpe_note`` then
    says why (``"n/a: too few samples (9 one-minute PnL changes, need 30)"``), and otherwise
    says that the value is annualised and from how many minutes.

Share of time quoted (fractions of the run's span)
    An order is *working* from its first ``open`` event (or its first ``partially_filled``
    event, when a fill raced ahead of the acknowledgement and no ``open`` was recorded) until
    its first terminal event (``filled``, ``canceled``, ``rejected``); an order with no
    terminal event works until the end of the span. An order that is rejected or filled
    straight from ``new`` never works. Per side, the working intervals are united;
    ``share_quoted_bid`` / ``share_quoted_ask`` are the covered fractions per side,
    ``share_quoted_both`` the fraction with at least one working order on **both** sides and
    ``share_quoted_any`` with at least one on **either** side. Computed with an O(n log n)
    sweep over interval end points in exact integer ns.

Orders and fills
    ``n_orders`` = rows in ``orders`` (every order we submitted, rejected ones included);
    ``fill_ratio`` = fills / n_orders (a partially filled order may count several fills, so
    the ratio can exceed 1); ``None`` without orders.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import create_engine, text

from bot.persistence.report import build_report

MINUTES_PER_YEAR = 525_600
MIN_SHARPE_MINUTES = 30  # one-minute PnL changes a Sharpe ratio needs, at least
NS_PER_S = 1_000_000_000
NS_PER_MIN = 60 * NS_PER_S

_OPENING_STATES = ("open", "partially_filled")
_TERMINAL_STATES = ("filled", "canceled", "rejected")
_I64_MAX = np.iinfo(np.int64).max


@dataclass
class RunData:
    """A run's record as numpy arrays (floats for money and sizes), for metrics and plots.

    Snapshot arrays (``snap_*``) are sorted by time; ``fill_*`` arrays by time; ``order_*``
    arrays have one entry per order (in ``orders.id`` order). ``order_start_ns`` /
    ``order_end_ns`` are the working interval clipped to ``[t_start_ns, t_end_ns]``, with
    ``order_start_ns == order_end_ns`` (a zero-length interval) for orders that never worked.
    """

    run_id: int
    mode: str
    exchange: str
    symbol: str
    status: str
    config: dict
    config_json: str
    started_ns: int
    ended_ns: int | None
    t_start_ns: int
    t_end_ns: int
    snap_ts: np.ndarray = field(repr=False)  # int64 ns
    snap_mid: np.ndarray = field(repr=False)  # quote per base
    snap_inv: np.ndarray = field(repr=False)  # base units
    snap_pnl: np.ndarray = field(repr=False)  # quote currency
    fill_ts: np.ndarray = field(repr=False)  # int64 ns
    fill_sign: np.ndarray = field(repr=False)  # +1 buy, -1 sell (int8)
    fill_price: np.ndarray = field(repr=False)
    fill_size: np.ndarray = field(repr=False)
    fill_fee: np.ndarray = field(repr=False)  # quote currency, rebates negative
    fill_mid: np.ndarray = field(repr=False)
    fill_liquidity: list[str] = field(repr=False)
    fill_client_id: list[str] = field(repr=False)
    fill_trade_id: list[str] = field(repr=False)
    order_sign: np.ndarray = field(repr=False)  # +1 bid, -1 ask
    order_price: np.ndarray = field(repr=False)
    order_state: np.ndarray = field(repr=False)  # current state (str)
    order_start_ns: np.ndarray = field(repr=False)
    order_end_ns: np.ndarray = field(repr=False)

    @property
    def duration_s(self) -> float:
        return (self.t_end_ns - self.t_start_ns) / NS_PER_S

    @property
    def fill_spread_capture(self) -> np.ndarray:
        """Per fill, quote currency: (mid - price) * size for buys, (price - mid) * size for sells."""
        return (self.fill_mid - self.fill_price) * self.fill_size * self.fill_sign


def _url(db: str) -> str:
    from bot.persistence.dbpath import engine_url

    return engine_url(db)


def _f(values) -> np.ndarray:
    """Decimal text column (str) -> float64 array."""
    return np.asarray(values, dtype=np.float64) if len(values) else np.zeros(0)


def load_run_data(db: str, run_id: int) -> RunData:
    """Read one run's snapshots, fills and order working intervals (raw SQL, vectorized)."""
    eng = create_engine(_url(str(db)))
    try:
        with eng.connect() as c:
            p = {"r": run_id}
            run = c.execute(text("SELECT id, mode, exchange, symbol, status, config_json, started_ns, ended_ns "
                                 "FROM runs WHERE id = :r"), p).one()
            snaps = c.execute(text("SELECT ts_ns, mid, inventory, pnl FROM pnl_snapshots WHERE run_id = :r "
                                   "ORDER BY ts_ns, id"), p).all()
            fills = c.execute(text("SELECT ts_ns, side, price, size, fee, mid, liquidity, client_id, trade_id "
                                   "FROM fills WHERE run_id = :r ORDER BY ts_ns, id"), p).all()
            orders = c.execute(text("SELECT id, side, price, state FROM orders WHERE run_id = :r ORDER BY id"), p).all()
            events = c.execute(text(
                "SELECT o.id, e.ts_ns, e.state FROM order_events e JOIN orders o "
                "ON o.run_id = e.run_id AND o.client_id = e.client_id WHERE e.run_id = :r ORDER BY e.id"), p).all()
    finally:
        eng.dispose()

    s_ts, s_mid, s_inv, s_pnl = (list(x) for x in zip(*snaps)) if snaps else ([], [], [], [])
    snap_ts = np.asarray(s_ts, dtype=np.int64)
    f_cols = list(zip(*fills)) if fills else [[]] * 9
    fill_ts = np.asarray(f_cols[0], dtype=np.int64)
    o_id = np.asarray([r[0] for r in orders], dtype=np.int64)
    e_oid = np.asarray([r[0] for r in events], dtype=np.int64)
    e_ts = np.asarray([r[1] for r in events], dtype=np.int64)
    e_state = np.asarray([r[2] for r in events], dtype="U20")

    stamps = [a for a in (snap_ts, fill_ts, e_ts) if a.size]
    if stamps:
        t_start = int(min(a.min() for a in stamps))
        t_end = int(max(a.max() for a in stamps))
    else:
        t_start = int(run.started_ns)
        t_end = int(run.ended_ns or run.started_ns)

    # working interval per order: first opening event -> first terminal event after it
    n = o_id.size
    start = np.full(n, _I64_MAX, dtype=np.int64)
    end = np.full(n, _I64_MAX, dtype=np.int64)
    if e_oid.size:
        idx = np.searchsorted(o_id, e_oid)  # o_id is sorted (ORDER BY id); the join guarantees a match
        is_open = np.isin(e_state, _OPENING_STATES)
        np.minimum.at(start, idx[is_open], e_ts[is_open])
        is_term = np.isin(e_state, _TERMINAL_STATES) & (e_ts >= start[idx])
        np.minimum.at(end, idx[is_term], e_ts[is_term])
    worked = start != _I64_MAX
    end = np.where(worked & (end == _I64_MAX), t_end, end)
    start = np.clip(np.where(worked, start, t_start), t_start, t_end)
    end = np.clip(np.where(worked, end, t_start), start, t_end)

    try:
        config = json.loads(run.config_json or "{}")
    except ValueError:
        config = {"_unparsed": run.config_json}
    return RunData(
        run_id=int(run.id), mode=run.mode, exchange=run.exchange, symbol=run.symbol, status=run.status,
        config=config, config_json=run.config_json or "", started_ns=int(run.started_ns),
        ended_ns=None if run.ended_ns is None else int(run.ended_ns), t_start_ns=t_start, t_end_ns=t_end,
        snap_ts=snap_ts, snap_mid=np.asarray(s_mid, dtype=np.float64), snap_inv=_f(s_inv),
        snap_pnl=np.asarray(s_pnl, dtype=np.float64),
        fill_ts=fill_ts, fill_sign=np.where(np.asarray(f_cols[1], dtype=object) == "buy", 1, -1).astype(np.int8),
        fill_price=_f(f_cols[2]), fill_size=_f(f_cols[3]), fill_fee=_f(f_cols[4]),
        fill_mid=np.asarray(f_cols[5], dtype=np.float64), fill_liquidity=list(f_cols[6]),
        fill_client_id=list(f_cols[7]), fill_trade_id=list(f_cols[8]),
        order_sign=np.where(np.asarray([r[1] for r in orders], dtype=object) == "buy", 1, -1).astype(np.int8),
        order_price=_f([r[2] for r in orders]), order_state=np.asarray([r[3] for r in orders], dtype="U20"),
        order_start_ns=start, order_end_ns=end,
    )


# -- building blocks (pure numpy, exposed for tests and plots) ------------------------------
def quoted_time_ns(bid_start, bid_end, ask_start, ask_end) -> dict[str, int]:
    """Covered time (int ns) of the union of bid intervals, of ask intervals, of both, of either.

    Intervals are half-open ``[start, end)``; zero-length ones cover nothing. One sort of the
    2n end points and two cumulative sums: O(n log n), exact in integer ns.
    """
    bs, be, as_, ae = (np.asarray(x, dtype=np.int64) for x in (bid_start, bid_end, ask_start, ask_end))
    t = np.concatenate([bs, be, as_, ae])
    if t.size == 0:
        return {"bid": 0, "ask": 0, "both": 0, "any": 0}
    nb, na = bs.size, as_.size
    db = np.concatenate([np.ones(nb, np.int64), -np.ones(nb, np.int64), np.zeros(2 * na, np.int64)])
    da = np.concatenate([np.zeros(2 * nb, np.int64), np.ones(na, np.int64), -np.ones(na, np.int64)])
    order = np.argsort(t, kind="stable")
    t = t[order]
    cb = np.cumsum(db[order])[:-1] > 0  # working count on each segment [t[i], t[i+1])
    ca = np.cumsum(da[order])[:-1] > 0
    dt = np.diff(t)
    return {"bid": int(dt[cb].sum()), "ask": int(dt[ca].sum()),
            "both": int(dt[cb & ca].sum()), "any": int(dt[cb | ca].sum())}


def time_weighted_inventory(ts_ns, inventory, t_end_ns: int | None = None) -> tuple[float | None, float | None]:
    """(time-weighted mean inventory, time-weighted mean |inventory|), base units.

    Each value is weighted by the gap to the next timestamp; the last by ``t_end_ns - ts[-1]``
    (0 if ``t_end_ns`` is None). With zero total weight, the plain means. (None, None) if empty.
    """
    ts = np.asarray(ts_ns, dtype=np.int64)
    q = np.asarray(inventory, dtype=np.float64)
    if ts.size == 0:
        return None, None
    last = max(0, int(t_end_ns) - int(ts[-1])) if t_end_ns is not None else 0
    w = np.append(np.diff(ts), last).astype(np.float64)
    tot = w.sum()
    if tot <= 0:
        return float(q.mean()), float(np.abs(q).mean())
    return float((w * q).sum() / tot), float((w * np.abs(q)).sum() / tot)


def minute_pnl_diffs(ts_ns, pnl) -> np.ndarray:
    """Per-minute PnL changes: the series sampled by last value on the grid t0 + k minutes."""
    ts = np.asarray(ts_ns, dtype=np.int64)
    v = np.asarray(pnl, dtype=np.float64)
    if ts.size == 0:
        return np.zeros(0)
    n_min = int((ts[-1] - ts[0]) // NS_PER_MIN)
    grid = ts[0] + np.arange(n_min + 1, dtype=np.int64) * NS_PER_MIN
    idx = np.searchsorted(ts, grid, side="right") - 1
    return np.diff(v[idx])


def sharpe_per_minute(ts_ns, pnl, min_minutes: int = MIN_SHARPE_MINUTES) -> float | None:
    """Annualised Sharpe of per-minute PnL changes: mean/std(ddof=1) * sqrt(525600).

    None with fewer than ``min_minutes`` (at least 2) one-minute differences or a zero
    standard deviation.
    """
    d = minute_pnl_diffs(ts_ns, pnl)
    if d.size < max(2, min_minutes):
        return None
    sd = float(d.std(ddof=1))
    scale = max(1.0, float(np.abs(d).max()))
    if not math.isfinite(sd) or sd <= 1e-12 * scale:  # constant up to rounding noise
        return None
    return float(d.mean()) / sd * math.sqrt(MINUTES_PER_YEAR)


def sharpe_note(sharpe: float | None, n_minutes: int, min_minutes: int = MIN_SHARPE_MINUTES) -> str:
    """What the Sharpe value is, or why there is none, in a few words for tables."""
    if n_minutes < min_minutes:
        return f"n/a: too few samples ({n_minutes} one-minute PnL changes, need {min_minutes})"
    if sharpe is None:
        return f"n/a: PnL did not change over {n_minutes} minutes"
    return f"annualised (x sqrt(525600)) from {n_minutes} one-minute PnL changes"


def max_drawdown(pnl) -> float | None:
    """Largest peak-to-trough fall of the PnL series, quote currency (>= 0); None if empty."""
    v = np.asarray(pnl, dtype=np.float64)
    if v.size == 0:
        return None
    return float((np.maximum.accumulate(v) - v).max())


def metrics_from_data(d: RunData) -> dict:
    """The metrics added to the PnL split (see the module docstring)."""
    span = d.t_end_ns - d.t_start_ns
    bid = d.order_sign > 0
    cov = quoted_time_ns(d.order_start_ns[bid], d.order_end_ns[bid], d.order_start_ns[~bid], d.order_end_ns[~bid])
    share = {k: (v / span if span > 0 else None) for k, v in cov.items()}
    mean_q, mean_abs_q = time_weighted_inventory(d.snap_ts, d.snap_inv, d.t_end_ns)
    n_orders = int(d.order_sign.size)
    n_fills = int(d.fill_ts.size)
    sharpe = sharpe_per_minute(d.snap_ts, d.snap_pnl)
    n_minutes = int(minute_pnl_diffs(d.snap_ts, d.snap_pnl).size)
    return {
        "duration_s": span / NS_PER_S,
        "mean_inventory": mean_q,
        "mean_abs_inventory": mean_abs_q,
        "sharpe": sharpe,
        "sharpe_minutes": n_minutes,
        "sharpe_note": sharpe_note(sharpe, n_minutes),
        "max_drawdown": max_drawdown(d.snap_pnl),
        "share_quoted_both": share["both"],
        "share_quoted_any": share["any"],
        "share_quoted_bid": share["bid"],
        "share_quoted_ask": share["ask"],
        "n_orders": n_orders,
        "n_orders_worked": int((d.order_end_ns > d.order_start_ns).sum()),
        "n_orders_rejected": int((d.order_state == "rejected").sum()),
        "n_orders_filled": int((d.order_state == "filled").sum()),
        "fill_ratio": n_fills / n_orders if n_orders else None,
    }


def compute_metrics(db_url_or_path: str, run_id: int | None = None) -> dict:
    """All metrics of a run (the latest run if ``run_id`` is None), from the database alone.

    Keys of ``build_report`` (``total_pnl``, ``spread_capture``, ``inventory_pnl``, ``fees``,
    ``fills``, ``volume_base``, ``volume_quote``, ``max_abs_inventory``, ...) plus those of
    :func:`metrics_from_data`. Undefined values are None. Raises :class:`bot.errors.ConfigError`
    for a missing database or run.
    """
    db = str(db_url_or_path)
    rep = build_report(db, run_id).as_dict()
    out = dict(rep)
    out.update(metrics_from_data(load_run_data(db, rep["run_id"])))
    return out
