"""One ccxt client per exchange for the markets of one process (config ``markets:``).

Markets on the same exchange (and the same ``api_url`` / ``ws_url``) share one ccxt client
-- one HTTP session, one ``load_markets``, ccxt's own ``enableRateLimit`` pacing -- and, for
REST polling, one request throttle: at most ``rate_limit_per_s`` requests per sliding one
second window *for the exchange*, the smallest ``market_data.rate_limit_per_s`` of its
markets. Websocket markets share one ccxt.pro client (its connections carry every
market's subscriptions). A client is closed when the last market using it closes.

Sources are the ordinary :class:`~bot.market_data.ccxt_poll.CcxtPollingSource` and
:class:`~bot.market_data.ccxt_ws.CcxtWsSource`, lent the shared client instead of making
their own.
"""

from __future__ import annotations

from typing import Any

from asyncio_throttle import Throttler

from bot.market_data.ccxt_poll import CcxtPollingSource
from bot.market_data.ccxt_ws import CcxtWsSource


class _Lease:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.users = 0
        self.guarded = False  # ccxt.pro: the message-handler guard is installed once per client


class SharedClients:
    """The shared clients and throttles of one process, keyed by (kind, exchange id, urls).

    ``rates``: REST request budget per exchange id, requests per second (the smallest of its
    markets'); exchanges not named get the first asking source's own rate."""

    def __init__(self, rates: dict[str, float] | None = None) -> None:
        self.rates = dict(rates or {})
        self._leases: dict[tuple, _Lease] = {}
        self._throttlers: dict[str, tuple[float, Throttler]] = {}
        self.created = 0  # clients made (tests: one per exchange)

    def throttler(self, exchange_id: str, own_rate: float) -> tuple[float, Throttler]:
        """(rate per second, the exchange's shared throttle)."""
        if exchange_id not in self._throttlers:
            rate = self.rates.get(exchange_id, own_rate)
            t = Throttler(rate_limit=int(rate), period=1.0) if rate >= 1 else Throttler(rate_limit=1, period=1.0 / rate)
            self._throttlers[exchange_id] = (rate, t)
        return self._throttlers[exchange_id]

    def lease(self, key: tuple, make) -> _Lease:
        lease = self._leases.get(key)
        if lease is None or lease.client is None:
            lease = self._leases[key] = _Lease(make())
            self.created += 1
        lease.users += 1
        return lease

    async def release(self, key: tuple) -> None:
        lease = self._leases.get(key)
        if lease is None or lease.client is None:
            return
        lease.users -= 1
        if lease.users <= 0:
            client, lease.client = lease.client, None
            await client.close()


class SharedPollingSource(CcxtPollingSource):
    """REST polling on the exchange's shared client and throttle."""

    def __init__(self, shared: SharedClients, exchange_id: str, symbol: str, **kw) -> None:
        super().__init__(exchange_id, symbol, **kw)
        self._shared = shared
        self.rate_limit_per_s, self._throttler = shared.throttler(self.exchange_id, self.rate_limit_per_s)
        self._key = ("rest", self.exchange_id, self.api_url)

    def _new_client(self) -> Any:
        return self._shared.lease(self._key, super()._new_client).client

    async def _close_client(self, ex: Any) -> None:
        await self._shared.release(self._key)


class SharedWsSource(CcxtWsSource):
    """Websockets on the exchange's shared ccxt.pro client."""

    def __init__(self, shared: SharedClients, exchange_id: str, symbol: str, **kw) -> None:
        super().__init__(exchange_id, symbol, **kw)
        self._shared = shared
        self._key = ("ws", self.exchange_id, self.api_url, self.ws_url)
        self._lease: _Lease | None = None

    def _new_client(self):
        self._lease = self._shared.lease(self._key, super()._new_client)
        return self._lease.client

    def _guard_message_handler(self) -> None:
        if self._lease is not None and not self._lease.guarded:
            self._lease.guarded = True
            super()._guard_message_handler()

    async def _close_client(self, ex) -> None:
        await self._shared.release(self._key)


class LeasedClient:
    """A shared client as one user sees it: every attribute is the client's, ``close()``
    gives the lease back (the client closes when its last user has). For the live trading
    adapter (:class:`bot.exchanges.live.CcxtLiveExchange` takes a ready client)."""

    def __init__(self, shared: SharedClients, key: tuple, make) -> None:
        object.__setattr__(self, "_shared", shared)
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_client", shared.lease(key, make).client)

    def __getattr__(self, name: str):
        return getattr(self._client, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self._client, name, value)

    async def close(self) -> None:
        if self._key is not None:
            key = self._key
            object.__setattr__(self, "_key", None)
            await self._shared.release(key)
