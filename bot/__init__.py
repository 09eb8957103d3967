"""mmbot: the engine, market data, exchange adapters, persistence and the CLI.

Conventions used everywhere in mmbot:

* prices are in quote currency per one unit of base currency (e.g. USDT per BTC);
* sizes and inventory are in base currency units (e.g. BTC);
* cash, PnL and fees are in quote currency;
* timestamps are integers, nanoseconds since the Unix epoch (UTC), named ``*_ns``;
* order prices and sizes that go to an exchange are ``decimal.Decimal`` rounded to the
  market's tick and lot; model arithmetic (strategies, simulations) is ``float``.
"""

__version__ = "0.1.0"

from bot import numba_cache as _numba_cache  # noqa: E402,F401 - before any module imports numba
