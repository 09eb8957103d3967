"""Binance spot market data over REST *and* websockets for the older tests: the local
exchange (:mod:`paper_trading.local_binance`) serves the market streams (``/ws``,
``/ws/<n>``, ``/stream``; SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS; diff depth with
Binance's ``U``/``u`` sequence, trades) and ``/api/v3/trades`` / ``aggTrades`` itself, so
:class:`FakeBinanceWs` is :class:`fake_exchange.FakeBinance` under the name these tests use
(``push_depth`` / ``push_trade`` / ``drop_connections`` / ``subscribe_count`` / ``book`` /
``update_id`` / ``ws_connects``; sequence gaps with ``push_depth(..., drop=True)`` or
``skip_ids=k``)."""

from __future__ import annotations

from fake_exchange import FakeBinance

FakeBinanceWs = FakeBinance

__all__ = ["FakeBinanceWs"]
