"""The simulated venue for recorded L2 data: an array order book plus our resting orders
with queue position, order-entry latency, partial fills and post-only rejection, advanced by
a numba kernel over slices of a recording (:data:`bot.recording.schema.EVENT_DTYPE`).

One kernel serves ``mmbot backtest`` and ``mmbot paper --replay``: the replay source
advances the venue to each decision time, the replay exchange submits and cancels orders
into it and collects what it reports. Fees are applied by the exchange wrapper (pluggable
fee model), not here.

Book. Price levels are integer ticks relative to a base: level j <-> price (base + j) *
tick. Two float64 arrays hold the bid and ask size per level (base units). The level range
covers the recording's prices with a margin; an order outside it is rejected.

Clock. Everything runs on the recording's local receive time (``local_ts``, ns). An order
submitted at local time t reaches the venue at t + entry latency; a cancel likewise. The
book the strategy sees at a decision is the book after every row with ``local_ts <= t``.

What the fill model assumes (documented in docs/fill_models.md):

* Our order joins the back of the queue at its price: queue ahead = the level's size when
  the order becomes active (a new level: 0).
* Queue advance:
  - ``QUEUE_CONSERVATIVE`` (0): only trades at our price advance the queue (by their size);
    a depth decrease at our level only caps the queue ahead at the new level size (orders
    ahead cannot exceed what is there). Cancellations are assumed to come from behind us.
  - ``QUEUE_PROB`` (1): a depth decrease of size ``chg`` at our level is split between ahead
    and behind in proportion to f(back) / (f(back) + f(front)) with f(x) = x**n (the
    "power probabilistic queue" of Moallemi and hftbacktest): with front = queue ahead and
    back = level size before the change - front,
        p = back**n / (back**n + front**n)
        front' = front - (1 - p) * chg + min(back - p * chg, 0),   clipped to [0, new size].
    Trades at our price also advance the queue by their size.
* Fills. A trade at our price with aggressor on the other side executes
  max(0, trade size - queue ahead) of our order, rounded down to whole lots (partial
  fills); a trade through our price
  (a sell at a price below our bid) or the opposite best reaching our price (best ask <=
  our bid) fills our whole remainder at our price. Fills are maker fills at our limit price.
* Post-only: when an order reaches the venue, if it would cross the best opposite price it
  is rejected (post-only) or, if not post-only, filled at once in full as taker at the best
  opposite price (the book is not walked).
* Our orders do not change the recorded book (no market impact), as in every replay of
  historical L2 data.

The level update in :func:`advance` repeats the one in bot/recording/book_replay.py on
purpose: factoring it into a shared numba function halved both kernels' speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
def _report(rep_kind, rep_id, rep_ts, rep_px, rep_qty, nrep, kind, oid, ts, px, qty):
    if nrep < rep_kind.shape[0]:
        rep_kind[nrep] = kind
        rep_id[nrep] = oid
        rep_ts[nrep] = ts
        rep_px[nrep] = px
        rep_qty[nrep] = qty
    return nrep + 1


@nb.njit(cache=True, nogil=True)
def _lifecycle(t, bid, ask, bb, ba, o_status, o_side, o_level, o_qty, o_ahead, o_t_act, o_t_cancel, o_id, o_post, o_n,
               next_t, tick, base, rep_kind, rep_id, rep_ts, rep_px, rep_qty, nrep):
    """Activate orders whose entry time has come (post-only check, join the queue) and
    complete cancels that are due, at local time ``t``."""
    nlev = bid.shape[0]
    nt = INT64_MAX
    for m in range(o_n[0]):
        st = o_status[m]
        if st == 0:
            continue
        if st == 1 and o_t_act[m] <= t and o_t_act[m] <= o_t_cancel[m]:
            j = o_level[m]
            crosses = (o_side[m] > 0 and ba < nlev and j >= ba) or (o_side[m] < 0 and bb >= 0 and j <= bb)
            if crosses:
                o_status[m] = 0
                if o_post[m]:
                    nrep = _report(rep_kind, rep_id, rep_ts, rep_px, rep_qty, nrep, 2, o_id[m], o_t_act[m], 0.0, 0.0)
                else:
                    px = (base + (ba if o_side[m] > 0 else bb)) * tick
                    nrep = _report(rep_kind, rep_id, rep_ts, rep_px, rep_qty, nrep, 5, o_id[m], o_t_act[m], px, o_qty[m])
                continue
            o_status[m] = 2
            o_ahead[m] = bid[j] if o_side[m] > 0 else ask[j]
            nrep = _report(rep_kind, rep_id, rep_ts, rep_px, rep_qty, nrep, 1, o_id[m], o_t_act[m], 0.0, 0.0)
        if o_t_cancel[m] <= t:
            o_status[m] = 0
            nrep = _report(rep_kind, rep_id, rep_ts, rep_px, rep_qty, nrep, 3, o_id[m], o_t_cancel[m], 0.0, o_qty[m])
            continue
        if o_status[m] == 1 and o_t_act[m] < nt:
            nt = o_t_act[m]
        if o_t_cancel[m] < nt:
            nt = o_t_cancel[m]
    next_t[0] = nt
    return nrep


@nb.njit(cache=True, nogil=True)
def advance(
    kind, side, local_ts, level, qty, i0, i1, t_stop,
    bid, ask, best,  # book: best[0] = best bid level (-1 empty), best[1] = best ask level (n empty)
    o_status, o_side, o_level, o_qty, o_ahead, o_t_act, o_t_cancel, o_id, o_post, o_n, next_t,
    tick, base, lot, queue_model, queue_n,
    rep_kind, rep_id, rep_ts, rep_px, rep_qty,
):
    """Apply rows i0..i1-1 with local_ts <= t_stop; returns (next row index, reports written).

    ``o_n[0]`` is one past the highest used order slot; ``next_t[0]`` the earliest pending
    activation or cancel time (INT64_MAX when none)."""
    nlev = bid.shape[0]
    bb = best[0]
    ba = best[1]
    nrep = 0
    i = i0
    while i < i1:
        t = local_ts[i]
        if t > t_stop:
            break
        # 1. order lifecycle due before this row
        if t >= next_t[0]:
            nrep = _lifecycle(t, bid, ask, bb, ba, o_status, o_side, o_level, o_qty, o_ahead, o_t_act, o_t_cancel, o_id,
                              o_post, o_n, next_t, tick, base, rep_kind, rep_id, rep_ts, rep_px, rep_qty, nrep)
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
            if q < prev:
                chg = prev - q
                for m in range(o_n[0]):
                    if o_status[m] == 2 and o_side[m] == s and o_level[m] == j:
                        front = o_ahead[m]
                        if queue_model == 1:
                            back = prev - front
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
            # the opposite best reached our price: everything at our price traded
            for m in range(o_n[0]):
                if o_status[m] == 2:
                    if (o_side[m] > 0 and ba < nlev and ba <= o_level[m]) or (o_side[m] < 0 and bb >= 0 and bb >= o_level[m]):
                        nrep = _report(rep_kind, rep_id, rep_ts, rep_px, rep_qty, nrep, 4, o_id[m], t, (base + o_level[m]) * tick, o_qty[m])
                        o_qty[m] = 0.0
                        o_status[m] = 0
        elif k == 2:  # TRADE: aggressor s hits resting orders of side -s
            j = level[i]
            q = qty[i]
            for m in range(o_n[0]):
                if o_status[m] != 2 or o_side[m] != -s:
                    continue
                lm = o_level[m]
                through = (s < 0 and j < lm) or (s > 0 and j > lm)
                if through:
                    fq = o_qty[m]
                elif j == lm:
                    rest = q - o_ahead[m]
                    if rest <= 0.0:
                        o_ahead[m] -= q
                        continue
                    o_ahead[m] = 0.0
                    fq = rest if rest < o_qty[m] else o_qty[m]
                    fq = math.floor(fq / lot + 1e-9) * lot  # executions in whole lots
                    if fq <= 0.0:
                        continue
                else:
                    continue
                nrep = _report(rep_kind, rep_id, rep_ts, rep_px, rep_qty, nrep, 4, o_id[m], t, (base + lm) * tick, fq)
                o_qty[m] -= fq
                if o_qty[m] <= 1e-12:
                    o_qty[m] = 0.0
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
    if t_stop >= next_t[0]:
        nrep = _lifecycle(t_stop, bid, ask, bb, ba, o_status, o_side, o_level, o_qty, o_ahead, o_t_act, o_t_cancel, o_id,
                          o_post, o_n, next_t, tick, base, rep_kind, rep_id, rep_ts, rep_px, rep_qty, nrep)
    best[0] = bb
    best[1] = ba
    return i, nrep


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
    """Holds the recording's columns, the book and the order slots; see the module docstring."""

    def __init__(self, events: np.ndarray, tick: float, lot: float = 1e-8, params: VenueParams | None = None,
                 margin_ticks: int = 100_000) -> None:
        self.params = p = params or VenueParams()
        if p.queue_model not in ("conservative", "prob"):
            raise ValueError(f"queue_model must be 'conservative' or 'prob', got {p.queue_model!r}")
        if p.latency_mode not in ("constant", "recorded"):
            raise ValueError(f"latency_mode must be 'constant' or 'recorded', got {p.latency_mode!r}")
        self.events = events
        self.n = len(events)
        self.tick = float(tick)
        self.lot = float(lot)
        self.kind = np.ascontiguousarray(events["kind"])
        self.side = np.ascontiguousarray(events["side"])
        self.local_ts = np.ascontiguousarray(events["local_ts"])
        self.exch_ts = np.ascontiguousarray(events["exch_ts"])
        self.qty = np.ascontiguousarray(events["qty"])
        px = events["px"]
        has_px = (self.kind == DEPTH) | (self.kind == SNAPSHOT) | (self.kind == TRADE)
        ticks = np.rint(px / self.tick).astype(np.int64)
        if has_px.any():
            lo, hi = int(ticks[has_px].min()), int(ticks[has_px].max())
        else:
            lo, hi = 0, 0
        margin = min(margin_ticks, max(1000, (hi - lo)))
        self.base = lo - margin
        nlev = hi - lo + 2 * margin + 1
        self.level = np.where(has_px, ticks - self.base, -1).astype(np.int64)
        self.bid = np.zeros(nlev)
        self.ask = np.zeros(nlev)
        self.best = np.array([-1, nlev], dtype=np.int64)
        M = p.max_orders
        self.o_status = np.zeros(M, np.int8)
        self.o_side = np.zeros(M, np.int8)
        self.o_level = np.zeros(M, np.int64)
        self.o_qty = np.zeros(M)
        self.o_ahead = np.zeros(M)
        self.o_t_act = np.zeros(M, np.int64)
        self.o_t_cancel = np.full(M, INT64_MAX, np.int64)
        self.o_id = np.zeros(M, np.int64)
        self.o_post = np.zeros(M, np.bool_)
        self.o_n = np.zeros(1, np.int64)
        self.next_t = np.full(1, INT64_MAX, np.int64)
        R = 4 * M + 64
        self.rep_kind = np.zeros(R, np.int8)
        self.rep_id = np.zeros(R, np.int64)
        self.rep_ts = np.zeros(R, np.int64)
        self.rep_px = np.zeros(R)
        self.rep_qty = np.zeros(R)
        self.i = 0  # next row to apply
        self.best_px: tuple[float | None, float | None] = (None, None)
        self._qm = QUEUE_PROB if p.queue_model == "prob" else QUEUE_CONSERVATIVE
        self._slot_of: dict[int, int] = {}

    # -- time ------------------------------------------------------------------------------
    @property
    def now_ns(self) -> int:
        """Local time of the last applied row (0 before the first)."""
        return int(self.local_ts[self.i - 1]) if self.i > 0 else 0

    def advance_to(self, t_stop: int) -> list[tuple[int, int, int, float, float]]:
        """Apply every row with local_ts <= t_stop; returns the reports
        (kind, order id, ts, price, size) in time order."""
        i, nrep = advance(
            self.kind, self.side, self.local_ts, self.level, self.qty, self.i, self.n, t_stop,
            self.bid, self.ask, self.best,
            self.o_status, self.o_side, self.o_level, self.o_qty, self.o_ahead, self.o_t_act, self.o_t_cancel,
            self.o_id, self.o_post, self.o_n, self.next_t, self.tick, self.base, self.lot, self._qm, self.params.queue_power,
            self.rep_kind, self.rep_id, self.rep_ts, self.rep_px, self.rep_qty,
        )
        R = len(self.rep_kind)
        if nrep > R:  # more reports than slots: a strategy with that many orders per step is a bug
            raise RuntimeError(f"venue report buffer overflow ({nrep} > {R})")
        self.i = i
        self._update_best_px()
        # orders due after the last row but before t_stop are processed at the next row
        return [(int(self.rep_kind[r]), int(self.rep_id[r]), int(self.rep_ts[r]), float(self.rep_px[r]),
                 float(self.rep_qty[r])) for r in range(nrep)]

    def _update_best_px(self) -> None:
        """Best bid / ask prices as Python floats (None = empty side), read once per advance
        instead of at every book query."""
        bb, ba = int(self.best[0]), int(self.best[1])
        self.best_px = (None if bb < 0 else (self.base + bb) * self.tick, None if ba >= len(self.ask) else (self.base + ba) * self.tick)

    # -- orders ------------------------------------------------------------------------------
    def latency_ns(self) -> int:
        p = self.params
        lat = p.entry_latency_ns
        if p.latency_mode == "recorded" and self.i > 0:
            j = self.i - 1
            if self.exch_ts[j] > 0:
                lat += int(max(0, self.local_ts[j] - self.exch_ts[j]) * p.latency_multiplier)
        return lat

    def submit(self, oid: int, side: int, price: float, size: float, now_ns: int, post_only: bool = True) -> bool:
        """Queue an order for entry at now + latency. False if no slot or price out of range."""
        lvl = int(round(price / self.tick)) - self.base
        if not (0 <= lvl < len(self.bid)):
            return False
        free = np.flatnonzero(self.o_status == FREE)
        if len(free) == 0:
            return False
        m = int(free[0])
        t_act = now_ns + self.latency_ns()
        self.o_status[m] = PENDING
        self.o_side[m] = side
        self.o_level[m] = lvl
        self.o_qty[m] = size
        self.o_ahead[m] = 0.0
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
        m = self._slot_of.get(oid)
        if m is None or self.o_status[m] != ACTIVE or self.o_id[m] != oid:
            return None
        return float(self.o_ahead[m])

    # -- book view ---------------------------------------------------------------------------
    def price(self, lvl: int) -> float:
        return (self.base + lvl) * self.tick


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
