"""A market source on ccxt.pro websockets: ``watch_order_book`` for the book and
``watch_trades`` for public trades (where the exchange has them).

ccxt.pro keeps the order book in sync itself (REST snapshot + buffered diffs, resync on a
sequence gap); every ``watch_order_book`` return is the book after at least one more
update, which this source copies into its :class:`~bot.orderbook.OrderBook` (top ``depth``
levels a side) and hands to the engine with the public trades received since the previous
event. A crossed or one-sided book from the exchange raises :class:`BookError`.

Units: prices quote/base, sizes base units, timestamps ns since the epoch (ccxt gives ms;
the local receive time when the exchange sends none).

Robustness of the trade feed (trades drive the forecaster and the A/k estimator, so losing
them silently would skew both for the rest of the run):

* every trade is parsed defensively (:func:`parse_trade`): one with a missing or
  non-positive price or size is logged (rate-limited) and counted in
  :attr:`CcxtWsSource.malformed_trades`, and the next ones are kept;
* a message that ccxt's own handler cannot parse (e.g. a price ``"abc"``) would end that
  websocket's receive loop inside ccxt without an error anywhere; the source wraps the
  client's message handler so such a message is logged, counted in
  :attr:`CcxtWsSource.malformed_messages` and skipped, and the connection goes on
  (order-book errors are handled by ccxt itself: it resyncs);
* the trade task is supervised: any error is logged and retried with backoff, and a task
  that ended while the source is open is restarted at the next book update (counted in
  :attr:`CcxtWsSource.trade_task_restarts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

import ccxt

from bot.errors import ExchangeError
from bot.exchanges.ccxt_client import create_pro_exchange, load_market, map_ccxt_error, short_reason
from bot.market import MarketInfo
from bot.market_data.base import MarketEvent, MarketSource, Trade
from bot.orderbook import OrderBook

log = logging.getLogger(__name__)

_LOG_FIRST = 5  # malformed messages logged one by one; after that every _LOG_EVERY-th
_LOG_EVERY = 100


def _rate_limited(n: int) -> bool:
    return n <= _LOG_FIRST or n % _LOG_EVERY == 0


def parse_trade(t: Any, recv_ns: int) -> Trade | None:
    """A ccxt unified trade as a :class:`Trade`, or None when it is malformed (not a dict, or
    price / amount missing, not a number, not finite or not positive). A missing or bad
    timestamp (ms) becomes ``recv_ns``; a side other than buy/sell becomes '' (unknown)."""
    if not isinstance(t, dict):
        return None
    try:
        price, size = float(t["price"]), float(t["amount"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (math.isfinite(price) and math.isfinite(size) and price > 0 and size > 0):
        return None
    try:
        ts_ns = int(t.get("timestamp")) * 1_000_000
        if ts_ns <= 0:
            ts_ns = recv_ns
    except (TypeError, ValueError, OverflowError):
        ts_ns = recv_ns
    side = t.get("side")
    return Trade(ts_ns, price, size, side if side in ("buy", "sell") else "", str(t.get("id") or ""))


def has_websocket_book(exchange_id: str) -> bool:
    """True when ccxt.pro has a client for the exchange with ``watchOrderBook``."""
    try:
        import ccxt.pro as ccxtpro
    except ImportError:  # pragma: no cover
        return False
    eid = exchange_id.strip().lower()
    cls = getattr(ccxtpro, eid, None) if eid in ccxtpro.exchanges else None
    if cls is None:
        return False
    try:
        return bool(cls().has.get("watchOrderBook"))
    except Exception:  # noqa: BLE001 - a client that cannot even be built has no ws book
        return False


class CcxtWsSource(MarketSource):
    """Order book and trades of one symbol through ccxt.pro websockets.

    Args:
        exchange_id, symbol: ccxt id and unified symbol.
        depth: levels a side kept (and the ``limit`` asked of ccxt).
        api_url / ws_url: local or alternative endpoints (tests, testnets).
        duration_s: the feed ends after this many seconds (None = until closed).
        max_consecutive_errors: network errors in a row tolerated (ccxt reconnects and
            resyncs) before ``ExchangeError``.
        first_book_timeout_s: how long :meth:`start` waits for the first book.
        keepalive_s: ccxt.pro's websocket ping interval, seconds (``streaming.keepAlive``): a
            silent stall (socket open, no data, no pongs) surfaces as ``RequestTimeout``
            within about this long, and the source reconnects, resubscribes and resyncs
            the book from a snapshot. ccxt's default (180 s on binance) leaves a stalled
            stream unnoticed for minutes. None keeps ccxt's default.
    """

    def __init__(self, exchange_id: str, symbol: str, *, depth: int = 20, api_url: str | None = None,
                 ws_url: str | None = None, duration_s: float | None = None, max_consecutive_errors: int = 5,
                 first_book_timeout_s: float = 30.0, keepalive_s: float | None = None) -> None:
        self.exchange_id = exchange_id.strip().lower()
        self.symbol = symbol
        self.depth = depth
        self.api_url, self.ws_url = api_url, ws_url
        self.duration_s = duration_s
        self.max_errors = max_consecutive_errors
        self.first_book_timeout_s = first_book_timeout_s
        self.keepalive_s = keepalive_s
        self.reconnects = 0
        self.book = OrderBook(symbol)
        self.ex = None
        self._trades: list[Trade] = []
        self._trade_task: asyncio.Task | None = None
        self._t0 = 0.0
        self._closed = False
        self.malformed_trades = 0  # trades dropped by parse_trade
        self.malformed_messages = 0  # websocket messages ccxt could not handle (skipped)
        self.trade_errors = 0  # errors of the trade stream (retried)
        self.trade_task_restarts = 0

    async def start(self) -> MarketInfo:
        self.ex = self._new_client()
        self._guard_message_handler()
        if self.keepalive_s is not None:
            self.ex.streaming = {**(getattr(self.ex, "streaming", None) or {}), "keepAlive": int(self.keepalive_s * 1000)}
        try:
            self.market = await load_market(self.ex, self.symbol)
            self.symbol = self.market.symbol
            self.book.symbol = self.symbol
            ob = await asyncio.wait_for(self.ex.watch_order_book(self.symbol, self.depth), self.first_book_timeout_s)
        except asyncio.TimeoutError:
            await self.close()
            raise ExchangeError(f"no order book from {self.exchange_id} websocket within {self.first_book_timeout_s:.0f} s") from None
        except ccxt.BaseError as e:
            await self.close()
            raise map_ccxt_error(e, self.exchange_id, self.symbol) from None
        except BaseException:
            await self.close()
            raise
        self._apply(ob)
        self.book.validate()
        if self.ex.has.get("watchTrades"):
            self._trade_task = asyncio.ensure_future(self._watch_trades())
        self._t0 = time.monotonic()
        return self.market

    def _new_client(self):
        """The ccxt.pro client of this source (bot.market_data.shared lends one shared by markets)."""
        return create_pro_exchange(self.exchange_id, api_url=self.api_url, ws_url=self.ws_url)

    async def _close_client(self, ex) -> None:
        await ex.close()

    def _guard_message_handler(self) -> None:
        """Make ccxt's per-message handler skip (log, count) a message it cannot parse
        instead of raising: ccxt's receive loop does not survive an exception from it.
        Must run before the first websocket client is made (clients bind the handler)."""
        handle = self.ex.handle_message

        def guarded(client, message):
            try:
                return handle(client, message)
            except Exception as e:  # noqa: BLE001 - one bad message must not end the connection
                self.malformed_messages += 1
                if _rate_limited(self.malformed_messages):
                    log.warning("%s websocket: skipped a message ccxt could not handle (%d so far): %s: %s",
                                self.exchange_id, self.malformed_messages, type(e).__name__, short_reason(e, self.exchange_id))
                return None

        self.ex.handle_message = guarded

    def _apply(self, ob: dict) -> None:
        ts = ob.get("timestamp")
        ts_ns = int(ts) * 1_000_000 if ts else time.time_ns()
        self.book.apply_snapshot(ob["bids"][: self.depth], ob["asks"][: self.depth], ts_ns, ob.get("nonce"))

    async def _watch_trades(self) -> None:
        errors = 0
        while not self._closed:
            try:
                trades = await self.ex.watch_trades(self.symbol)
                errors = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - trades are optional: log, back off, go on
                errors += 1
                self.trade_errors += 1
                reason = short_reason(e, self.exchange_id) if isinstance(e, ccxt.BaseError) else f"{type(e).__name__}: {e}"
                log.warning("%s trades stream: %s (retrying)", self.exchange_id, reason)
                await asyncio.sleep(min(10.0, 0.5 * 2 ** errors))
                continue
            # ccxt keeps a cache of recent trades and returns only new ones per call
            recv_ns = time.time_ns()
            for t in trades if isinstance(trades, list) else []:
                tr = parse_trade(t, recv_ns)
                if tr is None:
                    self.malformed_trades += 1
                    if _rate_limited(self.malformed_trades):
                        log.warning("%s trades stream: skipped a malformed trade (%d so far): %.200r",
                                    self.exchange_id, self.malformed_trades, t)
                    continue
                self._trades.append(tr)

    def _supervise(self) -> None:
        """Restart the trade task when it ended while the source is open (it should not)."""
        task = self._trade_task
        if task is None or not task.done() or self._closed:
            return
        why = "cancelled" if task.cancelled() else repr(task.exception()) if task.exception() else "returned"
        self.trade_task_restarts += 1
        log.warning("%s trades stream: task ended (%s); restarting (restart %d)", self.exchange_id, why, self.trade_task_restarts)
        self._trade_task = asyncio.ensure_future(self._watch_trades())

    async def next(self) -> MarketEvent | None:
        if self._closed:
            return None
        if self.duration_s is not None and time.monotonic() - self._t0 >= self.duration_s:
            return None
        errors = 0
        while True:
            try:
                remaining = None if self.duration_s is None else max(0.01, self.duration_s - (time.monotonic() - self._t0))
                ob = await asyncio.wait_for(self.ex.watch_order_book(self.symbol, self.depth), remaining)
                break
            except asyncio.TimeoutError:
                return None  # the run's time is up while waiting for an update
            except ccxt.NetworkError as e:
                errors += 1
                self.reconnects += 1
                log.warning("%s book stream: %s; reconnecting (resubscribe, book resynced from a snapshot)",
                            self.exchange_id, short_reason(e, self.exchange_id))
                if errors >= self.max_errors:
                    raise ExchangeError(f"cannot reach {self.exchange_id}: {errors} websocket failures in a row, "
                                        f"last: {short_reason(e, self.exchange_id)}") from None
                await asyncio.sleep(min(10.0, 0.5 * 2 ** errors))
            except ccxt.BaseError as e:
                raise map_ccxt_error(e, self.exchange_id, self.symbol) from None
        self._apply(ob)
        self.book.validate()
        self._supervise()
        trades, self._trades = self._trades, []
        return MarketEvent(self.book, self.book.ts_ns, time.time_ns(), trades)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._trade_task is not None:
            self._trade_task.cancel()
            with contextlib.suppress(BaseException):
                await self._trade_task
        if self.ex is not None:
            with contextlib.suppress(Exception):
                await self._close_client(self.ex)
