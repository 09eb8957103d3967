"""Event-loop lag: how late the asyncio loop runs a task that asked to wake up.

A small task sleeps ``interval_s`` (seconds) again and again; the lag of one wake-up is the
wall time it actually slept minus ``interval_s`` (seconds, >= 0), measured with the loop's
monotonic clock. A loop busy with a long synchronous step (a slow strategy, a blocking
database commit, a backtest feed that never waits) shows here: the lag is bounded below by
the longest stretch the loop ran without yielding.
"""

from __future__ import annotations

import asyncio
from typing import Callable


class LoopLagProbe:
    """Measure the running loop's scheduling delay; ``on_lag(seconds)`` is called per wake-up.

    ``last_s`` and ``max_s`` hold the last and the largest lag seen, seconds."""

    def __init__(self, interval_s: float = 0.25, on_lag: Callable[[float], None] | None = None) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s must be > 0")
        self.interval_s = interval_s
        self.on_lag = on_lag
        self.last_s = 0.0
        self.max_s = 0.0
        self.samples = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start probing on the running loop (call from inside it)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="mmbot-loop-lag")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(self.interval_s)
            lag = max(0.0, loop.time() - t0 - self.interval_s)
            self.last_s = lag
            self.max_s = max(self.max_s, lag)
            self.samples += 1
            if self.on_lag is not None:
                self.on_lag(lag)
