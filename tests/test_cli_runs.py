"""What the CLI says about runs: report titles name the market source, a backtest stores the
recording's market and span, ``--compare`` reports progress and never cuts a cell, and an
interrupted run exits 130 (SIGINT) or 143 (SIGTERM), as shells expect."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HYPERLIQUID = ROOT.parent / "shared" / "data" / "binance" / "hyperliquid" / "btcusd_20250126.gz"


def mmbot(*args: str, timeout: float = 300, columns: int = 100) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout)


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    """The 26-second Hyperliquid capture (real data) as a recording."""
    if not HYPERLIQUID.exists():
        pytest.skip(f"real market data not found at {HYPERLIQUID}")
    from bot.importers.hyperliquid import import_hyperliquid

    out = tmp_path_factory.mktemp("hl") / "rec"
    import_hyperliquid([HYPERLIQUID], out)
    return out


def test_backtest_stores_the_recordings_market_and_span_and_report_title(recording, tmp_path):
    db = tmp_path / "bt.db"
    out = mmbot("backtest", "--data", str(recording), "--db", str(db), "--out", str(tmp_path / "rep"), "--json")
    assert out.returncode == 0, out.stderr
    cfg = json.loads(sqlite3.connect(db).execute("select config_json from runs").fetchone()[0])
    meta = json.loads((recording / "meta.json").read_text())
    assert cfg["exchange"] == meta["exchange"] == "hyperliquid"  # not the config's 'sim'
    assert cfg["symbol"] == "BTC/USD"
    from bot.recording.io import open_recording

    lts = open_recording(recording).events()["local_ts"]
    assert cfg["duration_s"] == pytest.approx((int(lts[-1]) - int(lts[0])) / 1e9)  # not the config's duration_s
    rep = mmbot("report", "--db", str(db))
    assert rep.returncode == 0, rep.stderr
    assert "Run 1: backtest on hyperliquid recording, BTC/USD" in rep.stdout
    assert "paper paper" not in rep.stdout
    page = (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")
    assert "backtest on hyperliquid recording" in page


def test_paper_report_title_names_the_simulated_market(tmp_path):
    db = tmp_path / "p.db"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("forecaster:\n  model: none\n")
    out = mmbot("paper", "--config", str(cfg), "--speed", "0", "--duration", "5", "--db", str(db), "--json", "--no-live")
    assert out.returncode == 0, out.stderr
    rep = mmbot("report", "--db", str(db))
    assert rep.returncode == 0, rep.stderr
    assert "Run 1: paper on the simulated market, SIM/USD (completed)" in rep.stdout
    assert "paper paper" not in rep.stdout
    # a 5-second run has no Sharpe ratio, and the table says why
    assert "too few samples" in rep.stdout


def test_compare_progress_full_cells_and_unknown_variant_first(recording, tmp_path):
    db = tmp_path / "cmp.db"
    bad = mmbot("backtest", "--data", str(recording), "--db", str(db), "--compare", "glft,nonsense")
    assert bad.returncode == 2 and "nonsense" in bad.stderr and "Traceback" not in bad.stderr
    assert not db.exists()  # refused before the first variant ran
    out = mmbot("backtest", "--data", str(recording), "--db", str(db), "--out", str(tmp_path / "rep"),
                "--compare", "glft,avellaneda_stoikov", columns=60)
    assert out.returncode == 0, out.stderr
    assert "variant 1/2: glft" in out.stderr and "variant 2/2: avellaneda_stoikov" in out.stderr
    assert "\u2026" not in out.stdout  # no cell cut with an ellipsis, even 60 columns wide
    for name in ("glft", "avellaneda_stoikov"):
        line = next(ln for ln in out.stdout.splitlines() if ln.startswith(f"report {name}:"))
        assert Path(line.split(": ", 1)[1].strip()).exists()


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_paper_run_exits_128_plus_signal(tmp_path, sig, code):
    db = tmp_path / "sig.db"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("forecaster:\n  model: none\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "bot.cli", "paper", "--config", str(cfg), "--speed", "1", "--duration", "600",
                          "--db", str(db), "--json", "--no-live"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 120  # a ceiling, not a timing assumption: we wait for orders in the database
        started = False
        while time.monotonic() < deadline and p.poll() is None and not started:
            time.sleep(0.2)
            if db.exists():
                try:
                    started = sqlite3.connect(db).execute("select count(*) from orders").fetchone()[0] > 0
                except sqlite3.OperationalError:
                    pass
        assert started, "the run never placed an order"
        p.send_signal(sig)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == code, err
    assert "Traceback" not in err
    s = json.loads(out)
    assert s["status"] == "interrupted" and s["stop_reason"] == sig.name
