"""mmbot tune: search-space validation (errors before any trial, naming the path) and the
walk-forward folds with their held-out segment."""

import pytest

from bot.config import Config, load_config
from bot.errors import ConfigError
from paper_trading.tune.folds import Recording, make_plan
from paper_trading.tune.space import apply_params, load_space
from tune_helpers import ROOT, mmbot

S = 1_000_000_000


def _space(tmp_path, text):
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, expected", [
    ("strategy.pricing.gama: {uniform: [1, 2]}", "strategy.pricing.gama: unknown config path (strategy.pricing has: model, gamma"),
    ("strategy.pricing: {uniform: [1, 2]}", "strategy.pricing: is a section, not a value"),
    ("strategy.pricing.gamma.x: {uniform: [1, 2]}", "strategy.pricing.gamma.x: unknown config path (strategy.pricing.gamma is a value"),
    ("strategy.pricing.gamma: {uniform: [2, 2]}", "strategy.pricing.gamma: empty range [2, 2]"),
    ("strategy.pricing.gamma: {uniform: [5, 1]}", "strategy.pricing.gamma: empty range [5, 1]"),
    ("strategy.pricing.gamma: {log_uniform: [0, 1]}", "strategy.pricing.gamma: a log range must be positive"),
    ("strategy.pricing.gamma: {uniform: [-1, 1]}", "strategy.pricing.gamma: value -1.0 is rejected by the config: Input should be greater than 0"),
    ("strategy.controls.levels: {int: [0, 3]}", "strategy.controls.levels: value 0 is rejected by the config"),
    ("strategy.controls.levels: {int: [1, 2.5]}", "strategy.controls.levels: an int range needs whole numbers"),
    ("strategy.pricing.model: {choice: [glft, glf]}", "strategy.pricing.model: value 'glf' is rejected by the config"),
    ("strategy.pricing.model: {choice: []}", "strategy.pricing.model: choice needs a non-empty list"),
    ("strategy.pricing.gamma: {normal: [1, 2]}", "strategy.pricing.gamma: give exactly one of uniform, log_uniform, int, log_int, choice"),
    ("strategy.pricing.gamma: 3", "strategy.pricing.gamma: expected a mapping"),
    ("strategy.pricing.gamma: {uniform: [1, 2], step: 5}", "strategy.pricing.gamma: step 5.0 must be positive and at most high - low"),
    ("- just a list", "a search space is a non-empty mapping"),
])
def test_bad_space_is_refused_naming_the_path(tmp_path, text, expected):
    with pytest.raises(ConfigError) as e:
        load_space(_space(tmp_path, text), Config())
    assert expected in str(e.value)
    assert str(_space(tmp_path, text)) in str(e.value)


def test_range_ends_are_checked_against_the_given_config(tmp_path):
    """order_size is valid alone but not above the base config's max_inventory."""
    base = load_config(ROOT / "config" / "backtest.yaml")  # max_inventory 0.01
    with pytest.raises(ConfigError, match=r"strategy.controls.order_size: value 0.02 is rejected by the config: .*exceeds max_inventory"):
        load_space(_space(tmp_path, "strategy.controls.order_size: {uniform: [0.001, 0.02]}"), base)


def test_shipped_space_is_valid_and_sampling_applies_to_the_config():
    base = load_config(ROOT / "config" / "backtest.yaml")
    sp = load_space(ROOT / "config" / "tune.yaml", base)
    assert "strategy.pricing.gamma" in sp.paths
    import optuna

    t = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    values = sp.suggest(t)
    cfg = apply_params(base, values)
    assert cfg.strategy.pricing.gamma == values["strategy.pricing.gamma"]
    assert 1.0 <= cfg.strategy.pricing.gamma <= 200.0
    assert cfg.strategy.controls.max_inventory in (0.003, 0.005, 0.01, 0.02)


def test_cli_bad_space_is_one_line_exit_2_before_any_trial(tmp_path):
    sp = _space(tmp_path, "strategy.pricing.gamma: {uniform: [0, 10]}\n")
    r = mmbot("tune", "--data", tmp_path / "missing", "--space", sp, "--out", tmp_path / "out", timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "strategy.pricing.gamma: value 0.0 is rejected by the config" in lines[0]
    assert not (tmp_path / "out" / "study.journal").exists()  # nothing ran, no study was created


def test_cli_bad_objective_and_sampler(tmp_path):
    sp = _space(tmp_path, "strategy.pricing.gamma: {log_uniform: [1, 10]}\n")
    r = mmbot("tune", "--data", tmp_path, "--space", sp, "--objective", "profit", "--out", tmp_path / "o", timeout=120)
    assert r.returncode == 2 and "--objective: unknown objective 'profit'" in r.stderr
    r = mmbot("tune", "--data", tmp_path, "--space", sp, "--sampler", "annealing", "--out", tmp_path / "o", timeout=120)
    assert r.returncode == 2 and "--sampler: unknown sampler 'annealing'" in r.stderr


def _rec(path, a, b):
    return Recording(path, a * S, b * S)


def test_folds_by_time_and_recording_and_held_out_segment():
    recs = [_rec("b", 200, 300), _rec("a", 0, 100)]  # given out of order: sorted by time
    plan = make_plan(recs, n_folds=3, holdout=0.25, min_fold_s=10)
    assert [r.path for r in plan.recordings] == ["a", "b"]
    # timeline: a = [0, 100) s, b = [100, 200) s; held-out = final 50 s = b's [250, 300)
    assert plan.holdout[0].rec == 1 and plan.holdout[0].start_ns == 250 * S
    assert plan.cutoff_ns == 250 * S
    segs = [s for f in plan.folds for s in f]
    assert sum(s.end_ns - s.start_ns for s in segs) == 150 * S
    # fold 1 covers timeline [50, 100) s: the end of recording a only; fold 2 is b's [200, 250)
    assert [(s.rec, s.start_ns // S, s.end_ns // S) for s in plan.folds[1]] == [(0, 50, 100)]
    assert [(s.rec, s.start_ns // S, s.end_ns // S) for s in plan.folds[2]] == [(1, 200, 250)]
    assert all(s.end_ns <= plan.cutoff_ns for s in segs)
    assert plan.in_sample_limit(0) == 100 * S + 1 and plan.in_sample_limit(1) == 250 * S


def test_fold_crossing_recordings_is_split_and_late_recording_is_not_loaded():
    plan = make_plan([_rec("a", 0, 100), _rec("b", 200, 300), _rec("c", 400, 500)], n_folds=2, holdout=1 / 3, min_fold_s=10)
    assert [(s.rec, s.start_ns // S, s.end_ns // S) for s in plan.folds[0]] == [(0, 0, 100)]
    assert [(s.rec, s.start_ns // S, s.end_ns // S) for s in plan.folds[1]] == [(1, 200, 300)]
    assert plan.in_sample_limit(2) is None  # c is wholly held out: no worker loads it


def test_too_short_for_folds_and_overlap_are_errors():
    with pytest.raises(ConfigError, match="too short for 10 folds"):
        make_plan([_rec("a", 0, 60)], n_folds=10, holdout=0.2, min_fold_s=13)
    from bot.errors import DataError

    with pytest.raises(DataError, match="overlap in time"):
        make_plan([_rec("a", 0, 60), _rec("b", 50, 100)], n_folds=1, holdout=0.2, min_fold_s=1)
