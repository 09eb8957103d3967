"""Avellaneda & Stoikov (2008), "High-frequency trading in a limit order book", for orders
of any size.

Units (consistent with the rest of mmbot):
    s      mid price, quote per base
    q      inventory, base units
    gamma  risk aversion, 1 / quote currency (exponential utility of PnL in quote currency)
    sigma  volatility of s, quote per base per sqrt(second)
    tau    time left T - t, seconds (finite horizon) or the rolling horizon length
    k      decay of fill intensity with distance, 1 / (quote per base)
    size   base units per fill (the order size); the paper's setting is size = 1

Reservation price (their eq. 29-30, finite-horizon approximation), q in base units:
    r = s - q * gamma * sigma^2 * tau
Optimal total spread (their eq. 31 for fills of ``size`` base units):
    delta_a + delta_b = gamma*size * sigma^2 * tau + (2 / (gamma*size)) * ln(1 + gamma*size / k)
Quotes are symmetric around r: bid = r - spread/2, ask = r + spread/2.

Why ``gamma*size``: a fill of ``size`` units at distance d earns size*d quote, so in the
paper's derivation (value function -exp(-gamma x) exp(-gamma q s + gamma^2 q^2 sigma^2 tau/2))
the indifference prices for buying / selling one order are
r_b,a = s - gamma sigma^2 tau (2q +- size)/2 (reservation spread gamma*size*sigma^2*tau), and
the first-order condition for the distance beyond them gives (1/(gamma*size)) ln(1 + gamma*size/k).
This is the same substitution gamma -> gamma*delta the GLFT closed form makes for a lot
delta (:mod:`strategies.glft`); with size = 1 both are the paper's formulas unchanged. Without
it, a 0.001 BTC order with gamma = 20 / USDT is quoted as if it were 1 BTC: a spread of
hundreds of USDT instead of a few.
"""

from __future__ import annotations

from strategies import kernels as K


def reservation_price(s: float, q: float, gamma: float, sigma: float, tau: float) -> float:
    """r = s - q*gamma*sigma^2*tau (q in base units; does not depend on the order size).
    Computed by :func:`strategies.kernels.as_reservation_price`."""
    return K.as_reservation_price(float(s), float(q), float(gamma), float(sigma), float(tau))


def optimal_spread(gamma: float, sigma: float, tau: float, k: float, size: float = 1.0) -> float:
    """Total spread gamma*size*sigma^2*tau + (2/(gamma*size))*ln(1 + gamma*size/k), quote per base,
    for fills of ``size`` base units (size = 1: the paper's eq. 31).
    Computed by :func:`strategies.kernels.as_optimal_spread`."""
    return K.as_optimal_spread(float(gamma), float(sigma), float(tau), float(k), float(size))


def quotes(s: float, q: float, gamma: float, sigma: float, tau: float, k: float,
           size: float = 1.0) -> tuple[float, float, float]:
    """(reservation, bid, ask) before any rounding or controls."""
    r = reservation_price(s, q, gamma, sigma, tau)
    half = 0.5 * optimal_spread(gamma, sigma, tau, k, size)
    return r, r - half, r + half
