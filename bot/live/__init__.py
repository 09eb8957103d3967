"""Live trading: secrets, risk limits, reconciliation with the exchange, the live engine."""
