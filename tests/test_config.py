"""Config loading: the shipped file is valid, and bad input names the field and the problem."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import Config, load_config, with_overrides
from bot.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_config_equals_the_built_in_defaults():
    """`mmbot paper` outside a checkout (no config/paper.yaml) runs exactly the documented file."""
    cfg = load_config(ROOT / "config" / "paper.yaml")
    assert cfg == Config()
    assert cfg.exchange == "sim" and cfg.strategy.pricing.model == "avellaneda_stoikov"
    assert cfg.sim.sigma == pytest.approx(2 / 600 ** 0.5, rel=0.01)  # the AS paper rescaled to 600 s
    assert cfg.sim.A * cfg.duration_s == pytest.approx(140, rel=0.01)
    assert cfg.strategy.pricing.tau_s == cfg.duration_s


def test_backtest_config_loads():
    cfg = load_config(ROOT / "config" / "backtest.yaml")
    assert cfg.strategy.pricing.model == "glft" and cfg.strategy.pricing.calibrate_intensity


@pytest.mark.parametrize(
    "yaml_text,expected",
    [
        ("strategy:\n  pricing:\n    gamma: -1\n", r"strategy\.pricing\.gamma: Input should be greater than 0 \(got -1\)"),
        ("strategy:\n  pricing:\n    model: magic\n", r"strategy\.pricing\.model: .*'avellaneda_stoikov', 'glft' or 'symmetric'"),
        ("sim:\n  sigmaa: 1\n", r"sim\.sigmaa: unknown field"),
        ("duration_s: soon\n", r"duration_s: .*number"),
        ("strategy:\n  controls:\n    order_size: 50\n    max_inventory: 10\n", r"strategy\.controls: .*exceeds max_inventory"),
        ("strategy:\n  controls:\n    order_size: 1\n    order_size_quote: 100\n", r"strategy\.controls: .*not both"),
        ("- a\n- b\n", r"top level must be a mapping"),
        ("sim: [unclosed\n", r"line \d+, column \d+ is not valid YAML"),
    ],
)
def test_bad_config_names_field_and_problem(tmp_path, yaml_text, expected):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ConfigError, match=expected) as e:
        load_config(p)
    assert str(p) in str(e.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/mmbot.yaml")


def test_overrides_are_validated():
    assert with_overrides(Config(), **{"sim.seed": 3}).sim.seed == 3
    with pytest.raises(ConfigError, match=r"sim\.dt_s"):
        with_overrides(Config(), **{"sim.dt_s": -1})


def test_bad_decimal_tick_is_reported(tmp_path):
    from bot.app import build_source

    cfg = with_overrides(Config(), **{"sim.tick": "abc"})
    with pytest.raises(ConfigError, match=r"sim\.tick: not a decimal number"):
        build_source(cfg)


def test_cli_bad_config_is_one_line_and_nonzero(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("strategy:\n  pricing:\n    gamma: 0\n")
    db = tmp_path / "never.db"
    out = subprocess.run([sys.executable, "-m", "bot.cli", "paper", "--config", str(p), "--db", str(db)],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "strategy.pricing.gamma" in out.stderr
    assert not db.exists()  # nothing half-written


def test_cli_bad_model_file_is_one_line_and_writes_nothing(tmp_path):
    model = tmp_path / "broken.pt"
    model.write_bytes(b"not a torchscript archive")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"forecaster:\n  model: {model}\n")
    db = tmp_path / "never.db"
    out = subprocess.run([sys.executable, "-m", "bot.cli", "paper", "--config", str(cfg), "--db", str(db)],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert str(model) in out.stderr and "TorchScript" in out.stderr
    assert not db.exists()


@pytest.mark.parametrize(
    "yaml_text,expected",
    [
        ("paper:\n  maker_fee: .nan\n", r"paper\.maker_fee: Input should be a finite number \(got nan\)"),
        ("paper:\n  taker_fee: 5.0\n", r"paper\.taker_fee: .*less than or equal to 0\.05 \(got 5\.0\)"),
        ("paper:\n  maker_fee: -0.5\n", r"paper\.maker_fee: .*greater than or equal to -0\.01"),
        ("sim:\n  s0: .inf\n", r"sim\.s0: Input should be a finite number"),
        ("sim:\n  seed: -1\n", r"sim\.seed: .*greater than or equal to 0"),
        ("duration_s: .inf\n", r"duration_s: Input should be a finite number"),
        ("paper:\n  initial_quote: -.inf\n", r"paper\.initial_quote: Input should be a finite number"),
        # the strategy's own models allow inf/nan where a bound does not catch them: the walk does
        ("strategy:\n  pricing:\n    tau_s: .inf\n", r"strategy\.pricing\.tau_s: must be a finite number \(got inf\)"),
        ("strategy:\n  controls:\n    max_inventory: .inf\n", r"strategy\.controls\.max_inventory: must be a finite number"),
    ],
)
def test_non_finite_and_absurd_numbers_are_rejected(tmp_path, yaml_text, expected):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ConfigError, match=expected) as e:
        load_config(p)
    assert str(p) in str(e.value)


def test_sane_fees_and_rebates_still_load(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("paper:\n  maker_fee: -0.0001\n  taker_fee: 0.006\n")
    cfg = load_config(p)
    assert (cfg.paper.maker_fee, cfg.paper.taker_fee) == (-0.0001, 0.006)


def test_overrides_reject_non_finite_values():
    for key, value in (("duration_s", float("inf")), ("replay.speed", float("nan")), ("sim.sigma", float("inf"))):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            with_overrides(Config(), **{key: value})
    with pytest.raises(ConfigError, match=r"replay\.speed"):
        with_overrides(Config(), **{"replay.speed": -1})


def test_non_utf8_config_names_the_file_and_offset(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes(b"symbol: 'BTC/\xe9'\n")
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text \(byte 0xe9 at offset 13\)"):
        load_config(p)
