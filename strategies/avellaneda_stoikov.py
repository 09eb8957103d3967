"""Avellaneda & Stoikov (2008), "High-frequency trading in a limit order book".

Units (consistent with the rest of mmbot):
    s      mid price, quote per base
    q      inventory, base units
    gamma  risk aversion, 1 / quote currency
    sigma  volatility of s, quote per base per sqrt(second)
    tau    time left T - t, seconds (finite horizon) or the rolling horizon length
    k      decay of fill intensity with distance, 1 / (quote per base)

Reservation price (their eq. 29-30, finite-horizon approximation):
    r = s - q * gamma * sigma^2 * tau
Optimal total spread (their eq. 31):
    delta_a + delta_b = gamma * sigma^2 * tau + (2 / gamma) * ln(1 + gamma / k)
Quotes are symmetric around r: bid = r - spread/2, ask = r + spread/2.
"""

from __future__ import annotations

import math


def reservation_price(s: float, q: float, gamma: float, sigma: float, tau: float) -> float:
    """r = s - q*gamma*sigma^2*tau."""
    return s - q * gamma * sigma * sigma * tau


def optimal_spread(gamma: float, sigma: float, tau: float, k: float) -> float:
    """Total spread gamma*sigma^2*tau + (2/gamma)*ln(1 + gamma/k), quote per base."""
    return gamma * sigma * sigma * tau + (2.0 / gamma) * math.log1p(gamma / k)


def quotes(s: float, q: float, gamma: float, sigma: float, tau: float, k: float) -> tuple[float, float, float]:
    """(reservation, bid, ask) before any rounding or controls."""
    r = reservation_price(s, q, gamma, sigma, tau)
    half = 0.5 * optimal_spread(gamma, sigma, tau, k)
    return r, r - half, r + half
