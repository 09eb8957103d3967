"""Replay an event array into an array-based L2 book (numba) and report the top of book.

Price levels are mapped to increasing integer indices before the loop: with a tick size,
``round(px / tick)`` offset into a dense band of ticks around the median price (O(n), no
sort), with the few far-away prices outside the band ranked separately; without a tick
size, the rank among the distinct exact float prices (values parsed from the same exchange
string are bit-identical). The book is two float64 arrays (bid size, ask size) over that
index, so a best-price move is an index scan to the next non-empty level. The best bid is the highest index with a bid
size > 0, the best ask the lowest with an ask size > 0; a deletion at the best scans to the
next occupied index.

The book applies DEPTH and SNAPSHOT rows as "set level size" (0 deletes) and CLEAR rows as
"drop this side"; TRADE rows leave it unchanged. Nothing is repaired: a crossed book (from a
feed gap or a transient exchange state) is reported as it is (``crossed``).

Units: prices quote/base, sizes base units (as in the recording).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from bot.recording.schema import CLEAR, DEPTH, EVENT_DTYPE, SNAPSHOT


@dataclass
class BookLevels:
    """Dense price-level index of a recording's book rows.

    Attributes:
        level: per event, the index of its price in ``prices`` (-1 for TRADE/CLEAR rows).
        prices: sorted distinct book prices, quote/base.
    """

    level: np.ndarray
    prices: np.ndarray


def build_levels(events: np.ndarray, tick_size: float | None = None) -> BookLevels:
    """Map each book row's price to a dense level index (vectorised numpy, no Python loop)."""
    kind = events["kind"]
    is_book = (kind == DEPTH) | (kind == SNAPSHOT)
    px = events["px"]
    book_px = px[is_book]
    level = np.full(px.shape[0], -1, dtype=np.int64)
    if tick_size and book_px.size:
        ticks = np.rint(book_px / tick_size).astype(np.int64)
        # a dense tick band around the median price (O(n), no sort), plus the sorted distinct
        # ticks outside it (far-away levels of deep snapshots); unused ticks of the band keep
        # a NaN price, never read because their sizes stay 0
        width = max(ticks.size // 2, 1 << 16)
        mid = int(np.partition(ticks, ticks.size // 2)[ticks.size // 2])
        lo, hi = mid - width // 2, mid + width // 2
        low_m, high_m = ticks < lo, ticks > hi
        low_u, low_first = np.unique(ticks[low_m], return_index=True)
        high_u, high_first = np.unique(ticks[high_m], return_index=True)
        in_m = ~(low_m | high_m)
        band_lo = int(ticks[in_m].min()) if in_m.any() else lo
        band_hi = int(ticks[in_m].max()) if in_m.any() else lo - 1
        nb = band_hi - band_lo + 1
        idx = np.empty(ticks.size, dtype=np.int64)
        idx[low_m] = np.searchsorted(low_u, ticks[low_m])
        idx[in_m] = ticks[in_m] - band_lo + low_u.size
        idx[high_m] = np.searchsorted(high_u, ticks[high_m]) + low_u.size + nb
        prices = np.full(low_u.size + nb + high_u.size, np.nan)
        prices[idx] = book_px  # every row of a tick carries the same exchange price
        level[is_book] = idx
        return BookLevels(level=level, prices=prices)
    uniq, first = np.unique(book_px, return_index=True)
    level[is_book] = np.searchsorted(uniq, book_px)
    prices = book_px[first]
    return BookLevels(level=level, prices=np.ascontiguousarray(prices, dtype=np.float64))


@nb.njit(cache=True, nogil=True)
def _replay_kernel(kind, side, level, qty, prices, out_bid_px, out_bid_qty, out_ask_px, out_ask_qty, out_crossed):
    nlev = prices.shape[0]
    bid = np.zeros(nlev, np.float64)
    ask = np.zeros(nlev, np.float64)
    bb = -1  # best bid index, -1 = empty
    ba = nlev  # best ask index, nlev = empty
    n = kind.shape[0]
    ncrossed = 0
    for i in range(n):
        k = kind[i]
        if k == 1 or k == 3:  # DEPTH, SNAPSHOT: set level size
            j = level[i]
            q = qty[i]
            if side[i] > 0:
                bid[j] = q
                if q > 0.0:
                    if j > bb:
                        bb = j
                elif j == bb:
                    while bb >= 0 and bid[bb] <= 0.0:
                        bb -= 1
            else:
                ask[j] = q
                if q > 0.0:
                    if j < ba:
                        ba = j
                elif j == ba:
                    while ba < nlev and ask[ba] <= 0.0:
                        ba += 1
        elif k == 4:  # CLEAR one side
            if side[i] > 0:
                for j in range(0, bb + 1):
                    bid[j] = 0.0
                bb = -1
            else:
                for j in range(ba, nlev):
                    ask[j] = 0.0
                ba = nlev
        if bb >= 0:
            out_bid_px[i] = prices[bb]
            out_bid_qty[i] = bid[bb]
        else:
            out_bid_px[i] = np.nan
            out_bid_qty[i] = 0.0
        if ba < nlev:
            out_ask_px[i] = prices[ba]
            out_ask_qty[i] = ask[ba]
        else:
            out_ask_px[i] = np.nan
            out_ask_qty[i] = 0.0
        c = bb >= 0 and ba < nlev and bb >= ba
        out_crossed[i] = c
        if c:
            ncrossed += 1
    return ncrossed


TOP_DTYPE = np.dtype(
    [("bid_px", np.float64), ("bid_qty", np.float64), ("ask_px", np.float64), ("ask_qty", np.float64), ("crossed", np.bool_)]
)


def replay_top(events: np.ndarray, tick_size: float | None = None, levels: BookLevels | None = None) -> np.ndarray:
    """Replay ``events`` (:data:`EVENT_DTYPE`) from an empty book and return, per event, the
    top of book AFTER that event: a structured array with ``bid_px``, ``bid_qty``,
    ``ask_px``, ``ask_qty`` (NaN price and 0 size for an empty side) and ``crossed``
    (best bid >= best ask). ``levels`` may be passed to reuse a :func:`build_levels` result."""
    if events.dtype != EVENT_DTYPE:
        raise TypeError(f"expected EVENT_DTYPE events, got {events.dtype}")
    if levels is None:
        levels = build_levels(events, tick_size)
    n = events.shape[0]
    out = np.empty(n, dtype=TOP_DTYPE)
    bid_px = np.empty(n, np.float64)
    bid_qty = np.empty(n, np.float64)
    ask_px = np.empty(n, np.float64)
    ask_qty = np.empty(n, np.float64)
    crossed = np.empty(n, np.bool_)
    _replay_kernel(
        np.ascontiguousarray(events["kind"]), np.ascontiguousarray(events["side"]), levels.level,
        np.ascontiguousarray(events["qty"]), levels.prices, bid_px, bid_qty, ask_px, ask_qty, crossed,
    )
    out["bid_px"] = bid_px
    out["bid_qty"] = bid_qty
    out["ask_px"] = ask_px
    out["ask_qty"] = ask_qty
    out["crossed"] = crossed
    return out


def replay_kernel_only(kind, side, level, qty, prices) -> int:
    """Run just the numba loop on prepared contiguous columns (for benchmarks). Returns the
    number of events after which the book was crossed."""
    n = kind.shape[0]
    return _replay_kernel(
        kind, side, level, qty, prices, np.empty(n), np.empty(n), np.empty(n), np.empty(n), np.empty(n, np.bool_)
    )


def message_ends(events: np.ndarray) -> np.ndarray:
    """Boolean mask: True on the last row of each exchange message (rows of one message are
    consecutive and share kind group, ``local_ts``, ``exch_ts`` and ids). Use it to look at the
    book only between messages, where it is consistent."""
    n = events.shape[0]
    end = np.ones(n, dtype=bool)
    if n > 1:
        k = events["kind"]
        grp = np.where(k == CLEAR, SNAPSHOT, k)  # CLEAR rows belong to their snapshot
        same = (
            (grp[1:] == grp[:-1])
            & (events["local_ts"][1:] == events["local_ts"][:-1])
            & (events["exch_ts"][1:] == events["exch_ts"][:-1])
            & (events["first_id"][1:] == events["first_id"][:-1])
            & (events["last_id"][1:] == events["last_id"][:-1])
        )
        same &= k[:-1] != 2  # every trade row is its own message
        end[:-1] = ~same
    return end


@nb.njit(cache=True, nogil=True)
def _depth_kernel(kind, side, level, qty, prices, at, nlevels, o_bpx, o_bq, o_apx, o_aq):
    nlev = prices.shape[0]
    bid = np.zeros(nlev, np.float64)
    ask = np.zeros(nlev, np.float64)
    bb = -1
    ba = nlev
    m = 0
    nat = at.shape[0]
    n = kind.shape[0]
    for i in range(n):
        if m >= nat:
            break
        k = kind[i]
        if k == 1 or k == 3:
            j = level[i]
            q = qty[i]
            if side[i] > 0:
                bid[j] = q
                if q > 0.0:
                    if j > bb:
                        bb = j
                elif j == bb:
                    while bb >= 0 and bid[bb] <= 0.0:
                        bb -= 1
            else:
                ask[j] = q
                if q > 0.0:
                    if j < ba:
                        ba = j
                elif j == ba:
                    while ba < nlev and ask[ba] <= 0.0:
                        ba += 1
        elif k == 4:
            if side[i] > 0:
                for j in range(0, bb + 1):
                    bid[j] = 0.0
                bb = -1
            else:
                for j in range(ba, nlev):
                    ask[j] = 0.0
                ba = nlev
        while m < nat and at[m] == i:
            c = 0
            j = bb
            while j >= 0 and c < nlevels:
                if bid[j] > 0.0:
                    o_bpx[m, c] = prices[j]
                    o_bq[m, c] = bid[j]
                    c += 1
                j -= 1
            c = 0
            j = ba
            while j < nlev and c < nlevels:
                if ask[j] > 0.0:
                    o_apx[m, c] = prices[j]
                    o_aq[m, c] = ask[j]
                    c += 1
                j += 1
            m += 1
    return m


def replay_depth(events: np.ndarray, at: np.ndarray, n_levels: int, tick_size: float | None = None,
                 levels: BookLevels | None = None) -> dict[str, np.ndarray]:
    """The top ``n_levels`` of each side after each event index in ``at`` (non-decreasing).

    Returns arrays of shape ``(len(at), n_levels)``: ``bid_px``, ``bid_qty`` (best first),
    ``ask_px``, ``ask_qty``; missing levels are NaN price and 0 size."""
    at = np.asarray(at, dtype=np.int64)
    if at.size and (np.any(np.diff(at) < 0) or at[0] < 0 or at[-1] >= events.shape[0]):
        raise ValueError("'at' must be non-decreasing event indices")
    if levels is None:
        levels = build_levels(events, tick_size)
    m = at.shape[0]
    out = {
        "bid_px": np.full((m, n_levels), np.nan), "bid_qty": np.zeros((m, n_levels)),
        "ask_px": np.full((m, n_levels), np.nan), "ask_qty": np.zeros((m, n_levels)),
    }
    _depth_kernel(
        np.ascontiguousarray(events["kind"]), np.ascontiguousarray(events["side"]), levels.level,
        np.ascontiguousarray(events["qty"]), levels.prices, at, n_levels,
        out["bid_px"], out["bid_qty"], out["ask_px"], out["ask_qty"],
    )
    return out
