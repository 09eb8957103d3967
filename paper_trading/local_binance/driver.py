"""Optional background market driver for the standalone server (``--drive``).

Every ``interval_s`` seconds: the mid price takes a random step of ``step`` quote units
(up, down or none; rounded to the tick), the external book is re-centred on it through
depth diffs (levels one tick apart, ``depth`` per side, 1 base unit each), and one taker
trade of ``taker_qty`` base units (random side) goes with a limit a random distance of up
to ``reach`` quote units beyond the touch - filling any of our resting orders at or better
than that limit. Deterministic for a given ``seed``. Prices quote/base, sizes base units.
"""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal

from .server import LocalBinance


class MarketDriver:
    """Moves the first (or ``symbol``) market of ``server``; ``start()`` / ``await stop()``."""

    def __init__(self, server: LocalBinance, *, symbol: str | None = None, interval_s: float = 0.5,
                 step: str = "0.02", reach: str = "0.01", depth: int = 20, taker_qty: str = "0.0005",
                 seed: int = 1) -> None:
        self.server = server
        self.sid = (symbol or next(iter(server.state.markets))).replace("/", "")
        m = server.state.market(self.sid)
        self.tick = Decimal(m.tick_size)
        self.step_ticks = max(1, int(Decimal(step) / self.tick))
        self.reach_ticks = max(0, int(Decimal(reach) / self.tick))
        self.interval_s, self.depth = interval_s, depth
        self.taker_qty = Decimal(taker_qty)
        self.rng = random.Random(seed)
        self.steps = 0
        self._task: asyncio.Task | None = None

    def mid(self) -> Decimal:
        bids, asks = self.server.state.books.get(self.sid, ([], []))
        if bids and asks:
            return (bids[0][0] + asks[0][0]) / 2
        return bids[0][0] if bids else (asks[0][0] if asks else Decimal(50000))

    def step(self) -> None:
        """One driver step (also callable directly from tests)."""
        st = self.server.state
        mid = (self.mid() / self.tick).to_integral_value() * self.tick
        mid += self.tick * self.step_ticks * self.rng.choice((-1, 0, 1))
        new_b = {mid - self.tick * i: Decimal(1) for i in range(1, self.depth + 1)}
        new_a = {mid + self.tick * i: Decimal(1) for i in range(1, self.depth + 1)}
        old_b, old_a = st.books.get(self.sid, ([], []))
        db = [(p, 0) for p, _ in old_b if p not in new_b] + list(new_b.items())
        da = [(p, 0) for p, _ in old_a if p not in new_a] + list(new_a.items())
        st.apply_depth(db, da, symbol=self.sid)
        beyond = self.tick * (1 + self.rng.randint(0, self.reach_ticks))
        if self.rng.random() < 0.5:
            st.taker_trade("buy", self.taker_qty, mid + beyond, symbol=self.sid)
        else:
            st.taker_trade("sell", self.taker_qty, mid - beyond, symbol=self.sid)
        self.steps += 1

    async def _run(self) -> None:
        while True:
            self.step()
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
