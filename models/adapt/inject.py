"""Injecting a volatility regime shift into an L2 recording, to evaluate adaptation on
replayed data (bench/adapt_shift.py, tests/test_adapt_inject.py)."""

from __future__ import annotations

import numpy as np


def inject_vol_shift(events: np.ndarray, cut_ns: int, factor: float, tick: float) -> np.ndarray:
    """A copy of an L2 recording (``bot.recording.schema`` rows) whose volatility is
    multiplied by ``factor`` after ``cut_ns`` (local time, ns): every price after the cut is
    moved ``factor`` times as far from the reference price p0 (the mid of the book at the
    cut, rounded to the tick), p -> p0 + factor * (p - p0) on the tick grid, so mid returns
    (and spreads) scale by ``factor``. The book at the cut is restated at the new prices (one
    CLEAR row per side and SNAPSHOT rows at ``cut_ns``), so no level of the old price scale
    lingers. Rows at or before the cut are untouched. Assumes the book at the cut has both
    sides."""
    from bot.recording.schema import CLEAR, SNAPSHOT, TRADE

    ev = np.asarray(events)
    before = ev[ev["local_ts"] <= cut_ns]
    after = ev[ev["local_ts"] > cut_ns].copy()
    book: dict = {}
    for k, s, p, q in zip(before["kind"].tolist(), before["side"].tolist(), before["px"].tolist(), before["qty"].tolist()):
        if k == CLEAR:
            for key in [key for key in book if key[0] == s]:
                del book[key]
        elif k != TRADE:
            if q == 0.0:
                book.pop((s, p), None)
            else:
                book[(s, p)] = q
    bid = max(p for (side, p) in book if side > 0)
    ask = min(p for (side, p) in book if side < 0)
    p0 = round(0.5 * (bid + ask) / tick) * tick

    def scale(px):
        return np.round((p0 + factor * (px - p0)) / tick) * tick

    rows = np.zeros(2 + len(book), dtype=ev.dtype)
    rows["local_ts"] = cut_ns
    rows["exch_ts"] = -1
    rows["first_id"] = rows["last_id"] = -1
    rows["kind"][:2] = CLEAR
    rows["side"][:2] = (1, -1)
    for i, ((s, p), q) in enumerate(sorted(book.items())):
        rows[2 + i]["kind"], rows[2 + i]["side"], rows[2 + i]["px"], rows[2 + i]["qty"] = SNAPSHOT, s, scale(p), q
    priced = after["kind"] != CLEAR
    after["px"][priced] = scale(after["px"][priced])
    return np.concatenate([before, rows, after])
