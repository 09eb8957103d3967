"""The simulated venue for recorded L2 data: an order book on a sparse price axis plus our
resting orders with queue position, order-entry latency, partial fills and post-only
rejection, advanced by a numba kernel over slices of a recording
(:data:`bot.recording.schema.EVENT_DTYPE`).

One kernel serves ``mmbot backtest`` and ``mmbot paper --replay``: the replay source
advances the venue to each decision time, the replay exchange submits and cancels orders
into it and collects what it reports. Fees are applied by the exchange wrapper (pluggable
fee model), not here.

Book. Prices are integer ticks (price = ticks * tick, computed as ticks / (1 / tick) when
1 / tick is a whole number, so 9999 ticks of 0.01 read 99.99). The book is indexed by
*rank*: the distinct tick prices that occur in the recording, sorted ascending (level r
<-> price ``rank_tick[r] * tick``). Two float64 arrays hold the bid and ask size per rank
(base units). Memory is one slot per distinct recorded price, never one per tick of the
price range, so stub quotes (bids at 0.01, asks at 1e8) cost two slots. Our orders may sit
at any price on the tick grid; a price the recording never shows has no rank (no recorded
size there ever, so the queue ahead is 0).

Sizes. Our orders' sizes are integer lots (``lot`` base units each): fills and remainders
are whole lots, and a fully filled order has exactly 0 left. Recorded sizes (book levels,
trades, queue ahead) stay float base units, as recorded; a fill takes
``floor(volume / lot)`` lots of the volume available to it.

Clock. Everything runs on the recording's local receive time (``local_ts``, ns). An order
submitted at local time t reaches the venue at t + entry latency; a cancel likewise. The
book the strategy sees at a decision is the book after every row with ``local_ts <= t``.

What the fill model assumes (documented in docs/fill_models.md):

* Our order joins the back of the queue at its price: queue ahead = the level's recorded
  size when the order becomes active (a price with no recorded size: 0).
* Queue advance. A trade at our price (aggressor on the other side) advances the queue by
  its size, and the traded size is remembered (``cum``) until the next depth update of our
  level: that update reports the same trade, so ``cum`` is subtracted from its decrease
  (as in hftbacktest's probabilistic queue model); the rest, ``chg = prev - new - cum``, is
  cancellations.
  - ``QUEUE_CONSERVATIVE`` (0): cancellations are assumed to come from behind us; a depth
    decrease only caps the queue ahead at the new level size.
  - ``QUEUE_PROB`` (1): a cancellation of ``chg > 0`` is split between ahead and behind in
    proportion to f(back) / (f(back) + f(front)) with f(x) = x**n (the power probabilistic
    queue of Moallemi and hftbacktest): with front = queue ahead and
    back = (prev - cum) - front (the level after the trades, behind us),
        p = back**n / (back**n + front**n)
        front' = front - (1 - p) * chg + min(back - p * chg, 0),   clipped to [0, new size].
* Fills (maker, at our limit price). The rows that can fill our resting orders, and the
  volume they bring (no market impact: our orders never change the recorded book, so the
  volume of one row is shared among our orders in price-time priority -- better price
  first, then smaller queue ahead, then earlier arrival -- and our fills from one row never
  exceed it, except in the "swept level" case below):
  - a trade at our price from the other side: the trade size beyond the queue ahead,
    ``trade - ahead - (taken by our orders before this one)``;
  - a trade through our price (a sell below our bid): the trade size, less what our orders
    before this one took. When recorded size still stood ahead of us at our price
    (queue ahead of half a lot or more: less is float residue of the queue estimate),
    the recorded level was swept and our whole remainder fills (the classic
    trade-through rule);
  - a depth update that posts opposite liquidity at or through our price (an ask level
    increased at a price <= our bid): the increase, shared likewise, once; with recorded
    size ahead of us: our whole remainder.
  Every fill is whole lots (partial fills).
* Post-only: when an order reaches the venue, if it would cross the best opposite price it
  is rejected (post-only) or, if not post-only, it takes liquidity at once as taker: it
  walks the opposite side from the best price up to its limit, each level giving at most
  its recorded size (whole lots), one fill per level at that level's price. Whatever is
  left rests at the limit as a maker order. Several of our taker orders arriving together
  each see the whole recorded book (no impact).
* Every report carries the best bid and ask of the book at the event that produced it
  (NaN for an empty side), so a fill is marked against the book at the fill, not at the
  next decision: the quote prevailing when the message that filled us arrived, i.e. the
  book before the rows with that ``local_ts`` (a depth message that moves the book through
  our price is marked against the book it moved; the move itself is inventory PnL, not
  spread capture). Taker fills: the book when the order reaches the venue.

The level update in :func:`advance` repeats the one in bot/recording/book_replay.py on
purpose: factoring it into a shared numba function halved both kernels' speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numba as nb
import numpy as np

from bot.recording.schema import DEPTH, SNAPSHOT, TRADE

QUEUE_CONSERVATIVE = 0
QUEUE_PROB = 1

# order slot status
FREE, PENDING, ACTIVE = 0, 1, 2
# report kinds
R_ACTIVE, R_REJECT, R_CANCELED, R_FILL, R_TAKER_FILL = 1, 2, 3, 4, 5
INT64_MAX = np.iinfo(np.int64).max
_LOT_EPS = 1e-9  # a volume within 1e-9 lots of a whole number of lots counts as that number


class Report(NamedTuple):
    """One thing the venue did to one of our orders.

    kind: R_*; oid: our order id; ts_ns: local time of the event (ns); px: fill price
    (quote per base; 0.0 for non-fills); lots: filled lots (fills) or lots left (cancel),
    integer; qty: ``lots * lot`` in base units (float, for display); bid / ask: best bid and
    ask price of the book at the event (NaN for an empty side)."""

    kind: int
    oid: int
    ts_ns: int
    px: float
    lots: int
    qty: float
    bid: float
    ask: float

    @property
    def mid(self) -> float | None:
        """Mid of the book at the event (quote per base), None if a side was empty."""
        b, a = self.bid, self.ask
        return None if b != b or a != a else 0.5 * (b + a)


@nb.njit(cache=True, nogil=True)
def _best_bid(bid, start):
    j = start
    while j >= 0 and bid[j] <= 0.0:
        j -= 1
    return j


@nb.njit(cache=True, nogil=True)
def _best_ask(ask, start):
    n = ask.shape[0]
    j = start
    while j < n and ask[j] <= 0.0:
        j += 1
    return j


@nb.njit(cache=True, nogil=True)
def _px(ticks, tick, per_unit):
    """Price of ``ticks`` (quote per base): ticks / per_unit when a whole number of ticks
    makes one quote unit (correctly rounded: 9999 / 100 is 99.99), else ticks * tick."""
    return ticks / per_unit if per_unit > 0.0 else ticks * tick


@nb.njit(cache=True, nogil=True)
def _report(rep_kind, rep_id, rep_ts, rep_px, rep_lots, rep_bid, rep_ask, nrep, kind, oid, ts, px, lots,
            rank_tick, bb, ba, tick, per_unit):
    if nrep < rep_kind.shape[0]:
        rep_kind[nrep] = kind
        rep_id[nrep] = oid
        rep_ts[nrep] = ts
        rep_px[nrep] = px
        rep_lots[nrep] = lots
        rep_bid[nrep] = _px(rank_tick[bb], tick, per_unit) if bb >= 0 else np.nan
        rep_ask[nrep] = _px(rank_tick[ba], tick, per_unit) if ba < rank_tick.shape[0] else np.nan
    return nrep + 1


@nb.njit(cache=True, nogil=True)
def _lots(volume, lot):
    """Whole lots in ``volume`` base units (0 for a non-positive volume)."""
    if volume <= 0.0:
        return 0
    return int(math.floor(volume / lot + _LOT_EPS))


@nb.njit(cache=True, nogil=True)
def _sort_priority(cand, nc, o_side, o_tick, o_ahead, o_t_act):
    """Sort candidate slots cand[:nc] (all on one side) into price-time priority: better
    price first, then smaller queue ahead, then earlier arrival, then slot."""
    for a in range(1, nc):
        m = cand[a]
        b = a - 1
        while b >= 0:
            x = cand[b]
            if o_tick[m] != o_tick[x]:
                before = o_tick[m] > o_tick[x] if o_side[m] > 0 else o_tick[m] < o_tick[x]
            elif o_ahead[m] != o_ahead[x]:
                before = o_ahead[m] < o_ahead[x]
            elif o_t_act[m] != o_t_act[x]:
                before = o_t_act[m] < o_t_act[x]
            else:
                before = m < x
            if not before:
                break
            cand[b + 1] = x
            b -= 1
        cand[b + 1] = m


@nb.njit(cache=True, nogil=True)
def _lifecycle(t, bid, ask, bb, ba, rank_tick, o_status, o_side, o_tick, o_rank, o_lots, o_ahead, o_cum, o_t_act,
               o_t_cancel, o_id, o_post, o_n, next_t, tick, per_unit, lot,
               rep_kind, rep_id, rep_ts, rep_px, rep_lots, rep_bid, rep_ask, nrep):
    """Activate orders whose entry time has come (post-only check or taker walk, join the
    queue) and complete cancels that are due, at local time ``t``."""
    nlev = rank_tick.shape[0]
    nt = INT64_MAX
    for m in range(o_n[0]):
        st = o_status[m]
        if st == 0:
            continue
        if st == 1 and o_t_act[m] <= t and o_t_act[m] <= o_t_cancel[m]:
            ta = o_t_act[m]
            lm = o_tick[m]
            if o_side[m] > 0:
                crosses = ba < nlev and rank_tick[ba] <= lm
            else:
                crosses = bb >= 0 and rank_tick[bb] >= lm
            if crosses:
                if o_post[m]:
                    o_status[m] = 0
                    nrep = _report(rep_kind, rep_id, rep_ts, rep_px, rep_lots, rep_bid, rep_ask, nrep, 2, o_id[m], ta,
                                   0.0, 0, rank_tick, bb, ba, tick, per_unit)
                    continue
                # taker: walk the opposite side up to our limit
                if o_side[m] > 0:
                    r = ba
                    while r < nlev and rank_tick[r] <= lm and o_lots[m] > 0:
                        take = _lots(ask[r], lot)
                        if take > o_lots[m]:
                            take = o_lots[m]
                        if take > 0:
                            nrep = _report(rep_kind, rep_id, rep_ts, rep_px, rep_lots, rep_bid, rep_ask, nrep, 5,
                                           o_id[m], ta, _px(rank_tick[r], tick, per_unit), take, rank_tick, bb, ba, tick, per_unit)
                            o_lots[m] -= take
                        r += 1
                else:
                    r = bb
                    while r >= 0 and rank_tick[r] >= lm and o_lots[m] > 0:
                        take = _lots(bid[r], lot)
                        if take > o_lots[m]:
                            take = o_lots[m]
                        if take > 0:
                            nrep = _report(rep_kind, rep_id, rep_ts, rep_px, rep_lots, rep_bid, rep_ask, nrep, 5,
                                           o_id[m], ta, _px(rank_tick[r], tick, per_unit), take, rank_tick, bb, ba, tick, per_unit)
                            o_lots[m] -= take
                        r -= 1
                if o_lots[m] == 0:
                    o_status[m] = 0
                    continue
            # rest at our limit: join the back of the queue
            o_status[m] = 2
            rk = o_rank[m]
            o_ahead[m] = 0.0 if rk < 0 else (bid[rk] if o_side[m] > 0 else ask[rk])
            o_cum[m] = 0.0
            nrep = _report(rep_kind, rep_id, rep_ts, rep_px, rep_lots, rep_bid, rep_ask, nrep, 1, o_id[m], ta,
                           0.0, 0, rank_tick, bb, ba, tick, per_unit)
        if o_t_cancel[m] <= t:
            o_status[m] = 0
            nrep = _report(rep_kind, rep_id, rep_ts, rep_px, rep_lots, rep_bid, rep_ask, nrep, 3, o_id[m], o_t_cancel[m],
                           0.0, o_lots[m], rank_tick, bb, ba, tick, per_unit)
            continue
        if o_status[m] == 1 and o_t_act[m] < nt:
            nt = o_t_act[m]
        if o_t_cancel[m] < nt:
            nt = o_t_cancel[m]
    next_t[0] = nt
    return nrep


@nb.njit(cache=True, nogil=True)
def advance(
    kind, side, local_ts, level, qty, i0, i1, t_stop, hold,
    bid, ask, best, rank_tick,  # book by rank: best[0] = best bid rank (-1 empty), best[1] = best ask rank (nlev empty)
    o_status, o_side, o_tick, o_rank, o_lots, o_ahead, o_cum, o_t_act, o_t_cancel, o_id, o_post, o_n, next_t, cand,
    tick, per_unit, lot, queue_model, queue_n,
    rep_kind, rep_id, rep_ts, rep_px, rep_lots, rep_bid, rep_ask,
):
    """Apply rows i0..i1-1 with local_ts <= t_stop; returns (next row index, reports written).

    ``hold``: rows i0..i1-1 are a window of a longer recording whose next row (not in the
    window) is due by ``t_stop``; the actions due by ``t_stop`` then wait for that row (the
    caller loads the next window and calls again) instead of being applied at ``t_stop``.

    ``level`` holds each row's price rank (-1 for CLEAR rows); ``o_n[0]`` is one past the
    highest used order slot; ``next_t[0]`` the earliest pending activation or cancel time
    (INT64_MAX when none); ``cand`` is scratch space of one slot per order."""
    nlev = bid.shape[0]
    bb = best[0]
    ba = best[1]
    nrep = 0
    i = i0
    t_msg = -1  # local time of the current message (its rows share local_ts)
    bbm = bb  # best bid / ask before the current message: the quote a fill is marked against
    bam = ba
    while i < i1:
        t = local_ts[i]
        if t > t_stop:
            break
        if t != t_msg:
            t_msg = t
            bbm = bb
            bam = ba
        # 1. order lifecycle due before this row
        if t >= next_t[0]:
            nrep = _lifecycle(t, bid, ask, bb, ba, rank_tick, o_status, o_side, o_tick, o_rank, o_lots, o_ahead, o_cum,
                              o_t_act, o_t_cancel, o_id, o_post, o_n, next_t, tick, per_unit, lot,
                              rep_kind, rep_id, rep_ts, rep_px, rep_lots, rep_bid, rep_ask, nrep)
        # 2. the row
        k = kind[i]
        s = side[i]
        if k == 1 or k == 3:  # DEPTH / SNAPSHOT: set level size
            j = level[i]
            q = qty[i]
            if s > 0:
                prev = bid[j]
                bid[j] = q
                if q > 0.0:
                    if j > bb:
                        bb = j
                elif j == bb:
                    bb = _best_bid(bid, bb)
            else:
                prev = ask[j]
                ask[j] = q
                if q > 0.0:
                    if j < ba:
                        ba = j
                elif j == ba:
                    ba = _best_ask(ask, ba)
            on = o_n[0]
            if on > 0:
                tt = rank_tick[j]
                inc = q - prev
                nc = 0
                for m in range(on):
                    if o_status[m] != 2:
                        continue
                    if o_side[m] == s:
                        if o_rank[m] != j:
                            continue
                        # our level changed: queue update (trades already counted are not cancels)
                        front = o_ahead[m]
                        before = prev - o_cum[m]
                        chg = before - q
                        o_cum[m] = 0.0
                        if queue_model == 1 and chg > 0.0:
                            back = before - front
                            if back < 0.0:
                                back = 0.0
                            fb = back ** queue_n
                            ff = front ** queue_n
                            p = fb / (fb + ff) if fb + ff > 0.0 else 1.0
                            est = front - (1.0 - p) * chg
                            extra = back - p * chg
                            if extra < 0.0:
                                est += extra
                            front = est
                        if front > q:
                            front = q
                        if front < 0.0:
                            front = 0.0
                        o_ahead[m] = front
                    elif inc > 0.0:
                        # opposite liquidity posted at or through our price trades with us
                        if (s < 0 and tt <= o_tick[m]) or (s > 0 and tt >= o_tick[m]):
                            cand[nc] = m
                            nc += 1
                if nc > 0:
                    if nc > 1:
                        _sort_priority(cand, nc, o_side, o_tick, o_ahead, o_t_act)
                    used = 0.0
                    for c in range(nc):
                        m = cand[c]
                        if o_ahead[m] >= 0.5 * lot:
                            fl = o_lots[m]  # recorded size ahead of us: our level was swept
                        else:
                            fl = _lots(inc - used, lot)
                            if fl > o_lots[m]:
                                fl = o_lots[m]
                        if fl <= 0:
                            continue
                        used += fl * lot
                        nrep = _report(rep_kind, rep_id, rep_ts, rep_px, rep_lots, rep_bid, rep_ask, nrep, 4, o_id[m], t,
                                       _px(o_tick[m], tick, per_unit), fl, rank_tick, bbm, bam, tick, per_unit)
                        o_lots[m] -= fl
                        if o_lots[m] == 0:
                            o_status[m] = 0
        elif k == 2:  # TRADE: aggressor s hits resting orders of side -s
            on = o_n[0]
            if on > 0:
                j = level[i]
                q = qty[i]
                tt = rank_tick[j]
                nc = 0
                for m in range(on):
                    if o_status[m] == 2 and o_side[m] == -s:
                        lm = o_tick[m]
                        if (s < 0 and tt <= lm) or (s > 0 and tt >= lm):
                            cand[nc] = m
                            nc += 1
                if nc > 0:
                    if nc > 1:
                        _sort_priority(cand, nc, o_side, o_tick, o_ahead, o_t_act)
                    used = 0.0
                    for c in range(nc):
                        m = cand[c]
                        if o_tick[m] == tt:  # at our price: the queue ahead trades first
                            ahead = o_ahead[m]
                            o_cum[m] += q
                            o_ahead[m] = ahead - q if ahead > q else 0.0
                            fl = _lots(q - ahead - used, lot)
                            if fl > o_lots[m]:
                                fl = o_lots[m]
                        elif o_ahead[m] >= 0.5 * lot:
                            fl = o_lots[m]  # through a level with recorded size ahead of us: swept
                        else:
                            fl = _lots(q - used, lot)  # through our price: bounded by the trade
                            if fl > o_lots[m]:
                                fl = o_lots[m]
                        if fl <= 0:
                            continue
                        used += fl * lot
                        nrep = _report(rep_kind, rep_id, rep_ts, rep_px, rep_lots, rep_bid, rep_ask, nrep, 4, o_id[m], t,
                                       _px(o_tick[m], tick, per_unit), fl, rank_tick, bbm, bam, tick, per_unit)
                        o_lots[m] -= fl
                        if o_lots[m] == 0:
                            o_status[m] = 0
        elif k == 4:  # CLEAR one side
            if s > 0:
                for j in range(0, bb + 1):
                    bid[j] = 0.0
                bb = -1
            else:
                for j in range(ba, nlev):
                    ask[j] = 0.0
                ba = nlev
        i += 1
    # actions due by t_stop with no row left before it
    if t_stop >= next_t[0] and not (hold and i == i1):
        nrep = _lifecycle(t_stop, bid, ask, bb, ba, rank_tick, o_status, o_side, o_tick, o_rank, o_lots, o_ahead, o_cum,
                          o_t_act, o_t_cancel, o_id, o_post, o_n, next_t, tick, per_unit, lot,
                          rep_kind, rep_id, rep_ts, rep_px, rep_lots, rep_bid, rep_ask, nrep)
    best[0] = bb
    best[1] = ba
    return i, nrep


_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)


@nb.njit(cache=True, nogil=True)
def _popcount(x):
    """Set bits of a uint64 (SWAR)."""
    x = x - ((x >> np.uint64(1)) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    return np.int64((x * _H01) >> np.uint64(56))


@nb.njit(cache=True, nogil=True)
def _ranks_bitmap(off, span):
    """Ranks of ``off`` (ticks minus the lowest, in [0, span)) through a bitmap of the span
    (one bit per tick) and a running count per 64-bit word: O(rows + span / 64)."""
    nw = (span + 63) >> 6
    words = np.zeros(nw, np.uint64)
    one = np.uint64(1)
    for x in off:
        words[x >> 6] |= one << np.uint64(x & 63)
    before = np.empty(nw, np.int64)
    c = 0
    for w in range(nw):
        before[w] = c
        c += _popcount(words[w])
    rank_off = np.empty(c, np.int64)
    k = 0
    for w in range(nw):
        v = words[w]
        while v != np.uint64(0):
            low = v & (~v + one)
            rank_off[k] = (w << 6) + _popcount(low - one)
            k += 1
            v ^= low
    inv = np.empty(off.shape[0], np.int64)
    for i in range(off.shape[0]):
        x = off[i]
        inv[i] = before[x >> 6] + _popcount(words[x >> 6] & ((one << np.uint64(x & 63)) - one))
    return rank_off, inv


def _ranks(ticks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct ticks, rank of each tick). Through a bitmap of the tick span when
    that span is at most 64 ticks per row or 2**26 ticks (8 MiB; typical recordings, faster
    than sorting), else np.unique; memory never grows with an unbounded price range."""
    if len(ticks) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lo, hi = int(ticks.min()), int(ticks.max())
    span = hi - lo + 1
    if span <= max(64 * len(ticks), 1 << 26):
        rank_off, inv = _ranks_bitmap(ticks - lo, span)
        return rank_off + lo, inv
    rank_tick, inv = np.unique(ticks, return_inverse=True)
    return rank_tick, inv.reshape(-1)


@dataclass(frozen=True)
class VenueParams:
    """queue_model: 'conservative' | 'prob'; queue_power: n of the power queue model;
    entry_latency_ns: constant order-entry latency; latency_mode: 'constant' | 'recorded'
    (entry latency = the feed delay local_ts - exch_ts of the last row, times
    latency_multiplier, plus entry_latency_ns)."""

    queue_model: str = "prob"
    queue_power: float = 2.0
    entry_latency_ns: int = 5_000_000
    latency_mode: str = "constant"
    latency_multiplier: float = 1.0
    max_orders: int = 256


class Venue:
    """Holds the recording's columns, the book and the order slots; see the module docstring.

    ``tick``: price tick (quote per base); ``lot``: size lot (base units). Order sizes are
    converted to whole lots at :meth:`submit`."""

    def __init__(self, events: np.ndarray, tick: float, lot: float = 1e-8, params: VenueParams | None = None) -> None:
        self._init_params(tick, lot, params)
        self.events = events
        self.n = len(events)
        self.base = 0  # global row index of the columns' first row (a streamed venue moves it)
        self.kind = np.ascontiguousarray(events["kind"])
        self.side = np.ascontiguousarray(events["side"])
        self.local_ts = np.ascontiguousarray(events["local_ts"])
        self.exch_ts = np.ascontiguousarray(events["exch_ts"])
        self.qty = np.ascontiguousarray(events["qty"])
        has_px = (self.kind == DEPTH) | (self.kind == SNAPSHOT) | (self.kind == TRADE)
        # the sparse price axis: one rank per distinct recorded price, ascending
        ticks = np.rint(events["px"][has_px] / self.tick).astype(np.int64)
        rank_tick, inv = _ranks(ticks)
        self.level = np.full(self.n, -1, np.int64)
        self.level[has_px] = inv
        self._init_book(rank_tick)

    def _init_params(self, tick: float, lot: float, params: VenueParams | None) -> None:
        self.params = p = params or VenueParams()
        if p.queue_model not in ("conservative", "prob"):
            raise ValueError(f"queue_model must be 'conservative' or 'prob', got {p.queue_model!r}")
        if p.latency_mode not in ("constant", "recorded"):
            raise ValueError(f"latency_mode must be 'constant' or 'recorded', got {p.latency_mode!r}")
        if not (tick > 0 and math.isfinite(tick)) or not (lot > 0 and math.isfinite(lot)):
            raise ValueError(f"tick and lot must be positive and finite, got tick {tick!r}, lot {lot!r}")
        self.tick = float(tick)
        self.lot = float(lot)
        per_unit = round(1.0 / self.tick)
        self._per_unit = float(per_unit) if per_unit >= 1 and abs(per_unit * self.tick - 1.0) < 1e-9 else 0.0

    def _init_book(self, rank_tick: np.ndarray) -> None:
        """Book, order slots and report buffers over the price axis ``rank_tick`` (sorted distinct ticks)."""
        p = self.params
        self.rank_tick = rank_tick
        nlev = len(self.rank_tick)
        # rank -> price (quote per base) as Python floats, computed as the kernel's _px does
        self._rank_px: list[float] = ((self.rank_tick / self._per_unit) if self._per_unit > 0.0
                                      else (self.rank_tick * self.tick)).tolist()
        self.bid = np.zeros(nlev)
        self.ask = np.zeros(nlev)
        self.best = np.array([-1, nlev], dtype=np.int64)
        M = p.max_orders
        self.o_status = np.zeros(M, np.int8)
        self.o_side = np.zeros(M, np.int8)
        self.o_tick = np.zeros(M, np.int64)
        self.o_rank = np.full(M, -1, np.int64)
        self.o_lots = np.zeros(M, np.int64)
        self.o_ahead = np.zeros(M)
        self.o_cum = np.zeros(M)
        self.o_t_act = np.zeros(M, np.int64)
        self.o_t_cancel = np.full(M, INT64_MAX, np.int64)
        self.o_id = np.zeros(M, np.int64)
        self.o_post = np.zeros(M, np.bool_)
        self.o_n = np.zeros(1, np.int64)
        self.next_t = np.full(1, INT64_MAX, np.int64)
        self._cand = np.zeros(M, np.int64)
        R = 8 * M + 1024
        self.rep_kind = np.zeros(R, np.int8)
        self.rep_id = np.zeros(R, np.int64)
        self.rep_ts = np.zeros(R, np.int64)
        self.rep_px = np.zeros(R)
        self.rep_lots = np.zeros(R, np.int64)
        self.rep_bid = np.zeros(R)
        self.rep_ask = np.zeros(R)
        self.i = 0  # next row to apply
        self.best_px: tuple[float | None, float | None] = (None, None)
        self._qm = QUEUE_PROB if p.queue_model == "prob" else QUEUE_CONSERVATIVE
        self._slot_of: dict[int, int] = {}  # order id -> slot, for live orders and at most one done order per slot
        # the kernel's arguments after t_stop, gathered once (every array is updated in place)
        self._state = (
            self.bid, self.ask, self.best, self.rank_tick,
            self.o_status, self.o_side, self.o_tick, self.o_rank, self.o_lots, self.o_ahead, self.o_cum, self.o_t_act,
            self.o_t_cancel, self.o_id, self.o_post, self.o_n, self.next_t, self._cand,
            self.tick, self._per_unit, self.lot, self._qm, float(p.queue_power),
            self.rep_kind, self.rep_id, self.rep_ts, self.rep_px, self.rep_lots, self.rep_bid, self.rep_ask,
        )

    # -- time ------------------------------------------------------------------------------
    @property
    def now_ns(self) -> int:
        """Local time of the last applied row (0 before the first)."""
        return int(self.local_ts[self.i - 1 - self.base]) if self.i > 0 else 0

    @property
    def t_first(self) -> int:
        """Local time (ns) of the recording's first row."""
        return int(self.local_ts[0])

    @property
    def t_last(self) -> int:
        """Local time (ns) of the recording's last row."""
        return int(self.local_ts[-1])

    def trades(self, i0: int, i1: int):
        """Columns (local_ts ns, px quote/base, qty base, side, last_id) of the TRADE rows among
        rows i0..i1-1 (global row indices), or None when there is none."""
        b = self.base
        idx = np.flatnonzero(self.kind[i0 - b : i1 - b] == TRADE)
        if len(idx) == 0:
            return None
        idx += i0 - b
        return self.local_ts[idx], self._px_col()[idx], self.qty[idx], self.side[idx], self._last_id_col()[idx]

    def _px_col(self) -> np.ndarray:
        return self.events["px"]

    def _last_id_col(self) -> np.ndarray:
        return self.events["last_id"]

    def prefix(self, i: int) -> np.ndarray:
        """Rows 0..i-1 of the recording (EVENT_DTYPE), e.g. the warm-up history."""
        return self.events[:i]

    def advance_to(self, t_stop: int) -> list[Report]:
        """Apply every row with local_ts <= t_stop; returns the reports in time order."""
        i, nrep = advance(self.kind, self.side, self.local_ts, self.level, self.qty, self.i, self.n, t_stop, False,
                          *self._state)
        self.i = i
        self._update_best_px()
        return self._reports(nrep)

    def _reports(self, nrep: int) -> list[Report]:
        """The kernel's first ``nrep`` reports as :class:`Report` tuples."""
        R = len(self.rep_kind)
        if nrep > R:  # more reports than slots: a strategy with that many orders per step is a bug
            raise RuntimeError(f"venue report buffer overflow ({nrep} > {R})")
        if nrep == 0:
            return []
        lots = self.rep_lots[:nrep]
        return list(map(Report._make, zip(
            self.rep_kind[:nrep].tolist(), self.rep_id[:nrep].tolist(), self.rep_ts[:nrep].tolist(), self.rep_px[:nrep].tolist(),
            lots.tolist(), (lots * self.lot).tolist(), self.rep_bid[:nrep].tolist(), self.rep_ask[:nrep].tolist())))

    def _update_best_px(self) -> None:
        """Best bid / ask prices as Python floats (None = empty side), read once per advance
        instead of at every book query."""
        bb, ba = self.best.tolist()
        px = self._rank_px
        self.best_px = (None if bb < 0 else px[bb], None if ba >= len(px) else px[ba])

    # -- orders ------------------------------------------------------------------------------
    def latency_ns(self) -> int:
        p = self.params
        lat = p.entry_latency_ns
        if p.latency_mode == "recorded" and self.i > 0:
            j = self.i - 1 - self.base
            if self.exch_ts[j] > 0:
                lat += int(max(0, self.local_ts[j] - self.exch_ts[j]) * p.latency_multiplier)
        return lat

    def submit(self, oid: int, side: int, price: float, size: float, now_ns: int, post_only: bool = True) -> bool:
        """Queue an order for entry at now + latency: ``price`` quote per base (rounded to the
        tick), ``size`` base units (rounded to whole lots). False if no slot is free, the
        price is not positive or the size is under one lot."""
        ticks = int(round(price / self.tick))
        lots = int(round(size / self.lot))
        if ticks <= 0 or lots <= 0:
            return False
        free = np.flatnonzero(self.o_status == FREE)
        if len(free) == 0:
            return False
        m = int(free[0])
        old = int(self.o_id[m])  # the order this free slot last held is done: forget its id
        if self._slot_of.get(old) == m:  # (else a long replay keeps one entry per order ever sent)
            del self._slot_of[old]
        r = int(np.searchsorted(self.rank_tick, ticks))
        t_act = now_ns + self.latency_ns()
        self.o_status[m] = PENDING
        self.o_side[m] = side
        self.o_tick[m] = ticks
        self.o_rank[m] = r if r < len(self.rank_tick) and self.rank_tick[r] == ticks else -1
        self.o_lots[m] = lots
        self.o_ahead[m] = 0.0
        self.o_cum[m] = 0.0
        self.o_t_act[m] = t_act
        self.o_t_cancel[m] = INT64_MAX
        self.o_id[m] = oid
        self.o_post[m] = post_only
        self.o_n[0] = max(int(self.o_n[0]), m + 1)
        self.next_t[0] = min(int(self.next_t[0]), t_act)
        self._slot_of[oid] = m
        return True

    def cancel(self, oid: int, now_ns: int) -> bool:
        """Request a cancel effective at now + latency. False if the order is no longer live."""
        m = self._slot_of.get(oid)
        if m is None or self.o_status[m] == FREE or self.o_id[m] != oid:
            return False
        if self.o_t_cancel[m] != INT64_MAX:
            return True
        t = now_ns + self.latency_ns()
        self.o_t_cancel[m] = t
        self.next_t[0] = min(int(self.next_t[0]), t)
        return True

    def queue_ahead(self, oid: int) -> float | None:
        """Recorded size ahead of a resting order (base units), None if not resting."""
        m = self._slot_of.get(oid)
        if m is None or self.o_status[m] != ACTIVE or self.o_id[m] != oid:
            return None
        return float(self.o_ahead[m])

    def lots_left(self, oid: int) -> int | None:
        """Unfilled lots of a live (pending or resting) order, None if not live."""
        m = self._slot_of.get(oid)
        if m is None or self.o_status[m] == FREE or self.o_id[m] != oid:
            return None
        return int(self.o_lots[m])

    # -- book view ---------------------------------------------------------------------------
    def price(self, lvl: int) -> float:
        """Price (quote per base) of book rank ``lvl``."""
        return self._rank_px[lvl]


class _ArraySide:
    """Read-only :class:`bot.orderbook.BookSide` interface over the venue's arrays."""

    __slots__ = ("v", "is_bid")

    def __init__(self, venue: Venue, is_bid: bool) -> None:
        self.v = venue
        self.is_bid = is_bid

    def best_price(self) -> float | None:
        return self.v.best_px[0 if self.is_bid else 1]

    def best(self):
        v = self.v
        px = v.best_px[0 if self.is_bid else 1]
        if px is None:
            return None
        return px, float((v.bid if self.is_bid else v.ask)[int(v.best[0 if self.is_bid else 1])])

    def levels(self, n: int | None = None):
        v = self.v
        arr = v.bid if self.is_bid else v.ask
        out = []
        n = n if n is not None else 1 << 30
        if self.is_bid:
            j = int(v.best[0])
            while j >= 0 and len(out) < n:
                if arr[j] > 0.0:
                    out.append((v.price(j), float(arr[j])))
                j -= 1
        else:
            j = int(v.best[1])
            while j < len(arr) and len(out) < n:
                if arr[j] > 0.0:
                    out.append((v.price(j), float(arr[j])))
                j += 1
        return out

    def depth(self, n: int) -> float:
        return sum(s for _, s in self.levels(n))

    def __len__(self) -> int:
        return int(np.count_nonzero(self.v.bid if self.is_bid else self.v.ask))


class ArrayBookView:
    """The :class:`bot.orderbook.OrderBook` read interface over a :class:`Venue`'s book, so the
    strategy code reads a replayed book exactly as it reads a live one."""

    def __init__(self, venue: Venue, symbol: str = "") -> None:
        self.symbol = symbol
        self.bids = _ArraySide(venue, True)
        self.asks = _ArraySide(venue, False)
        self.venue = venue
        self.update_id = None

    @property
    def ts_ns(self) -> int:
        return self.venue.now_ns

    def best_bid(self):
        return self.bids.best()

    def best_ask(self):
        return self.asks.best()

    def is_empty(self) -> bool:
        return self.bids.best_price() is None or self.asks.best_price() is None

    def is_crossed(self) -> bool:
        b, a = self.bids.best_price(), self.asks.best_price()
        return b is not None and a is not None and b >= a

    def mid(self) -> float | None:
        b, a = self.bids.best_price(), self.asks.best_price()
        return None if b is None or a is None else 0.5 * (b + a)

    def spread(self) -> float | None:
        b, a = self.bids.best_price(), self.asks.best_price()
        return None if b is None or a is None else a - b

    def microprice(self) -> float | None:
        b, a = self.bids.best(), self.asks.best()
        if b is None or a is None:
            return None
        tot = b[1] + a[1]
        return 0.5 * (b[0] + a[0]) if tot <= 0 else (b[0] * a[1] + a[0] * b[1]) / tot

    def depth(self, side: str, n: int) -> float:
        return (self.bids if side == "bid" else self.asks).depth(n)

    def imbalance(self, n: int = 1) -> float:
        bd, ad = self.bids.depth(n), self.asks.depth(n)
        return 0.0 if bd + ad <= 0 else (bd - ad) / (bd + ad)

    def copy(self):
        from bot.orderbook import OrderBook

        ob = OrderBook(self.symbol)
        ob.apply_snapshot(self.bids.levels(), self.asks.levels(), self.ts_ns)
        return ob
