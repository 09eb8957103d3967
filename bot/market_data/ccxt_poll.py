"""A market source that polls a REST order-book snapshot through ccxt.

Each poll is ``exchange.fetch_order_book(symbol, depth)``; the reply replaces the whole
book (:meth:`OrderBook.apply_snapshot`). No trades are reported (``MarketEvent.trades`` is
empty): a REST depth snapshot does not carry them.

Units: prices quote/base, sizes base units, timestamps ns since the epoch. ccxt gives the
exchange timestamp in ms (``None`` for venues whose depth reply has none, e.g. Binance
spot); then the local receive time is used as the book time.

Pacing, two layers:

* the poll schedule: polls are due at ``t0 + k * poll_interval_s``; a poll that is late
  (slow reply) does not cause a burst of catch-up polls, the schedule skips ahead;
* a request-rate cap: every REST call this source makes (market load excepted, which is
  cached by ccxt) goes through an ``asyncio_throttle.Throttler(rate_limit_per_s, 1 s)``,
  i.e. at most ``rate_limit_per_s`` calls in any sliding one-second window. ccxt's own
  ``enableRateLimit`` weights apply on top.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ccxt
from asyncio_throttle import Throttler

from bot.errors import BookError, ExchangeError
from bot.exchanges.ccxt_client import create_ccxt_exchange, load_market, map_ccxt_error, short_reason
from bot.market import MarketInfo
from bot.market_data.base import MarketEvent, MarketSource
from bot.orderbook import OrderBook

log = logging.getLogger(__name__)


class CcxtPollingSource(MarketSource):
    """Order-book feed for one symbol by polling ccxt's ``fetch_order_book``.

    Args:
        exchange_id: ccxt exchange id, e.g. ``"binance"``.
        symbol: ccxt unified symbol, e.g. ``"BTC/USDT"``.
        depth: number of levels per side asked for (``limit`` of fetch_order_book).
        poll_interval_s: seconds between polls (schedule, not a sleep after each reply).
        rate_limit_per_s: max REST requests per sliding 1 s window made by this source.
        api_url: send REST calls to this ``scheme://host:port`` instead (tests, proxies).
        duration_s: the feed ends (``next()`` returns None) once this many seconds have
            passed since :meth:`start`; ``None`` = run until closed.
        max_consecutive_errors: network failures in a row tolerated by :meth:`next`
            (retried with exponential backoff) before it raises ``ExchangeError``.
        retry_backoff_s: first backoff delay, seconds; doubled per failure, capped at
            ``max_backoff_s``.
        options, credentials: passed to :func:`create_ccxt_exchange` (credentials are not
            needed for public market data).

    :meth:`start` fails fast (no retries): a bad id, symbol or URL should surface at once.
    """

    def __init__(
        self,
        exchange_id: str,
        symbol: str,
        *,
        depth: int = 20,
        poll_interval_s: float = 1.0,
        rate_limit_per_s: float = 5.0,
        api_url: str | None = None,
        duration_s: float | None = None,
        max_consecutive_errors: int = 5,
        retry_backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        options: dict | None = None,
        credentials: dict | None = None,
    ) -> None:
        if depth < 1:
            raise ValueError("depth must be >= 1")
        if poll_interval_s < 0:
            raise ValueError("poll_interval_s must be >= 0")
        if rate_limit_per_s <= 0:
            raise ValueError("rate_limit_per_s must be > 0")
        if max_consecutive_errors < 1:
            raise ValueError("max_consecutive_errors must be >= 1")
        self.exchange_id = exchange_id.strip().lower()  # ccxt ids are lower case
        self.symbol = symbol
        self.depth = int(depth)
        self.poll_interval_s = float(poll_interval_s)
        self.rate_limit_per_s = rate_limit_per_s
        self.api_url = api_url
        self.duration_s = duration_s
        self.max_consecutive_errors = int(max_consecutive_errors)
        self.retry_backoff_s = float(retry_backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self._options = options
        self._credentials = credentials

        self.book = OrderBook(symbol)
        self.exchange: Any = None
        self.requests = 0  #: REST depth requests issued (including failed ones)
        # asyncio_throttle takes an integer count per period; rates below 1/s are expressed
        # as one request per (1/rate) seconds.
        if rate_limit_per_s >= 1:
            self._throttler = Throttler(rate_limit=int(rate_limit_per_s), period=1.0)
        else:
            self._throttler = Throttler(rate_limit=1, period=1.0 / rate_limit_per_s)
        self._t0 = 0.0  # loop time of start()
        self._next_poll = 0.0  # loop time when the next poll is due
        self._end: float | None = None  # loop time when the feed ends
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> MarketInfo:
        """Create the client, load the market and the first book.

        Returns the market's :class:`MarketInfo` (also stored as ``self.market``).
        After it returns, ``self.book`` holds the initial snapshot; the first :meth:`next`
        polls again one ``poll_interval_s`` after the start.

        Raises:
            ExchangeError: unknown exchange or symbol, unreachable, error reply.
            BookError: the first book is empty or crossed.
        """
        if self._closed:
            raise ExchangeError(f"{self.exchange_id} source for {self.symbol} is closed")
        self.exchange = self._new_client()
        try:
            self.market = await load_market(self.exchange, self.symbol)
            # market() accepts exchange ids too: use the unified symbol from here on
            self.symbol = self.market.symbol
            self.book.symbol = self.symbol
            loop = asyncio.get_running_loop()
            self._t0 = loop.time()
            self._end = None if self.duration_s is None else self._t0 + float(self.duration_s)
            try:
                raw = await self._fetch()
            except ccxt.NetworkError as e:  # fail fast at start, no retries
                raise map_ccxt_error(e, self.exchange_id, self.symbol) from None
            self._apply(raw)
        except BaseException:
            await self.close()
            raise
        self._next_poll = self._t0 + self.poll_interval_s
        return self.market

    async def close(self) -> None:
        """Close the ccxt client's HTTP session. Safe to call twice."""
        self._closed = True
        ex, self.exchange = self.exchange, None
        if ex is not None:
            try:
                await self._close_client(ex)
            except Exception as e:  # pragma: no cover - best effort on shutdown
                log.debug("closing %s client failed: %s", self.exchange_id, e)

    def _new_client(self) -> Any:
        """The ccxt client of this source (bot.market_data.shared lends one shared by markets)."""
        return create_ccxt_exchange(self.exchange_id, api_url=self.api_url, options=self._options, credentials=self._credentials)

    async def _close_client(self, ex: Any) -> None:
        await ex.close()

    # -- feed ---------------------------------------------------------------------------
    async def next(self) -> MarketEvent | None:
        """Wait for the next poll time, fetch the book and return the event.

        Returns None when ``duration_s`` has elapsed or the source was closed.

        Raises:
            ExchangeError: more than ``max_consecutive_errors`` network failures in a row
                ("cannot reach ..."), or a non-network error reply.
            BookError: the exchange returned an empty or crossed book.
        """
        if self._closed or self.exchange is None:
            return None
        loop = asyncio.get_running_loop()
        errors = 0
        while True:
            now = loop.time()
            due = self._next_poll
            if self._end is not None and max(now, due) >= self._end:
                return None
            if due > now:
                await asyncio.sleep(due - now)
            if self._closed:
                return None
            # schedule: next slot after now, without catching up missed slots
            now = loop.time()
            step = self.poll_interval_s
            if step > 0:
                k = int((now - self._t0) / step) + 1
                self._next_poll = self._t0 + k * step
            else:
                self._next_poll = now
            try:
                raw = await self._fetch()
            except ExchangeError:
                if self._closed:  # close() ran while the request was in flight
                    return None
                raise
            except ccxt.NetworkError as e:
                if self._closed:
                    return None
                errors += 1
                if errors >= self.max_consecutive_errors:
                    reason = short_reason(e, self.exchange_id)
                    raise ExchangeError(
                        f"cannot reach {self.exchange_id}: {errors} failures in a row, last: {reason}"
                    ) from None
                delay = min(self.max_backoff_s, self.retry_backoff_s * 2 ** (errors - 1))
                log.warning(
                    "%s order book poll failed (%d/%d), retrying in %.2fs: %s",
                    self.exchange_id, errors, self.max_consecutive_errors, delay, short_reason(e, self.exchange_id),
                )
                self._next_poll = loop.time() + delay
                continue
            return self._apply(raw)

    # -- internals ----------------------------------------------------------------------
    async def _fetch(self) -> dict:
        """One throttled ``fetch_order_book``. ccxt errors other than network ones become
        :class:`ExchangeError`; network errors propagate (``next`` retries them)."""
        ex = self.exchange
        if ex is None:
            raise ExchangeError(f"{self.exchange_id} source for {self.symbol} is closed")
        async with self._throttler:
            self.requests += 1
            try:
                return await ex.fetch_order_book(self.symbol, self.depth)
            except ccxt.NetworkError:
                raise
            except ccxt.BaseError as e:
                raise map_ccxt_error(e, self.exchange_id, self.symbol) from None

    def _apply(self, raw: dict) -> MarketEvent:
        """Validate ``raw`` (a ccxt order-book dict) and make it the current book."""
        recv_ns = time.time_ns()
        ts_ms = raw.get("timestamp")
        ts_ns = int(ts_ms) * 1_000_000 if ts_ms is not None else recv_ns
        nonce = raw.get("nonce")
        update_id = int(nonce) if nonce is not None else None
        bids, asks = raw.get("bids") or [], raw.get("asks") or []
        # validate on a scratch book so that self.book is never left crossed or empty
        scratch = OrderBook(self.symbol)
        scratch.apply_snapshot(bids, asks)
        try:
            scratch.validate()
        except BookError as e:
            raise BookError(f"{self.exchange_id} returned an unusable book: {e}") from None
        self.book.apply_snapshot(bids, asks, ts_ns=ts_ns, update_id=update_id)
        return MarketEvent(book=self.book, ts_ns=ts_ns, recv_ns=recv_ns)

