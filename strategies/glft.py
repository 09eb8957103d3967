"""Gueant, Lehalle & Fernandez-Tapia (2013), "Dealing with the inventory risk: a solution to
the market making problem", and its closed-form approximation.

Same units as :mod:`strategies.avellaneda_stoikov`; in addition
    A      fill intensity at zero distance, fills per second
    delta  order size (the paper's lot), base units; inventory q moves in steps of delta

Closed-form asymptotic approximation (GLFT 2013, eq. for T -> infinity; Gueant 2017 for a
general lot size delta; with delta = 1 it is the 2013 formula):

    c     = (1 / (gamma*delta)) * ln(1 + gamma*delta/k)
    omega = sqrt( sigma^2 * gamma / (2 * A * k * delta) * (1 + gamma*delta/k)^(1 + k/(gamma*delta)) )
    delta_bid(q) = c + (2q + delta)/2 * omega
    delta_ask(q) = c - (2q - delta)/2 * omega

Exact solution for a bounded inventory |q| <= Q*delta (their Theorem 1): with
    alpha = k*gamma*sigma^2/2,  eta = A*(1 + gamma/k)^-(1 + k/gamma)
and M the (2Q+1)x(2Q+1) tridiagonal matrix with alpha*q^2 on the diagonal (q = Q..-Q) and
-eta off the diagonal, v(t) = exp(-M (T - t)) * 1 and
    delta_bid(t, q) = (1/k) ln(v_q / v_{q+1}) + (1/gamma) ln(1 + gamma/k)
    delta_ask(t, q) = (1/k) ln(v_q / v_{q-1}) + (1/gamma) ln(1 + gamma/k)
(in units where delta = 1).
"""

from __future__ import annotations

import math

import numpy as np

from strategies import kernels as K


def half_spreads(q: float, gamma: float, sigma: float, A: float, k: float, delta: float = 1.0) -> tuple[float, float]:
    """Closed-form (delta_bid, delta_ask): distances of bid and ask below/above the mid, quote per base
    (computed by :func:`strategies.kernels.glft_half_spreads`)."""
    return K.glft_half_spreads(float(q), float(gamma), float(sigma), float(A), float(k), float(delta))


def exact_half_spreads(
    q: int, tau: float, Q: int, gamma: float, sigma: float, A: float, k: float
) -> tuple[float, float]:
    """Exact finite-inventory optimal (delta_bid, delta_ask) at time-to-horizon ``tau``.

    ``q`` is an integer inventory in lots with ``|q| <= Q``; the bid at q = Q and the ask
    at q = -Q are not defined (the agent stops quoting) and are returned as ``inf``.
    The matrix exponential is evaluated through the eigen-decomposition of the symmetric
    M, shifted by its smallest eigenvalue so that large ``tau`` does not underflow.
    """
    if abs(q) > Q:
        raise ValueError(f"|q|={abs(q)} exceeds Q={Q}")
    alpha = 0.5 * k * gamma * sigma * sigma
    eta = A * (1.0 + gamma / k) ** (-(1.0 + k / gamma))
    qs = np.arange(Q, -Q - 1, -1, dtype=float)  # row i <-> inventory Q - i
    M = np.diag(alpha * qs * qs) - eta * (np.eye(len(qs), k=1) + np.eye(len(qs), k=-1))
    w, V = np.linalg.eigh(M)
    # v = V exp(-w tau) V^T 1 ; scale by exp(w0 tau) -> exp(-(w - w0) tau)
    v = V @ (np.exp(-(w - w[0]) * tau) * (V.T @ np.ones(len(qs))))
    i = Q - q
    c = math.log1p(gamma / k) / gamma
    # row i - 1 holds inventory q + 1, row i + 1 holds q - 1
    db = math.inf if q == Q else math.log(v[i] / v[i - 1]) / k + c
    da = math.inf if q == -Q else math.log(v[i] / v[i + 1]) / k + c
    return db, da
