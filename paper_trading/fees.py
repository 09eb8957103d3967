"""Fee models (pluggable). Rates are fractions of notional; negative = rebate."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class MakerTakerFees:
    """fee (quote currency) = rate * price * size, rate by liquidity flag."""

    maker: float = 0.0
    taker: float = 0.0

    def fee(self, price: Decimal, size: Decimal, liquidity: str) -> Decimal:
        rate = self.maker if liquidity == "maker" else self.taker
        return Decimal(repr(rate)) * price * size
