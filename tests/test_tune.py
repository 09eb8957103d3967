"""mmbot tune end to end on a short real recording (two minutes of Binance USD-M BTC/USDT):
tuning beats a deliberately bad config in sample, the held-out segment is only read by the
final evaluation, best.yaml reproduces the best trial in `mmbot backtest`, two worker
processes share one study (SQLite and journal storages) with an exact trial count, Ctrl-C
stops after the running trial and the same command resumes, the report is rebuilt from the
study alone, and trials are deterministic for a seed."""

import csv
import json
import signal
import time

import pytest
import yaml

from tune_helpers import CAPTURE, ROOT, btc_slice, mmbot, mmbot_popen

pytestmark = pytest.mark.skipif(not CAPTURE.exists(), reason=f"real market data not found at {CAPTURE}")

SPACE = "strategy.pricing.gamma: {log_uniform: [1.0, 300.0]}\nstrategy.controls.min_spread_bps: {uniform: [0.0, 3.0]}\n"
BAD = {"strategy.pricing.gamma": 1.0, "strategy.controls.min_spread_bps": 0.0}  # tight quotes, adversely selected


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    return btc_slice(tmp_path_factory)


def write_inputs(d, maker_fee=0.0):
    """Base config (config/backtest.yaml without maker fee, so that quote width is the
    strategy's, not the fee floor's) and the two-parameter space."""
    cfg = yaml.safe_load((ROOT / "config" / "backtest.yaml").read_text())
    cfg["paper"]["maker_fee"] = maker_fee
    cfg["forecaster"]["model"] = "none"  # its 300 s warm-up exceeds the slice (tested in test_tune_forecasts.py)
    cfg["database"]["url"] = f"sqlite:///{d / 'bt.db'}"
    cfg["replay"]["report_dir"] = str(d / "bt_report")
    (d / "base.yaml").write_text(yaml.safe_dump(cfg))
    (d / "space.yaml").write_text(SPACE)
    return d / "base.yaml", d / "space.yaml"


def tune_args(rec, d, out, *extra):
    base, space = write_inputs(d)
    return ["tune", "--data", rec, "--space", space, "--config", base, "--out", out, "--no-progress", *extra]


def study_trials(out, study="mmbot-tune"):
    """(number, state, value, user summary) of every trial of the study in OUT/study.journal."""
    import optuna

    from paper_trading.tune.study import make_storage

    st = optuna.load_study(study_name=study, storage=make_storage(f"journal:{out / 'study.journal'}"))
    return [(t.number, t.state.name, t.values[0] if t.values else None, t.user_attrs.get("summary"))
            for t in st.get_trials(deepcopy=False)]


def test_tune_jobs2_beats_bad_config_holdout_untouched_report_rebuilt(rec, tmp_path):
    out = tmp_path / "out"
    r = mmbot(*tune_args(rec, tmp_path, out, "--trials", 10, "--jobs", 2, "--min-workers", 2, "--folds", 2,
                         "--holdout", 0.25, "--seed", 3, "--json"))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    trials = study_trials(out)
    # the exact budget, every trial finished, by two worker processes
    assert len(trials) == 10 and all(st in ("COMPLETE", "PRUNED") for _, st, _, _ in trials)
    # two worker processes joined the study (--min-workers 2: each registers, then both take
    # trials) and every trial was run by one of them. Which one ran how many is a race between
    # the two (a compiled-loop trial takes milliseconds: one worker may take them all before
    # the other's next look at the queue), so it is not asserted.
    from optuna import load_study

    from paper_trading.tune.study import SETTINGS_ATTR, make_storage

    study = load_study(study_name="mmbot-tune", storage=make_storage(f"journal:{out / 'study.journal'}"))
    joined = {k.split(":", 1)[1] for k in study.user_attrs if k.startswith("worker:")}
    assert len(joined) == 2
    assert {s["worker"] for _, _, _, s in trials} <= joined
    assert len(summary["workers"]) == 2 and sum(w["trials"] for w in summary["workers"]) == 10
    # the held-out segment: no trial read past the cut-off; the final evaluation starts after it
    settings = study.user_attrs[SETTINGS_ATTR]
    cutoff = settings["cutoff_ns"]
    assert all(0 < s["last_ts"] < cutoff for _, _, _, s in trials)
    assert summary["holdout"] and all(row["held_out"]["first_ts"] >= cutoff for row in summary["holdout"])
    assert all(row["held_out"]["events"] > 0 for row in summary["holdout"])
    # tuned beats the deliberately bad config on the in-sample objective (same folds, same code)
    from paper_trading.tune.cli import _plan_of
    from paper_trading.tune.runner import replay_holdout

    bad = replay_holdout(_plan_of(settings), settings["base_config"], BAD, ["pnl"], risk_penalty=1000, min_sharpe_minutes=10,
                         part="in_sample")
    assert bad["fills"] > 0
    assert study.best_value > bad["pnl"]
    assert summary["best"]["values"]["pnl"] == study.best_value
    # outputs
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["strategy"]["pricing"]["gamma"] == summary["best"]["params"]["strategy.pricing.gamma"]
    with open(out / "trials.csv") as f:
        assert len(list(csv.DictReader(f))) == 10
    html = (out / "report.html").read_text()
    assert "In-sample and held-out" in html and "history.png" in html and (out / "history.png").stat().st_size > 1000
    # the report from the study alone, into another directory
    out2 = tmp_path / "again"
    r = mmbot("tune", "--report", "--storage", f"journal:{out / 'study.journal'}", "--study", "mmbot-tune", "--out", out2)
    assert r.returncode == 0, r.stderr
    assert "In-sample and held-out" in (out2 / "report.html").read_text()
    assert yaml.safe_load((out2 / "best.yaml").read_text()) == best


def test_best_yaml_reproduces_in_backtest_and_trials_are_deterministic(rec, tmp_path):
    """One fold over the whole recording and no held-out part: the best trial's figure is
    exactly what `mmbot backtest --config best.yaml` reports. A second study with the same
    seed gives the same parameters and values."""
    res = []
    for run in ("a", "b"):
        d = tmp_path / run
        d.mkdir()
        r = mmbot(*tune_args(rec, d, d / "out", "--trials", 3, "--folds", 1, "--holdout", 0, "--sampler", "random",
                             "--seed", 11, "--json"))
        assert r.returncode == 0, r.stderr
        res.append(json.loads(r.stdout.strip().splitlines()[-1]))
        assert [st for _, st, _, _ in study_trials(d / "out")] == ["COMPLETE"] * 3
    assert res[0]["best"] == res[1]["best"]
    a = [(n, v) for n, _, v, _ in study_trials(tmp_path / "a" / "out")]
    assert a == [(n, v) for n, _, v, _ in study_trials(tmp_path / "b" / "out")]
    assert len({v for _, v in a}) > 1  # the parameters matter
    d = tmp_path / "a"
    r = mmbot("backtest", "--data", rec, "--config", d / "out" / "best.yaml", "--db", d / "best_bt.db", "--out", d / "bt",
              "--no-progress", "--json")
    assert r.returncode == 0, r.stderr
    bt = json.loads(r.stdout.strip().splitlines()[-1])
    assert bt["pnl"] == pytest.approx(res[0]["best"]["values"]["pnl"], abs=1e-9)


def _wait(cond, what, ceiling=120.0):
    t_end = time.monotonic() + ceiling
    while not cond():
        if time.monotonic() > t_end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _finished(out):
    try:
        return sum(1 for _, st, _, _ in study_trials(out) if st in ("COMPLETE", "PRUNED"))
    except KeyError:  # the study is not created yet
        return 0


def test_ctrl_c_stops_after_running_trial_and_same_command_resumes(rec, tmp_path):
    out = tmp_path / "out"
    args = tune_args(rec, tmp_path, out, "--trials", 40, "--folds", 1, "--holdout", 0, "--pruner", "none", "--seed", 5)
    p = mmbot_popen(*args)
    _wait(lambda: (out / "study.journal").exists() and _finished(out) >= 1, "a first finished trial")
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 130, err
    assert "interrupted" in err and "the same command resumes" in err
    trials = study_trials(out)
    states = [st for _, st, _, _ in trials]
    done = states.count("COMPLETE") + states.count("PRUNED")
    assert 1 <= done < 40
    assert states.count("RUNNING") == 0  # the running trial was finished, not abandoned
    assert states.count("WAITING") == 40 - done
    assert (out / "best.yaml").exists() and (out / "trials.csv").exists()  # finished work is kept
    r = mmbot(*args)
    assert r.returncode == 0, r.stderr
    trials = study_trials(out)
    assert len(trials) == 40 and all(st == "COMPLETE" for _, st, _, _ in trials)


def test_two_processes_one_journal_study(rec, tmp_path):
    journal = tmp_path / "study.journal"
    procs = [mmbot_popen(*tune_args(rec, tmp_path, tmp_path / f"out{i}", "--trials", 8, "--folds", 2, "--holdout", 0.25,
                                    "--storage", f"journal:{journal}", "--study", "shared", "--min-workers", 2))
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    import optuna

    from paper_trading.tune.study import make_storage

    study = optuna.load_study(study_name="shared", storage=make_storage(f"journal:{journal}"))
    trials = study.get_trials()
    assert len(trials) == 8
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    # both processes joined the one study (the --min-workers barrier registers each), and the
    # trials were run by them; how the 8 split between them is up to the scheduler (on a
    # loaded machine one process may take them all), so that is not asserted
    registered = [k for k in study.user_attrs if k.startswith("worker:")]
    assert len(registered) == 2
    assert {t.user_attrs["summary"]["worker"] for t in trials} <= {k.split(":", 1)[1] for k in registered}


def test_two_objectives_pareto_set_held_out_and_best_db(rec, tmp_path):
    """PnL against inventory risk with NSGA-II: the Pareto set is re-run on the held-out
    segment and drawn; --keep-best-db records the best trial's folds with the full order log."""
    out = tmp_path / "out"
    r = mmbot(*tune_args(rec, tmp_path, out, "--trials", 6, "--folds", 2, "--holdout", 0.25, "--objective", "pnl,inventory_risk",
                         "--keep-best-db", "--json"))
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout.strip().splitlines()[-1])
    import optuna

    from paper_trading.tune.study import make_storage

    study = optuna.load_study(study_name="mmbot-tune", storage=make_storage(f"journal:{out / 'study.journal'}"))
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    pareto = sorted(t.number for t in study.best_trials)
    assert [row["trial"] for row in s["holdout"]] == pareto
    assert s["best"]["trial"] in pareto
    assert "pareto.png" in (out / "report.html").read_text() and (out / "pareto.png").exists()
    import sqlite3

    con = sqlite3.connect(out / "best.db")
    runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
    orders = con.execute("SELECT count(*) FROM orders").fetchone()[0]
    con.close()
    assert runs == 2 and orders > 0  # one run per fold, with its orders


def test_unreachable_storage_is_one_line_error(rec, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = mmbot(*tune_args(rec, tmp_path, tmp_path / "out", "--storage", f"postgresql://tuner:secret@127.0.0.1:{port}/nodb"))
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert f"--storage postgresql+psycopg://tuner:***@127.0.0.1:{port}/nodb: cannot open the study storage" in line
    assert "secret" not in line


def test_killed_worker_loses_only_its_running_trial(rec, tmp_path):
    """SIGKILL one of two worker processes while it runs a trial: that trial is marked failed
    and re-queued, the other worker finishes the budget, and the command says a worker failed."""
    import os

    out = tmp_path / "out"
    p = mmbot_popen(*tune_args(rec, tmp_path, out, "--trials", 16, "--jobs", 2, "--min-workers", 2, "--folds", 2,
                               "--holdout", 0.25, "--pruner", "none"))
    import optuna
    from optuna.trial import TrialState

    from paper_trading.tune.study import make_storage

    victim = {}

    def running_claimed():
        try:
            st = optuna.load_study(study_name="mmbot-tune", storage=make_storage(f"journal:{out / 'study.journal'}"))
        except KeyError:
            return False
        for t in st.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if "claimed_by" in t.user_attrs and _finished(out) >= 1:
                victim["pid"] = int(t.user_attrs["claimed_by"].rsplit(":", 1)[1])
                victim["trial"] = t.number
                return True
        return False

    _wait(lambda: (out / "study.journal").exists() and running_claimed(), "a running trial of a worker")
    os.kill(victim["pid"], signal.SIGKILL)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 2 and "1 worker process(es) failed" in err, err
    trials = study_trials(out)
    states = {n: st for n, st, _, _ in trials}
    assert sum(1 for st in states.values() if st == "COMPLETE") == 16  # the full budget, by the surviving worker
    failed = [n for n, st in states.items() if st == "FAIL"]
    assert len(failed) <= 1 and set(states.values()) <= {"COMPLETE", "FAIL"}
    if failed:  # the kill landed while the victim ran a trial (not between its end and the next claim)
        # that trial was the victim's: the one seen running, or a later one (a trial takes
        # milliseconds, so the victim may have moved on before the signal landed)
        assert len(trials) == 17 and failed[0] >= victim["trial"]
        st = optuna.load_study(study_name="mmbot-tune", storage=make_storage(f"journal:{out / 'study.journal'}"))
        why = st.trials[failed[0]].user_attrs["requeued"]
        assert f":{victim['pid']}" in why, why
