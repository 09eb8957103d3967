"""The Avellaneda-Stoikov (2008) Section 3.3 simulation against the paper's Table 1 and 2."""

import json
import subprocess
import sys

import pytest

from paper_trading.as2008 import simulate

# (gamma, strategy) -> paper's (mean profit, std profit, std final q)
PAPER = {
    (0.1, "inventory"): (62.94, 5.89, 2.80),
    (0.1, "symmetric"): (67.21, 13.43, 8.66),
    (0.01, "inventory"): (66.78, 8.76, 4.70),
    (0.01, "symmetric"): (67.36, 13.40, 8.65),
}


@pytest.mark.parametrize("key", list(PAPER))
def test_matches_paper_tables(key):
    gamma, strategy = key
    r = simulate(gamma, strategy, paths=1000, seed=7)
    mean_p, std_p, std_q = PAPER[key]
    assert r.mean_profit == pytest.approx(mean_p, rel=0.08)
    assert r.std_profit == pytest.approx(std_p, rel=0.15)
    assert r.std_final_q == pytest.approx(std_q, rel=0.15)
    assert abs(r.mean_final_q) < 0.5


@pytest.mark.parametrize("gamma", [0.1, 0.01, 1.0])
def test_inventory_strategy_has_less_risk_than_symmetric(gamma):
    inv = simulate(gamma, "inventory", 1000, 7)
    sym = simulate(gamma, "symmetric", 1000, 7)
    assert inv.mean_spread == pytest.approx(sym.mean_spread)
    assert inv.std_profit < sym.std_profit
    assert inv.std_final_q < sym.std_final_q


def test_deterministic_for_a_seed():
    assert simulate(0.1, "inventory", 200, 3) == simulate(0.1, "inventory", 200, 3)
    assert simulate(0.1, "inventory", 200, 3) != simulate(0.1, "inventory", 200, 4)


def test_bad_arguments():
    with pytest.raises(ValueError):
        simulate(0.1, "greedy")
    with pytest.raises(ValueError):
        simulate(-1.0)


@pytest.mark.parametrize("gamma", ["0.1", "0.01", "1"])
@pytest.mark.parametrize("strategy", ["inventory", "symmetric"])
def test_cli_json(gamma, strategy):
    out = subprocess.run(
        [sys.executable, "-m", "bot.cli", "simulate", "as2008", "--gamma", gamma, "--paths", "200", "--seed", "7",
         "--strategy", strategy, "--json"], capture_output=True, text=True, check=True,
    )
    d = json.loads(out.stdout)
    assert set(d) == {"mean_spread", "mean_profit", "std_profit", "mean_final_q", "std_final_q"}
    ref = simulate(float(gamma), strategy, 200, 7)
    assert d["mean_profit"] == pytest.approx(ref.mean_profit)
