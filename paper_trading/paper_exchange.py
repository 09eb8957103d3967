"""The paper exchange: a simulated venue behind :class:`bot.exchanges.base.Exchange`.

It keeps its own copy of every resting order (as a real venue would), validates new orders
against the market's tick, lot and minimums, rejects a post-only order that would cross the
current book, and on each market event asks its pluggable fill model which orders trade.
Executions are maker fills at the order's limit price, charged by the fee model, and put on
``self.fills``. Balances start at ``initial`` and follow the fills.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import replace
from decimal import Decimal

from bot.exchanges.base import Exchange, OrderAck
from bot.market import MarketInfo
from bot.market_data.base import MarketEvent
from bot.orderbook import OrderBook
from bot.orders import Fill, Order, OrderState, Side
from paper_trading.fees import MakerTakerFees
from paper_trading.fill_models import FillModel


class PaperExchange(Exchange):
    name = "paper"

    def __init__(
        self,
        fill_model: FillModel,
        fees: MakerTakerFees | None = None,
        initial_base: Decimal = Decimal(0),
        initial_quote: Decimal = Decimal(0),
        trade_id_prefix: str | None = None,
    ) -> None:
        super().__init__()
        self.fill_model = fill_model
        self.fees = fees
        self.initial = (initial_base, initial_quote)
        self.book: OrderBook | None = None
        self.mid: float | None = None
        self._resting: dict[str, Order] = {}
        self._ids = itertools.count(1)
        self._trades = itertools.count(1)
        # trade ids must be unique across runs in one database: (exchange, trade_id) is unique
        self.trade_id_prefix = trade_id_prefix or uuid.uuid4().hex[:12]
        self._balances: dict[str, Decimal] = {}

    async def start(self, market: MarketInfo) -> None:
        self.market = market
        if self.fees is None:
            self.fees = MakerTakerFees(market.maker_fee, market.taker_fee)
        self._balances = {market.base: self.initial[0], market.quote: self.initial[1]}

    # -- order entry ------------------------------------------------------------------
    def _reject(self, order: Order, now_ns: int, reason: str) -> OrderAck:
        return OrderAck(order.client_id, OrderState.REJECTED, now_ns, reason=reason)

    async def place(self, order: Order, now_ns: int) -> OrderAck:
        m = self.market
        if order.symbol != m.symbol:
            return self._reject(order, now_ns, f"unknown symbol {order.symbol}")
        if order.client_id in self._resting:
            return self._reject(order, now_ns, "duplicate client id")
        if order.price <= 0 or order.price % m.tick != 0:
            return self._reject(order, now_ns, f"price {order.price} is not a positive multiple of tick {m.tick}")
        if order.size <= 0 or order.size % m.lot != 0:
            return self._reject(order, now_ns, f"size {order.size} is not a positive multiple of lot {m.lot}")
        if not m.is_tradeable(order.price, order.size):
            return self._reject(order, now_ns, "below minimum size or notional")
        if order.post_only and self.book is not None:
            px = float(order.price)
            if order.side is Side.BUY:
                ba = self.book.asks.best_price()
                if ba is not None and px >= ba:
                    return self._reject(order, now_ns, f"post-only buy at {order.price} would cross best ask {ba}")
            else:
                bb = self.book.bids.best_price()
                if bb is not None and px <= bb:
                    return self._reject(order, now_ns, f"post-only sell at {order.price} would cross best bid {bb}")
        mine = replace(order, state=OrderState.OPEN, filled=Decimal(0), exchange_id=f"P{next(self._ids)}",
                       created_ns=now_ns, updated_ns=now_ns)
        self._resting[order.client_id] = mine
        return OrderAck(order.client_id, OrderState.OPEN, now_ns, mine.exchange_id)

    async def cancel(self, order: Order, now_ns: int) -> OrderAck:
        mine = self._resting.pop(order.client_id, None)
        if mine is None:
            return OrderAck(order.client_id, OrderState.CANCELED, now_ns, order.exchange_id, order.filled, "not open")
        return OrderAck(order.client_id, OrderState.CANCELED, now_ns, mine.exchange_id, mine.filled)

    async def cancel_all(self, symbol: str, now_ns: int) -> list[OrderAck]:
        acks = []
        for cid in [c for c, o in self._resting.items() if o.symbol == symbol]:
            mine = self._resting.pop(cid)
            acks.append(OrderAck(cid, OrderState.CANCELED, now_ns, mine.exchange_id, mine.filled))
        return acks

    async def open_orders(self, symbol: str) -> list[OrderAck]:
        return [OrderAck(o.client_id, o.state, o.updated_ns, o.exchange_id, o.filled)
                for o in self._resting.values() if o.symbol == symbol]

    async def balances(self) -> dict[str, Decimal]:
        return dict(self._balances)

    # -- matching ---------------------------------------------------------------------
    async def on_market(self, event: MarketEvent) -> None:
        self.book = event.book
        mid = event.book.mid()
        if mid is not None:
            self.mid = mid
        if not self._resting:
            return
        for ex in self.fill_model.match(event, list(self._resting.values())):
            self._execute(ex.order, ex.size, ex.price, event.ts_ns)

    def _execute(self, mine: Order, size: Decimal, price: Decimal, ts_ns: int) -> None:
        mine.apply_fill(size, ts_ns)
        if mine.state is OrderState.FILLED:
            del self._resting[mine.client_id]
        fee = self.fees.fee(price, size, "maker")
        sign = mine.side.sign
        m = self.market
        self._balances[m.base] += sign * size
        self._balances[m.quote] -= sign * price * size + fee
        fill = Fill(
            exchange=self.name,
            trade_id=f"{self.trade_id_prefix}-{next(self._trades)}",
            client_id=mine.client_id,
            symbol=mine.symbol,
            side=mine.side,
            price=price,
            size=size,
            fee=fee,
            liquidity="maker",
            ts_ns=ts_ns,
            mid=self.mid if self.mid is not None else float(price),
        )
        self.fills.put_nowait(fill)
