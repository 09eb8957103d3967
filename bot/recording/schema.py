"""mmbot's flat L2 market-data event schema (format version 1).

A recording is one flat table of events, one row per price-level change or trade, in the
spirit of hftbacktest's event arrays: a numba loop can iterate it without any Python
objects. Rows are numpy records of :data:`EVENT_DTYPE` (aligned, 56 bytes):

========== ======= ==========================================================================
field      type    meaning
========== ======= ==========================================================================
kind       uint8   :data:`DEPTH` (1) level update, :data:`TRADE` (2) public trade,
                   :data:`SNAPSHOT` (3) depth snapshot level, :data:`CLEAR` (4) book clear
side       int8    +1 bid (book rows) / buy aggressor (trades); -1 ask / sell aggressor;
                   0 only for trades whose aggressor the source does not tell (Bitstamp 2015)
exch_ts    int64   exchange time of the message, ns since the Unix epoch (Binance: the
                   message's event time ``E``); -1 when the source has none
local_ts   int64   local receive time, ns since the Unix epoch; non-decreasing in a
                   recording written by mmbot's importers
px         float64 price, quote currency per one unit of base currency (0.0 on CLEAR rows)
qty        float64 size in base units (COIN-M futures: contracts, see ``meta['qty_unit']``).
                   Book rows: the NEW TOTAL size at that price level (absolute, not a delta);
                   0 deletes the level. Trades: the traded size.
first_id   int64   exchange update id range of the message the row came from (Binance depth:
last_id    int64   ``U`` and ``u``; snapshot rows: ``lastUpdateId`` twice); trades: the trade
                   id twice; -1 when the source has none
========== ======= ==========================================================================

Semantics
---------
* Book state is a map (side, price) -> size. A DEPTH or SNAPSHOT row sets the size of one
  level to ``qty`` (``qty == 0`` removes the level). Both kinds are applied identically; the
  kind only tells where the row came from.
* A snapshot is written as one CLEAR row per side (``side`` = +1 and -1: drop every level of
  that side) followed by the snapshot's SNAPSHOT rows. Between the CLEAR rows and the last
  SNAPSHOT row the book is incomplete; readers that need a valid book wait for the first
  non-SNAPSHOT row after a CLEAR.
* Rows of one exchange message share ``exch_ts``, ``local_ts`` and the id pair, and are
  consecutive. Within one depth message the importers emit deletions (qty 0) first, so a
  message whose end state is uncrossed never shows a crossed book in between.
* TRADE rows do not change the book: the exchange's depth stream reports the levels that a
  trade consumed.
* Rows are in local receive order. Where an importer has to move a message (Binance diffs
  received before the REST snapshot they must be applied after), ``local_ts`` is raised to
  the time the message became usable, and ``exch_ts`` keeps the exchange's time.

Units follow :mod:`bot`: prices quote/base, sizes base units, timestamps int ns.
"""

from __future__ import annotations

import numpy as np

FORMAT_NAME = "mmbot-l2-events"
FORMAT_VERSION = 1

# event kinds
DEPTH = 1
TRADE = 2
SNAPSHOT = 3
CLEAR = 4
KIND_NAMES = {DEPTH: "depth", TRADE: "trade", SNAPSHOT: "snapshot", CLEAR: "clear"}

# sides
BID = 1
ASK = -1
BUY = 1
SELL = -1

EVENT_DTYPE = np.dtype(
    [
        ("kind", np.uint8),
        ("side", np.int8),
        ("exch_ts", np.int64),
        ("local_ts", np.int64),
        ("px", np.float64),
        ("qty", np.float64),
        ("first_id", np.int64),
        ("last_id", np.int64),
    ],
    align=True,
)
EVENT_FIELDS = tuple(EVENT_DTYPE.names)

#: Top-of-book messages kept beside the events for validation (Binance ``bookTicker``):
#: local and exchange time (ns; exch_ts -1 when absent, as on Binance spot), best bid/ask
#: price (quote/base) and size (base units), and the book update id ``u`` they reflect.
BOOKTICKER_DTYPE = np.dtype(
    [
        ("local_ts", np.int64),
        ("exch_ts", np.int64),
        ("bid_px", np.float64),
        ("bid_qty", np.float64),
        ("ask_px", np.float64),
        ("ask_qty", np.float64),
        ("update_id", np.int64),
    ],
    align=True,
)


def empty_events(n: int = 0) -> np.ndarray:
    """A zero-filled event array of ``n`` rows."""
    return np.zeros(n, dtype=EVENT_DTYPE)


def make_events(
    kind,
    side,
    exch_ts,
    local_ts,
    px,
    qty,
    first_id=-1,
    last_id=-1,
) -> np.ndarray:
    """Build an event array from columns (scalars broadcast). Convenience for tests/importers."""
    cols = np.broadcast_arrays(
        np.asarray(kind), np.asarray(side), np.asarray(exch_ts), np.asarray(local_ts),
        np.asarray(px, dtype=np.float64), np.asarray(qty, dtype=np.float64),
        np.asarray(first_id), np.asarray(last_id),
    )
    n = cols[0].size
    out = np.empty(n, dtype=EVENT_DTYPE)
    for name, col in zip(EVENT_FIELDS, cols):
        out[name] = col.reshape(-1)
    return out


def _grid_step(values: np.ndarray, max_decimals: int = 12) -> float | None:
    """Largest step g = k / 10**d such that every value is an integer multiple of g.

    ``values`` must be positive and finite. Returns None when no decimal grid with at most
    ``max_decimals`` decimals fits (e.g. computed, not quoted, prices).
    """
    v = np.unique(values)
    if v.size == 0:
        return None
    for d in range(max_decimals + 1):
        scaled = v * (10.0**d)
        r = np.rint(scaled)
        tol = np.maximum(1e-6, np.abs(scaled) * 1e-12)
        if np.all(np.abs(scaled - r) <= tol):
            ints = r.astype(np.int64)
            g = int(np.gcd.reduce(ints))
            if g <= 0:
                return None
            return g / (10.0**d)
    return None


def infer_tick_size(px: np.ndarray, max_sample: int = 200_000) -> float | None:
    """Infer the price tick (quote/base) from observed prices: the coarsest decimal grid all
    of them lie on. Uses a strided sample of at most ``max_sample`` values. A grid inferred
    from few prices can be coarser than the true tick; callers record it as inferred."""
    px = np.asarray(px, dtype=np.float64)
    px = px[np.isfinite(px) & (px > 0)]
    if px.size > max_sample:
        px = px[:: px.size // max_sample + 1]
    return _grid_step(px)


def infer_lot_size(qty: np.ndarray, max_sample: int = 200_000) -> float | None:
    """Infer the size step (base units) from observed non-zero sizes, like :func:`infer_tick_size`."""
    qty = np.asarray(qty, dtype=np.float64)
    qty = qty[np.isfinite(qty) & (qty > 0)]
    if qty.size > max_sample:
        qty = qty[:: qty.size // max_sample + 1]
    return _grid_step(qty)


def prices_off_tick(events: np.ndarray, tick: float) -> tuple[int, int, float | None]:
    """Book and trade prices of ``events`` that are not a multiple of ``tick`` (quote/base):
    ``(off, total, first off-grid price or None)``. A replay maps prices to tick levels by
    rounding, so off-grid prices would be merged into their neighbours' levels."""
    kind = events["kind"]
    px = events["px"][(kind == DEPTH) | (kind == SNAPSHOT) | (kind == TRADE)]
    if px.size == 0 or not tick > 0:
        return 0, int(px.size), None
    scaled = px / tick
    off = np.abs(scaled - np.rint(scaled)) > np.maximum(1e-6, np.abs(scaled) * 1e-12)
    n = int(off.sum())
    return n, int(px.size), (float(px[off][0]) if n else None)
