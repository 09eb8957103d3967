"""From model prices to orders: the controls every market maker needs.

Input: the model's bid and ask prices (float, quote per base), the mid, our inventory q
(base units), the market (tick, lot, fees, minimums) and the best bid/ask of the book.
Output: lists of :class:`QuoteLevel` (Decimal price on the tick, Decimal size on the lot).

Order of operations, each documented at its step:
1. minimum distance from the mid per side: max(min_spread/2, maker fee + min edge);
2. rounding to the tick: bids down, asks up (rounding never improves a quote);
3. post-only: a bid is kept at least one tick below the best ask, an ask one tick above the
   best bid, so a quote never crosses the book;
4. sizes: the level-0 order size (:class:`Sizing`, resolved once per run from the config and
   the market: base units, a quote notional at the first mid, or a multiple of the market's
   minimum order) times ``level_size_growth**i``; the side that grows |q| is shrunk by
   exp(-eta*|q|/max_inventory);
5. max inventory: a side's total size is capped by the room left to ``max_inventory``;
   a side with no room is not quoted;
6. sizes are rounded down to the lot; a level below the market's minimum size or notional
   is dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bot.market import MarketInfo
from strategies.base import QuoteLevel
from strategies.params import QuoteControls


@dataclass(frozen=True, slots=True)
class Sizing:
    """The run's level-0 order size and inventory limit, base units, and how they were chosen."""

    order_size: float
    max_inventory: float
    source: str  # e.g. "order_size", "order_size_quote 100 USDT at mid 60000", "1 x market minimum 0.001"


def market_min_size(market: MarketInfo, mid: float) -> float:
    """The smallest order the market takes at ``mid``, base units: the largest of the lot, the
    minimum size and the minimum notional / mid (rounded up to the lot)."""
    lot = float(market.lot)
    m = max(lot, float(market.min_size))
    if market.min_notional > 0 and mid > 0:
        m = max(m, math.ceil(float(market.min_notional) / mid / lot - 1e-9) * lot)
    return m


def resolve_sizing(c: QuoteControls, market: MarketInfo, mid: float) -> Sizing:
    """Level-0 order size and max inventory in base units for this market at ``mid`` (quote per base).

    ``order_size`` is taken as given; ``order_size_quote`` is divided by the mid; otherwise
    ``order_size_min_multiple`` times :func:`market_min_size`. Sizes are rounded down to the
    lot (never below one lot). ``max_inventory`` is taken as given, else
    ``max_inventory_orders`` times the order size."""
    lot = float(market.lot)
    if c.order_size is not None:
        size, how = c.order_size, "order_size"
    elif c.order_size_quote is not None:
        size = c.order_size_quote / mid
        how = f"order_size_quote {c.order_size_quote:g} {market.quote} at mid {mid:g}"
    else:
        mn = market_min_size(market, mid)
        size = c.order_size_min_multiple * mn
        how = f"{c.order_size_min_multiple:g} x market minimum {mn:g} {market.base}"
    if c.order_size is None:
        size = max(math.floor(size / lot + 1e-9), 1) * lot
    max_inv = c.max_inventory if c.max_inventory is not None else c.max_inventory_orders * size
    return Sizing(size, max_inv, how)


def build_levels(
    bid: float,
    ask: float,
    mid: float,
    q: float,
    market: MarketInfo,
    c: QuoteControls,
    best_bid: float | None,
    best_ask: float | None,
    sizing: Sizing,
) -> tuple[list[QuoteLevel], list[QuoteLevel]]:
    # 1. minimum distance from the mid, quote per base
    min_half = max(0.5e-4 * c.min_spread_bps * mid, (market.maker_fee + 1e-4 * c.min_edge_bps) * mid)
    if min_half > 0.0:
        bid = min(bid, mid - min_half)
        ask = max(ask, mid + min_half)
    # 2. ticks
    tick = market.tick_f  # type: ignore[attr-defined]
    bid_t = math.floor(bid / tick + 1e-9)
    ask_t = math.ceil(ask / tick - 1e-9)
    # 3. post-only
    if c.post_only:
        if best_ask is not None:
            bid_t = min(bid_t, round(best_ask / tick) - 1)
        if best_bid is not None:
            ask_t = max(ask_t, round(best_bid / tick) + 1)
    if ask_t <= bid_t:  # never quote a locked or crossed pair of our own
        ask_t = bid_t + 1
    # 4. sizes
    base = sizing.order_size
    max_inv = sizing.max_inventory
    bid_size, ask_size = base, base
    if c.inventory_size_shape > 0.0:
        shrink = math.exp(-c.inventory_size_shape * abs(q) / max_inv)
        if q > 0:
            bid_size *= shrink
        elif q < 0:
            ask_size *= shrink
    # 5./6.
    bids = _side(bid_t, -c.level_spacing_ticks, bid_size, max_inv - q, market, c)
    asks = _side(ask_t, c.level_spacing_ticks, ask_size, max_inv + q, market, c)
    return bids, asks


def _side(first_t: int, step_t: int, size0: float, room: float, market: MarketInfo, c: QuoteControls) -> list[QuoteLevel]:
    out: list[QuoteLevel] = []
    size = size0
    for i in range(c.levels):
        t = first_t + i * step_t
        if t <= 0:
            break
        lots = market.size_lots(min(size, room))
        if lots <= 0:
            break
        px = market.ticks_to_price(t)
        sz = market.lots_to_size(lots)
        if not market.is_tradeable(px, sz):
            break
        out.append(QuoteLevel(px, sz))
        room -= float(sz)
        size *= c.level_size_growth
    return out
