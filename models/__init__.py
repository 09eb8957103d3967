"""Forecasting: features, the LSTM, training, export and inference.

Issue 2 ships only the forecast types; the LSTM forecaster plugs in behind
:class:`models.forecast.Forecaster`."""

import bot.numba_cache  # noqa: E402,F401 - numba's cache location, before any kernel module imports numba
