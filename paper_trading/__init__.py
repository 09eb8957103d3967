"""Paper trading: the simulated exchange, fill models, simulated markets, replay and backtest."""

import bot.numba_cache  # noqa: E402,F401 - numba's cache location, before any kernel module imports numba
