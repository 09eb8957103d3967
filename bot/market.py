"""Market metadata (tick, lot, minimum notional, fees) and exact rounding of prices and sizes.

Built from ccxt's unified market structure (``exchange.markets[symbol]``). Rounding uses
``decimal.Decimal`` so that a price is always an exact multiple of the tick:

* bids are rounded **down** and asks **up** (never improve a quote by rounding);
* sizes are rounded **down** to the lot (never exceed the size asked for).

Rounded values are normalized without an exponent (``Decimal("78390")``, never
``Decimal("7.839E+4")``), and :func:`plain` formats any Decimal as plain digits: that text
goes to the database and would go to an exchange, neither of which must see ``1E+2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, Mapping

from bot.errors import ExchangeError


def _dec(x: Any) -> Decimal:
    return x if isinstance(x, Decimal) else Decimal(str(x))


def plain(d: Decimal) -> str:
    """``d`` as plain decimal text, never in exponent form: ``7.839E+4`` -> ``78390``,
    ``1E-8`` -> ``0.00000001``, ``1E+2`` -> ``100``."""
    return format(d, "f")


def normalized(d: Decimal) -> Decimal:
    """``d`` without trailing zeros and without a positive exponent (``Decimal('7.839E+4')``
    becomes ``Decimal('78390')``), so that ``str()`` of it is plain too."""
    d = d.normalize()
    return d.quantize(1) if d.as_tuple().exponent > 0 else d  # type: ignore[operator]


def _cached_multiple(cache: dict[int, Decimal], n: int, unit: Decimal) -> Decimal:
    """n * unit as an exact, normalized Decimal, memoized (the hot path reuses few values)."""
    d = cache.get(n)
    if d is None:
        d = normalized(n * unit) if n else Decimal(0)
        if len(cache) > 100_000:
            cache.clear()
        cache[n] = d
    return d


@dataclass(frozen=True)
class MarketInfo:
    """Static facts of one market.

    Attributes:
        symbol: ccxt unified symbol, e.g. ``"BTC/USDT"``.
        base, quote: currency codes.
        tick: price increment, quote currency per base unit.
        lot: size increment, base units.
        min_size: smallest order size, base units (0 if none).
        min_notional: smallest price*size, quote currency (0 if none).
        maker_fee, taker_fee: fee rates as fractions of notional (0.001 = 10 bp); negative
            means a rebate.
    """

    symbol: str
    base: str
    quote: str
    tick: Decimal
    lot: Decimal
    min_size: Decimal = Decimal(0)
    min_notional: Decimal = Decimal(0)
    maker_fee: float = 0.0
    taker_fee: float = 0.0

    def __post_init__(self) -> None:
        if self.tick <= 0 or self.lot <= 0:
            raise ExchangeError(f"market {self.symbol}: tick ({self.tick}) and lot ({self.lot}) must be positive")
        object.__setattr__(self, "tick_f", float(self.tick))
        object.__setattr__(self, "lot_f", float(self.lot))
        object.__setattr__(self, "_px_cache", {})  # ticks -> Decimal price (hot path)
        object.__setattr__(self, "_sz_cache", {})  # lots -> Decimal size

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_ccxt(cls, market: Mapping[str, Any], precision_mode: int | None = None) -> "MarketInfo":
        """Build from a ccxt unified market dict.

        ccxt reports ``precision`` either as tick sizes (``TICK_SIZE`` mode, most exchanges
        in ccxt 4) or as a number of decimal places (``DECIMAL_PLACES``); both are handled.
        """
        try:
            import ccxt  # local import: keeps the module importable without ccxt loaded

            symbol = market["symbol"]
            prec = market.get("precision") or {}
            p, a = prec.get("price"), prec.get("amount")
            if p is None or a is None:
                raise ExchangeError(f"market {symbol}: ccxt market has no price/amount precision")
            mode = precision_mode if precision_mode is not None else ccxt.TICK_SIZE
            if mode == ccxt.DECIMAL_PLACES or (isinstance(p, int) and p >= 1 and mode != ccxt.TICK_SIZE):
                tick = Decimal(1).scaleb(-int(p))
                lot = Decimal(1).scaleb(-int(a))
            else:
                tick, lot = _dec(p), _dec(a)
            limits = market.get("limits") or {}
            min_size = (limits.get("amount") or {}).get("min") or 0
            min_cost = (limits.get("cost") or {}).get("min") or 0
            return cls(
                symbol=symbol,
                base=market.get("base", ""),
                quote=market.get("quote", ""),
                tick=tick,
                lot=lot,
                min_size=_dec(min_size),
                min_notional=_dec(min_cost),
                maker_fee=float(market.get("maker") or 0.0),
                taker_fee=float(market.get("taker") or 0.0),
            )
        except KeyError as e:  # pragma: no cover - malformed reply
            raise ExchangeError(f"ccxt market structure lacks field {e}") from None

    # -- rounding (exact) ------------------------------------------------------------
    def round_price(self, price: float | Decimal, side: str) -> Decimal:
        """Round ``price`` to the tick: down for ``side='buy'``, up for ``side='sell'``."""
        steps = _dec(price) / self.tick
        steps = steps.to_integral_value(rounding=ROUND_FLOOR if side == "buy" else ROUND_CEILING)
        return normalized(steps * self.tick) if steps else Decimal(0)

    def round_size(self, size: float | Decimal) -> Decimal:
        """Round ``size`` down to the lot."""
        steps = (_dec(size) / self.lot).to_integral_value(rounding=ROUND_FLOOR)
        return normalized(steps * self.lot) if steps > 0 else Decimal(0)

    # -- fast float helpers for the hot path (results exact multiples in float space) ----
    def price_ticks(self, price: float, side: str) -> int:
        """Integer number of ticks: floor for bids, ceil for asks.

        A price within float noise of a tick counts as that tick: the guard is 1e-9 ticks plus
        1e-12 relative, since the quotient's rounding error grows with its size (32768.02 / 0.0001
        is 327680199.99999994 in floats, which a fixed 1e-9 guard floors one tick too low)."""
        x = price / self.tick_f  # type: ignore[attr-defined]
        eps = 1e-9 + abs(x) * 1e-12
        return math.floor(x + eps) if side == "buy" else math.ceil(x - eps)

    def ticks_to_price(self, ticks: int) -> Decimal:
        return _cached_multiple(self._px_cache, ticks, self.tick)  # type: ignore[attr-defined]

    def size_lots(self, size: float) -> int:
        return max(0, math.floor(size / self.lot_f + 1e-9))  # type: ignore[attr-defined]

    def lots_to_size(self, lots: int) -> Decimal:
        return _cached_multiple(self._sz_cache, lots, self.lot)  # type: ignore[attr-defined]

    def is_tradeable(self, price: Decimal, size: Decimal) -> bool:
        """True when the order passes the minimum size and minimum notional."""
        return size > 0 and size >= self.min_size and price * size >= self.min_notional
