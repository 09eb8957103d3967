"""Two `mmbot tune` processes share one study on a real PostgreSQL server (the way several
machines cooperate): both contribute trials, the study holds exactly the budget, and the
best value in the database is the one the report gives."""

import json

import pytest

from pg_server import pg_server  # noqa: F401 - the fixture
from test_tune import rec, tune_args  # noqa: F401 - the recording fixture
from tune_helpers import CAPTURE, mmbot, mmbot_popen

pytestmark = pytest.mark.skipif(not CAPTURE.exists(), reason=f"real market data not found at {CAPTURE}")


def test_two_processes_one_postgresql_study(rec, tmp_path, pg_server):  # noqa: F811
    import psycopg

    procs = [mmbot_popen(*tune_args(rec, tmp_path, tmp_path / f"out{i}", "--trials", 8, "--folds", 2, "--holdout", 0.25,
                                    "--storage", pg_server, "--study", "shared", "--min-workers", 2, "--seed", 4))
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    with psycopg.connect(pg_server) as con:
        (study_id,) = con.execute("SELECT study_id FROM studies WHERE study_name = 'shared'").fetchone()
        states = [s for (s,) in con.execute("SELECT state FROM trials WHERE study_id = %s", (study_id,))]
        workers = {json.loads(v)["worker"] for (v,) in con.execute(
            "SELECT a.value_json FROM trial_user_attributes a JOIN trials t ON t.trial_id = a.trial_id "
            "WHERE t.study_id = %s AND a.key = 'summary'", (study_id,))}
        (best,) = con.execute("SELECT max(v.value) FROM trial_values v JOIN trials t ON t.trial_id = v.trial_id "
                              "WHERE t.study_id = %s AND t.state = 'COMPLETE'", (study_id,)).fetchone()
    assert len(states) == 8 and set(states) <= {"COMPLETE", "PRUNED"}
    assert len(workers) == 2  # both processes pulled trials
    r = mmbot("tune", "--report", "--storage", pg_server, "--study", "shared", "--out", tmp_path / "report", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["best"]["values"]["pnl"] == pytest.approx(best, abs=1e-12)
    assert summary["holdout"] and (tmp_path / "report" / "best.yaml").exists()
