"""The shift detector (models/adapt/detector.py): Page-Hinkley on synthetic sequences with a
known change point fires after it and not before; it stays quiet on a stationary sequence;
the forecaster's two-signal detector reports the signal and the change row."""

from __future__ import annotations

import numpy as np
import pytest

from models.adapt.detector import DetectorConfig, PageHinkley, PHConfig, ShiftDetector, alarms_for, page_hinkley


@pytest.mark.parametrize("seed", range(5))
def test_page_hinkley_fires_after_a_mean_increase_not_before(seed):
    rng = np.random.default_rng(seed)
    cp = 800
    x = np.concatenate([rng.normal(0.0, 1.0, cp), rng.normal(1.0, 1.0, 700)])
    cfg = PHConfig(delta=0.1, threshold=40.0, min_obs=50, direction="up")
    alarm, change = page_hinkley(x, cfg)
    assert alarm is not None and cp <= alarm < cp + 200
    assert abs(change - cp) < 60  # the estimated change point is near the true one
    assert page_hinkley(x[:cp], cfg) == (None, None)  # the same sequence without its change: no alarm


@pytest.mark.parametrize("seed", range(5))
def test_page_hinkley_two_sided_and_one_sided(seed):
    rng = np.random.default_rng(100 + seed)
    cp = 600
    x = np.concatenate([rng.normal(0.0, 1.0, cp), rng.normal(-1.5, 1.0, 400)])
    assert page_hinkley(x, PHConfig(delta=0.1, threshold=40.0, min_obs=50, direction="up")) == (None, None)
    alarm, _ = page_hinkley(x, PHConfig(delta=0.1, threshold=40.0, min_obs=50, direction="both"))
    assert alarm is not None and cp <= alarm < cp + 150
    ph = PageHinkley(PHConfig(delta=0.1, threshold=40.0, min_obs=50, direction="down"))
    fired = [i for i, v in enumerate(x) if ph.add(float(v))]
    assert fired and fired[0] >= cp and ph.alarm_direction == "down"


def test_stationary_heavy_tailed_sequence_raises_no_alarm():
    rng = np.random.default_rng(7)
    v = rng.chisquare(1, 20_000)  # QLIKE-like: skewed, heavy right tail
    x = v - np.log(v + 1e-9) - 1.0
    x = x - x.mean()
    assert page_hinkley(x, PHConfig(delta=0.3, threshold=200.0, min_obs=100)) == (None, None)


def test_min_obs_and_nan_samples():
    cfg = PHConfig(delta=0.0, threshold=5.0, min_obs=30)
    x = [0.0] * 10 + [10.0] * 5  # a jump after 10 samples, but fewer than min_obs seen
    assert page_hinkley(x, cfg) == (None, None)
    ph = PageHinkley(cfg)
    assert not ph.add(float("nan")) and ph.n == 0


def test_shift_detector_signals_change_row_and_cooldown():
    rng = np.random.default_rng(3)
    n, cp = 3000, 1200
    # loss signal: the model's excess QLIKE jumps at cp; vol signal stationary
    loss = np.where(np.arange(n) < cp, rng.normal(0, 0.3, n), rng.normal(1.0, 0.3, n))
    vol = rng.normal(0, 1, n)
    cfg = DetectorConfig(cooldown_rows=5000)
    al = alarms_for(list(zip(loss.tolist(), vol.tolist())), cfg)
    assert len(al) == 1  # the cooldown holds back further alarms
    a = al[0]
    assert a.signal == "loss" and a.direction == "up" and cp <= a.row < cp + 200 and abs(a.change_row - cp) < 50
    # vol signal: a step up in log r^2, loss signal off
    vol2 = np.where(np.arange(n) < cp, vol, vol + 2.0)
    assert not DetectorConfig().vol.enabled  # off by default (fast volatility clustering would keep it firing)
    d = ShiftDetector(DetectorConfig(loss=PHConfig(enabled=False), vol=PHConfig(True, 0.1, 60.0, 100, "both")))
    for r in range(n):
        if d.add(r, None, float(vol2[r])):
            break
    assert d.alarms and d.alarms[0].signal == "vol" and d.alarms[0].row >= cp
    assert d.status()["alarms"] == 1
