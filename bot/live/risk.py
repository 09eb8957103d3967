"""Risk limits of a live run: order notional, open orders, order rate, and the kill switch.

* :func:`limit_quotes` trims desired quotes before the order manager diffs them: levels whose
  notional (price * size, quote currency) exceeds ``max_order_notional`` are dropped, and
  each side keeps at most as many levels as ``max_open_orders`` allows in total.
* :class:`OrderRate` is a sliding-window counter of order requests (placements and cancels)
  per ``rate_window_s`` seconds; the engine places nothing new while the window is full (it
  stays under the exchange's order-count limits; cancels are never held back).
* :class:`KillSwitch` watches the run's PnL (quote currency, mark-to-market since the run's
  start): a loss beyond ``max_loss``, a drawdown from the run's best PnL beyond
  ``max_drawdown``, or a loss since the start of the UTC day beyond ``max_daily_loss``
  trips it once, with a reason; the engine then cancels everything, stops and records it.

A limit of ``None`` is off. Times are seconds (``time.monotonic`` for rates, ns since the
epoch for the daily boundary).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from decimal import Decimal

from strategies.base import Quotes

_DAY_NS = 86_400 * 1_000_000_000


@dataclass
class RiskLimits:
    max_order_notional: Decimal | None = None  # quote currency per order
    max_open_orders: int | None = None  # both sides together
    max_orders_per_window: int | None = None  # order requests per rate_window_s
    rate_window_s: float = 10.0
    max_loss: float | None = None  # quote currency, from the run's start
    max_drawdown: float | None = None  # quote currency, from the run's best PnL
    max_daily_loss: float | None = None  # quote currency, since 00:00 UTC
    stale_after_s: float | None = 10.0  # no book update for this long pulls all quotes


def limit_quotes(q: Quotes, limits: RiskLimits) -> Quotes:
    """``q`` with levels over the notional cap removed and at most ``max_open_orders`` levels
    in total (best levels kept, alternating sides). Returns ``q`` itself when nothing changes."""
    bids, asks = q.bids, q.asks
    if limits.max_order_notional is not None:
        cap = limits.max_order_notional
        bids = [lv for lv in bids if lv.price * lv.size <= cap]
        asks = [lv for lv in asks if lv.price * lv.size <= cap]
    n = limits.max_open_orders
    if n is not None and len(bids) + len(asks) > n:
        nb = min(len(bids), (n + 1) // 2)
        na = min(len(asks), n - nb)
        nb = min(len(bids), n - na)
        bids, asks = bids[:nb], asks[:na]
    if bids is q.bids and asks is q.asks:
        return q
    return Quotes(bids=list(bids), asks=list(asks), mid=q.mid, reservation=q.reservation,
                  half_spread_bid=q.half_spread_bid, half_spread_ask=q.half_spread_ask, sigma=q.sigma,
                  drift=q.drift, note=q.note)


class OrderRate:
    """Order requests in the last ``window_s`` seconds (monotonic clock)."""

    def __init__(self, limit: int | None, window_s: float = 10.0) -> None:
        self.limit, self.window_s = limit, window_s
        self._t: collections.deque[float] = collections.deque()

    def _trim(self, now: float) -> None:
        while self._t and now - self._t[0] >= self.window_s:
            self._t.popleft()

    def room(self, now: float) -> int:
        """How many more requests fit in the window now (a large number when unlimited)."""
        if self.limit is None:
            return 1 << 30
        self._trim(now)
        return max(0, self.limit - len(self._t))

    def note(self, now: float, n: int = 1) -> None:
        self._t.extend([now] * n)


class KillSwitch:
    """Trips once on loss from start, drawdown or daily loss (quote currency)."""

    def __init__(self, limits: RiskLimits) -> None:
        self.limits = limits
        self.peak = 0.0
        self.day: int | None = None
        self.day_start_pnl = 0.0
        self.reason: str | None = None

    def check(self, pnl: float, ts_ns: int) -> str | None:
        """Feed the current PnL; returns the reason when the switch trips (then stays tripped)."""
        if self.reason is not None:
            return self.reason
        lim = self.limits
        day = ts_ns // _DAY_NS
        if self.day != day:
            self.day, self.day_start_pnl = day, pnl
        self.peak = max(self.peak, pnl)
        if lim.max_loss is not None and pnl <= -lim.max_loss:
            self.reason = f"kill switch: loss {-pnl:.2f} since the start exceeds max_loss {lim.max_loss:g}"
        elif lim.max_drawdown is not None and self.peak - pnl >= lim.max_drawdown:
            self.reason = (f"kill switch: drawdown {self.peak - pnl:.2f} from the best PnL {self.peak:.2f} "
                           f"exceeds max_drawdown {lim.max_drawdown:g}")
        elif lim.max_daily_loss is not None and self.day_start_pnl - pnl >= lim.max_daily_loss:
            self.reason = (f"kill switch: loss {self.day_start_pnl - pnl:.2f} today (UTC) exceeds "
                           f"max_daily_loss {lim.max_daily_loss:g}")
        return self.reason
