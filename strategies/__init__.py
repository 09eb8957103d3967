"""Quoting strategies. One strategy object runs unchanged in backtest, paper and live."""

import bot.numba_cache  # noqa: F401 - numba's cache location, before any kernel module imports numba
from strategies.base import QuoteLevel, Quotes, Strategy
from strategies.market_maker import MarketMaker, build_strategy

__all__ = ["QuoteLevel", "Quotes", "Strategy", "MarketMaker", "build_strategy"]
