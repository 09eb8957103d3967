"""Fill models decide when a resting paper order trades. They are pluggable: the paper
exchange calls ``model.match(event, orders)`` on every market event and executes what it
returns at the order's limit price as maker.

Each model's docstring states what it assumes. Real-book models (queue position, latency,
partial fills) live next to this one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Iterable, Protocol

import numpy as np

from bot.market_data.base import MarketEvent
from bot.orders import Order, Side


@dataclass(frozen=True, slots=True)
class Execution:
    """``size`` (base units) of ``order`` trades at ``price`` (quote per base)."""

    order: Order
    size: Decimal
    price: Decimal


class FillModel(Protocol):
    def match(self, event: MarketEvent, orders: Iterable[Order]) -> list[Execution]: ...


class IntensityFillModel:
    """Avellaneda-Stoikov Poisson fills, for the simulated market.

    Assumes: market orders arrive at our quote with intensity lambda(delta) = A*exp(-k*delta),
    delta = distance of our price from the reference price (bid: ref - price; ask: price -
    ref), quote per base. Over a step of ``event.dt_s`` seconds an order trades with
    probability min(1, lambda*dt), independently per order; each trade executes
    ``unit_size`` base units (the AS "one unit per fill"; ``None`` = the whole remainder),
    at our limit price. The reference is ``event.fair`` (the simulated latent mid) when
    present, else the book mid. The step is ``event.dt_s`` when the source sets it (the
    simulated market), else the time since the previous event (live or replayed books).
    There is no queue: this is a model of a stylised market, not of a real order book.
    """

    def __init__(self, A: float, k: float, seed: int = 0, unit_size: Decimal | None = None) -> None:
        self.A, self.k = A, k
        self.unit_size = unit_size
        self.rng = np.random.default_rng(seed)
        self._last_ts: int | None = None

    def match(self, event: MarketEvent, orders: Iterable[Order]) -> list[Execution]:
        ref = event.fair if event.fair is not None else event.book.mid()
        dt = event.dt_s
        if dt <= 0.0:
            dt = 0.0 if self._last_ts is None else max(event.ts_ns - self._last_ts, 0) * 1e-9
        self._last_ts = event.ts_ns
        if ref is None or dt <= 0:
            return []
        out: list[Execution] = []
        A, k = self.A, self.k
        for o in orders:
            px = float(o.price)
            delta = ref - px if o.side is Side.BUY else px - ref
            p = A * math.exp(-k * delta) * dt
            if self.rng.random() < p:
                size = o.remaining if self.unit_size is None else min(self.unit_size, o.remaining)
                out.append(Execution(o, size, o.price))
        return out
