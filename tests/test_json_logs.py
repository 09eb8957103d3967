"""Structured JSON-line logs: a real ``mmbot paper`` run writes one line per fill (and its
run's start and end) with run id and market, the console stays as it was, secrets from the
environment never reach the file; the file rotates.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from bot.observability.jsonlog import JsonLog, emit

ROOT = Path(__file__).resolve().parents[1]
KEY = "AKIAJSONLOGTESTKEY7"
SECRET = 'sEcReT/with"quote\\and+slash'
PASSWORD = "hunter2-passphrase"


def paper(tmp_path: Path, name: str, *extra: str, symbol: str = "SIM/USD") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMBOT_API_KEY": KEY, "MMBOT_API_SECRET": SECRET, "MMBOT_API_PASSWORD": PASSWORD}
    return subprocess.run([sys.executable, "-m", "bot.cli", "paper", "--exchange", "sim", "--symbol", symbol, "--duration", "300",
                           "--speed", "0", "--seed", "11", "--db", str(tmp_path / f"{name}.db"), "--no-live", "--json", *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_paper_run_writes_one_json_line_per_fill_with_run_and_market_and_no_secret(tmp_path):
    log = tmp_path / "logs" / "events.jsonl"
    symbol = f"{KEY}/USD"  # the key would be in every line's market if it were not redacted
    r = paper(tmp_path, "a", "--log-json", str(log), symbol=symbol)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    run_id = summary["run_id"]
    raw = log.read_text(encoding="utf-8")
    for secret in (KEY, SECRET, json.dumps(SECRET)[1:-1], PASSWORD):
        assert secret not in raw
    lines = [json.loads(x) for x in raw.splitlines()]
    by_event: dict[str, list] = {}
    for d in lines:
        by_event.setdefault(d["event"], []).append(d)
    con = sqlite3.connect(tmp_path / "a.db")
    try:
        fills = con.execute("select trade_id, side, price, size from fills where run_id = ? order by id", (run_id,)).fetchall()
    finally:
        con.close()
    assert len(fills) > 0
    assert [(d["trade_id"], d["side"], d["price"], d["size"]) for d in by_event["fill"]] == fills
    assert len(by_event["run_start"]) == 1 and len(by_event["run_end"]) == 1
    end = by_event["run_end"][0]
    assert end["status"] == "completed" and end["fills"] == len(fills) == summary["fills"]
    for d in by_event["fill"] + by_event["run_start"] + by_event["run_end"]:
        assert d["run_id"] == run_id and d["exchange"] == "sim" and d["mode"] == "paper"
        assert d["symbol"] == "***/USD"  # redacted, not dropped
        assert d["ts"].endswith("Z")
    # the forecaster's guard switches are events too, as many as the run counted
    switches = summary["forecaster"]["guard_switches"]
    assert len(by_event.get("guard_switch", [])) == switches["vol"] + switches["drift"]


def test_console_output_is_unchanged_by_the_json_log(tmp_path):
    without = paper(tmp_path, "b")
    with_log = paper(tmp_path, "c", "--log-json", str(tmp_path / "c.jsonl"))
    assert without.returncode == with_log.returncode == 0
    assert with_log.stderr == without.stderr
    assert without.stderr.strip()  # there is console output (the forecaster's and the strategy's warnings) to compare


def test_secrets_redacted_in_messages_arguments_fields_and_tracebacks(tmp_path, monkeypatch):
    monkeypatch.setenv("MMBOT_API_KEY", KEY)
    monkeypatch.setenv("MMBOT_API_SECRET", SECRET)
    monkeypatch.setenv("MMBOT_API_PASSWORD", PASSWORD)
    path = tmp_path / "s.jsonl"
    jl = JsonLog(path)
    try:
        lg = logging.getLogger("bot.exchanges.some_client")
        lg.warning("signing with key %s and secret %s", KEY, SECRET)
        emit("order_error", message=f"password {PASSWORD} rejected", reason=f"apiKey={KEY}", nested={"s": SECRET})
        try:
            raise RuntimeError(f"auth failed for {KEY}:{SECRET}")
        except RuntimeError:
            lg.exception("request failed")
    finally:
        jl.close()
    raw = path.read_text(encoding="utf-8")
    lines = [json.loads(x) for x in raw.splitlines()]
    assert len(lines) == 3
    for secret in (KEY, SECRET, json.dumps(SECRET)[1:-1], PASSWORD):
        assert secret not in raw
    assert lines[0]["message"] == "signing with key *** and secret ***"
    assert lines[1]["event"] == "order_error" and lines[1]["reason"] == "apiKey=***"
    assert "RuntimeError: auth failed for ***:***" in lines[2]["exception"]


def test_json_log_rotates_and_every_line_is_json(tmp_path):
    path = tmp_path / "r.jsonl"
    root_handlers = list(logging.getLogger().handlers)
    jl = JsonLog(path, max_bytes=2048, backup_count=2)
    try:
        for i in range(300):
            emit("fill", message=f"fill {i}", trade_id=f"t-{i}")
    finally:
        jl.close()
    assert logging.getLogger().handlers == root_handlers  # closing removes what it installed
    files = [path, path.with_name("r.jsonl.1"), path.with_name("r.jsonl.2")]
    assert all(f.exists() for f in files) and not path.with_name("r.jsonl.3").exists()
    ids = []
    for f in reversed(files):  # oldest first
        assert f.stat().st_size <= 2048
        ids += [json.loads(x)["trade_id"] for x in f.read_text(encoding="utf-8").splitlines()]
    assert ids == [f"t-{i}" for i in range(300 - len(ids), 300)]  # the newest lines, in order, none lost in between


def test_unwritable_json_log_is_one_line_and_exit_2(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    r = paper(tmp_path, "d", "--log-json", str(blocker / "events.jsonl"))
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "--log-json" in err[0] and "Traceback" not in r.stderr
