"""A run whose process was killed (SIGKILL: no shutdown code runs) is found by the next start
on the same database: marked ``crashed`` at its last heartbeat with the time of its last
recorded event, its paper orders closed, and ``mmbot report`` says it died. A run whose
process is alive is left alone."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from bot.persistence import liveness
from bot.persistence.store import open_store
from waiting import db_rows, wait_for

ROOT = Path(__file__).resolve().parents[1]
WORKING = "('new','open','partially_filled')"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


q = db_rows


def report_json(db, run):
    rep = subprocess.run([sys.executable, "-m", "bot.cli", "report", "--db", str(db), "--run", str(run), "--json"],
                         capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120)
    assert rep.returncode == 0, rep.stderr
    return json.loads(rep.stdout)


def test_killed_run_is_marked_crashed_by_the_next_start(tmp_path):
    db = tmp_path / "k.db"
    p = subprocess.Popen([sys.executable, "-m", "bot.cli", "paper", "--speed", "1", "--duration", "3600", "--db", str(db), "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
    try:
        wait_for(lambda: (q(db, f"select count(*) from orders where state in {WORKING}") or [(0,)])[0][0] > 0,
                 "open orders of the running paper run", p)
        # another process starts on the same database while the first one is alive: left alone
        st = open_store(str(db))
        second = st.start_run("paper", "paper", "SIM/USD", {})
        assert q(db, "select status from runs where id=1") == [("running",)]
        st.end_run("completed", {})
        st.close()
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert second == 2
    assert q(db, "select status from runs where id=1") == [("running",)]  # nothing ran at the kill
    open_before = q(db, f"select count(*) from orders where run_id=1 and state in {WORKING}")[0][0]
    last_event = max(q(db, "select max(ts_ns) from order_events where run_id=1")[0][0] or 0,
                     q(db, "select max(ts_ns) from pnl_snapshots where run_id=1")[0][0] or 0)
    heartbeat = q(db, "select heartbeat_ns from run_processes where run_id=1")[0][0]
    assert open_before > 0

    # before any new start, the report already sees that the process is gone
    r = report_json(db, 1)
    assert r["status"] == "crashed" and f"process {p.pid}" in r["stop_reason"]
    assert q(db, "select status from runs where id=1") == [("running",)]  # the report wrote nothing

    st = open_store(str(db))  # the next start
    third = st.start_run("paper", "paper", "SIM/USD", {})
    st.end_run("completed", {})
    st.close()
    assert third == 3
    status, ended, summary = q(db, "select status, ended_ns, summary_json from runs where id=1")[0]
    s = json.loads(summary)
    assert status == "crashed" and ended == heartbeat
    assert s["last_event_ns"] == last_event and s["orders_closed_at_recovery"] == open_before
    assert f"process {p.pid}" in s["stop_reason"]
    assert q(db, f"select count(*) from orders where run_id=1 and state in {WORKING}")[0][0] == 0
    closed = q(db, "select count(*) from order_events where run_id=1 and reason='run crashed'")[0][0]
    assert closed == open_before
    assert q(db, "select status from runs where id in (2, 3) order by id") == [("completed",), ("completed",)]

    r = report_json(db, 1)
    assert r["status"] == "crashed" and "ended without closing the run" in r["stop_reason"]
    human = subprocess.run([sys.executable, "-m", "bot.cli", "report", "--db", str(db), "--run", "1"],
                           capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120)
    assert human.returncode == 0 and "crashed" in human.stdout


def test_liveness_rules():
    me = os.getpid()
    host, start = liveness.hostname(), liveness.process_start(me)
    now = time.time_ns()
    assert liveness.process_alive(host, me, start, 0, now, 60)  # alive, heartbeat irrelevant on this host
    if start:  # Linux: a reused pid (another start time) is not the run's process
        assert not liveness.process_alive(host, me, str(int(start) + 1), now, now, 60)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert not liveness.process_alive(host, int(dead.stdout), "", now, now, 60)
    # another host: only the heartbeat can tell
    assert liveness.process_alive("elsewhere", 1, "", now - 10**9, now, 60)
    assert not liveness.process_alive("elsewhere", 1, "", now - 61 * 10**9, now, 60)


def test_recovery_leaves_real_venue_orders_and_unjudgeable_runs(tmp_path):
    """A dead run on a real venue is marked crashed but its orders stay as recorded (they may
    rest on the exchange); a running run without a process record (an older database) is
    left alone."""
    from decimal import Decimal as D

    from bot.orders import Order, OrderState, Side

    db = tmp_path / "r.db"
    st = open_store(str(db))
    live = st.start_run("live", "binance", "BTC/USDT", {})
    o = Order("BTC/USDT", Side.BUY, D("100"), D("1"), created_ns=5, updated_ns=5)
    st.record_order(o)
    o.transition(OrderState.OPEN, 6)
    st.record_order(o)
    st.commit()
    old = st.start_run("paper", "paper", "X/Y", {})
    st.close()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    con = sqlite3.connect(db)
    con.execute("update run_processes set pid=?, proc_start='' where run_id=?", (int(dead.stdout), live))
    con.execute("delete from run_processes where run_id=?", (old,))
    con.commit()
    con.close()

    st = open_store(str(db))
    st.start_run("paper", "paper", "X/Y", {})
    st.close()
    assert q(db, f"select status from runs where id={live}") == [("crashed",)]
    assert q(db, f"select state from orders where run_id={live}") == [("open",)]
    s = json.loads(q(db, f"select summary_json from runs where id={live}")[0][0])
    assert "left as recorded" in s["stop_reason"] and s["last_event_ns"] == 6
    assert q(db, f"select status from runs where id={old}") == [("running",)]
