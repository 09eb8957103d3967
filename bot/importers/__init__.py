"""Importers that turn third-party market data into mmbot recordings (:mod:`bot.recording`).

* :mod:`bot.importers.binance`: raw Binance websocket captures (spot, USD-M, COIN-M).
* :mod:`bot.importers.lobster`: LOBSTER message + order-book files (NASDAQ equities).
* :mod:`bot.importers.bitstamp`: the Bitstamp 2015 order-event log.

Each ``import_*`` function writes one recording directory and returns its stats.
"""
