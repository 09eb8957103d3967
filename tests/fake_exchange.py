"""The fake Binance of the older tests, as a thin layer over the local exchange
(:mod:`paper_trading.local_binance`): one implementation of Binance's REST API, websockets,
matching and faults serves every test.

:class:`FakeBinance` is a :class:`~paper_trading.local_binance.LocalBinance` with the fake's
defaults -- no fees (``commission_rate`` 0; set it for maker/taker fees, charged as the
local exchange charges them: in the asset received), no order-count limit -- and its
test-control names:

* :meth:`FakeBinance.fail_next` ``(path, count, status, code, msg, headers)``: the next
  ``count`` requests to ``path`` answer HTTP ``status`` (not executed) -- the local
  exchange's ``http`` fault;
* :meth:`FakeBinance.hang_after` ``(path, count)``: the next ``count`` requests to ``path``
  take effect and then get no answer until the client gives up -- its ``timeout`` fault;
* :meth:`FakeBinance.drop_connections`: close every market websocket;
* :attr:`free` / :attr:`locked` (the spot balances, mutable), :attr:`trades` (our
  executions in ``GET /api/v3/myTrades`` shape), :meth:`book` (the served book as floats),
  :meth:`update_id`, :attr:`ws_connects`, ``_broadcast`` (a raw event to market-stream
  subscribers, e.g. a malformed trade).

Everything else is LocalBinance's own: ``set_book``, ``push_depth``, ``push_trade``,
``fill_order``, ``orders``, ``order_requests``, ``book_fault``, ``latency_s``,
``clock_offset_ms``, ``requests`` / ``count`` / ``calls`` / ``unexpected``,
``subscribe_count``, ``wait_until``; ``base_url`` and ``ws_url`` after ``start``.

Prices are quote/base, quantities base units, Binance times are ms since the epoch.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Iterable, Sequence

from paper_trading.local_binance import BinanceApiError, LocalBinance, MarketSpec, Order

Level = Sequence[Any]
FakeMarket = MarketSpec
FakeOrder = Order


class FakeBinance(LocalBinance):
    """Local Binance (REST + websockets) with the fake's defaults and control names.

    Args:
        markets: markets to list (default BTCUSDT and ETHUSDT).
        api_key, secret: credentials signed requests must use.
        balances: initial free balances per asset (default 1 BTC, 100000 USDT).
        recv_window_ms: accepted ``timestamp`` age when the request sends no recvWindow.
    """

    def __init__(self, markets: Iterable[MarketSpec] | None = None, *, api_key: str = "test-key",
                 secret: str = "test-secret", balances: dict[str, str | Decimal] | None = None,
                 recv_window_ms: int = 5000) -> None:
        super().__init__(markets, api_key=api_key, secret=secret, balances=balances, maker_fee=0, taker_fee=0,
                         recv_window_ms=recv_window_ms, orders_per_10s=0)

    # -- the fake's names ---------------------------------------------------------------------
    @property
    def commission_rate(self) -> Decimal:
        """Maker and taker fee fraction (0 by default)."""
        return self.state.maker_fee

    @commission_rate.setter
    def commission_rate(self, rate: Any) -> None:
        self.state.maker_fee = self.state.taker_fee = Decimal(str(rate))

    @property
    def free(self) -> dict[str, Decimal]:
        return self.state.free

    @property
    def locked(self) -> dict[str, Decimal]:
        return self.state.locked

    @property
    def trades(self) -> list[dict[str, Any]]:
        """Every execution of ours, ``GET /api/v3/myTrades`` shape."""
        return [f.to_json() for f in self.state.fills]

    def fail_next(self, path: str, count: int = 1, status: int = 503, code: int | None = None,
                  msg: str = "Service Unavailable", headers: dict[str, str] | None = None) -> None:
        """Answer the next ``count`` requests to ``path`` with HTTP ``status`` (Binance's
        ``{"code", "msg"}`` body with ``code``, else plain text), not executed."""
        self.fault("http", path, count=count, status=status, code=code, msg=msg, headers=headers)

    def hang_after(self, path: str, count: int = 1) -> None:
        """The next ``count`` requests to ``path`` take effect, then are never answered
        (until the client closes the connection)."""
        self.fault("timeout", path, count=count, hold_s=3600.0)

    async def drop_connections(self, code: int = 1001) -> int:
        """Close every market websocket (as Binance does on maintenance). Returns how many."""
        return await self.drop_ws("market", code=code)

    @property
    def ws_connects(self) -> int:
        return self.market_ws.connects

    def book(self, symbol: str = "BTCUSDT") -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """The served book as floats, best first: ``(bids, asks)``."""
        b, a = self.state.books.get(symbol, ([], []))
        return [(float(p), float(q)) for p, q in b], [(float(p), float(q)) for p, q in a]

    def update_id(self, symbol: str = "BTCUSDT") -> int:
        """Current ``lastUpdateId`` of ``symbol``."""
        return self.state.update_ids.get(symbol, 1000)

    async def _broadcast(self, symbol: str, channel: str, event: dict) -> None:
        """Send ``event`` as is to the subscribers of ``<symbol>@<channel>``."""
        self.market_ws.broadcast(symbol, channel, event)


__all__ = ["FakeBinance", "FakeMarket", "FakeOrder", "BinanceApiError", "Level"]
