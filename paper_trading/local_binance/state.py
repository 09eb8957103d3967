"""The local exchange's state and matching engine (no networking here).

Units: prices are quote per base (``Decimal``), quantities base units (``Decimal``),
balances in each asset's own unit, times are the *server clock* in ms since the epoch
(:meth:`ExchangeState.now_ms` = wall clock + :attr:`ExchangeState.clock_offset_ms`).

Model (a simplification of Binance spot, stated so tests know what they get):

* Per symbol there is an *external* book (other participants' liquidity) that the test
  sets (:meth:`ExchangeState.set_book`) or changes by diffs (:meth:`ExchangeState.apply_depth`).
  Our own resting orders are **not** shown in it.
* A new LIMIT/MARKET order that crosses the external book takes from it at once (walking
  the levels up to its limit; the consumed liquidity leaves the book and a depth diff is
  emitted); the rest of a LIMIT GTC order rests, of IOC/FOK/MARKET expires. LIMIT_MAKER
  that would cross is rejected (-2010 "Order would immediately match and take.").
* Resting orders fill only against simulated taker flow, :meth:`ExchangeState.taker_trade`
  (price-time priority, at the resting order's price, maker fee).
* Fees: ``maker_fee`` / ``taker_fee`` (fractions, default 0.001 = Binance's 10 bps),
  charged like Binance without BNB: in the asset received (base on a buy, quote on a sell).
  With :attr:`ExchangeState.fee_asset` set (e.g. ``"BNB"``, Binance's "pay fees with BNB")
  the fee is charged in that asset instead: ``qty * price * rate`` quote valued at the mid
  of the ``<fee_asset><quote>`` book (which must be listed and have both sides), rounded
  half-up to 8 decimals, taken from the free balance of ``fee_asset``; when that balance
  is short or there is no price, the fee falls back to the asset received (as Binance).
* Trade ids are one sequence per symbol shared by public trades and our fills, as on Binance.
* Our own orders never trade with each other (no self-trade prevention is modelled).
* ``newClientOrderId`` must be unique among *open* orders (Binance's rule); a clash is
  rejected with -2010 "Duplicate order sent.".

Every state change is announced to the registered listeners (:meth:`ExchangeState.listen`) as
an :class:`Event`; the websocket layers turn them into Binance messages.
"""

from __future__ import annotations

import itertools
import secrets
import time
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Callable, Iterable, Sequence

Level = Sequence[Any]
ZERO = Decimal(0)
_Q8 = Decimal("0.00000001")


def fmt(x: Any) -> str:
    """Binance-style decimal string with 8 decimals (``"50000.00000000"``)."""
    d = x if isinstance(x, Decimal) else Decimal(str(x))
    return f"{d:.8f}"


def dec(x: Any) -> Decimal:
    """``x`` (number or decimal string) as Decimal, via ``str`` so floats stay short."""
    return x if isinstance(x, Decimal) else Decimal(str(x))


class BinanceApiError(Exception):
    """A Binance error reply: ``{"code": code, "msg": msg}`` with HTTP ``status``."""

    def __init__(self, status: int, code: int, msg: str, retry_after: int | None = None) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg, self.retry_after = status, code, msg, retry_after


@dataclass
class MarketSpec:
    """One spot market as Binance's exchangeInfo describes it (filters as decimal strings)."""

    base: str = "BTC"
    quote: str = "USDT"
    tick_size: str = "0.01"
    step_size: str = "0.00001"
    min_qty: str = "0.00001"
    min_notional: str = "5"
    status: str = "TRADING"

    @property
    def id(self) -> str:
        return self.base + self.quote

    @property
    def symbol(self) -> str:
        """ccxt unified symbol, ``"BTC/USDT"``."""
        return f"{self.base}/{self.quote}"

    def info(self) -> dict[str, Any]:
        """The ``symbols[]`` entry of GET /api/v3/exchangeInfo (shape of the live API, 2024/25)."""
        return {
            "symbol": self.id, "status": self.status,
            "baseAsset": self.base, "baseAssetPrecision": 8,
            "quoteAsset": self.quote, "quotePrecision": 8, "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT",
                           "TAKE_PROFIT", "TAKE_PROFIT_LIMIT"],
            "icebergAllowed": True, "ocoAllowed": True, "otoAllowed": True,
            "quoteOrderQtyMarketAllowed": True, "allowTrailingStop": True, "cancelReplaceAllowed": True,
            "amendAllowed": True, "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": fmt(self.tick_size), "maxPrice": "1000000.00000000",
                 "tickSize": fmt(self.tick_size)},
                {"filterType": "LOT_SIZE", "minQty": fmt(self.min_qty), "maxQty": "9000.00000000",
                 "stepSize": fmt(self.step_size)},
                {"filterType": "ICEBERG_PARTS", "limit": 10},
                {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000", "maxQty": "100.00000000",
                 "stepSize": "0.00000000"},
                {"filterType": "NOTIONAL", "minNotional": fmt(self.min_notional), "applyMinToMarket": True,
                 "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
                {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
                {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
            ],
            "permissions": [], "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
        }


@dataclass
class Fill:
    """One of our fills (a Binance "my trade"). ``price`` quote/base, ``qty`` base units,
    ``commission`` in ``commission_asset``; ``time_ms`` server clock."""

    trade_id: int
    order_id: int
    client_order_id: str
    symbol: str
    side: str  # "BUY" | "SELL" (our side)
    price: Decimal
    qty: Decimal
    commission: Decimal
    commission_asset: str
    maker: bool
    time_ms: int

    def to_json(self) -> dict[str, Any]:
        """GET /api/v3/myTrades row."""
        return {
            "symbol": self.symbol, "id": self.trade_id, "orderId": self.order_id, "orderListId": -1,
            "price": fmt(self.price), "qty": fmt(self.qty), "quoteQty": fmt(self.price * self.qty),
            "commission": fmt(self.commission), "commissionAsset": self.commission_asset,
            "time": self.time_ms, "isBuyer": self.side == "BUY", "isMaker": self.maker, "isBestMatch": True,
        }

    def record(self) -> dict[str, Any]:
        """Plain JSON for the admin record."""
        return {"trade_id": self.trade_id, "order_id": self.order_id, "client_order_id": self.client_order_id,
                "symbol": self.symbol, "side": self.side, "price": fmt(self.price), "qty": fmt(self.qty),
                "commission": fmt(self.commission), "commission_asset": self.commission_asset,
                "maker": self.maker, "time_ms": self.time_ms}


@dataclass
class Order:
    """A spot order as the exchange stores it. ``price`` quote/base (0 for MARKET until
    filled), quantities base units; ``cum_quote`` quote units; times server ms.

    ``closed_by``: who ended it: ``"client"`` (cancel request), ``"exchange"`` (cancelled or
    expired by the exchange, e.g. :meth:`ExchangeState.expire_order`), ``"fill"`` or
    ``"tif"`` (IOC/FOK/MARKET rest expired); None while open."""

    order_id: int
    client_order_id: str
    symbol: str
    side: str
    type: str
    price: Decimal
    orig_qty: Decimal
    time_in_force: str = "GTC"
    executed_qty: Decimal = ZERO
    cum_quote: Decimal = ZERO
    status: str = "NEW"
    time_ms: int = 0
    update_ms: int = 0
    trade_ids: list[int] = field(default_factory=list)
    closed_by: str | None = None
    locked: Decimal = ZERO  # funds still reserved (quote for BUY at the limit price, base for SELL)

    @property
    def is_open(self) -> bool:
        return self.status in ("NEW", "PARTIALLY_FILLED")

    @property
    def remaining(self) -> Decimal:
        return self.orig_qty - self.executed_qty

    def to_json(self) -> dict[str, Any]:
        """GET /api/v3/order shape."""
        return {
            "symbol": self.symbol, "orderId": self.order_id, "orderListId": -1,
            "clientOrderId": self.client_order_id, "price": fmt(self.price), "origQty": fmt(self.orig_qty),
            "executedQty": fmt(self.executed_qty), "cummulativeQuoteQty": fmt(self.cum_quote),
            "status": self.status, "timeInForce": self.time_in_force, "type": self.type, "side": self.side,
            "stopPrice": "0.00000000", "icebergQty": "0.00000000", "time": self.time_ms,
            "updateTime": self.update_ms, "isWorking": True, "workingTime": self.time_ms,
            "origQuoteOrderQty": "0.00000000", "selfTradePreventionMode": "EXPIRE_MAKER",
        }

    def record(self) -> dict[str, Any]:
        """Plain JSON for the admin record."""
        return {"order_id": self.order_id, "client_order_id": self.client_order_id, "symbol": self.symbol,
                "side": self.side, "type": self.type, "price": fmt(self.price), "orig_qty": fmt(self.orig_qty),
                "executed_qty": fmt(self.executed_qty), "cum_quote": fmt(self.cum_quote),
                "status": self.status, "time_in_force": self.time_in_force, "time_ms": self.time_ms,
                "update_ms": self.update_ms, "trade_ids": list(self.trade_ids), "closed_by": self.closed_by}


@dataclass
class Event:
    """A state change for the stream layers.

    kinds: ``"execution"`` (``order``, ``exec_type`` NEW/TRADE/CANCELED/EXPIRED, ``fill``
    for TRADE, ``cancel_client_id`` for CANCELED by request), ``"balance"`` (``assets``),
    ``"trade"`` (public trade ``data``), ``"depth"`` (``data`` = dict U, u, b, a)."""

    kind: str
    symbol: str = ""
    order: Order | None = None
    exec_type: str = ""
    fill: Fill | None = None
    cancel_client_id: str = ""
    assets: tuple[str, ...] = ()
    data: dict[str, Any] | None = None
    time_ms: int = 0


@dataclass
class Rejection:
    """A refused order request (kept in the record: duplicates, insufficient funds...)."""

    time_ms: int
    client_order_id: str | None
    code: int
    msg: str


def _default_markets() -> list[MarketSpec]:
    return [MarketSpec(), MarketSpec(base="ETH", quote="USDT", step_size="0.0001", min_qty="0.0001")]


class ExchangeState:
    """Markets, balances, the external books, our orders and fills; the matching engine.

    Args:
        markets: markets to list (default BTCUSDT tick 0.01 / lot 0.00001 / min notional 5,
            and ETHUSDT).
        balances: initial free balances per asset (default 1 BTC, 100000 USDT).
        maker_fee, taker_fee: fee fractions (0.001 = 0.1 %).
        fee_asset: charge fees in this asset (``"BNB"``) instead of the asset received;
            settable at any time (see the module docstring).
        derivatives: USD-M perpetuals instead of spot (the state behind ``/fapi``, see
            :mod:`.futures`): a fill moves the signed :attr:`positions` (base units) and
            charges its fee in the quote (the margin asset) from the wallet
            (``free[quote]``); no funds are reserved and neither margin, leverage nor
            realized PnL is modelled (the wallet moves by fees only).
    """

    def __init__(self, markets: Iterable[MarketSpec] | None = None, *,
                 balances: dict[str, Any] | None = None,
                 maker_fee: Any = "0.001", taker_fee: Any = "0.001", fee_asset: str | None = None,
                 derivatives: bool = False) -> None:
        self.markets: dict[str, MarketSpec] = {m.id: m for m in (list(markets) if markets is not None
                                                                 else _default_markets())}
        self.free: dict[str, Decimal] = {k: dec(v) for k, v in (balances or {"BTC": "1", "USDT": "100000"}).items()}
        self.locked: dict[str, Decimal] = {}
        self.maker_fee, self.taker_fee = dec(maker_fee), dec(taker_fee)
        self.fee_asset = fee_asset
        self.derivatives = derivatives
        self.positions: dict[str, Decimal] = {}  # derivatives: symbol id -> signed position, base units
        self.clock_offset_ms = 0
        self.books: dict[str, tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]] = {}
        self.update_ids: dict[str, int] = {sid: 1000 for sid in self.markets}
        self.public_trades: dict[str, list[dict[str, Any]]] = {}
        self.orders: dict[int, Order] = {}
        self.fills: list[Fill] = []
        self.rejections: list[Rejection] = []
        self._order_ids = itertools.count(1)
        self._trade_ids: dict[str, itertools.count] = {}
        self._listeners: list[Callable[[Event], None]] = []
        if "BTCUSDT" in self.markets:
            self.set_book([(50000.00, 1.0), (49999.99, 2.0)], [(50000.01, 1.5), (50000.02, 3.0)], symbol="BTCUSDT")

    # -- plumbing ------------------------------------------------------------------------
    def now_ms(self) -> int:
        """Server clock, ms since the epoch (wall clock + ``clock_offset_ms``)."""
        return time.time_ns() // 1_000_000 + self.clock_offset_ms

    def listen(self, fn: Callable[[Event], None]) -> None:
        """Call ``fn(event)`` (synchronously) on every state change."""
        self._listeners.append(fn)

    def _emit(self, ev: Event) -> None:
        if not ev.time_ms:
            ev.time_ms = self.now_ms()
        for fn in list(self._listeners):
            fn(ev)

    def market(self, symbol: str) -> MarketSpec:
        """Market by exchange id (``"BTCUSDT"``) or unified symbol (``"BTC/USDT"``)."""
        sid = symbol.replace("/", "")
        try:
            return self.markets[sid]
        except KeyError:
            raise BinanceApiError(400, -1121, "Invalid symbol.") from None

    def _next_trade_id(self, sid: str) -> int:
        return next(self._trade_ids.setdefault(sid, itertools.count(1)))

    def _add(self, book: dict[str, Decimal], asset: str, amount: Decimal) -> None:
        book[asset] = book.get(asset, ZERO) + amount

    def set_balance(self, asset: str, free: Any) -> None:
        """Set the free balance of ``asset`` (a deposit/withdrawal; emits a balance event)."""
        self.free[asset] = dec(free)
        self._emit(Event("balance", assets=(asset,)))

    def balance(self, asset: str) -> tuple[Decimal, Decimal]:
        """``(free, locked)`` of ``asset``."""
        return self.free.get(asset, ZERO), self.locked.get(asset, ZERO)

    # -- external book and public trades --------------------------------------------------
    def set_book(self, bids: Iterable[Level], asks: Iterable[Level], symbol: str = "BTCUSDT") -> int:
        """Replace the external book of ``symbol`` (levels ``(price, qty)``, any order);
        bumps ``lastUpdateId`` (no diff is emitted: streams see a gap, as intended for a
        wholesale replacement). Returns the new ``lastUpdateId``."""
        sid = self.market(symbol).id
        b = sorted(((dec(p), dec(q)) for p, q in bids), key=lambda x: x[0], reverse=True)
        a = sorted(((dec(p), dec(q)) for p, q in asks), key=lambda x: x[0])
        self.books[sid] = (b, a)
        self.update_ids[sid] = self.update_ids.get(sid, 1000) + 1
        return self.update_ids[sid]

    def apply_depth(self, bids: Iterable[Level] = (), asks: Iterable[Level] = (), *, symbol: str = "BTCUSDT",
                    drop: bool = False, skip_ids: int = 0, n_ids: int = 1, event_ms: int | None = None) -> int:
        """Change the external book by absolute level sizes ``(price, qty)`` (qty 0 deletes)
        and emit the ``depthUpdate`` (``U = previous u + 1 + skip_ids``, ``u = U + n_ids - 1``).
        ``drop=True``: the book and ids change but no diff is emitted (a lost message: the
        next diff shows a sequence gap). Returns the new ``lastUpdateId``."""
        sid = self.market(symbol).id
        b_list = [(dec(p), dec(q)) for p, q in bids]
        a_list = [(dec(p), dec(q)) for p, q in asks]
        cur_b, cur_a = self.books.get(sid, ([], []))
        db, da = dict(cur_b), dict(cur_a)
        for side, changes in ((db, b_list), (da, a_list)):
            for p, q in changes:
                if q == 0:
                    side.pop(p, None)
                else:
                    side[p] = q
        self.books[sid] = (sorted(db.items(), key=lambda x: x[0], reverse=True), sorted(da.items(), key=lambda x: x[0]))
        first = self.update_ids.get(sid, 1000) + 1 + int(skip_ids)
        last = first + max(1, int(n_ids)) - 1
        self.update_ids[sid] = last
        if not drop:
            self._emit(Event("depth", symbol=sid, time_ms=event_ms or 0, data={
                "U": first, "u": last,
                "b": [[fmt(p), fmt(q)] for p, q in b_list], "a": [[fmt(p), fmt(q)] for p, q in a_list]}))
        return last

    def print_trade(self, price: Any, qty: Any, taker_side: str, *, symbol: str = "BTCUSDT",
                    trade_ms: int | None = None, send: bool = True, trade_id: int | None = None) -> int:
        """A public trade (``taker_side`` "buy"/"sell" = the aggressor); emitted to trade
        streams unless ``send=False``; served by /api/v3/trades. Returns the trade id."""
        if taker_side not in ("buy", "sell"):
            raise ValueError("taker_side must be 'buy' or 'sell'")
        sid = self.market(symbol).id
        tid = self._next_trade_id(sid) if trade_id is None else trade_id
        t_ms = self.now_ms() if trade_ms is None else int(trade_ms)
        rec = {"id": tid, "price": dec(price), "qty": dec(qty), "time": t_ms, "buyer_maker": taker_side == "sell"}
        self.public_trades.setdefault(sid, []).append(rec)
        if send:
            self._emit(Event("trade", symbol=sid, time_ms=t_ms, data=rec))
        return tid

    # -- orders --------------------------------------------------------------------------
    def _reject(self, cid: str | None, code: int, msg: str, status: int = 400) -> BinanceApiError:
        self.rejections.append(Rejection(self.now_ms(), cid, code, msg))
        return BinanceApiError(status, code, msg)

    def find_order(self, symbol: str, order_id: Any = None, client_order_id: str | None = None) -> Order | None:
        """Our order by exchange id or client id (the newest with that client id)."""
        sid = self.market(symbol).id
        if order_id is not None:
            try:
                o = self.orders.get(int(order_id))
            except ValueError:
                return None
        else:
            o = next((x for x in reversed(list(self.orders.values())) if x.client_order_id == client_order_id), None)
        return o if o is not None and o.symbol == sid else None

    def place(self, symbol: str, side: str, otype: str, quantity: Any, price: Any = None, *,
              time_in_force: str | None = None, client_order_id: str | None = None) -> Order:
        """Validate and place an order (the POST /api/v3/order semantics). Raises
        :class:`BinanceApiError` with Binance's code on a rejection."""
        m = self.market(symbol)
        side, otype = side.upper(), otype.upper()
        cid = client_order_id or ("x-local-" + secrets.token_hex(8))
        if side not in ("BUY", "SELL"):
            raise self._reject(cid, -1102, "Mandatory parameter 'side' was not sent, was empty/null, or malformed.")
        if otype not in ("LIMIT", "LIMIT_MAKER", "MARKET"):
            raise self._reject(cid, -1116, "Invalid orderType.")
        if not 1 <= len(cid) <= 36:
            raise self._reject(cid, -1100, "Illegal characters found in parameter 'newClientOrderId'; legal range is '^[a-zA-Z0-9-_.]{1,36}$'.")
        try:
            qty = dec(quantity)
        except ArithmeticError:
            raise self._reject(cid, -1102, "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed.") from None
        bids, asks = self.books.get(m.id, ([], []))
        opposite = asks if side == "BUY" else bids
        if otype == "MARKET":
            if not opposite:
                raise self._reject(cid, -2010, "Order book liquidity is less than LOT_SIZE filter minimum quantity.")
            lim = opposite[-1][0]  # walk the whole book
            tif = "GTC"
        else:
            if price is None:
                raise self._reject(cid, -1102, "Mandatory parameter 'price' was not sent, was empty/null, or malformed.")
            lim = dec(price)
            if lim <= 0 or lim % dec(m.tick_size) != 0:
                raise self._reject(cid, -1013, "Filter failure: PRICE_FILTER")
            tif = (time_in_force or "GTC").upper() if otype == "LIMIT" else "GTC"
            if otype == "LIMIT" and time_in_force is None:
                raise self._reject(cid, -1102, "Mandatory parameter 'timeInForce' was not sent, was empty/null, or malformed.")
            if tif not in ("GTC", "IOC", "FOK"):
                raise self._reject(cid, -1115, "Invalid timeInForce.")
        if qty <= 0 or qty % dec(m.step_size) != 0 or qty < dec(m.min_qty):
            raise self._reject(cid, -1013, "Filter failure: LOT_SIZE")
        ref = lim if otype != "MARKET" else opposite[0][0]
        if ref * qty < dec(m.min_notional):
            raise self._reject(cid, -1013, "Filter failure: NOTIONAL")
        crosses = bool(opposite) and (lim >= opposite[0][0] if side == "BUY" else lim <= opposite[0][0])
        if otype == "LIMIT_MAKER" and crosses:
            raise self._reject(cid, -2010, "Order would immediately match and take.")
        if any(o.is_open and o.client_order_id == cid for o in self.orders.values()):
            raise self._reject(cid, -2010, "Duplicate order sent.")
        # funds: BUY reserves quote at the limit (MARKET: at the worst level it may reach)
        asset, need = (m.quote, lim * qty) if side == "BUY" else (m.base, qty)
        if self.derivatives:
            need = ZERO  # no margin model: nothing reserved
        if self.free.get(asset, ZERO) < need:
            raise self._reject(cid, -2010, "Account has insufficient balance for requested action.")
        now = self.now_ms()
        o = Order(order_id=next(self._order_ids), client_order_id=cid, symbol=m.id, side=side, type=otype,
                  price=lim if otype != "MARKET" else ZERO, orig_qty=qty, time_in_force=tif,
                  time_ms=now, update_ms=now)
        if tif == "FOK" and self._available(opposite, side, lim) < qty:
            o.status, o.closed_by = "EXPIRED", "tif"
            self.orders[o.order_id] = o
            self._emit(Event("execution", symbol=m.id, order=o, exec_type="NEW"))
            self._emit(Event("execution", symbol=m.id, order=o, exec_type="EXPIRED"))
            return o
        self._add(self.free, asset, -need)
        self._add(self.locked, asset, need)
        o.locked = need
        self.orders[o.order_id] = o
        self._emit(Event("execution", symbol=m.id, order=o, exec_type="NEW"))
        if crosses:
            self._take_from_book(o, lim)
        if o.is_open and (otype == "MARKET" or tif in ("IOC", "FOK")):
            self._close(o, "EXPIRED", "tif")
        elif not o.executed_qty:
            self._emit(Event("balance", assets=(m.base, m.quote)))  # the lock
        return o

    @staticmethod
    def _available(levels: list[tuple[Decimal, Decimal]], side: str, lim: Decimal) -> Decimal:
        return sum((q for p, q in levels if (p <= lim if side == "BUY" else p >= lim)), ZERO)

    def _take_from_book(self, o: Order, lim: Decimal) -> None:
        """Fill ``o`` (taker) against the external book up to ``lim``; consumed liquidity
        leaves the book (one depth diff)."""
        bids, asks = self.books.get(o.symbol, ([], []))
        levels = asks if o.side == "BUY" else bids
        changed: list[tuple[Decimal, Decimal]] = []
        while o.remaining > 0 and levels:
            p, q = levels[0]
            if (p > lim) if o.side == "BUY" else (p < lim):
                break
            take = min(q, o.remaining)
            self._fill(o, take, p, maker=False)
            if take == q:
                levels.pop(0)
                changed.append((p, ZERO))
            else:
                levels[0] = (p, q - take)
                changed.append((p, q - take))
        if changed:
            b, a = (changed, []) if o.side == "SELL" else ([], changed)
            # the lists were mutated in place; re-apply through apply_depth for ids + event
            self.apply_depth(b, a, symbol=o.symbol)

    def _fill(self, o: Order, qty: Decimal, price: Decimal, *, maker: bool, taker_time_ms: int | None = None) -> Fill:
        m = self.markets[o.symbol]
        rate = self.maker_fee if maker else self.taker_fee
        now = self.now_ms() if taker_time_ms is None else taker_time_ms
        third = None if self.derivatives else self._third_asset_fee(m, qty * price * rate)
        if third is not None:
            fee_asset, fee = third
            self._add(self.free, fee_asset, -fee)
        if self.derivatives:  # the position moves; the fee leaves the wallet (the margin asset)
            fee, fee_asset = (qty * price * rate).quantize(_Q8, rounding=ROUND_HALF_UP), m.quote
            self._add(self.free, m.quote, -fee)
            self._add(self.positions, m.id, qty if o.side == "BUY" else -qty)
        elif o.side == "BUY":
            if third is None:
                fee = (qty * rate).quantize(_Q8, rounding=ROUND_HALF_UP)
                fee_asset = m.base
            reserved = o.price * qty if o.type != "MARKET" else o.locked * qty / o.remaining
            self._add(self.locked, m.quote, -reserved)
            o.locked -= reserved
            self._add(self.free, m.quote, reserved - price * qty)
            self._add(self.free, m.base, qty - (fee if third is None else ZERO))
        else:
            if third is None:
                fee = (qty * price * rate).quantize(_Q8, rounding=ROUND_HALF_UP)
                fee_asset = m.quote
            self._add(self.locked, m.base, -qty)
            o.locked -= qty
            self._add(self.free, m.quote, price * qty - (fee if third is None else ZERO))
        o.executed_qty += qty
        o.cum_quote += qty * price
        o.update_ms = now
        if o.executed_qty >= o.orig_qty:
            o.status, o.closed_by = "FILLED", "fill"
        else:
            o.status = "PARTIALLY_FILLED"
        tid = self.print_trade(price, qty, ("sell" if o.side == "BUY" else "buy") if maker else o.side.lower(),
                               symbol=o.symbol, trade_ms=now)
        f = Fill(trade_id=tid, order_id=o.order_id, client_order_id=o.client_order_id, symbol=o.symbol,
                 side=o.side, price=price, qty=qty, commission=fee, commission_asset=fee_asset, maker=maker,
                 time_ms=now)
        o.trade_ids.append(tid)
        self.fills.append(f)
        self._emit(Event("execution", symbol=o.symbol, order=o, exec_type="TRADE", fill=f, time_ms=now))
        self._emit(Event("balance", assets=(m.base, m.quote) + ((fee_asset,) if third else ()), time_ms=now))
        return f

    def fee_asset_price(self, quote: str) -> Decimal | None:
        """Mid of the ``<fee_asset><quote>`` book (quote per fee-asset unit), or None."""
        sid = f"{self.fee_asset}{quote}"
        bids, asks = self.books.get(sid, ([], []))
        if sid not in self.markets or not bids or not asks:
            return None
        return (bids[0][0] + asks[0][0]) / 2

    def _third_asset_fee(self, m: MarketSpec, fee_quote: Decimal) -> tuple[str, Decimal] | None:
        """``(fee_asset, amount)`` when the fee of ``fee_quote`` quote is paid in
        :attr:`fee_asset` (priced, and the free balance covers it), else None."""
        if not self.fee_asset or self.fee_asset in (m.base, m.quote):
            return None
        px = self.fee_asset_price(m.quote)
        if px is None:
            return None
        fee = (fee_quote / px).quantize(_Q8, rounding=ROUND_HALF_UP)
        if self.free.get(self.fee_asset, ZERO) < fee:
            return None
        return self.fee_asset, fee

    def _close(self, o: Order, status: str, by: str, cancel_client_id: str = "") -> None:
        """End ``o`` with ``status`` (CANCELED / EXPIRED), releasing its reserved funds."""
        m = self.markets[o.symbol]
        asset = m.quote if o.side == "BUY" else m.base
        self._add(self.locked, asset, -o.locked)
        self._add(self.free, asset, o.locked)
        o.locked = ZERO
        o.status, o.closed_by, o.update_ms = status, by, self.now_ms()
        self._emit(Event("execution", symbol=o.symbol, order=o, exec_type="CANCELED" if status == "CANCELED" else "EXPIRED",
                         cancel_client_id=cancel_client_id))
        self._emit(Event("balance", assets=(m.base, m.quote)))

    def cancel(self, symbol: str, order_id: Any = None, client_order_id: str | None = None,
               cancel_client_id: str | None = None) -> tuple[Order, str]:
        """Cancel by request (DELETE /api/v3/order). Returns ``(order, cancel_client_id)``;
        -2011 "Unknown order sent." if unknown or no longer open."""
        o = self.find_order(symbol, order_id, client_order_id)
        if o is None or not o.is_open:
            raise BinanceApiError(400, -2011, "Unknown order sent.")
        ccid = cancel_client_id or ("x-cancel-" + secrets.token_hex(6))
        self._close(o, "CANCELED", "client", ccid)
        return o, ccid

    def cancel_all(self, symbol: str) -> list[tuple[Order, str]]:
        """Cancel every open order of ``symbol`` (DELETE /api/v3/openOrders); -2011
        "Unknown order sent." when there is none (as Binance)."""
        sid = self.market(symbol).id
        open_ = [o for o in self.orders.values() if o.is_open and o.symbol == sid]
        if not open_:
            raise BinanceApiError(400, -2011, "Unknown order sent.")
        return [self.cancel(sid, o.order_id) for o in open_]

    def expire_order(self, order_id: Any = None, *, client_order_id: str | None = None, symbol: str = "BTCUSDT",
                     status: str = "EXPIRED") -> Order:
        """The exchange ends an open order on its own (``status`` "EXPIRED" or "CANCELED",
        e.g. maintenance, self-trade prevention, a delisting)."""
        o = self.find_order(symbol, order_id, client_order_id)
        if o is None or not o.is_open:
            raise ValueError(f"no open order {order_id or client_order_id!r} on {symbol}")
        if status not in ("EXPIRED", "CANCELED"):
            raise ValueError("status must be EXPIRED or CANCELED")
        self._close(o, status, "exchange")
        return o

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        sid = self.market(symbol).id if symbol else None
        return [o for o in self.orders.values() if o.is_open and (sid is None or o.symbol == sid)]

    def fill_order(self, order_id: int, qty: Any = None, price: Any = None) -> Order:
        """A maker fill of our open order ``order_id``: ``qty`` base units (default: all that
        is left) at ``price`` (default: its limit price); the public trade is printed too."""
        o = self.orders[int(order_id)]
        if not o.is_open:
            raise ValueError(f"order {order_id} is {o.status}")
        q = o.remaining if qty is None else min(o.remaining, dec(qty))
        self._fill(o, q, o.price if price is None else dec(price), maker=True)
        return o

    def taker_trade(self, side: str, qty: Any, price: Any, *, symbol: str = "BTCUSDT",
                    print_rest: bool = True) -> list[Fill]:
        """Simulated taker flow: an aggressor ``side`` ("buy" lifts asks, "sell" hits bids)
        of ``qty`` base units with limit ``price`` trades against our resting orders on the
        other side at or better than ``price`` (best price first, then oldest), each at the
        resting order's price (maker fills). With ``print_rest``, what is left trades with
        the outside market and is printed as one public trade at ``price``. Returns our
        fills (partial and full)."""
        side = side.lower()
        if side not in ("buy", "sell"):
            raise ValueError("side must be 'buy' or 'sell'")
        sid = self.market(symbol).id
        left, lim = dec(qty), dec(price)
        ours = "SELL" if side == "buy" else "BUY"
        cands = [o for o in self.orders.values() if o.is_open and o.symbol == sid and o.side == ours
                 and o.type != "MARKET" and (o.price <= lim if ours == "SELL" else o.price >= lim)]
        cands.sort(key=lambda o: (o.price if ours == "SELL" else -o.price, o.time_ms, o.order_id))
        fills = []
        for o in cands:
            if left <= 0:
                break
            q = min(left, o.remaining)
            fills.append(self._fill(o, q, o.price, maker=True))
            left -= q
        if left > 0 and print_rest:
            self.print_trade(lim, left, side, symbol=sid)
        return fills

    # -- record --------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """The exchange's own record as plain JSON (see :mod:`.record`)."""
        from .record import build_record

        return build_record(self)
