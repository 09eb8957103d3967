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

The steps are the compiled functions of :mod:`strategies.kernels` (prices in integer ticks,
sizes in integer lots); this module packs the market and controls for them and turns their
integer output back into Decimal :class:`QuoteLevel`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from bot.market import MarketInfo
from strategies.base import QuoteLevel
from strategies import kernels as K
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


def pack_config(market: MarketInfo, c: QuoteControls, sizing: Sizing, model: str = "avellaneda_stoikov",
                gamma: float = 0.0) -> np.ndarray:
    """The float64 configuration array of :mod:`strategies.kernels` (layout ``CFG_FIELDS``) for
    this market, controls, sizing and pricing model. The market minimums become integers:
    ``min_lots`` (lots >= min_size) and ``min_ticks_x_lots`` (ticks*lots >= min_notional /
    (tick*lot)), computed exactly from the Decimals."""
    tick, lot = Fraction(market.tick), Fraction(market.lot)
    min_lots = math.ceil(Fraction(market.min_size) / lot)
    min_tl = math.ceil(Fraction(market.min_notional) / (tick * lot))
    vals = {
        "model": K.MODEL_CODES[model], "gamma": gamma, "tick": market.tick_f,  # type: ignore[attr-defined]
        "lot": float(market.lot), "lot_num": float(lot.numerator), "lot_den": float(lot.denominator),
        "maker_fee": market.maker_fee, "min_spread_bps": c.min_spread_bps, "min_edge_bps": c.min_edge_bps,
        "post_only": 1.0 if c.post_only else 0.0, "order_size": sizing.order_size, "max_inv": sizing.max_inventory,
        "size_shape": c.inventory_size_shape, "levels": c.levels, "spacing_ticks": c.level_spacing_ticks,
        "size_growth": c.level_size_growth, "min_lots": min_lots, "min_ticks_x_lots": min_tl,
    }
    return np.array([float(vals[f]) for f in K.CFG_FIELDS], dtype=np.float64)


def new_levels_buffer(c: QuoteControls) -> np.ndarray:
    """The int64 (4, levels) output buffer of the kernels: bid ticks, bid lots, ask ticks, ask lots."""
    return np.zeros((4, max(c.levels, 1)), dtype=np.int64)


def levels_from_buffer(out: np.ndarray, nb: int, na: int, market: MarketInfo) -> tuple[list[QuoteLevel], list[QuoteLevel]]:
    """The kernels' integer ticks/lots as :class:`QuoteLevel` lists (exact Decimal price and size)."""
    bt, bl, at, al = out.tolist()
    px, sz = market.ticks_to_price, market.lots_to_size
    return ([QuoteLevel(px(bt[i]), sz(bl[i])) for i in range(nb)],
            [QuoteLevel(px(at[i]), sz(al[i])) for i in range(na)])


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
    """Model bid/ask (quote per base) -> quote levels, through :func:`strategies.kernels.build_levels_packed`
    (the steps in the module docstring). ``best_bid``/``best_ask`` None: that side of the book is empty."""
    cfg = pack_config(market, c, sizing)
    out = new_levels_buffer(c)
    nb, na = K.build_levels_packed(cfg, float(bid), float(ask), float(mid), float(q),
                                   math.nan if best_bid is None else float(best_bid),
                                   math.nan if best_ask is None else float(best_ask), out)
    return levels_from_buffer(out, nb, na, market)
