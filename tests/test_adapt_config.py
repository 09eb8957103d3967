"""forecaster.adapt in the config: off by default (the forecaster is not wrapped), the
example config documents the defaults, bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import Config, build_forecaster, load_config
from bot.errors import ConfigError
from models.adapt.swap import AdaptiveForecaster, settings_from_config
from models.forecaster import LstmForecaster

ROOT = Path(__file__).resolve().parents[1]


def test_off_by_default_and_the_example_config_has_the_defaults():
    assert not Config().forecaster.adapt.enabled
    fc = build_forecaster(Config())
    assert isinstance(fc, LstmForecaster) and not isinstance(fc, AdaptiveForecaster)
    assert load_config(ROOT / "config" / "paper.yaml").forecaster.adapt == Config().forecaster.adapt


def test_enabled_wraps_the_forecaster_with_the_configured_settings(tmp_path):
    cfg = Config.model_validate({"forecaster": {"adapt": {
        "enabled": True, "schedule_s": 0, "min_new_samples": 100, "registry": str(tmp_path / "reg"),
        "detector": {"loss": {"threshold": 30.0}, "vol": {"enabled": True}}, "tune": {"epochs": 3, "baselines": ["ewma"]}}}})
    fc = build_forecaster(cfg)
    try:
        assert isinstance(fc, AdaptiveForecaster)
        s = fc.s
        assert s.schedule_s == 0 and s.min_new_samples == 100 and s.registry == str(tmp_path / "reg")
        assert s.detector.loss.threshold == 30.0 and s.detector.vol.enabled and s.tune.epochs == 3
        assert s.tune.baselines == ("ewma",)
        assert fc.status()["adapt"]["jobs"] == 0 and fc.warmed_up is False  # the wrapped forecaster's attributes
    finally:
        fc.close()
    assert settings_from_config(Config().forecaster.adapt).detector.loss.enabled


@pytest.mark.parametrize("text, field", [
    ("forecaster:\n  adapt:\n    tune:\n      epochs: 0\n", "forecaster.adapt.tune.epochs"),
    ("forecaster:\n  adapt:\n    detector:\n      loss:\n        threshold: -1\n", "forecaster.adapt.detector.loss.threshold"),
    ("forecaster:\n  adapt:\n    tune:\n      baselines: [arima]\n", "forecaster.adapt.tune.baselines"),
    ("forecaster:\n  adapt:\n    schedul_s: 10\n", "forecaster.adapt.schedul_s"),
])
def test_bad_values_are_named(tmp_path, text, field):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert field in str(e.value) and str(p) in str(e.value)


def test_adaptation_on_a_live_feed_steps_on_the_quoting_path(tmp_path):
    """auto runs the TorchScript module on a worker thread on live feeds; the hot swap replaces
    the predictor and guard of the forecaster it wraps between two steps, so with adaptation
    on, auto resolves to the synchronous numba backend, and an explicit async backend is a
    one-line config error."""
    cfg = Config.model_validate({"forecaster": {"adapt": {"enabled": True, "registry": str(tmp_path / "reg")}}})
    fc = build_forecaster(cfg, live_feed=True)
    try:
        assert isinstance(fc, AdaptiveForecaster) and isinstance(fc.fc, LstmForecaster)
        assert fc.fc.predictor.backend == "numba"
    finally:
        fc.close()
    bad = Config.model_validate({"forecaster": {"backend": "torchscript_async",
                                                "adapt": {"enabled": True, "registry": str(tmp_path / "reg")}}})
    with pytest.raises(ConfigError, match="forecaster.backend torchscript_async cannot be used with forecaster.adapt"):
        build_forecaster(bad, live_feed=True)
