"""Forecasting: features, the LSTM, training, export and inference.

Issue 2 ships only the forecast types; the LSTM forecaster plugs in behind
:class:`models.forecast.Forecaster`."""
