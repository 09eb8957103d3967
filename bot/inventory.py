"""Inventory (base units) and cash (quote currency), updated by fills.

``cash`` already has fees subtracted. Mark-to-market value = cash + base * mid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from bot.orders import Fill


@dataclass
class Inventory:
    base: Decimal = Decimal(0)  # base units held (negative = short)
    cash: Decimal = Decimal(0)  # quote currency
    fees_paid: Decimal = Decimal(0)  # quote currency, cumulative (rebates negative)
    volume: Decimal = Decimal(0)  # traded notional, quote currency
    n_fills: int = 0
    spread_capture: float = 0.0  # quote currency, vs mid at fill
    max_abs_base: Decimal = Decimal(0)
    initial_base: Decimal = field(default=Decimal(0))
    initial_cash: Decimal = field(default=Decimal(0))

    def __post_init__(self) -> None:
        self.initial_base = self.base
        self.initial_cash = self.cash

    @property
    def q(self) -> float:
        """Inventory in base units as a float, for model arithmetic."""
        return float(self.base)

    def apply(self, fill: Fill) -> None:
        sign = fill.side.sign
        self.base += sign * fill.size
        self.cash -= sign * fill.notional + fill.fee
        self.fees_paid += fill.fee
        self.volume += fill.notional
        self.n_fills += 1
        self.spread_capture += fill.spread_capture
        if abs(self.base) > self.max_abs_base:
            self.max_abs_base = abs(self.base)

    def mark_to_market(self, mid: float) -> float:
        """cash + base * mid, quote currency."""
        return float(self.cash) + float(self.base) * mid

    def pnl(self, mid: float, initial_mid: float) -> float:
        """Change of mark-to-market value since the start, quote currency."""
        return self.mark_to_market(mid) - (float(self.initial_cash) + float(self.initial_base) * initial_mid)
