"""A simulated market in the spirit of Avellaneda-Stoikov: the latent mid s follows a
symmetric random walk, s += +/- sigma*sqrt(dt) each step, and other participants' book is
synthesised around it (best bid/ask ``spread_ticks/2`` ticks either side of s, rounded
outwards, ``depth_levels`` levels of random size).

Units: s0 and the book in quote per base; sigma in quote per base per sqrt(second); dt_s
and duration_s in simulated seconds. ``speed`` maps simulated time to wall time (1 = real
time, 10 = ten times faster, 0 = as fast as possible). Simulated timestamps start at
``start_ns`` and advance by dt exactly.

The default ``start_ns`` is a fixed simulated epoch (:data:`SIM_EPOCH_NS`, 2024-01-01 00:00
UTC), not the wall clock: whatever works on a time grid aligned to the epoch (the
forecaster samples at ``t_k = k * sample_s``) then sees the same phase in every run, so a
seeded run is reproducible to the bit, timestamps included. The wall-clock start of a run
is ``runs.started_ns`` in the database.
"""

from __future__ import annotations

import asyncio
import math
import time
from decimal import Decimal

import numpy as np

from bot.market import MarketInfo
from bot.market_data.base import MarketEvent, MarketSource
from bot.orderbook import OrderBook

SIM_EPOCH_NS = 1_704_067_200 * 10**9  # 2024-01-01T00:00:00Z: the simulated clock's default start


class SimulatedMarket(MarketSource):
    def __init__(
        self,
        symbol: str = "SIM/USD",
        s0: float = 100.0,
        sigma: float = 0.26,
        dt_s: float = 0.05,
        duration_s: float = 60.0,
        tick: Decimal = Decimal("0.01"),
        lot: Decimal = Decimal("1"),
        spread_ticks: int = 2,
        depth_levels: int = 5,
        level_size: float = 10.0,
        seed: int = 7,
        speed: float = 0.0,
        maker_fee: float = 0.0,
        taker_fee: float = 0.0,
        start_ns: int | None = None,
    ) -> None:
        base, _, quote = symbol.partition("/")
        self.market = MarketInfo(symbol, base, quote or "USD", tick, lot, maker_fee=maker_fee, taker_fee=taker_fee)
        self.book = OrderBook(symbol)
        self.s = s0
        self.sigma, self.dt_s, self.duration_s = sigma, dt_s, duration_s
        self.spread_ticks, self.depth_levels, self.level_size = spread_ticks, depth_levels, level_size
        self.rng = np.random.default_rng(seed)
        self.speed = speed
        self.start_ns = start_ns
        self.n_steps = int(round(duration_s / dt_s))
        self.i = 0
        self._dt_ns = int(round(dt_s * 1e9))
        self._wall0 = 0.0

    def _rebuild(self) -> None:
        tick = self.market.tick_f  # type: ignore[attr-defined]
        half = 0.5 * self.spread_ticks
        b0 = math.floor(self.s / tick - half + 1e-9)
        a0 = math.ceil(self.s / tick + half - 1e-9)
        if a0 <= b0:
            a0 = b0 + 1
        sizes = self.rng.uniform(0.5, 1.5, size=2 * self.depth_levels) * self.level_size
        n = self.depth_levels
        self.book.apply_snapshot(
            [((b0 - j) * tick, sizes[j]) for j in range(n)],
            [((a0 + j) * tick, sizes[n + j]) for j in range(n)],
            ts_ns=self.ts_ns,
        )

    @property
    def ts_ns(self) -> int:
        return self.start_ns + self.i * self._dt_ns  # type: ignore[operator]

    async def start(self) -> MarketInfo:
        if self.start_ns is None:
            self.start_ns = SIM_EPOCH_NS
        self._wall0 = time.monotonic()
        self._rebuild()
        return self.market

    async def next(self) -> MarketEvent | None:
        if self.i >= self.n_steps:
            return None
        if self.speed > 0:
            due = self._wall0 + (self.i + 1) * self.dt_s / self.speed
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        self.i += 1
        step = self.sigma * math.sqrt(self.dt_s)
        self.s += step if self.rng.random() < 0.5 else -step
        self._rebuild()
        ts = self.ts_ns
        return MarketEvent(self.book, ts, ts, fair=self.s, dt_s=self.dt_s)
