"""The volatility-shift injection used to evaluate adaptation on recordings
(models/adapt/inject.py): before the cut nothing changes; after it the replayed book is the
original one with every price moved ``factor`` times as far from the reference price, so mid
returns scale by the factor, and no level of the old scale lingers (a plain rescaling of the
rows would leave stale levels crossing the book)."""

from __future__ import annotations

import numpy as np

from bot.recording.schema import CLEAR, DEPTH, EVENT_DTYPE, SNAPSHOT, TRADE
from models.adapt.inject import inject_vol_shift
from models_helpers import replay_online

TICK = 0.01


def _events(n=400, seed=0):
    """A 3-level book on a random-walk mid (ticks), rewritten level by level every 0.5 s,
    with a trade at the mid each step."""
    rng = np.random.default_rng(seed)
    rows = []
    m = 10_000
    t0 = 1_700_000_000 * 10**9
    prev: list = []
    for k in range(n):
        t = t0 + k * 500_000_000
        if k == 0:
            rows += [(CLEAR, 1, -1, t, 0.0, 0.0, -1, -1), (CLEAR, -1, -1, t, 0.0, 0.0, -1, -1)]
        m += int(rng.integers(-2, 3))
        levels = [(1, (m - 1 - j) * TICK) for j in range(3)] + [(-1, (m + 1 + j) * TICK) for j in range(3)]
        for s, p in prev:
            if (s, p) not in levels:
                rows.append((DEPTH, s, -1, t, p, 0.0, -1, -1))
        for s, p in levels:
            rows.append((SNAPSHOT if k == 0 else DEPTH, s, -1, t, p, float(rng.uniform(1, 3)), -1, -1))
        rows.append((TRADE, 1, -1, t, m * TICK, 0.1, -1, -1))
        prev = levels
    ev = np.zeros(len(rows), EVENT_DTYPE)
    for f, i in zip(("kind", "side", "exch_ts", "local_ts", "px", "qty", "first_id", "last_id"), range(8)):
        ev[f] = [r[i] for r in rows]
    return ev


def _mids(ev, grid):
    return np.array(replay_online(ev, TICK, 1e-8, grid, lambda b, t, tr: 0.5 * (b.bids.levels(1)[0][0] + b.asks.levels(1)[0][0])))


def test_prices_after_the_cut_move_factor_times_as_far():
    ev = _events()
    t0 = int(ev["local_ts"][0])
    cut = t0 + 100 * 10**9
    ev2 = inject_vol_shift(ev, cut, 4.0, TICK)
    grid = np.arange(t0 + 10**9, t0 + 199 * 10**9, 10**9)
    m1, m2 = _mids(ev, grid), _mids(ev2, grid)
    pre = grid <= cut
    assert np.array_equal(m1[pre], m2[pre])  # untouched before the cut
    p0 = round(float(_mids(ev, np.array([cut]))[0]) / TICK) * TICK  # the mid at the cut (on the tick grid)
    assert np.allclose(m2[~pre], p0 + 4.0 * (m1[~pre] - p0), atol=1e-9)  # returns x4 after it
    # the book stays uncrossed: the old levels were restated at the cut, none lingers
    spreads = np.array(replay_online(ev2, TICK, 1e-8, grid, lambda b, t, tr: b.asks.levels(1)[0][0] - b.bids.levels(1)[0][0]))
    assert (spreads > 0).all() and np.allclose(spreads[~pre], 4 * 2 * TICK)
