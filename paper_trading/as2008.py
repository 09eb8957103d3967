"""The Avellaneda-Stoikov (2008) simulation, Section 3.3, vectorized across paths.

Each step of length dt, per path:
  1. the agent quotes bid/ask from the current mid s and inventory q;
     'inventory':  around the reservation price r = s - q*gamma*sigma^2*(T-t) with total
                   spread gamma*sigma^2*(T-t) + (2/gamma)*ln(1 + gamma/k);
     'symmetric':  around the mid s with the inventory strategy's time-average spread;
  2. the ask is lifted with probability A*exp(-k*delta_a)*dt and the bid hit with probability
     A*exp(-k*delta_b)*dt (independently; one unit per fill; probabilities clipped to [0, 1]);
  3. the mid moves +sigma*sqrt(dt) or -sigma*sqrt(dt) with equal probability.
At T: profit = cash + q*S_T. Time is in the paper's units (T = 1); prices in its dollars.

The paper's Table 1 reports a mean spread of (2/gamma)*ln(1+gamma/k) (the spread at T) for
gamma = 0.1 and 0.01; we report the time-average of the spread actually quoted, which
includes the gamma*sigma^2*(T-t) term. For gamma = 1 that term is large (sigma^2 = 4), so
our mean spread and profits for gamma = 1 differ from the paper's table.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class AS2008Result:
    strategy: str
    gamma: float
    paths: int
    mean_spread: float
    mean_profit: float
    std_profit: float
    mean_final_q: float
    std_final_q: float

    def as_dict(self) -> dict:
        return asdict(self)


def inventory_spread(gamma: float, sigma: float, tau: np.ndarray | float, k: float) -> np.ndarray | float:
    return gamma * sigma * sigma * tau + (2.0 / gamma) * math.log1p(gamma / k)


def simulate(
    gamma: float,
    strategy: str = "inventory",
    paths: int = 1000,
    seed: int = 7,
    *,
    s0: float = 100.0,
    T: float = 1.0,
    sigma: float = 2.0,
    dt: float = 0.005,
    q0: int = 0,
    k: float = 1.5,
    A: float = 140.0,
) -> AS2008Result:
    """Run ``paths`` independent paths; returns the summary statistics of the paper's tables."""
    if strategy not in ("inventory", "symmetric"):
        raise ValueError(f"strategy must be 'inventory' or 'symmetric', got {strategy!r}")
    if gamma <= 0 or paths <= 0 or dt <= 0 or T <= 0:
        raise ValueError("gamma, paths, dt and T must be positive")
    n = int(round(T / dt))
    rng = np.random.default_rng(seed)
    taus = T - dt * np.arange(n)
    spreads = inventory_spread(gamma, sigma, taus, k)
    sym_spread = float(np.mean(spreads))
    s = np.full(paths, s0)
    q = np.full(paths, float(q0))
    cash = np.zeros(paths)
    step = sigma * math.sqrt(dt)
    g_s2 = gamma * sigma * sigma
    for i in range(n):
        if strategy == "inventory":
            half = 0.5 * spreads[i]
            r = s - q * g_s2 * taus[i]
            bid, ask = r - half, r + half
        else:
            half = 0.5 * sym_spread
            bid, ask = s - half, s + half
        p_ask = np.minimum(A * np.exp(-k * (ask - s)) * dt, 1.0)
        p_bid = np.minimum(A * np.exp(-k * (s - bid)) * dt, 1.0)
        u = rng.random((3, paths))
        sold = u[0] < p_ask
        bought = u[1] < p_bid
        q += bought.astype(float) - sold
        cash += np.where(sold, ask, 0.0) - np.where(bought, bid, 0.0)
        s += np.where(u[2] < 0.5, step, -step)
    profit = cash + q * s
    mean_spread = float(np.mean(spreads)) if strategy == "inventory" else sym_spread
    return AS2008Result(
        strategy, gamma, paths, mean_spread,
        float(profit.mean()), float(profit.std()), float(q.mean()), float(q.std()),
    )
