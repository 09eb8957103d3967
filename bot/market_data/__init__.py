"""Market data sources: the simulated market, ccxt REST polling, (later) websockets and replay."""
