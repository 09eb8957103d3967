"""`mmbot live` from the command line against the local Binance fake served by the test's
event loop: confirmation, key-file permissions, a run that `mmbot report` reads, and
SIGKILL of the running process followed by a restart on the same database."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from decimal import Decimal as D
from pathlib import Path

import pytest

from bot.errors import ConfigError
from bot.live.secrets import load_credentials, redact
from test_live_engine import WORKING, check_db_equals_exchange, ours_open, wait_for

ROOT = Path(__file__).resolve().parents[1]
CEILING = 120.0


def write_cfg(tmp_path, fake, db) -> Path:
    p = tmp_path / "live.yaml"
    p.write_text(f"""
exchange: binance
symbol: BTC/USDT
forecaster: {{model: none}}
market_data: {{transport: rest, api_url: "{fake.base_url}", poll_interval_s: 0.1, rate_limit_per_s: 100}}
strategy: {{controls: {{order_size: 0.001}}}}
live: {{fills_transport: rest, poll_interval_s: 0.2, reconcile_interval_s: 1, request_timeout_s: 3}}
database: {{url: "sqlite:///{db}"}}
""")
    return p


def env(**kw):
    e = {**os.environ, "PYTHONPATH": str(ROOT), "MMBOT_API_KEY": "test-key", "MMBOT_API_SECRET": "test-secret"}
    e.update(kw)
    return e


async def mmbot(*args, env_=None):
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "bot.cli", *args, cwd=ROOT, env=env_ or env(),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def finish(proc):
    out, err = await asyncio.wait_for(proc.communicate(), CEILING)
    return proc.returncode, out.decode(), err.decode()


async def test_live_without_confirmation_explains_and_exits_2(fake_binance, tmp_path):
    cfg = write_cfg(tmp_path, fake_binance, tmp_path / "a.db")
    rc, out, err = await finish(await mmbot("live", "--config", str(cfg)))
    assert rc == 2 and "--yes" in err and "real money" in err and "Traceback" not in err
    assert not fake_binance.order_requests and not (tmp_path / "a.db").exists()


async def test_key_file_must_be_owner_only(tmp_path):
    kf = tmp_path / "keys"
    kf.write_text("MMBOT_API_KEY=abcd1234\nMMBOT_API_SECRET=topsecretvalue\n")
    kf.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others") as e:
        load_credentials(kf)
    assert "topsecretvalue" not in str(e.value)
    kf.chmod(0o600)
    c = load_credentials(kf)
    assert c.secret == "topsecretvalue" and "topsecretvalue" not in repr(c)
    assert redact("boom topsecretvalue boom") == "boom *** boom"
    with pytest.raises(ConfigError, match="MMBOT_API_SECRET"):
        load_credentials(None, env={"MMBOT_API_KEY": "k"})


async def test_cli_live_run_then_report(fake_binance, tmp_path):
    db = tmp_path / "cli.db"
    cfg = write_cfg(tmp_path, fake_binance, db)
    proc = await mmbot("live", "--config", str(cfg), "--yes", "--json")  # open-ended: stopped below

    def two_orders_recorded():
        if not db.exists():
            return False
        con = sqlite3.connect(db, timeout=30)
        try:
            return con.execute("select count(*) from orders").fetchone()[0] >= 2
        except sqlite3.OperationalError:  # not created yet
            return False
        finally:
            con.close()
    try:
        await wait_for(two_orders_recorded, "two orders in the database")  # a condition, not a run length
    finally:
        proc.send_signal(signal.SIGINT)
    rc, out, err = await finish(proc)
    assert rc == 130, err  # 128 + SIGINT
    assert "test-secret" not in out + err  # the secret never reaches the terminal
    summary = json.loads(out)
    assert summary["status"] == "interrupted" and summary["orders_placed"] >= 2
    assert "order_errors" in summary and "rate_limited" in summary
    assert not ours_open(fake_binance)
    rc, out, err = await finish(await mmbot("report", "--db", str(db), "--json"))
    assert rc == 0, err
    check_db_equals_exchange(db, fake_binance)


async def test_sigkill_then_restart_on_the_same_database(fake_binance, tmp_path):
    fake = fake_binance
    db = tmp_path / "kill.db"
    cfg = write_cfg(tmp_path, fake, db)
    proc = await mmbot("live", "--config", str(cfg), "--yes", "--json")

    def resting_and_recorded():
        if len(ours_open(fake)) < 2 or not db.exists():
            return False
        con = sqlite3.connect(db)
        try:
            states = dict(con.execute("select client_id, state from orders").fetchall())
        except sqlite3.OperationalError:
            return False
        finally:
            con.close()
        return all(states.get(o.client_order_id) in ("open", "pending_new") for o in ours_open(fake))
    try:
        await wait_for(resting_and_recorded, "two resting orders in the database")
        # a fill the bot sees, then the kill, then a fill while it is down
        a, b = ours_open(fake)[:2]
        fake.fill_order(a.order_id, qty=a.orig_qty / 2)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    fake.fill_order(a.order_id)
    con = sqlite3.connect(db)
    assert con.execute("select status from runs").fetchone()[0] == "running"  # killed: never ended
    rc, out, err = await finish(await mmbot("live", "--config", str(cfg), "--yes", "--duration", "3", "--json"))
    assert rc == 0, err
    check_db_equals_exchange(db, fake)
    assert con.execute("select count(*) from orders where state in %s" % (WORKING,)).fetchone()[0] == 0
    assert not ours_open(fake)
    states = dict(con.execute("select client_id, state from orders").fetchall())
    assert states[a.client_order_id] == "filled" and states[b.client_order_id] in ("canceled", "filled")
    # inventory of the second run started at the balance, which includes the fills of the first
    start_inv = D(con.execute("select inventory from pnl_snapshots where run_id=2 order by ts_ns, id limit 1 offset 1")
                  .fetchone()[0])
    first_fills = sum(D(s) * (1 if side == "buy" else -1)
                      for side, s in con.execute("select side, size from fills where run_id=1"))
    assert start_inv == D(1) + first_fills


async def test_sigterm_cancels_everything_and_records_interrupted(fake_binance, tmp_path):
    fake = fake_binance
    db = tmp_path / "term.db"
    cfg = write_cfg(tmp_path, fake, db)
    proc = await mmbot("live", "--config", str(cfg), "--yes", "--json")
    try:
        await wait_for(lambda: len(ours_open(fake)) >= 2, "our quotes")
    finally:
        proc.send_signal(signal.SIGTERM)
    rc, out, err = await finish(proc)
    assert rc == 143, err  # 128 + SIGTERM
    assert json.loads(out)["status"] == "interrupted"
    assert not ours_open(fake)
    assert sqlite3.connect(db).execute("select status from runs").fetchone()[0] == "interrupted"
    check_db_equals_exchange(db, fake)


async def test_unknown_exchange_is_one_line_before_the_database(tmp_path):
    db = tmp_path / "x.db"
    rc, out, err = await finish(await mmbot("live", "--exchange", "binanse", "--symbol", "BTC/USDT", "--yes",
                                            "--db", str(db)))
    assert rc == 2 and "unknown exchange 'binanse'" in err and "binance" in err and "Traceback" not in err
    assert not db.exists()
