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


# -- order size (issue 7 item 1) ----------------------------------------------------------------
# config/backtest.yaml: gamma 20 / USDT, k 0.3 / USDT, A 60 / s, rolling tau 1 s; sigma 5 USDT/sqrt(s)
BT = dict(gamma=20.0, sigma=5.0, tau=1.0, k=0.3, A=60.0)


def test_as_spread_for_a_size_hand_value():
    # gamma*size = 0.02: 0.02*25*1 + (2/0.02)*ln(1 + 0.02/0.3) = 0.5 + 100*ln(16/15)
    got = AS.optimal_spread(BT["gamma"], BT["sigma"], BT["tau"], BT["k"], size=0.001)
    assert got == pytest.approx(0.5 + 100.0 * math.log(16.0 / 15.0), rel=1e-12)
    assert got == pytest.approx(6.954, abs=1e-3)  # not the 500 USDT of the unit-size formula
    r, bid, ask = AS.quotes(60000.0, 0.002, BT["gamma"], BT["sigma"], BT["tau"], BT["k"], size=0.001)
    assert ask - bid == pytest.approx(got) and r == pytest.approx(60000.0 - 0.002 * 20.0 * 25.0)


def test_as_unit_size_is_the_paper_formula():
    for g in (0.1, 0.01, 1.0):
        assert AS.optimal_spread(g, 2.0, 0.3, 1.5, size=1.0) == AS.optimal_spread(g, 2.0, 0.3, 1.5)
        assert AS.optimal_spread(g, 2.0, 0.3, 1.5) == pytest.approx(g * 4.0 * 0.3 + (2.0 / g) * math.log1p(g / 1.5), rel=1e-12)


@pytest.mark.parametrize("size", [0.0005, 0.001, 0.002, 0.005])
def test_as_and_glft_agree_in_scale_at_zero_inventory(size):
    """With backtest.yaml's parameters both models quote a few USDT for BTC-sized orders."""
    as_spread = AS.optimal_spread(BT["gamma"], BT["sigma"], BT["tau"], BT["k"], size)
    db, da = glft.half_spreads(0.0, BT["gamma"], BT["sigma"], BT["A"], BT["k"], delta=size)
    assert db == pytest.approx(da)
    assert 0.75 < as_spread / (db + da) < 1.5, (as_spread, db + da)  # unit-size AS: 500 / 6.65
    if size == 0.001:
        assert db + da == pytest.approx(6.65, abs=0.01)


@pytest.mark.parametrize("gamma,sigma,tau,A,k", [(20.0, 5.0, 1.0, 60.0, 0.3), (0.1, 2.0, 600.0, 140.0, 1.5), (1.0, 0.05, 10.0, 5.0, 40.0)])
def test_as_and_glft_share_the_small_order_limit(gamma, sigma, tau, A, k):
    """As the order size goes to 0 the inventory terms vanish and both spreads tend to 2/k."""
    size = 1e-7
    db, da = glft.half_spreads(0.0, gamma, sigma, A, k, delta=size)
    assert AS.optimal_spread(gamma, sigma, tau, k, size) == pytest.approx(2.0 / k, rel=1e-3)
    assert db + da == pytest.approx(2.0 / k, rel=1e-3)
