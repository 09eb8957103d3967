"""`mmbot backtest --start/--end` and the reproduce.sh that `mmbot tune` writes next to
best.yaml: on a two-fold study over a short real recording, the printed backtest commands
give each fold's figure as the trial recorded it, and they add up to the best value."""

import os
import re
import subprocess

import pytest
import yaml

from tune_helpers import CAPTURE, ROOT, btc_slice, mmbot

from paper_trading.window import events_before, format_ns, parse_time_ns

needs_data = pytest.mark.skipif(not CAPTURE.exists(), reason=f"real market data not found at {CAPTURE}")


def test_parse_time_ns_iso_and_ns():
    base = 1723161255 * 10**9  # 2024-08-08T23:54:15Z
    assert parse_time_ns("1723161255088176367", "--start") == base + 88176367
    assert parse_time_ns("2024-08-08T23:54:15.088176367Z", "--start") == base + 88176367
    assert parse_time_ns("2024-08-08T23:54:15Z", "--end") == base
    assert parse_time_ns("2024-08-08 23:54:15.5", "--end") == base + 500_000_000  # no offset: UTC
    assert parse_time_ns("2024-08-09T01:54:15+02:00", "--end") == base
    assert parse_time_ns(format_ns(base + 7), "--end") == base + 7
    from bot.errors import ConfigError

    for bad in ("yesterday", "2024-13-01T00:00:00Z", "2024-08-08T25:00:00Z", "1.5e18", "-5", ""):
        with pytest.raises(ConfigError, match="^--start .*not a time"):
            parse_time_ns(bad, "--start")


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    return btc_slice(tmp_path_factory)


def write_inputs(d):
    cfg = yaml.safe_load((ROOT / "config" / "backtest.yaml").read_text())
    cfg["paper"]["maker_fee"] = 0.0
    cfg["forecaster"]["model"] = "none"
    cfg["database"]["url"] = f"sqlite:///{d / 'bt.db'}"
    (d / "base.yaml").write_text(yaml.safe_dump(cfg))
    (d / "space.yaml").write_text("strategy.pricing.gamma: {log_uniform: [1.0, 300.0]}\n"
                                  "strategy.controls.min_spread_bps: {uniform: [0.0, 3.0]}\n")
    return d / "base.yaml", d / "space.yaml"


@needs_data
def test_window_errors_are_one_line(rec, tmp_path):
    from bot.config import load_config
    from bot.errors import ConfigError
    from paper_trading.backtest import load_recording
    from paper_trading.window import load_window

    base, _ = write_inputs(tmp_path)
    r = mmbot("backtest", "--data", rec, "--config", base, "--start", "2024-08-08T23:61:00Z", "--no-progress", "--json")
    assert r.returncode == 2
    assert r.stderr.strip() == ("mmbot: error: --start '2024-08-08T23:61:00Z': not a time; give ISO-8601 UTC (e.g. 2024-08-08T23:55:00Z) "
                                "or ns since the epoch")
    cfg = load_config(base)
    ev, _ = load_recording(rec)
    t0, t1 = int(ev["local_ts"][0]), int(ev["local_ts"][-1])
    cases = [((t1, t0), "is not before --end"), ((t1 + 1, None), "is after the end of recording"),
             ((None, t0), "is not after the start of recording"), ((t0, t0 + 10**9), "not longer than the warm-up plus one decision")]
    for (a, b), msg in cases:
        with pytest.raises(ConfigError, match=re.escape(msg)) as e:
            load_window(rec, None if a is None else str(a), None if b is None else str(b), cfg)
        assert "\n" not in str(e.value)
    # a valid window: the events are cut before --end, the start is kept
    mid = (t0 + t1) // 2
    (events, _), start = load_window(rec, format_ns(t0 + 10**9), str(mid), cfg)
    assert start == t0 + 10**9 and len(events) == len(events_before(ev, mid)) and int(events["local_ts"][-1]) < mid <= t1


@needs_data
def test_reproduce_script_gives_each_fold_and_the_best_value(rec, tmp_path):
    import optuna

    from paper_trading.tune.reproduce import commands_from_script
    from paper_trading.tune.study import SETTINGS_ATTR, make_storage

    base, space = write_inputs(tmp_path)
    out = tmp_path / "out"
    r = mmbot("tune", "--data", rec, "--space", space, "--config", base, "--out", out, "--no-progress", "--trials", 3,
              "--folds", 2, "--holdout", 0.25, "--sampler", "random", "--seed", 4, "--json")
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="mmbot-tune", storage=make_storage(f"journal:{out / 'study.journal'}"))
    best = study.best_trial
    segs = best.user_attrs["segments"]
    plan = [row for row in study.user_attrs[SETTINGS_ATTR]["plan"] if row["part"] != "held-out"]
    assert [(s["fold"], s["start_ns"], s["end_ns"]) for s in segs] == [(0, plan[0]["start_ns"], plan[0]["end_ns"]),
                                                                         (1, plan[1]["start_ns"], plan[1]["end_ns"])]
    script = out / "reproduce.sh"
    cmds = commands_from_script(script)
    assert [c[:9] for c in cmds] == [["backtest", "--config", "best.yaml", "--data", str(rec.resolve()), "--start",
                                      str(s["start_ns"]), "--end", str(s["end_ns"])] for s in segs]
    assert "reproduce.sh" in (out / "best.yaml").read_text() and "Reproduce" in (out / "report.html").read_text()
    # run the script as a user would: each printed backtest, checked by the script itself
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMBOT": "python -m bot.cli", "PYTHON": "python"}
    p = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    figures = [float(x) for x in re.findall(r"^fold \d+: pnl (\S+) ", p.stdout, re.M)]
    assert len(figures) == 2 and "MISMATCH" not in p.stdout
    # each fold's figure equals the trial's recorded per-fold value ...
    for got, s in zip(figures, segs):
        assert got == pytest.approx(s["pnl"], rel=1e-12, abs=1e-12)
    # ... the pruner's intermediate values are the running totals over the folds ...
    assert best.intermediate_values[0] == pytest.approx(figures[0], rel=1e-12, abs=1e-12)
    assert best.intermediate_values[1] == pytest.approx(figures[0] + figures[1], rel=1e-12, abs=1e-12)
    # ... and the in-sample figure (objective pnl: the sum over the folds) is the best value
    assert sum(figures) == pytest.approx(study.best_value, rel=1e-12, abs=1e-12)
    total = float(re.search(r"^in-sample pnl \(sum of the segments\): (\S+)$", p.stdout, re.M).group(1))
    assert total == pytest.approx(study.best_value, rel=1e-12, abs=1e-12)
