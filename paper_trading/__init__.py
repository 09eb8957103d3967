"""Paper trading: the simulated exchange, fill models, simulated markets, replay and backtest."""
