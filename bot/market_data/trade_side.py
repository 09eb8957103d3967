"""The aggressor side of a trade whose source does not tell it, from the book at the trade
(a quote rule in the spirit of Lee and Ready, 1991).

Rule, with ``bid`` / ``ask`` the best prices just before the trade (quote per base; NaN for
an empty side) and ``px`` the trade price:

* normal book (bid < ask): ``px >= ask`` -> buy aggressor (+1); ``px <= bid`` -> sell (-1);
  inside the spread: above the mid -> buy, below -> sell, at the mid -> unknown (0). (Inside
  an uncrossed book this is the same as the plain mid comparison.)
* crossed book (bid >= ask: Bitstamp publishes a marketable order before the deletions and
  changes of the orders it matched, so the book is crossed for a moment around a trade):
  the trade is at the resting order's price, so a trade at or near the ask side was made by
  the crossing bid (buy) and one at or near the bid side by the crossing ask (sell):
  ``px < mid`` -> +1, ``px > mid`` -> -1, at the mid -> 0.
* one side empty: only the comparison with the present side is used (``px >= ask`` buy,
  ``px <= bid`` sell), else 0.

Used by the forecaster's features (:mod:`models.features`, on the book of the previous grid
row) and by the replay (:func:`infer_trade_sides`, on the book just before each trade row),
so a trade is signed the same way everywhere. (Here, not in :mod:`bot.recording`, so that
the online features do not import the recording package.)
"""

from __future__ import annotations

import math

import numpy as np


def aggressor_side(px: float, bid: float, ask: float) -> int:
    """+1 buy / -1 sell / 0 unknown for one trade at ``px`` against best ``bid`` / ``ask``
    (NaN = empty side). See the module docstring."""
    hb = not math.isnan(bid)
    ha = not math.isnan(ask)
    if hb and ha:
        mid = 0.5 * (bid + ask)
        if bid < ask:
            if px >= ask:
                return 1
            if px <= bid:
                return -1
            return 1 if px > mid else (-1 if px < mid else 0)
        return 1 if px < mid else (-1 if px > mid else 0)
    if ha and px >= ask:
        return 1
    if hb and px <= bid:
        return -1
    return 0


def aggressor_sides(px: np.ndarray, bid: np.ndarray, ask: np.ndarray) -> np.ndarray:
    """:func:`aggressor_side` over arrays (int8)."""
    px = np.asarray(px, np.float64)
    bid = np.asarray(bid, np.float64)
    ask = np.asarray(ask, np.float64)
    hb = ~np.isnan(bid)
    ha = ~np.isnan(ask)
    both = hb & ha
    with np.errstate(invalid="ignore"):
        mid = 0.5 * (bid + ask)
        normal = both & (bid < ask)
        crossed = both & ~(bid < ask)
        by_mid = np.where(px > mid, 1, np.where(px < mid, -1, 0))
        touch = np.where(ha & (px >= ask), 1, np.where(hb & (px <= bid), -1, 0))
    out = np.where(normal, np.where(touch != 0, touch, by_mid), np.where(crossed, -by_mid, touch))
    return out.astype(np.int8)


def infer_trade_sides(events: np.ndarray, tick_size: float | None = None) -> tuple[np.ndarray, int]:
    """Events with the aggressor of every TRADE row whose ``side`` is 0 inferred from the book
    just before that row (after every earlier row), by :func:`aggressor_sides`.

    Returns ``(events, n_inferred)``: ``n_inferred`` trades got a side (trades whose rule
    gives 0, such as a trade at the mid or before the book has any level, stay 0). When no
    trade lacks a side, ``events`` is returned as it is; otherwise a copy (the caller's array
    is never modified, so it can be replayed again)."""
    from bot.recording.book_replay import replay_top  # numba, pyarrow: only when needed
    from bot.recording.schema import EVENT_DTYPE, TRADE

    if events.dtype != EVENT_DTYPE:
        raise TypeError(f"expected EVENT_DTYPE events, got {events.dtype}")
    unk = np.flatnonzero((events["kind"] == TRADE) & (events["side"] == 0))
    if unk.size == 0:
        return events, 0
    top = replay_top(events, tick_size)
    before = unk - 1  # the book after the previous row (trade rows do not change it)
    bid = np.where(before >= 0, top["bid_px"][np.maximum(before, 0)], np.nan)
    ask = np.where(before >= 0, top["ask_px"][np.maximum(before, 0)], np.nan)
    sides = aggressor_sides(events["px"][unk], bid, ask)
    out = events.copy()
    out["side"][unk] = sides
    return out, int(np.count_nonzero(sides))
