"""The live exchange: real orders through ccxt (``ccxt.pro`` where the exchange has
websockets, plain async ccxt otherwise), behind :class:`bot.exchanges.base.Exchange`.

Order entry never stalls the market loop: :meth:`CcxtLiveExchange.place` and
:meth:`CcxtLiveExchange.cancel` register the request, start an asyncio task and answer at
once with the in-flight state (``pending_new`` / ``pending_cancel``). The task's outcome
arrives later on :attr:`order_updates` (and fills on :attr:`fills`). Requests for one
client id run strictly in order (a cancel waits for its placement to be resolved).

Errors, as the exchange means them (ccxt classes; each has a test in tests/test_live_exchange.py):

* ambiguous failures -- ``RequestTimeout``, ``ExchangeNotAvailable`` (5xx, maintenance) and
  any other ``NetworkError`` except ``InvalidNonce`` and rate limits: the order becomes
  ``unknown`` and is resolved by client id (``fetch_order`` with ``clientOrderId``; where
  that is not available, open orders and recent trades) before anything else is done for
  it. A placement is never re-sent: if the exchange does not have the order after
  ``resolve_not_found_checks`` looks, it is closed as ``rejected`` (the periodic
  reconciliation would still find it should it appear later).
* ``InvalidNonce`` (Binance -1021, timestamp outside recvWindow): the request was refused
  before execution; resync the clock difference once (``load_time_difference``,
  ``adjustForTimeDifference``) and retry once.
* ``DDoSProtection`` / ``RateLimitExceeded`` (418 / 429): the request was refused; back off
  for the server's ``Retry-After`` (else doubling from 1 s, at most 300 s). While banned
  nothing is sent (placements are refused locally, cancels and look-ups wait) and
  :attr:`banned` is true so that the engine pulls its quotes.
* ``InsufficientFunds``: a rejection; that side is disabled (:attr:`side_blocked`) until
  :meth:`refresh_balances` shows enough funds again.
* ``OrderNotFound`` on cancel: resolve the order's true state (filled or cancelled).
* ``OrderImmediatelyFillable`` (post-only would cross): a rejection; the engine re-quotes on
  the next update.
* ``DuplicateOrderId`` / "Duplicate order sent.": the client id is already at the exchange:
  resolve it, never re-send.
* ``AuthenticationError`` / ``PermissionDenied``: fatal: :attr:`fatal` holds a clear message,
  ``on_fatal`` is called, the engine stops.
* anything else ``InvalidOrder`` / ``ExchangeError``: a rejection with the reason.

Fees: each fill keeps the fee as the exchange charged it (ccxt trade ``fee`` {cost, currency}:
``Fill.fee_cost`` / ``fee_currency``) and its value in quote currency (``Fill.fee``, what PnL
and ``mmbot report`` use) with the price that valued it (``Fill.fee_rate``, quote per
fee-currency unit): 1 for the quote; the fill price for the base; for a third currency
(BNB on Binance) the mid (else last) of the ``FEE/QUOTE`` ticker (or ``1 / QUOTE/FEE``),
fetched when the fill is taken and cached ``fee_rate_max_age_s`` (default 60 s): the price
the bot knew when it learnt of the fill. A fill recovered later (restart reconciliation) is
valued at the ticker of that moment. When no price is available (no such market, ticker
fails) the fee is recorded unconverted: ``fee_cost`` / ``fee_currency`` kept, ``fee_rate``
None, ``fee`` 0, a warning logged and ``counters['unconverted_fees']`` counted -- never a
silent 0 (``mmbot report`` lists such fees).

Units: prices quote per base (Decimal), sizes base units (Decimal), fees quote currency
unless named otherwise, times ns since the epoch (ccxt reports ms). Prices and sizes are sent as the plain decimal
strings of ccxt's ``price_to_precision`` / ``amount_to_precision`` (never exponent form).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from decimal import Decimal
from typing import Any, Awaitable, Callable

import ccxt

from bot.errors import ExchangeError
from bot.exchanges.base import Exchange, OrderAck
from bot.exchanges.ccxt_client import _DEFAULT_OPTIONS, _deep_merge, check_base_urls, load_market, point_at, short_reason
from bot.live.secrets import redact
from bot.market import MarketInfo
from bot.market_data.base import MarketEvent
from bot.orders import Fill, Order, OrderState, Side

log = logging.getLogger(__name__)

_AMBIGUOUS = (ccxt.RequestTimeout, ccxt.ExchangeNotAvailable, ccxt.NetworkError)
_RATE = (ccxt.DDoSProtection, ccxt.RateLimitExceeded)


class Banned(Exception):
    """Raised locally instead of sending a placement while the exchange rate-limits us."""


def plain(d: Decimal | str) -> str:
    """A decimal as a plain string: ``Decimal('1E+2')`` -> ``'100'``; trailing zeros dropped."""
    d = d if isinstance(d, Decimal) else Decimal(str(d))
    s = format(d.normalize(), "f")
    return s


#: options of the trading client per exchange id, before the caller's (binanceusdm, like
#: binance, would fetch currencies and margin pairs from the private spot ``sapi`` once keys
#: are set: mmbot needs neither)
_TRADING_DEFAULTS: dict[str, dict[str, Any]] = {
    "binanceusdm": {"fetchCurrencies": False, "fetchMargins": False},
}


def create_trading_client(exchange_id: str, *, credentials: dict | None = None, api_url: str | None = None,
                          ws_url: str | None = None, sandbox: bool = False, options: dict | None = None,
                          timeout_ms: int = 10_000, keepalive_s: float | None = 10.0) -> Any:
    """An authenticated ccxt client (``ccxt.pro`` class when it exists: REST and websockets
    in one object). ``sandbox`` switches to the exchange's testnet URLs first; then
    ``api_url`` rewrites every REST URL (public and private) and ``ws_url`` every websocket
    URL (market streams and the websocket API) onto one local server (scheme/host/port
    replaced, paths kept). Credentials are never logged."""
    eid = exchange_id.strip().lower()
    try:
        import ccxt.pro as ccxtpro
        mod = ccxtpro if eid in ccxtpro.exchanges and hasattr(ccxtpro, eid) else None
    except ImportError:  # pragma: no cover
        mod = None
    if mod is None:
        import ccxt.async_support as mod  # type: ignore[no-redef]
        if eid not in mod.exchanges:
            raise ExchangeError(f"unknown exchange {exchange_id!r}")
        log.warning("%s has no websocket client in ccxt.pro: fills are polled over REST", eid)
    merged = _deep_merge(_deep_merge(_DEFAULT_OPTIONS.get(eid, {}), _TRADING_DEFAULTS.get(eid, {})), options or {})
    config: dict[str, Any] = {"enableRateLimit": True, "options": merged, "timeout": timeout_ms}
    for k, v in (credentials or {}).items():
        if v:
            config[k] = v
    try:
        ex = getattr(mod, eid)(config)
    except ccxt.BaseError as e:
        raise ExchangeError(f"cannot create ccxt client for {eid}: {redact(short_reason(e, eid))}") from None
    if keepalive_s is not None and isinstance(getattr(ex, "streaming", None), dict):
        ex.streaming = {**ex.streaming, "keepAlive": int(keepalive_s * 1000)}  # a silent user stream is noticed
    if sandbox:
        try:
            ex.set_sandbox_mode(True)
        except ccxt.NotSupported:
            raise ExchangeError(f"{eid} has no sandbox (testnet) in ccxt; drop --sandbox") from None
    check_base_urls(api_url, ws_url)
    point_at(ex, api_url, ws_url)
    return ex


def venue_name(exchange_id: str, sandbox: bool = False, api_url: str | None = None) -> str:
    """The venue's name in the database (runs.exchange, fills.exchange): the ccxt id, with
    ``-sandbox`` on a testnet and ``@host:port`` behind an ``api_url`` override, so that
    trade ids of a testnet or a local stand-in never collide with the real exchange's
    (fills are unique on (exchange, trade id))."""
    name = exchange_id + ("-sandbox" if sandbox else "")
    if api_url:
        from urllib.parse import urlsplit
        name += "@" + urlsplit(api_url).netloc
    return name


def _state_of(o: dict) -> tuple[OrderState, Decimal]:
    """(our state, cumulative filled size) of a ccxt unified order."""
    filled = Decimal(str(o.get("filled") or 0))
    status = o.get("status")
    if status == "open":
        return (OrderState.PARTIALLY_FILLED if filled > 0 else OrderState.OPEN), filled
    if status == "closed":
        return OrderState.FILLED, filled
    if status in ("canceled", "expired"):
        return OrderState.CANCELED, filled
    if status == "rejected":
        return OrderState.REJECTED, filled
    return OrderState.OPEN, filled  # None: ccxt could not tell; the order exists


def _order_cid(o: dict) -> str | None:
    """The client id of the ORDER in a ccxt order: Binance's cancel replies carry the
    cancel request's own id as ``clientOrderId`` and the order's as ``origClientOrderId``."""
    return (o.get("info") or {}).get("origClientOrderId") or o.get("clientOrderId")


def _is_duplicate(e: BaseException) -> bool:
    return isinstance(e, ccxt.DuplicateOrderId) or "duplicate order" in str(e).lower()


class CcxtLiveExchange(Exchange):
    """Real orders on one ccxt exchange (see the module docstring for the error rules).

    Args:
        exchange_id: ccxt id (``"binance"``); also :attr:`name`, the ``exchange`` of fills.
        credentials: ccxt credential fields (from :mod:`bot.live.secrets`).
        api_url, ws_url, sandbox, options: see :func:`create_trading_client`.
        request_timeout_s: ccxt's HTTP timeout, seconds (a timeout is an ambiguous failure).
        fills_transport: ``"auto"`` (``watch_my_trades`` where ccxt.pro has it, polling as a
            safety net), ``"ws"`` or ``"rest"`` (poll ``fetch_my_trades`` only).
        poll_interval_s: ``fetch_my_trades`` polling interval, seconds.
        resolve_not_found_checks / resolve_interval_s: how often, and how far apart, an
            ``unknown`` placement is looked up before it is declared never placed.
        dedicated_account: True: cancel-all uses the exchange's ``cancel_all_orders`` (which
            also cancels other orders on the symbol); False: only our orders, one by one.
        is_ours: tells our client ids from others' (the per-installation prefix).
        on_fatal: called with the message when an authentication/permission error occurs.
        dead_man_s: arm the exchange's cancel-all-after with this timeout, seconds, where
            ccxt has it (``has['cancelAllOrdersAfter']``); elsewhere a warning says there is none.
        fee_rate_max_age_s: how long a fee currency's ticker price is reused, seconds.
        client: a ready ccxt client (tests); otherwise one is created in :meth:`start`.
    """

    def __init__(self, exchange_id: str, *, credentials: dict | None = None, api_url: str | None = None,
                 ws_url: str | None = None, sandbox: bool = False, options: dict | None = None,
                 request_timeout_s: float = 10.0, fills_transport: str = "auto", poll_interval_s: float = 2.0,
                 resolve_not_found_checks: int = 3, resolve_interval_s: float = 1.0, dedicated_account: bool = True,
                 is_ours: Callable[[str], bool] | None = None, on_fatal: Callable[[str], None] | None = None,
                 dead_man_s: float | None = 60.0, fee_rate_max_age_s: float = 60.0, client: Any = None) -> None:
        super().__init__()
        self.exchange_id = exchange_id.strip().lower()
        self.name = venue_name(self.exchange_id, sandbox, api_url)
        self._client_args = dict(credentials=credentials, api_url=api_url, ws_url=ws_url, sandbox=sandbox,
                                 options=options, timeout_ms=int(request_timeout_s * 1000))
        self.ex = client
        self.fills_transport = fills_transport
        self.poll_interval_s = poll_interval_s
        self.resolve_checks = resolve_not_found_checks
        self.resolve_interval_s = resolve_interval_s
        self.dedicated_account = dedicated_account
        self.is_ours = is_ours or (lambda cid: True)
        self.on_fatal = on_fatal
        self.dead_man_s = dead_man_s
        self.fatal: str | None = None
        self.counters: Counter[str] = Counter()  # order errors, rate limits, resyncs, unknowns
        self.banned_until = 0.0  # time.monotonic() until which nothing is sent
        self._ban_backoff_s = 0.0
        self._auth_like = 0  # consecutive -2015 answers
        self.side_blocked: dict[Side, str] = {}  # side -> reason (insufficient funds)
        self.mid: float | None = None
        self.market: MarketInfo | None = None
        self._orders: dict[str, Order] = {}  # client id -> our copy of the order (price, size, side)
        self._state: dict[str, OrderState] = {}  # client id -> last state we reported
        self._by_xid: dict[str, str] = {}  # exchange order id -> client id
        self._chain: dict[str, asyncio.Task] = {}  # client id -> last request task
        self._tasks: set[asyncio.Task] = set()
        self._seen_trades: set[str] = set()
        self.base_fees: dict[str, Decimal] = {}  # trade id -> fee charged in the base currency, base units
        self.fee_rate_max_age_s = fee_rate_max_age_s
        self.derivative = False  # the market is a swap / future (inventory = the exchange's position)
        self.fee_rates: dict[str, tuple[Decimal, float]] = {}  # currency -> (quote per unit, time.monotonic() fetched)
        self.last_trade_id: str | None = None  # newest trade id handed out (for polling)
        self.last_trade_ms: int | None = None
        self._bg: list[asyncio.Task] = []
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------
    async def connect(self, symbol: str) -> MarketInfo:
        """Create the client and load the market (idempotent; also used by reconciliation
        before the engine starts)."""
        if self.ex is None:
            self.ex = create_trading_client(self.exchange_id, **self._client_args)
        if self.market is None or self.market.symbol != symbol:
            self.market = await load_market(self.ex, symbol)
            self.derivative = bool(self.ex.market(self.market.symbol).get("contract"))
        return self.market

    async def start(self, market: MarketInfo) -> None:
        await self.connect(market.symbol)
        self.symbol = self.market.symbol  # type: ignore[union-attr]
        if self.fills_transport in ("auto", "ws") and self.ex.has.get("watchMyTrades") and hasattr(self.ex, "watch_my_trades"):
            self._bg.append(asyncio.ensure_future(self._watch_fills()))
        elif self.fills_transport == "ws":
            log.warning("%s has no watch_my_trades: polling fetch_my_trades instead", self.name)
        self._bg.append(asyncio.ensure_future(self._poll_fills()))
        if self.dead_man_s:
            if self.ex.has.get("cancelAllOrdersAfter"):
                self._bg.append(asyncio.ensure_future(self._dead_man()))
            else:
                log.warning("%s has no cancel-all-after in ccxt: no dead-man switch; open orders are cancelled at exit "
                            "and reconciled at the next start", self.name)

    async def _dead_man(self) -> None:
        """Re-arm the exchange's cancel-all-after every third of ``dead_man_s``: if this
        process dies, the exchange cancels our orders ``dead_man_s`` seconds later."""
        while not self._closed:
            try:
                await self._call(lambda: self.ex.cancel_all_orders_after(int(self.dead_man_s * 1000), {"symbol": self.symbol}))
            except (ccxt.BaseError, ExchangeError) as e:
                log.warning("%s dead-man switch: %s", self.name, redact(short_reason(e, self.name)))
            await asyncio.sleep(self.dead_man_s / 3)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for t in self._bg:
            t.cancel()
        for t in self._bg:
            with contextlib.suppress(BaseException):
                await t
        if self.ex is not None:
            with contextlib.suppress(Exception):
                await self.ex.close()

    async def on_market(self, event: MarketEvent) -> None:
        m = event.book.mid()
        if m is not None:
            self.mid = m

    # -- state of the connection ------------------------------------------------------------
    @property
    def banned(self) -> bool:
        """True while the exchange rate-limits or bans us (quotes must be pulled)."""
        return time.monotonic() < self.banned_until

    def _note_rate_limit(self, e: BaseException) -> None:
        self.counters["rate_limited"] += 1
        if "-2015" in str(e):
            # ccxt turns Binance's -2015 ("Invalid API-key, IP, or permissions") into
            # DDoSProtection once the key has worked (Binance also sends it on temporary
            # bans); the same answer three times in a row means the key no longer works
            self._auth_like += 1
            if self._auth_like >= 3:
                self._set_fatal(e)
                return
        else:
            self._auth_like = 0
        retry = None
        headers = getattr(self.ex, "last_response_headers", None) or {}
        for k, v in headers.items():
            if k.lower() == "retry-after":
                with contextlib.suppress(ValueError):
                    retry = float(v)
        if retry is None:
            self._ban_backoff_s = min(300.0, max(1.0, self._ban_backoff_s * 2))
            retry = self._ban_backoff_s
        self.banned_until = max(self.banned_until, time.monotonic() + retry)
        log.warning("%s rate limit (%s): nothing is sent for %.0f s", self.name, type(e).__name__, retry)

    async def _wait_unbanned(self) -> None:
        while self.banned and not self._closed:
            await asyncio.sleep(min(1.0, self.banned_until - time.monotonic()) + 0.01)

    def _set_fatal(self, e: BaseException) -> None:
        msg = (f"{self.name} refused our API key ({type(e).__name__}): {redact(short_reason(e, self.name))}; "
               f"check the key, its permissions (spot trading) and IP whitelist")
        if self.fatal is None:
            self.fatal = msg
            log.error("%s", msg)
            if self.on_fatal is not None:
                self.on_fatal(msg)

    async def _call(self, fn: Callable[[], Awaitable[Any]], *, refuse_when_banned: bool = False) -> Any:
        """One request with the clock-resync rule (InvalidNonce: resync once, retry once) and
        the ban rule (rate limits set a ban and re-raise). Other errors propagate."""
        if self.fatal is not None:
            raise ExchangeError(self.fatal)
        if self.banned:
            if refuse_when_banned:
                raise Banned()
            await self._wait_unbanned()
        resynced = False
        while True:
            try:
                out = await fn()
                self._ban_backoff_s = 0.0
                self._auth_like = 0
                return out
            except ccxt.InvalidNonce as e:
                if resynced:
                    raise
                resynced = True
                self.counters["clock_resyncs"] += 1
                log.warning("%s: %s; resyncing the clock difference", self.name, redact(short_reason(e, self.name)))
                self.ex.options["adjustForTimeDifference"] = True
                await self.ex.load_time_difference()
            except _RATE as e:
                self._note_rate_limit(e)
                raise
            except (ccxt.AuthenticationError, ccxt.PermissionDenied) as e:
                self._set_fatal(e)
                raise

    # -- order entry ----------------------------------------------------------------------
    def _spawn(self, cid: str, coro_fn: Callable[[asyncio.Task | None], Awaitable[None]]) -> None:
        prev = self._chain.get(cid)
        task = asyncio.ensure_future(coro_fn(prev))
        self._chain[cid] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _report(self, cid: str, state: OrderState, reason: str = "", xid: str | None = None,
                filled: Decimal = Decimal(0)) -> None:
        if xid:
            self._by_xid[str(xid)] = cid
        self._state[cid] = state
        self.order_updates.put_nowait(OrderAck(cid, state, time.time_ns(), str(xid) if xid else None, filled, reason[:200]))

    def _ack_from(self, cid: str, o: dict, reason: str = "") -> OrderState:
        state, filled = _state_of(o)
        self._report(cid, state, reason or (o.get("status") or ""), o.get("id"), filled)
        return state

    async def place(self, order: Order, now_ns: int) -> OrderAck:
        cid = order.client_id
        if cid in self._orders:  # a client id goes to the exchange once, ever
            return OrderAck(cid, OrderState.REJECTED, now_ns, reason="duplicate client id (not re-sent)")
        self._orders[cid] = order
        if self.fatal is not None:
            self._state[cid] = OrderState.REJECTED
            return OrderAck(cid, OrderState.REJECTED, now_ns, reason="stopped: " + self.fatal[:150])
        if order.side in self.side_blocked:
            self._state[cid] = OrderState.REJECTED
            return OrderAck(cid, OrderState.REJECTED, now_ns, reason=self.side_blocked[order.side])
        if self.banned:
            self._state[cid] = OrderState.REJECTED
            return OrderAck(cid, OrderState.REJECTED, now_ns, reason="rate limited: not sent")
        self._state[cid] = OrderState.PENDING_NEW
        self._spawn(cid, lambda prev: self._place_task(order))
        return OrderAck(cid, OrderState.PENDING_NEW, now_ns)

    def _precise(self, order: Order) -> tuple[str, str]:
        sym = self.market.symbol  # type: ignore[union-attr]
        amount = plain(self.ex.amount_to_precision(sym, plain(order.size)))
        price = plain(self.ex.price_to_precision(sym, plain(order.price)))
        if Decimal(price) != order.price or Decimal(amount) != order.size:
            raise ccxt.InvalidOrder(f"price {plain(order.price)} / size {plain(order.size)} not on the exchange's "
                                    f"precision (would send {price} / {amount})")
        return amount, price

    async def _place_task(self, order: Order) -> None:
        cid = order.client_id
        sym = self.market.symbol  # type: ignore[union-attr]
        try:
            amount, price = self._precise(order)
            params: dict[str, Any] = {"clientOrderId": cid}
            if order.post_only:
                params["postOnly"] = True
            res = await self._call(lambda: self.ex.create_order(sym, "limit", order.side.value, amount, price, params),
                                   refuse_when_banned=True)
            self.counters["orders_placed"] += 1
            self._ack_from(cid, res)
        except Banned:
            self._report(cid, OrderState.REJECTED, "rate limited: not sent")
        except ccxt.OrderImmediatelyFillable as e:
            self.counters["post_only_rejects"] += 1
            self._report(cid, OrderState.REJECTED, "post-only would cross: " + redact(short_reason(e, self.name)))
        except ccxt.InsufficientFunds as e:
            self.counters["insufficient_funds"] += 1
            self.side_blocked[order.side] = f"insufficient funds for {order.side.value}s"
            log.warning("%s: insufficient funds: %s quotes stop until balances allow", self.name, order.side.value)
            self._report(cid, OrderState.REJECTED, "insufficient funds: " + redact(short_reason(e, self.name)))
        except (ccxt.AuthenticationError, ccxt.PermissionDenied) as e:
            self._report(cid, OrderState.REJECTED, "authentication: " + redact(short_reason(e, self.name)))
        except _RATE:
            self._report(cid, OrderState.REJECTED, "rate limited")
        except ccxt.InvalidNonce as e:  # refused twice, even after the resync: not placed
            self.counters["order_errors"] += 1
            self._report(cid, OrderState.REJECTED, "clock: " + redact(short_reason(e, self.name)))
        except ccxt.InvalidOrder as e:
            if _is_duplicate(e):
                self.counters["duplicate_client_id"] += 1
                log.warning("%s: client id %s already at the exchange: resolving, not re-sending", self.name, cid)
                await self._resolve(cid)
            else:
                self.counters["order_errors"] += 1
                self._report(cid, OrderState.REJECTED, redact(short_reason(e, self.name)))
        except _AMBIGUOUS as e:
            self.counters["unknown_outcomes"] += 1
            log.warning("%s: placement %s failed ambiguously (%s): resolving by client id", self.name, cid,
                        redact(short_reason(e, self.name)))
            self._report(cid, OrderState.UNKNOWN, redact(short_reason(e, self.name)))
            await self._resolve(cid)
        except ccxt.BaseError as e:
            self.counters["order_errors"] += 1
            self._report(cid, OrderState.REJECTED, redact(short_reason(e, self.name)))
        except ExchangeError as e:  # stopped (fatal)
            self._report(cid, OrderState.REJECTED, str(e)[:200])

    async def _fetch_by_cid(self, cid: str) -> dict | None:
        """The exchange's order with client id ``cid``, or None if it has none."""
        sym = self.market.symbol  # type: ignore[union-attr]
        if self.ex.has.get("fetchOrder"):
            try:
                return await self._call(lambda: self.ex.fetch_order(None, sym, {"clientOrderId": cid}))
            except ccxt.OrderNotFound:
                return None
            except (ccxt.NotSupported, ccxt.ArgumentsRequired):
                pass
        # fallback: open orders, then recent closed orders
        for fn, cap in (("fetch_open_orders", "fetchOpenOrders"), ("fetch_closed_orders", "fetchClosedOrders")):
            if not self.ex.has.get(cap):
                continue
            for o in await self._call(lambda: getattr(self.ex, fn)(sym)):
                if o.get("clientOrderId") == cid:
                    return o
        return None

    async def _resolve(self, cid: str) -> OrderState:
        """Find out, by client id, what the exchange did with ``cid``; report it. Look-ups are
        read-only, so network failures are retried (with backoff) until an answer comes."""
        not_found = 0
        delay = self.resolve_interval_s
        while not self._closed:
            try:
                o = await self._fetch_by_cid(cid)
            except (ccxt.AuthenticationError, ccxt.PermissionDenied, ExchangeError):
                return self._state.get(cid, OrderState.UNKNOWN)
            except ccxt.BaseError as e:
                log.warning("%s: resolving %s: %s (retrying)", self.name, cid, redact(short_reason(e, self.name)))
                await asyncio.sleep(delay)
                delay = min(30.0, delay * 2)
                continue
            if o is not None:
                self.counters["resolved"] += 1
                return self._ack_from(cid, o, "resolved by client id")
            not_found += 1
            if not_found >= self.resolve_checks:
                self.counters["resolved"] += 1
                self._report(cid, OrderState.REJECTED, "not at the exchange (request failed before placing)")
                return OrderState.REJECTED
            await asyncio.sleep(self.resolve_interval_s)
        return self._state.get(cid, OrderState.UNKNOWN)

    async def cancel(self, order: Order, now_ns: int) -> OrderAck:
        cid = order.client_id
        self._orders.setdefault(cid, order)
        state = self._state.get(cid, order.state)
        if state.terminal:
            return OrderAck(cid, state, now_ns, order.exchange_id, order.filled, "already closed")
        if state in (OrderState.OPEN, OrderState.PARTIALLY_FILLED):
            self._state[cid] = OrderState.PENDING_CANCEL
        self._spawn(cid, lambda prev: self._cancel_task(order, prev))
        return OrderAck(cid, OrderState.PENDING_CANCEL if state in (OrderState.OPEN, OrderState.PARTIALLY_FILLED)
                        else state, now_ns, order.exchange_id, order.filled)

    async def _cancel_task(self, order: Order, prev: asyncio.Task | None) -> None:
        cid = order.client_id
        if prev is not None:
            with contextlib.suppress(BaseException):
                await prev  # the placement (or an earlier request) must be resolved first
        state = self._state.get(cid, order.state)
        if state.terminal:
            self._report(cid, state, "closed before the cancel")
            return
        if state is OrderState.UNKNOWN:
            state = await self._resolve(cid)
            if state.terminal:
                return
        self._state[cid] = OrderState.PENDING_CANCEL
        sym = self.market.symbol  # type: ignore[union-attr]
        try:
            res = await self._call(lambda: self.ex.cancel_order(None, sym, {"clientOrderId": cid}))
            self.counters["orders_canceled"] += 1
            st, filled = _state_of(res or {})
            if st is OrderState.OPEN or st is OrderState.PARTIALLY_FILLED:
                st = OrderState.CANCELED  # the cancel was accepted: a status-less answer
            self._report(cid, st, "canceled", (res or {}).get("id"), filled)
        except ccxt.OrderNotFound:
            self.counters["cancel_not_found"] += 1
            await self._resolve(cid)  # traded out, expired or cancelled by the exchange
        except _RATE:
            self._report(cid, self._rest_state(order), "cancel refused: rate limited")
        except ccxt.InvalidNonce as e:
            self._report(cid, self._rest_state(order), "cancel refused: " + redact(short_reason(e, self.name)))
        except _AMBIGUOUS as e:
            self.counters["unknown_outcomes"] += 1
            log.warning("%s: cancel %s failed ambiguously (%s): resolving", self.name, cid, redact(short_reason(e, self.name)))
            self._report(cid, OrderState.UNKNOWN, redact(short_reason(e, self.name)))
            await self._resolve(cid)
        except ccxt.BaseError as e:  # refused (auth, other): the order still rests
            self.counters["order_errors"] += 1
            self._report(cid, self._rest_state(order), "cancel refused: " + redact(short_reason(e, self.name)))
        except ExchangeError as e:
            self._report(cid, self._rest_state(order), str(e)[:200])

    @staticmethod
    def _rest_state(order: Order) -> OrderState:
        return OrderState.PARTIALLY_FILLED if order.filled > 0 else OrderState.OPEN

    async def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Wait for every in-flight request task; False if some are still running."""
        pending = [t for t in self._tasks if not t.done()]
        if not pending:
            return True
        done, still = await asyncio.wait(pending, timeout=timeout_s)
        return not still

    async def cancel_all(self, symbol: str, now_ns: int) -> list[OrderAck]:
        """Cancel every open order of ours on ``symbol`` and report the final state of every
        order this adapter sent. In-flight requests are waited for first (bounded)."""
        await self.wait_idle(60.0)
        sym = self.market.symbol if self.market is not None else symbol
        acks: dict[str, OrderAck] = {}
        if self.ex is None or self.fatal is not None and "refused our API key" in self.fatal:
            return []
        try:
            if self.dedicated_account and self.ex.has.get("cancelAllOrders"):
                try:
                    res = await self._call(lambda: self.ex.cancel_all_orders(sym))
                except ccxt.OrderNotFound:  # binance: nothing open
                    res = []
                for o in res or []:
                    cid = _order_cid(o)
                    if cid:
                        st, filled = _state_of(o)
                        st = OrderState.CANCELED if st in (OrderState.OPEN, OrderState.PARTIALLY_FILLED) else st
                        acks[cid] = OrderAck(cid, st, now_ns, o.get("id"), filled, "cancel-all")
            else:
                if self.dedicated_account:
                    log.info("%s has no cancel_all_orders in ccxt: cancelling our orders one by one", self.name)
                for o in await self._call(lambda: self.ex.fetch_open_orders(sym)):
                    cid = o.get("clientOrderId") or ""
                    if cid and self.is_ours(cid):
                        with contextlib.suppress(ccxt.OrderNotFound):
                            await self._call(lambda: self.ex.cancel_order(o["id"], sym))
                            acks[cid] = OrderAck(cid, OrderState.CANCELED, now_ns, o.get("id"), Decimal(0), "cancel-all")
            # every order we sent that is not known closed: ask the exchange
            for cid, st in list(self._state.items()):
                if st.terminal or cid in acks:
                    continue
                o = await self._fetch_by_cid(cid)
                if o is None:
                    acks[cid] = OrderAck(cid, OrderState.REJECTED, now_ns, reason="not at the exchange")
                else:
                    s2, filled = _state_of(o)
                    acks[cid] = OrderAck(cid, s2, now_ns, o.get("id"), filled, "cancel-all")
        except ccxt.BaseError as e:
            raise ExchangeError(f"cancel-all on {self.name} failed: {redact(short_reason(e, self.name))}") from None
        for cid, a in acks.items():
            self._state[cid] = a.state
        try:  # the last fills before the cancels took effect (the engine drains them next)
            await self.poll_fills_once()
        except (ccxt.BaseError, ExchangeError) as e:
            log.warning("%s: last fills poll failed: %s", self.name, redact(short_reason(e, self.name)))
        return list(acks.values())

    async def open_orders(self, symbol: str) -> list[OrderAck]:
        try:
            rows = await self._call(lambda: self.ex.fetch_open_orders(symbol))
        except ccxt.BaseError as e:
            raise ExchangeError(f"open orders on {self.name}: {redact(short_reason(e, self.name))}") from None
        out = []
        for o in rows:
            st, filled = _state_of(o)
            out.append(OrderAck(o.get("clientOrderId") or "", st, int(o.get("timestamp") or 0) * 1_000_000,
                                str(o.get("id")), filled))
        return out

    async def balances(self) -> dict[str, Decimal]:
        try:
            b = await self._call(lambda: self.ex.fetch_balance())
        except ccxt.BaseError as e:
            raise ExchangeError(f"balances on {self.name}: {redact(short_reason(e, self.name))}") from None
        return {k: Decimal(str(v)) for k, v in (b.get("total") or {}).items() if v is not None}

    async def position(self) -> Decimal:
        """The exchange's net position on the market (derivatives), contracts -- base units
        where the contract size is 1, as on Binance USD-M; the unit of ccxt's trade
        ``amount`` and so of our fills. Long positive, short negative; ccxt ``fetch_positions``
        (hedge mode's long and short entries are netted; no entry = flat)."""
        sym = self.market.symbol  # type: ignore[union-attr]
        try:
            rows = await self._call(lambda: self.ex.fetch_positions([sym]))
        except ccxt.BaseError as e:
            raise ExchangeError(f"positions on {self.name}: {redact(short_reason(e, self.name))}") from None
        net = Decimal(0)
        for p in rows or []:
            if p.get("symbol") != sym or not p.get("contracts"):
                continue
            n = Decimal(str(p["contracts"]))
            net += -n if p.get("side") == "short" else n
        return net

    async def refresh_balances(self, order_size: Decimal | None = None) -> dict[str, Decimal]:
        """Re-read balances and re-enable a side blocked for insufficient funds when the
        free balance covers one order again (``order_size`` base units at the mid)."""
        try:
            b = await self._call(lambda: self.ex.fetch_balance())
        except ccxt.BaseError as e:
            raise ExchangeError(f"balances on {self.name}: {redact(short_reason(e, self.name))}") from None
        m = self.market
        free = b.get("free") or {}
        if m is not None and self.side_blocked:
            size = order_size or m.min_size or m.lot
            px = Decimal(str(self.mid)) if self.mid else Decimal(0)
            if Side.BUY in self.side_blocked and Decimal(str(free.get(m.quote) or 0)) >= size * px > 0:
                del self.side_blocked[Side.BUY]
            if Side.SELL in self.side_blocked and Decimal(str(free.get(m.base) or 0)) >= size:
                del self.side_blocked[Side.SELL]
        return {k: Decimal(str(v)) for k, v in (b.get("total") or {}).items() if v is not None}

    # -- fills --------------------------------------------------------------------------------
    def known_order(self, exchange_id: str, client_id: str) -> None:
        """Map an exchange order id to our client id (orders of earlier runs, from the DB)."""
        self._by_xid[str(exchange_id)] = client_id

    async def fee_rate(self, currency: str) -> Decimal | None:
        """Quote per unit of ``currency`` to value a fee charged in it: 1 for the quote; else
        the mid (bid+ask)/2 of the ``CUR/QUOTE`` ticker (its last price without a bid and
        ask), or 1 / that of ``QUOTE/CUR``; cached ``fee_rate_max_age_s``. None when the
        exchange lists neither market or the ticker cannot be read (a stale cached price
        is then used if there is one, with a warning)."""
        m = self.market
        if m is None:
            return None
        if currency == m.quote:
            return Decimal(1)
        hit = self.fee_rates.get(currency)
        if hit is not None and time.monotonic() - hit[1] <= self.fee_rate_max_age_s:
            return hit[0]
        markets = getattr(self.ex, "markets", None) or {}
        for sym, inverse in ((f"{currency}/{m.quote}", False), (f"{m.quote}/{currency}", True)):
            if sym not in markets:
                continue
            try:
                t = await self._call(lambda: self.ex.fetch_ticker(sym))
            except (ccxt.BaseError, ExchangeError) as e:
                log.warning("%s: ticker %s for fee conversion: %s", self.name, sym, redact(short_reason(e, self.name)))
                break
            bid, ask, last = t.get("bid"), t.get("ask"), t.get("last")
            if bid and ask:
                px = (Decimal(str(bid)) + Decimal(str(ask))) / 2
            elif last:
                px = Decimal(str(last))
            else:
                break
            rate = (Decimal(1) / px) if inverse else px
            self.fee_rates[currency] = (rate, time.monotonic())
            return rate
        if hit is not None:
            log.warning("%s: using a %.0f s old %s price for fee conversion", self.name, time.monotonic() - hit[1], currency)
            return hit[0]
        return None

    async def make_fill(self, t: dict, client_id: str) -> Fill:
        """:meth:`trade_to_fill` with the fee currency's price looked up first (a fee in a
        currency other than base and quote)."""
        m = self.market
        cur = (t.get("fee") or {}).get("currency")
        rate = None
        if m is not None and cur and cur not in (m.base, m.quote) and (t.get("fee") or {}).get("cost") is not None:
            rate = await self.fee_rate(cur)
        return self.trade_to_fill(t, client_id, rate)

    def trade_to_fill(self, t: dict, client_id: str, fee_rate: Decimal | None = None) -> Fill:
        """A ccxt unified trade of ours as a :class:`Fill`: the fee as charged (cost and
        currency) and valued in quote currency (see the module docstring). ``fee_rate``:
        quote per unit of a third fee currency (None: not converted, flagged)."""
        m = self.market
        price = Decimal(str(t["price"]))
        size = Decimal(str(t["amount"]))
        fee = Decimal(0)
        cost: Decimal | None = None
        cur: str | None = None
        rate: Decimal | None = None
        f = t.get("fee") or {}
        if f.get("cost") is not None:
            cost = Decimal(str(f["cost"]))
            cur = f.get("currency") or (m.quote if m is not None else None)
            if m is None or cur == m.quote:
                fee, rate = cost, Decimal(1)
            elif cur == m.base:
                fee, rate = cost * price, price  # charged in base units: valued at the fill price
                self.base_fees[str(t["id"])] = cost  # ... and it leaves the base balance (see LiveInventory)
            elif fee_rate is not None:
                fee, rate = cost * fee_rate, fee_rate
            else:
                self.counters["unconverted_fees"] += 1
                log.warning("%s: fee of trade %s (%s %s) has no %s price to convert it: recorded unconverted "
                            "(fills.fee_rate empty, fee 0 in quote)", self.name, t.get("id"), plain(cost), cur,
                            m.quote)
        ts = int(t.get("timestamp") or time.time() * 1000) * 1_000_000
        return Fill(exchange=self.name, trade_id=str(t["id"]), client_id=client_id, symbol=t.get("symbol") or m.symbol,
                    side=Side(t["side"]), price=price, size=size, fee=fee, liquidity=t.get("takerOrMaker") or "maker",
                    ts_ns=ts, mid=self.mid if self.mid is not None else float(price), fee_cost=cost, fee_currency=cur,
                    fee_rate=rate)

    async def client_id_of_trade(self, t: dict) -> str | None:
        """Our client id for a trade (None: not one of our orders)."""
        cid = self._by_xid.get(str(t.get("order")))
        if cid is None:
            cid = t.get("clientOrderId") or (t.get("info") or {}).get("c")
            if cid is None and t.get("order"):
                try:
                    o = await self._call(lambda: self.ex.fetch_order(str(t["order"]), self.market.symbol))
                    cid = o.get("clientOrderId")
                except ccxt.BaseError:
                    return None
            if cid is not None and not self.is_ours(cid):
                return None
            if cid is not None:
                self._by_xid[str(t.get("order"))] = cid
        return cid

    async def _take_trades(self, trades: list[dict]) -> int:
        n = 0
        for t in sorted(trades, key=lambda x: (x.get("timestamp") or 0, str(x.get("id")))):
            tid = str(t.get("id"))
            if tid in self._seen_trades:
                continue
            cid = await self.client_id_of_trade(t)
            self._seen_trades.add(tid)
            self._advance_cursor(t)
            if cid is None:
                continue
            self.fills.put_nowait(await self.make_fill(t, cid))
            n += 1
        return n

    def _advance_cursor(self, t: dict) -> None:
        ts = t.get("timestamp")
        if ts is not None and (self.last_trade_ms is None or ts >= self.last_trade_ms):
            self.last_trade_ms = int(ts)
            self.last_trade_id = str(t.get("id"))

    async def fetch_trades_since(self) -> list[dict]:
        """Our account's trades on the symbol after the cursor (``last_trade_id`` /
        ``last_trade_ms``), all pages."""
        sym = self.market.symbol  # type: ignore[union-attr]
        out: list[dict] = []
        limit = 500
        while True:
            params: dict[str, Any] = {}
            since = None
            if self.exchange_id.startswith("binance") and self.last_trade_id and self.last_trade_id.isdigit():
                params["fromId"] = int(self.last_trade_id) + 1
            elif self.last_trade_ms is not None:
                since = self.last_trade_ms
            page = await self._call(lambda: self.ex.fetch_my_trades(sym, since, limit, params))
            fresh = [t for t in page if str(t.get("id")) not in self._seen_trades]
            out += fresh
            if len(page) < limit or not fresh:
                return out
            last = max(page, key=lambda x: (x.get("timestamp") or 0))
            self.last_trade_ms, self.last_trade_id = int(last.get("timestamp") or 0), str(last.get("id"))

    async def poll_fills_once(self) -> int:
        """One ``fetch_my_trades`` poll; returns the number of new fills queued."""
        trades = await self.fetch_trades_since()
        return await self._take_trades(trades)

    async def _poll_fills(self) -> None:
        delay = self.poll_interval_s
        while not self._closed:
            await asyncio.sleep(delay)
            try:
                await self.poll_fills_once()
                delay = self.poll_interval_s
            except asyncio.CancelledError:
                raise
            except (ccxt.BaseError, ExchangeError) as e:
                self.counters["poll_errors"] += 1
                log.warning("%s fills poll: %s", self.name, redact(short_reason(e, self.name)))
                delay = min(60.0, delay * 2)

    async def _watch_fills(self) -> None:
        errors = 0
        sym = self.market.symbol  # type: ignore[union-attr]
        while not self._closed:
            try:
                trades = await self.ex.watch_my_trades(sym)
                errors = 0
                await self._take_trades(list(trades))
            except asyncio.CancelledError:
                raise
            except (ccxt.NotSupported, ccxt.AuthenticationError) as e:
                log.warning("%s: no websocket fills (%s): polling fetch_my_trades", self.name,
                            redact(short_reason(e, self.name)))
                return
            except ccxt.BaseError as e:
                errors += 1
                self.counters["ws_errors"] += 1
                if errors >= 8:
                    log.warning("%s fills stream failed %d times in a row: polling fetch_my_trades only", self.name, errors)
                    return
                log.warning("%s fills stream: %s (reconnect in %.0f s)", self.name, redact(short_reason(e, self.name)),
                            min(30.0, 0.5 * 2 ** errors))
                await asyncio.sleep(min(30.0, 0.5 * 2 ** errors))
