"""Replaying a recording into the engine: a market source and an exchange sharing one
:class:`~paper_trading.venue.Venue`.

:class:`ReplaySource` advances the venue to the next decision time (every ``interval_s`` of
recorded local time) and hands the engine a :class:`MarketEvent` whose book is an
:class:`ArrayBookView` of the venue's book. :class:`ReplayExchange` implements the
:class:`~bot.exchanges.base.Exchange` interface on the same venue: orders are submitted
with the venue's entry latency, and whatever the venue reported while advancing (orders
accepted, rejected, cancelled, filled) comes back as order updates and fills.

``speed``: 0 = as fast as possible (backtest), 1 = real time, x = x times real time.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

from decimal import Decimal

from bot.errors import DataError
from bot.exchanges.base import Exchange, OrderAck
from bot.market import MarketInfo
from bot.market_data.base import MarketEvent, MarketSource, TradeArrays
from bot.orders import Fill, Order, OrderState
from paper_trading.fees import MakerTakerFees
from paper_trading.venue import R_ACTIVE, R_CANCELED, R_FILL, R_REJECT, R_TAKER_FILL, ArrayBookView, Venue


class ReplaySource(MarketSource):
    def __init__(
        self,
        venue: Venue,
        market: MarketInfo,
        interval_s: float = 0.1,
        speed: float = 0.0,
        start_ns: int | None = None,
        end_ns: int | None = None,
        warmup_s: float = 1.0,
        on_progress=None,
        with_trades: bool = True,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.venue = venue
        self.market = market
        self.book = ArrayBookView(venue, market.symbol)  # type: ignore[assignment]
        self.interval_ns = int(interval_s * 1e9)
        self.speed = speed
        if venue.n == 0:
            raise DataError("the recording holds no events")
        self.t_first = venue.t_first
        self.t_last = venue.t_last
        self.start_ns = max(self.t_first, start_ns or self.t_first) + int(warmup_s * 1e9)
        self.end_ns = min(self.t_last, end_ns) if end_ns else self.t_last
        self.t = self.start_ns
        self.reports: list = []  # venue Reports not yet handed to the exchange
        self.on_progress = on_progress
        self.with_trades = with_trades  # attach public trades to events (A/k estimation, forecaster)
        # trades of the recording whose aggressor side the source did not tell and the replay
        # inferred from the book before the venue was built (set by build_replay_engine, see
        # bot.market_data.trade_side.infer_trade_sides); reported in the backtest summary
        self.trades_side_inferred = 0
        self._wall0 = 0.0

    async def start(self) -> MarketInfo:
        # build the book up to the start (snapshot + warm-up)
        self.reports += self.venue.advance_to(self.start_ns)
        if self.book.is_empty():
            # a recording may start with diffs before its first snapshot: move on until two-sided
            while self.book.is_empty() and self.venue.i < self.venue.n:
                self.t += self.interval_ns
                self.reports += self.venue.advance_to(self.t)
            if self.book.is_empty():
                raise DataError("the recording never has a two-sided book")
        self._wall0 = time.monotonic()
        self._t0 = self.t
        return self.market

    async def next(self) -> MarketEvent | None:
        if self.t >= self.end_ns or self.venue.i >= self.venue.n:
            return None
        self.t += self.interval_ns
        if self.speed > 0:
            due = self._wall0 + (self.t - self._t0) / 1e9 / self.speed
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        i0 = self.venue.i
        self.reports += self.venue.advance_to(self.t)
        if self.on_progress is not None:
            self.on_progress(self.venue.i)
        trades = self._trades(i0, self.venue.i) if self.with_trades else []
        return MarketEvent(self.book, self.t, self.t, trades)  # type: ignore[arg-type]

    def _trades(self, i0: int, i1: int) -> TradeArrays | list:
        """Public trades among rows i0..i1-1, as arrays (aggressor side +1/-1, 0 unknown; sides
        the source did not give are already inferred, see ``trades_side_inferred``)."""
        cols = self.venue.trades(i0, i1)
        return [] if cols is None else TradeArrays(*cols)


class ReplayExchange(Exchange):
    """Orders into the venue of a :class:`ReplaySource`; fills at the venue's reports."""

    name = "paper"

    def __init__(self, source: ReplaySource, fees: MakerTakerFees | None = None) -> None:
        super().__init__()
        self.source = source
        self.venue = source.venue
        self.fees = fees
        self._orders: dict[int, Order] = {}
        self._ids = itertools.count(1)
        self._by_client: dict[str, int] = {}
        self._trade_prefix = uuid.uuid4().hex[:12]
        self._trades = itertools.count(1)
        self._balances: dict[str, Decimal] = {}

    async def start(self, market: MarketInfo) -> None:
        self.market = market
        if self.fees is None:
            self.fees = MakerTakerFees(market.maker_fee, market.taker_fee)
        self._balances = {market.base: Decimal(0), market.quote: Decimal(0)}

    async def place(self, order: Order, now_ns: int) -> OrderAck:
        m = self.market
        if order.price <= 0 or order.price % m.tick != 0 or order.size <= 0 or order.size % m.lot != 0:
            return OrderAck(order.client_id, OrderState.REJECTED, now_ns, reason="price or size off the tick/lot grid")
        oid = next(self._ids)
        ok = self.venue.submit(oid, order.side.sign, float(order.price), float(order.size), now_ns, order.post_only)
        if not ok:
            return OrderAck(order.client_id, OrderState.REJECTED, now_ns, reason="venue full or price out of range")
        self._orders[oid] = order
        self._by_client[order.client_id] = oid
        return OrderAck(order.client_id, OrderState.NEW, now_ns, exchange_id=str(oid))

    async def cancel(self, order: Order, now_ns: int) -> OrderAck:
        oid = self._by_client.get(order.client_id)
        if oid is not None:
            self.venue.cancel(oid, now_ns)
        # the cancel takes effect after the latency: its confirmation is an order update
        return OrderAck(order.client_id, order.state, now_ns, order.exchange_id, order.filled)

    async def cancel_all(self, symbol: str, now_ns: int) -> list[OrderAck]:
        """At shutdown: cancel everything at once (no latency: the run is over)."""
        acks = []
        for oid, o in list(self._orders.items()):
            acks.append(OrderAck(o.client_id, OrderState.CANCELED, now_ns, str(oid), o.filled, "shutdown"))
            self._forget(oid)
        self.venue.o_status[:] = 0
        return acks

    async def open_orders(self, symbol: str) -> list[OrderAck]:
        return [OrderAck(o.client_id, o.state, o.updated_ns, str(oid), o.filled) for oid, o in self._orders.items()]

    async def balances(self) -> dict[str, Decimal]:
        return dict(self._balances)

    def _forget(self, oid: int) -> None:
        o = self._orders.pop(oid, None)
        if o is not None:
            self._by_client.pop(o.client_id, None)

    async def on_market(self, event: MarketEvent) -> None:
        reports, self.source.reports = self.source.reports, []
        if not reports:
            return
        m = self.market
        remaining: dict[int, Decimal] = {}
        for rep in reports:  # venue Reports: fills carry whole lots and the book at the fill
            kind, oid, ts, px = rep.kind, rep.oid, rep.ts_ns, rep.px
            o = self._orders.get(oid)
            if o is None:
                continue
            if kind == R_ACTIVE:
                self.order_updates.put_nowait(OrderAck(o.client_id, OrderState.OPEN, ts, str(oid)))
            elif kind == R_REJECT:
                self.order_updates.put_nowait(OrderAck(o.client_id, OrderState.REJECTED, ts, str(oid), reason="post-only order would cross"))
                self._forget(oid)
            elif kind == R_CANCELED:
                self.order_updates.put_nowait(OrderAck(o.client_id, OrderState.CANCELED, ts, str(oid)))
                self._forget(oid)
            elif kind in (R_FILL, R_TAKER_FILL):
                left = remaining.get(oid, o.size - o.filled)
                size = min(m.lots_to_size(rep.lots), left)
                if size <= 0:
                    continue
                remaining[oid] = left - size
                price = m.ticks_to_price(round(px / m.tick_f))  # type: ignore[attr-defined]  # a book level's price
                liq = "maker" if kind == R_FILL else "taker"
                fee = self.fees.fee(price, size, liq)  # type: ignore[union-attr]
                sign = o.side.sign
                self._balances[m.base] += sign * size
                self._balances[m.quote] -= sign * price * size + fee
                self.fills.put_nowait(Fill(self.name, f"{self._trade_prefix}-{next(self._trades)}", o.client_id, o.symbol,
                                           o.side, price, size, fee, liq, ts, px if rep.mid is None else rep.mid))
                if remaining[oid] <= 0:
                    self._forget(oid)
