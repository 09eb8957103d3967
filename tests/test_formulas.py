"""Avellaneda-Stoikov and GLFT formulas against hand-computed values, and the GLFT closed form
against the exact finite-inventory solution."""

import math

import pytest

from strategies import avellaneda_stoikov as AS
from strategies import glft


def test_as_reservation_price_hand_value():
    # r = s - q*gamma*sigma^2*tau = 100 - 2*0.1*4*0.5
    assert AS.reservation_price(100.0, 2.0, 0.1, 2.0, 0.5) == pytest.approx(99.6, abs=1e-12)
    assert AS.reservation_price(100.0, -3.0, 0.1, 2.0, 0.5) == pytest.approx(100.6, abs=1e-12)


def test_as_spread_hand_value():
    # 0.1*4*0.5 + (2/0.1)*ln(1 + 0.1/1.5) = 0.2 + 20*ln(16/15)
    assert AS.optimal_spread(0.1, 2.0, 0.5, 1.5) == pytest.approx(1.4907704227514234, rel=1e-12)
    r, bid, ask = AS.quotes(100.0, 2.0, 0.1, 2.0, 0.5, 1.5)
    assert ask - bid == pytest.approx(1.4907704227514234, rel=1e-12)
    assert (bid + ask) / 2 == pytest.approx(r)


def test_glft_closed_form_hand_values():
    # c = (1/gamma) ln(1+gamma/k) = 0.645385211..., omega = 0.051717216...
    db, da = glft.half_spreads(0.0, 0.1, 2.0, 140.0, 1.5)
    assert db == pytest.approx(0.6712438194366947, rel=1e-12)
    assert da == pytest.approx(0.6712438194366947, rel=1e-12)
    db, da = glft.half_spreads(1.0, 0.1, 2.0, 140.0, 1.5)
    assert db == pytest.approx(0.7229610355586607, rel=1e-12)  # long: bid further away
    assert da == pytest.approx(0.6195266033147287, rel=1e-12)  # ... ask closer


def test_glft_lot_size_reduces_to_2013_formula_at_delta_one():
    assert glft.half_spreads(2.0, 0.05, 1.0, 10.0, 1.0, delta=1.0) == glft.half_spreads(2.0, 0.05, 1.0, 10.0, 1.0)


@pytest.mark.parametrize("gamma,sigma,A,k", [(0.1, 2.0, 140.0, 1.5), (0.01, 0.3, 0.9, 0.3), (0.05, 1.0, 10.0, 1.0)])
@pytest.mark.parametrize("q", [-2, -1, 0, 1, 2])
def test_glft_closed_form_within_one_percent_of_exact(gamma, sigma, A, k, q):
    # far from the horizon (tau large) with a wide inventory bound, the exact solution is
    # the asymptotic regime the closed form approximates
    eb, ea = glft.exact_half_spreads(q, 1e4, 30, gamma, sigma, A, k)
    ab, aa = glft.half_spreads(float(q), gamma, sigma, A, k)
    assert ab == pytest.approx(eb, rel=0.01)
    assert aa == pytest.approx(ea, rel=0.01)


def test_glft_exact_near_horizon_tends_to_static_spread():
    # at tau = 0, v = 1 everywhere, so both half-spreads equal (1/gamma) ln(1 + gamma/k)
    eb, ea = glft.exact_half_spreads(1, 0.0, 10, 0.1, 2.0, 140.0, 1.5)
    c = math.log1p(0.1 / 1.5) / 0.1
    assert eb == pytest.approx(c) and ea == pytest.approx(c)


def test_glft_exact_stops_quoting_at_bounds():
    eb, ea = glft.exact_half_spreads(5, 10.0, 5, 0.1, 2.0, 140.0, 1.5)
    assert eb == math.inf and math.isfinite(ea)
    with pytest.raises(ValueError):
        glft.exact_half_spreads(6, 10.0, 5, 0.1, 2.0, 140.0, 1.5)
