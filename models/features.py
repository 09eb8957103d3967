"""Features for the forecaster, computed identically online (one grid step at a time, O(1)
per step) and offline (vectorised over a whole recording).

The sampling grid
-----------------
The model works on a fixed grid of ``sample_s`` seconds: grid times are the integer
multiples ``t_k = k * sample_ns`` of the interval since the epoch (so the online and the
offline grids coincide without knowing where a recording starts).

* Book at ``t_k``: offline, the book after every recording row with ``local_ts <= t_k``;
  online, the book passed to the first :meth:`OnlineFeatures.step` call for ``t_k`` (the
  forecaster calls it at the first ``update`` with ``now_ns >= t_k``, so live the snapshot is
  at most one decision interval late; in the parity test the calls are exactly at ``t_k``).
  A grid time whose book is one-sided or crossed (a feed gap, Bitstamp's transient crosses
  around trades) reuses the last valid snapshot ("forward fill"); grid times before the
  first valid snapshot produce no row.
* Trades of row ``k``: public trades with timestamp in ``(t_{k-1}, t_k]``. A trade whose
  aggressor is unknown (``side`` 0 in a recording, ``''`` online: Bitstamp 2015) is signed by
  its price against the book of the previous row (above the mid: buy, below: sell, at the
  mid: 0), by :func:`bot.market_data.trade_side.aggressor_side`, the rule the replay uses too.

Features (in :func:`feature_names` order; ``n`` = ``n_levels``, ``w`` in ``rv_windows``)
-------------------------------------------------------------------------------------------
``ret``          mid log return from row k-1 to row k, basis points (0 on the first row).
``spread_bps``   (best ask - best bid) / mid, basis points.
``micro_off``    (microprice - mid) / spread, in [-0.5, 0.5] (leans to the thinner side).
``imb_1..n``     order-book imbalance over levels 1..i: (B_i - A_i) / (B_i + A_i), B_i / A_i
                 the bid / ask size summed over the best i levels (missing levels count 0).
``ofi``          sampled order-flow imbalance between rows k-1 and k (see below), divided by
                 the mean best-level depth D = (q^b_k + q^a_k + q^b_{k-1} + q^a_{k-1}) / 4.
``flow``         signed traded volume of the interval (buys - sells, base units) divided by the
                 best-level depth (q^b_k + q^a_k) / 2, through asinh.
``flow_imb``     (buy volume - sell volume) / (buy + sell volume), 0 without trades.
``n_trades``     log(1 + number of trades in the interval).
``rv_w``         log(1 + realised volatility over the last w rows, bp per sqrt(second)):
                 sqrt(sum of the last w squared ``ret`` / (w * sample_s)); rows before the
                 start count 0 (the forecaster's warm-up covers them).
``dt_trade``     log(1 + seconds since the last trade at or before t_k), capped at
                 ``dt_cap_s`` (also the value before any trade).
``tick_rv``      only with ``FeatureConfig.tick_rv`` (off by default; models saved without it
                 are unchanged): log(1 + sqrt(tick-level realised variance of the interval /
                 sample_s)), bp per sqrt(second); see "Inside the interval" below.

Inside the interval (``tick_rv``). The mid is also looked at on every book update between two
grid times: offline, the book after the last recording row of each distinct ``local_ts``
(valid books only: two-sided, uncrossed); online, the book passed to
:meth:`OnlineFeatures.observe` (the forecaster calls it on every market event, before the grid
steps that event triggers). The tick-level realised variance of row k is the sum of the squared
log changes (bp^2) between consecutive observed mids with time in (t_{k-1}, t_k], each change
measured from the previous valid observed mid (which may lie in an earlier interval), in the
same fixed-point units as the rv sums (:attr:`FeatureFrame.tick_units`,
:attr:`OnlineFeatures.tick_units`). It is far less noisy than one squared grid return as a
measure of the interval's activity (Binance books update every 0-100 ms). Online, several
market events at one local time are observed one by one (offline sees only the last book of
that time), and a grid row computed from a book later than t_k (live, the first event after
t_k) counts that event's change in row k: the same one-event lateness as the book features.

Sampled OFI. Cont, Kukanov and Stoikov (2014) define the order-flow imbalance of one book
event n from the best bid/ask price P and size q before and after it,

    e_n = 1{P^b_n >= P^b_{n-1}} q^b_n - 1{P^b_n <= P^b_{n-1}} q^b_{n-1}
        - 1{P^a_n <= P^a_{n-1}} q^a_n + 1{P^a_n >= P^a_{n-1}} q^a_{n-1},

and OFI over an interval as the sum of e_n over its events. We apply the same formula to
consecutive grid snapshots (n-1 = row k-1, n = row k): one e per interval instead of the
sum over every event inside it. The two agree when the best levels change at most once
per interval; otherwise the sampled version nets out changes that reverse within the
interval (an order added and cancelled between two samples contributes 0, as it would to
the event sum, but a price that moves up and back also contributes only the net size
change). It needs no event stream, so it is computed the same way from an online book and
from a recording's grid snapshots.

Realised-volatility sums are accumulated on a fixed-point integer grid (squared returns in
units of 1e-9 bp^2, capped at 1e6 bp^2), so the online running sums and the offline
cumulative sums are exactly equal, whatever the order of additions.

Normalisation (:class:`Normalizer`) is fitted on training rows only and is applied inside
the exported model.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np

from bot.market_data.base import TradeArrays
from bot.market_data.trade_side import aggressor_side, aggressor_sides

FEATURE_SCHEMA_VERSION = 1
BP = 1e4  # basis points per unit of log return
_Q = 1e-9  # fixed-point unit of squared returns, bp^2
_R2_CAP = 1e6  # cap on one squared return, bp^2 (100 % move)


@dataclass(frozen=True)
class FeatureConfig:
    """How features are computed. Part of a model's schema (saved in its metadata).

    Attributes:
        sample_s: grid interval, seconds.
        n_levels: book levels used for the imbalance features ``imb_1..imb_n``.
        rv_windows: realised-volatility windows, in grid rows.
        dt_cap_s: cap of the time-since-last-trade feature, seconds.
        tick_rv: also compute the tick-level realised variance inside each interval (the
            ``tick_rv`` feature, :attr:`FeatureFrame.tick_units`). Off: the schema of the
            models saved before it existed (not written in ``to_dict`` when off).
    """

    sample_s: float = 1.0
    n_levels: int = 5
    rv_windows: tuple[int, ...] = (10, 60, 300)
    dt_cap_s: float = 600.0
    tick_rv: bool = False

    def __post_init__(self) -> None:
        if not (self.sample_s > 0):
            raise ValueError("sample_s must be positive")
        if self.n_levels < 1:
            raise ValueError("n_levels must be >= 1")
        if not self.rv_windows or min(self.rv_windows) < 1:
            raise ValueError("rv_windows must be positive row counts")
        object.__setattr__(self, "rv_windows", tuple(int(w) for w in self.rv_windows))

    @property
    def sample_ns(self) -> int:
        return int(round(self.sample_s * 1e9))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rv_windows"] = list(self.rv_windows)
        if not self.tick_rv:
            del d["tick_rv"]  # the schema of models saved before the option existed
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureConfig":
        return cls(sample_s=float(d["sample_s"]), n_levels=int(d["n_levels"]),
                   rv_windows=tuple(int(w) for w in d["rv_windows"]), dt_cap_s=float(d["dt_cap_s"]),
                   tick_rv=bool(d.get("tick_rv", False)))


def feature_names(cfg: FeatureConfig) -> list[str]:
    """Feature names in model-input order."""
    return (["ret", "spread_bps", "micro_off"] + [f"imb_{i}" for i in range(1, cfg.n_levels + 1)]
            + ["ofi", "flow", "flow_imb", "n_trades"] + [f"rv_{w}" for w in cfg.rv_windows] + ["dt_trade"]
            + (["tick_rv"] if cfg.tick_rv else []))


def schema(cfg: FeatureConfig) -> dict:
    """What a saved model must match to be run by this code."""
    return {"version": FEATURE_SCHEMA_VERSION, "names": feature_names(cfg), "config": cfg.to_dict()}


def _r2_units(ret_bp: float) -> int:
    r2 = ret_bp * ret_bp
    if r2 > _R2_CAP:
        r2 = _R2_CAP
    return int(round(r2 / _Q))


def _rv_feature(units: int, w: int, sample_s: float) -> float:
    return math.log1p(math.sqrt(units * _Q / (w * sample_s)))


# ----------------------------------------------------------------------------------------
# online
# ----------------------------------------------------------------------------------------
_SIDE = {"buy": 1, "sell": -1, "b": 1, "s": -1, "bid": 1, "ask": -1}


class OnlineFeatures:
    """Incremental features, one grid row per :meth:`step`; O(n_levels + trades) per step.

    Usage: :meth:`add_trades` with every batch of public trades as they arrive (any time),
    then :meth:`step` at each grid time with the book at that time. Trades with timestamp
    ``<= t`` are consumed by ``step(book, t)``; later ones wait for the next row.
    """

    def __init__(self, cfg: FeatureConfig) -> None:
        self.cfg = cfg
        self.names = feature_names(cfg)
        self.n_features = len(self.names)
        self._wmax = max(cfg.rv_windows)
        self._extra_windows: tuple[int, ...] = ()
        self.reset()

    def track_window(self, w: int) -> None:
        """Also keep the running sum of squared returns over ``w`` rows (:meth:`rv_units`)."""
        if w not in self.cfg.rv_windows and w not in self._extra_windows:
            self._extra_windows = self._extra_windows + (int(w),)
            self._wmax = max(self._wmax, int(w))
            self.reset()

    def reset(self) -> None:
        self.rows = 0  # grid rows produced
        self.pending: deque = deque()  # (ts_ns, price, size, side)
        self.last_trade_ns: int | None = None
        self.snap: tuple | None = None  # (bid levels, ask levels) of the last valid book
        self.prev_top: tuple[float, float, float, float] | None = None  # bp, bq, ap, aq of row k-1
        self.prev_mid: float | None = None
        self.mid = float("nan")
        self.r2_hist: deque = deque(maxlen=self._wmax)
        self.sums: dict[int, int] = {w: 0 for w in self.cfg.rv_windows + self._extra_windows}
        self.tick_mid: float | None = None  # the last valid mid observed (tick_rv)
        self.tick_acc = 0  # squared mid changes observed since the last grid row, 1e-9 bp^2 units
        self.tick_units = 0  # tick_acc of the last grid row

    def observe(self, book) -> None:
        """Look at the mid of ``book`` between grid times (``tick_rv``; call on every book update,
        before :meth:`step` for the grid time it precedes). One-sided or crossed books are skipped."""
        b = book.bids.best_price()
        a = book.asks.best_price()
        if b is None or a is None or not b < a:
            return
        mid = 0.5 * (b + a)
        last = self.tick_mid
        if last is not None and mid != last:
            self.tick_acc += _r2_units(math.log(mid / last) * BP)
        self.tick_mid = mid

    def add_trades(self, trades: Iterable) -> None:
        """Queue public trades (:class:`bot.market_data.base.Trade` or ``(ts_ns, price, size,
        side)`` tuples; side 'buy'/'sell' (or +1/-1), anything else = unknown), or a
        :class:`bot.market_data.base.TradeArrays` (replays; no per-trade objects)."""
        if isinstance(trades, TradeArrays):
            self.pending.extend(zip(trades.ts_ns.tolist(), trades.price.tolist(), trades.size.tolist(),
                                    trades.side.astype(np.int64).tolist()))
            return
        for tr in trades:
            if isinstance(tr, tuple):
                ts, px, sz, sd = tr
            else:
                ts, px, sz, sd = tr.ts_ns, tr.price, tr.size, tr.side
            if isinstance(sd, str):
                sd = _SIDE.get(sd.lower(), 0)
            self.pending.append((int(ts), float(px), float(sz), int(sd)))

    def rv_units(self, w: int) -> int:
        """Sum of the last ``w`` squared returns in fixed-point units (1e-9 bp^2)."""
        return self.sums[w]

    def step(self, book, t_ns: int) -> np.ndarray | None:
        """The feature row at grid time ``t_ns`` from ``book`` (the OrderBook read interface).
        None while no valid book has been seen (then nothing is counted except trades)."""
        cfg = self.cfg
        n = cfg.n_levels
        bids = book.bids.levels(n)
        asks = book.asks.levels(n)
        if bids and asks and bids[0][0] < asks[0][0]:
            self.snap = (bids, asks)
        elif self.snap is not None:
            bids, asks = self.snap
        # trades of (t_{k-1}, t_k]
        prev_mid = self.prev_mid
        buy = sell = 0.0
        cnt = 0
        pend = self.pending
        while pend and pend[0][0] <= t_ns:
            ts, px, sz, sd = pend.popleft()
            if sd == 0 and self.prev_top is not None:
                sd = aggressor_side(px, self.prev_top[0], self.prev_top[2])
            if sd > 0:
                buy += sz
            elif sd < 0:
                sell += sz
            cnt += 1
            if self.last_trade_ns is None or ts > self.last_trade_ns:
                self.last_trade_ns = ts
        if cfg.tick_rv:  # the interval's tick-level variance (counted even when no row is produced)
            self.tick_units = self.tick_acc
            self.tick_acc = 0
        if self.snap is None:
            return None
        bp, bq = bids[0]
        ap, aq = asks[0]
        mid = 0.5 * (bp + ap)
        spread = ap - bp
        ret = 0.0 if prev_mid is None else math.log(mid / prev_mid) * BP
        micro = (bp * aq + ap * bq) / (bq + aq)
        x = [ret, spread / mid * BP, (micro - mid) / spread]
        cb = ca = 0.0
        for i in range(n):
            if i < len(bids):
                cb += bids[i][1]
            if i < len(asks):
                ca += asks[i][1]
            x.append((cb - ca) / (cb + ca))
        # sampled OFI (Cont-Kukanov-Stoikov e_n between consecutive rows)
        pt = self.prev_top
        if pt is None:
            ofi = 0.0
        else:
            pbp, pbq, pap, paq = pt
            e = 0.0
            if bp >= pbp:
                e += bq
            if bp <= pbp:
                e -= pbq
            if ap <= pap:
                e -= aq
            if ap >= pap:
                e += paq
            ofi = e / (0.25 * (bq + aq + pbq + paq))
        depth = 0.5 * (bq + aq)
        vol = buy + sell
        x += [ofi, math.asinh((buy - sell) / depth), (buy - sell) / vol if vol > 0 else 0.0, math.log1p(cnt)]
        # realised volatility windows (exact integer running sums)
        u = _r2_units(ret)
        hist = self.r2_hist
        k = len(hist)
        for w in self.sums:
            s = self.sums[w] + u
            if k >= w:
                s -= hist[k - w]
            self.sums[w] = s
        hist.append(u)
        for w in cfg.rv_windows:
            x.append(_rv_feature(self.sums[w], w, cfg.sample_s))
        if self.last_trade_ns is None:
            dt = cfg.dt_cap_s
        else:
            dt = min((t_ns - self.last_trade_ns) * 1e-9, cfg.dt_cap_s)
        x.append(math.log1p(dt))
        if cfg.tick_rv:
            x.append(_rv_feature(self.tick_units, 1, cfg.sample_s))
        self.prev_top = (bp, bq, ap, aq)
        self.prev_mid = mid
        self.mid = mid
        self.rows += 1
        return np.array(x, dtype=np.float64)


# ----------------------------------------------------------------------------------------
# offline
# ----------------------------------------------------------------------------------------
@dataclass
class FeatureFrame:
    """Offline features of one recording on the grid.

    Attributes:
        ts_ns: grid times of the rows (int64, ns since epoch).
        X: feature matrix (rows x features), float64, :func:`feature_names` order.
        mid: mid at each row (quote per base), after the forward fill of invalid books.
        r2_units: squared ``ret`` per row in fixed-point units (int64), for targets/baselines.
        stale: True where the book at the grid time was invalid and the last valid one was used.
        cfg: the :class:`FeatureConfig`.
        tick_units: with ``cfg.tick_rv``, per row the tick-level realised variance of the
            interval (sum of squared mid changes, int64, 1e-9 bp^2 units); else None.
    """

    ts_ns: np.ndarray
    X: np.ndarray
    mid: np.ndarray
    r2_units: np.ndarray
    stale: np.ndarray
    cfg: FeatureConfig
    names: list[str] = field(default_factory=list)
    tick_units: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ts_ns)

    @property
    def ret_bp(self) -> np.ndarray:
        return self.X[:, 0]

    def slice(self, i0: int, i1: int) -> "FeatureFrame":
        return FeatureFrame(self.ts_ns[i0:i1], self.X[i0:i1], self.mid[i0:i1], self.r2_units[i0:i1], self.stale[i0:i1],
                            self.cfg, self.names, None if self.tick_units is None else self.tick_units[i0:i1])


def grid_times(t_first_ns: int, t_last_ns: int, sample_ns: int) -> np.ndarray:
    """Grid times k * sample_ns within [t_first, t_last]."""
    k0 = -(-int(t_first_ns) // sample_ns)
    k1 = int(t_last_ns) // sample_ns
    return np.arange(k0, k1 + 1, dtype=np.int64) * sample_ns


def _window_sum(cs: np.ndarray, w: int) -> np.ndarray:
    """Sum of the last w values per position, from an inclusive cumulative sum (exact ints)."""
    out = cs.copy()
    out[w:] -= cs[:-w]
    return out


def offline_features(events: np.ndarray, cfg: FeatureConfig, tick_size: float | None = None,
                     t_start_ns: int | None = None, t_end_ns: int | None = None) -> FeatureFrame:
    """Features of a recording (:data:`bot.recording.schema.EVENT_DTYPE` rows) on the grid.

    ``t_start_ns``/``t_end_ns`` restrict the grid (the book is still replayed from the first
    row, and trades before the start still set the time of the last trade)."""
    from bot.recording.book_replay import build_levels, replay_depth
    from bot.recording.schema import TRADE

    n = cfg.n_levels
    names = feature_names(cfg)
    lts = np.ascontiguousarray(events["local_ts"])
    if len(lts) == 0:
        return _empty_frame(cfg, names)
    t0 = int(lts[0]) if t_start_ns is None else max(int(lts[0]), int(t_start_ns))
    t1 = int(lts[-1]) if t_end_ns is None else min(int(lts[-1]), int(t_end_ns))
    T = grid_times(t0, t1, cfg.sample_ns)
    if len(T) == 0:
        return _empty_frame(cfg, names)
    at = np.searchsorted(lts, T, side="right") - 1  # last row with local_ts <= t
    depth = replay_depth(events, at, n, tick_size, levels=build_levels(events, tick_size))
    bpx, bq, apx, aq = depth["bid_px"], depth["bid_qty"], depth["ask_px"], depth["ask_qty"]
    valid = np.isfinite(bpx[:, 0]) & np.isfinite(apx[:, 0]) & (bpx[:, 0] < apx[:, 0])
    if not valid.any():
        return _empty_frame(cfg, names)
    # forward fill invalid snapshots
    idx = np.where(valid, np.arange(len(T)), -1)
    np.maximum.accumulate(idx, out=idx)
    first = int(np.argmax(valid))
    stale = ~valid
    # trades: interval j <-> (T[j-1], T[j]] (computed on the full grid, then cut to rows >= first)
    is_tr = events["kind"] == TRADE
    tr_ts = lts[is_tr]
    tr_px = events["px"][is_tr]
    tr_q = events["qty"][is_tr]
    tr_sd = events["side"][is_tr].astype(np.int64)
    keep = slice(first, len(T))
    T = T[keep]
    sel = idx[keep]
    stale = stale[keep]
    bpx, bq, apx, aq = bpx[sel], bq[sel], apx[sel], aq[sel]
    m = len(T)
    bp1, ap1, bq1, aq1 = bpx[:, 0], apx[:, 0], bq[:, 0], aq[:, 0]
    mid = 0.5 * (bp1 + ap1)
    spread = ap1 - bp1
    ret = np.zeros(m)
    ret[1:] = np.log(mid[1:] / mid[:-1]) * BP
    micro = (bp1 * aq1 + ap1 * bq1) / (bq1 + aq1)
    cols = [ret, spread / mid * BP, (micro - mid) / spread]
    cb = np.cumsum(bq, axis=1)
    ca = np.cumsum(aq, axis=1)
    for i in range(n):
        cols.append((cb[:, i] - ca[:, i]) / (cb[:, i] + ca[:, i]))
    # sampled OFI
    e = np.zeros(m)
    pbp, pbq, pap, paq = bp1[:-1], bq1[:-1], ap1[:-1], aq1[:-1]
    cbp, cbq, cap, caq = bp1[1:], bq1[1:], ap1[1:], aq1[1:]
    e[1:] = (np.where(cbp >= pbp, cbq, 0.0) - np.where(cbp <= pbp, pbq, 0.0)
             - np.where(cap <= pap, caq, 0.0) + np.where(cap >= pap, paq, 0.0))
    D = np.ones(m)
    D[1:] = 0.25 * (cbq + caq + pbq + paq)
    cols.append(e / D)
    # trades per interval; a trade at ts belongs to the first row with T >= ts
    row = np.searchsorted(T, tr_ts, side="left")
    inside = (row < m) & (tr_ts > T[0] - cfg.sample_ns)
    r_in = row[inside]
    sd = tr_sd[inside].copy()
    unk = sd == 0
    if unk.any():
        prev = np.maximum(r_in - 1, 0)[unk]
        first_row = (r_in < 1)[unk]
        sd[unk] = aggressor_sides(tr_px[inside][unk], np.where(first_row, np.nan, bp1[prev]),
                                  np.where(first_row, np.nan, ap1[prev]))
    q_in = tr_q[inside]
    buy = np.bincount(r_in, weights=np.where(sd > 0, q_in, 0.0), minlength=m)
    sell = np.bincount(r_in, weights=np.where(sd < 0, q_in, 0.0), minlength=m)
    cnt = np.bincount(r_in, minlength=m)
    vol = buy + sell
    cols.append(np.arcsinh((buy - sell) / (0.5 * (bq1 + aq1))))
    with np.errstate(invalid="ignore", divide="ignore"):
        cols.append(np.where(vol > 0, (buy - sell) / np.where(vol > 0, vol, 1.0), 0.0))
    cols.append(np.log1p(cnt))
    # realised volatility (exact integer sums)
    r2u = np.rint(np.minimum(ret * ret, _R2_CAP) / _Q).astype(np.int64)
    cs = np.cumsum(r2u)
    for w in cfg.rv_windows:
        s = _window_sum(cs, w)
        cols.append(np.log1p(np.sqrt(s * _Q / (w * cfg.sample_s))))
    # time since the last trade at or before T
    if len(tr_ts):
        j = np.searchsorted(tr_ts, T, side="right") - 1  # trades are in local_ts order
        cm = np.maximum.accumulate(tr_ts)
        last = np.where(j >= 0, cm[np.maximum(j, 0)], -1)
        dt = np.where(j >= 0, np.minimum((T - last) * 1e-9, cfg.dt_cap_s), cfg.dt_cap_s)
    else:
        dt = np.full(m, cfg.dt_cap_s)
    cols.append(np.log1p(dt))
    tick_u = None
    if cfg.tick_rv:
        tick_u = _tick_units(events, T, cfg.sample_ns, tick_size)
        cols.append(np.log1p(np.sqrt(tick_u * _Q / cfg.sample_s)))
    X = np.column_stack(cols).astype(np.float64)
    return FeatureFrame(T, X, mid, r2u, stale, cfg, names, tick_u)


def _tick_units(events: np.ndarray, T: np.ndarray, sample_ns: int, tick_size: float | None) -> np.ndarray:
    """Per grid row (times ``T``), the sum of squared changes of the mid observed at every distinct
    local time in (T[k-1], T[k]] (valid books only), fixed-point units (see the module docstring)."""
    from bot.recording.book_replay import replay_top

    lts = events["local_ts"]
    top = replay_top(events, tick_size)
    last = np.ones(len(lts), bool)
    last[:-1] = lts[1:] != lts[:-1]  # the last row of each local time: the book then
    bp, ap = top["bid_px"], top["ask_px"]
    ok = last & np.isfinite(bp) & np.isfinite(ap) & (bp < ap)
    ts = lts[ok]
    mid = 0.5 * (bp[ok] + ap[ok])
    u = np.zeros(len(mid), np.int64)
    if len(mid) > 1:
        r = np.log(mid[1:] / mid[:-1]) * BP
        u[1:] = np.where(mid[1:] != mid[:-1], np.rint(np.minimum(r * r, _R2_CAP) / _Q), 0).astype(np.int64)
    row = np.searchsorted(T, ts, side="left")
    inside = (row < len(T)) & (ts > T[0] - sample_ns)
    out = np.zeros(len(T), np.int64)
    np.add.at(out, row[inside], u[inside])  # exact integer sums, as online
    return out


def _empty_frame(cfg: FeatureConfig, names: list[str]) -> FeatureFrame:
    return FeatureFrame(np.zeros(0, np.int64), np.zeros((0, len(names))), np.zeros(0), np.zeros(0, np.int64),
                        np.zeros(0, bool), cfg, names, np.zeros(0, np.int64) if cfg.tick_rv else None)


def rv_window_units(ff: FeatureFrame, w: int) -> np.ndarray:
    """Per row, the sum of the last ``w`` squared returns (bp^2), exact as online."""
    return _window_sum(np.cumsum(ff.r2_units), w) * _Q


# ----------------------------------------------------------------------------------------
# normalisation
# ----------------------------------------------------------------------------------------
@dataclass
class Normalizer:
    """z = clip((x - mean) / std, -clip, clip), fitted on training rows only."""

    mean: np.ndarray
    std: np.ndarray
    clip: float = 10.0

    @classmethod
    def fit(cls, X: np.ndarray, clip: float = 10.0) -> "Normalizer":
        X = np.asarray(X, dtype=np.float64)
        if len(X) == 0:
            raise ValueError("cannot fit a normaliser on no rows")
        mean = X.mean(axis=0)
        std = X.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        return cls(mean, std, clip)

    def transform(self, X: np.ndarray) -> np.ndarray:
        return np.clip((X - self.mean) / self.std, -self.clip, self.clip)

    def to_dict(self) -> dict:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std], "clip": self.clip}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        return cls(np.asarray(d["mean"], float), np.asarray(d["std"], float), float(d.get("clip", 10.0)))


def stack_trades(trades: Sequence) -> list[tuple[int, float, float, int]]:
    """Normalise a trade sequence to (ts_ns, price, size, side int) tuples (tests, tools)."""
    f = OnlineFeatures.__new__(OnlineFeatures)
    f.pending = deque()
    OnlineFeatures.add_trades(f, trades)
    return list(f.pending)
