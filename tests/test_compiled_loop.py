"""The compiled backtest loop (paper_trading/compiled_loop.py) against the engine path, on a
real recording: the first 30,000 messages (~113 s, ~156,000 rows) of the Binance USD-M
BTCUSDT capture of 2024-08-08, replayed with config/backtest.yaml's defaults (forecasts
precomputed by the batch forward, A/k calibration, GLFT, fees, queue and latency models) and
with configs exercising several levels, inventory limits, rebates, recorded latency, order
ages, taker orders (post_only off), the conservative queue, the finite AS horizon and a
starting inventory. Both paths must write the same record: every order (side, price, size,
filled, state, level, times, reason, venue id), every order event, every fill (price, size,
fee, liquidity, time, mid), every PnL snapshot, the same summary and metrics -- exactly (both
paths apply the same fills to the same Decimal inventory in the same order, and call the
same compiled strategy functions, so not even float sums differ). Plus: an unsupported run
falls back to the engine with the reason; a failure mid-run keeps every fill made and marks
the run failed; the CLI switch.
"""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from real_data import needs

ROOT = Path(__file__).resolve().parents[1]
CAPTURE = ROOT.parent / "shared" / "data" / "binance" / "usdm" / "btcusdt_20240808.gz"
MESSAGES = 30_000

pytestmark = needs(CAPTURE)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    from bot.importers.binance import import_binance

    d = tmp_path_factory.mktemp("compiled")
    part = d / "btcusdt_slice.gz"
    with gzip.open(CAPTURE, "rt") as src, gzip.open(part, "wt") as dst:
        for i, line in enumerate(src):
            if i >= MESSAGES:
                break
            dst.write(line)
    import_binance([part], d / "rec")
    return d / "rec"


def _cfg(**overrides):
    from bot.config import load_config, with_overrides

    return with_overrides(load_config(ROOT / "config" / "backtest.yaml"), **overrides)


def _run(recording, cfg, db: Path, loop: str, **kw) -> dict:
    from bot.persistence.store import open_store
    from paper_trading.backtest import run_backtest

    st = open_store(str(db))
    try:
        return run_backtest(recording, cfg, st, loop=loop, **kw)
    finally:
        st.close()


def _record(db: Path) -> dict:
    """The run's rows, without row ids and with client ids reduced to their per-run counter
    (the prefix is the database's random installation id)."""
    con = sqlite3.connect(db)
    cid = "substr(client_id, length(rtrim(client_id, '0123456789abcdefghijklmnopqrstuvwxyz')) + 1)"
    out = {
        "orders": con.execute(f"select {cid}, exchange_id, symbol, side, price, size, filled, state, post_only, level, "
                              "created_ns, updated_ns, reason from orders order by id").fetchall(),
        "events": con.execute(f"select {cid}, ts_ns, state, filled, reason from order_events order by id").fetchall(),
        "fills": con.execute(f"select exchange, {cid}, symbol, side, price, size, fee, liquidity, ts_ns, mid, fee_cost, "
                             "fee_currency, fee_rate from fills order by id").fetchall(),
        "pnl": con.execute("select ts_ns, mid, inventory, cash, mtm, pnl, fees_paid, spread_capture from pnl_snapshots "
                           "order by id").fetchall(),
        "run": con.execute("select mode, exchange, symbol, config_json, status from runs").fetchall(),
    }
    summary = json.loads(con.execute("select summary_json from runs").fetchone()[0])
    con.close()
    out["summary"] = _comparable(summary)
    return out


def _comparable(summary: dict) -> dict:
    """The summary without what differs between two runs of the same backtest (ids, wall time, the loop's name)."""
    out = {k: v for k, v in summary.items()
           if k not in ("run_id", "elapsed_s", "events_per_s", "timings_s", "loop", "report")}
    if "metrics" in out:  # the run's wall-clock start and end are not the backtest's
        out["metrics"] = {k: v for k, v in out["metrics"].items() if k not in ("run_id", "started_ns", "ended_ns")}
    return out


def _assert_same(recording, cfg, tmp_path, **kw) -> tuple[dict, dict]:
    s_eng = _run(recording, cfg, tmp_path / "engine.db", "engine", **kw)
    s_cmp = _run(recording, cfg, tmp_path / "compiled.db", "compiled", **kw)
    assert s_eng["loop"].startswith("engine: forced") and s_cmp["loop"] == "compiled"
    a, b = _record(tmp_path / "engine.db"), _record(tmp_path / "compiled.db")
    for table in a:
        assert a[table] == b[table], table
    assert _comparable(s_eng) == _comparable(s_cmp)  # metrics included
    return s_eng, a


def test_defaults_same_record(recording, tmp_path):
    """config/backtest.yaml as `mmbot backtest` runs it: forecasts precomputed for the replay."""
    from paper_trading.backtest import FROM_CONFIG, precomputed_forecaster

    cfg = _cfg()
    fc = precomputed_forecaster(recording, cfg, use_cache=False)
    if fc is FROM_CONFIG:
        pytest.skip("torch is not installed: no precomputed forecasts")
    s, rec = _assert_same(recording, cfg, tmp_path, forecaster=fc)
    # the comparison is not vacuous: quotes were placed, moved, filled, and marked every second
    assert s["events"] > 1000 and s["orders_placed"] > 100 and s["orders_canceled"] > 100 and s["fills"] > 0
    assert len(rec["pnl"]) > 100 and s["strategy"]["A"] != 60.0  # A/k refitted from the trades
    assert {r[7] for r in rec["orders"]} >= {"canceled", "filled"}


CONFIGS = {
    # several levels within the refresh tolerance, an inventory limit that binds, a maker rebate,
    # recorded latency, orders re-placed after 3 s, quotes at the touch (many fills)
    "levels_limits_latency": {"strategy.controls.levels": 3, "strategy.controls.level_spacing_ticks": 4,
                              "strategy.controls.refresh_tolerance_ticks": 2, "strategy.controls.max_inventory": 0.002,
                              "paper.maker_fee": -0.0001, "replay.latency_mode": "recorded", "replay.entry_latency_ms": 2.0,
                              "strategy.controls.max_order_age_s": 3.0, "strategy.pricing.k": 100.0,
                              "strategy.pricing.calibrate_intensity": False, "forecaster.model": "none"},
    # taker orders (post_only off, taker fee), level spacing finer than the tolerance, the
    # conservative queue, the finite Avellaneda-Stoikov horizon, a starting inventory, size shaping
    "taker_as_finite": {"strategy.controls.levels": 3, "strategy.controls.level_spacing_ticks": 1,
                        "strategy.controls.refresh_tolerance_ticks": 5, "paper.maker_fee": 0.0, "paper.taker_fee": 0.0004,
                        "strategy.controls.post_only": False, "strategy.pricing.k": 100.0, "strategy.pricing.A": 200.0,
                        "strategy.pricing.model": "avellaneda_stoikov", "strategy.pricing.horizon": "finite",
                        "paper.initial_base": 0.003, "replay.queue_model": "conservative",
                        "strategy.controls.inventory_size_shape": 1.0, "forecaster.model": "none"},
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_other_configs_same_record_streamed_in_batches(recording, tmp_path, monkeypatch, name):
    """Streamed 20,000 rows at a time: the compiled loop stops at each batch's end and resumes
    with its state in the arrays; it also returns every 97 decisions, and its logs hold 4 rows
    at first, so they are written to the database (and grown) many times during the run."""
    from paper_trading import compiled_backtest
    from paper_trading.stream_venue import StreamingVenue

    monkeypatch.setattr(StreamingVenue, "batch_rows", 20_000)
    monkeypatch.setattr(compiled_backtest, "LOG_ROWS", 4)  # logs written (and grown) many times during the run
    monkeypatch.setattr(compiled_backtest, "STEPS_PER_CALL", 97)  # and the kernel returns every 97 decisions
    calls = []
    s, rec = _assert_same(recording, _cfg(**CONFIGS[name]), tmp_path, on_progress=calls.append)
    assert s["fills"] > 20 and s["orders_placed"] > 300
    assert len([i for i in calls]) > 5  # resumed batch after batch (both runs report progress)
    liq = {r[7] for r in rec["fills"]}
    if name == "taker_as_finite":
        assert "taker" in liq and s["strategy"]["horizon"].endswith("(ended)")
    else:
        # the limit was reached (orders in flight may pass it), and fees were rebates
        assert s["max_abs_inventory"] >= 0.002 - 1e-12 and any(r[6].startswith("-") for r in rec["fills"])


def test_unsupported_run_falls_back_with_reason(recording, tmp_path):
    from bot.errors import ConfigError

    cfg = _cfg(**{"forecaster.model": "none", "paper.initial_base": 0.0005})  # half a lot of 0.001
    s = _run(recording, cfg, tmp_path / "a.db", "auto")
    assert s["loop"] == "engine: paper.initial_base 0.0005 is not a whole number of lots" and s["status"] == "completed"
    with pytest.raises(ConfigError, match="not supported by the compiled loop: paper.initial_base"):
        _run(recording, cfg, tmp_path / "b.db", "compiled")
    assert _run(recording, _cfg(**{"forecaster.model": "none"}), tmp_path / "c.db", "auto")["loop"] == "compiled"


def test_failure_mid_run_keeps_every_fill(recording, tmp_path, monkeypatch):
    """The progress callback raises after the loop has made fills: the error propagates, the
    run is ``failed`` with the error as its reason, every fill made so far is in the database
    (the same fills as the complete run's first ones), and no order is left working."""
    from paper_trading.stream_venue import StreamingVenue

    monkeypatch.setattr(StreamingVenue, "batch_rows", 20_000)
    cfg = _cfg(**CONFIGS["levels_limits_latency"])
    calls: list[int] = []
    _run(recording, cfg, tmp_path / "full.db", "compiled", on_progress=calls.append)
    full = _record(tmp_path / "full.db")

    class Boom(Exception):
        pass

    def boom(i: int) -> None:
        if i >= calls[-3]:
            raise Boom("progress display failed")

    with pytest.raises(Boom):
        _run(recording, cfg, tmp_path / "failed.db", "compiled", on_progress=boom)
    got = _record(tmp_path / "failed.db")
    assert got["run"][0][4] == "failed" and "Boom: progress display failed" in got["summary"]["stop_reason"]
    n = len(got["fills"])
    assert 0 < n < len(full["fills"]) and got["fills"] == full["fills"][:n]
    assert got["summary"]["fills"] == n
    assert all(r[7] in ("filled", "canceled", "rejected") for r in got["orders"])
    assert got["pnl"][:-1] == full["pnl"][:len(got["pnl"]) - 1]


def test_cli_loop_switch(recording, tmp_path):
    cfg = tmp_path / "bt.yaml"
    cfg.write_text((ROOT / "config" / "backtest.yaml").read_text().replace("model: default ", "model: none    "))

    def mmbot(*args):
        return subprocess.run([sys.executable, "-m", "bot.cli", "backtest", "--data", str(recording), "--config", str(cfg),
                               "--no-progress", *args], capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)

    out = mmbot("--db", str(tmp_path / "x.db"), "--json", "--loop", "engine")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["loop"] == "engine: forced (loop: engine)"
    out = mmbot("--db", str(tmp_path / "y.db"), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["loop"] == "compiled"
    bad = mmbot("--db", str(tmp_path / "z.db"), "--loop", "fast")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--loop 'fast'" in bad.stderr
    assert not (tmp_path / "z.db").exists()


def test_window_in_memory_same_record(recording, tmp_path):
    """A `--start/--end` window (recording cut and held in memory, replay from ``start_ns``),
    as `mmbot backtest --start --end` and tune folds run it."""
    from paper_trading.backtest import load_recording
    from paper_trading.window import events_before

    events, meta = load_recording(recording)
    t0 = int(events["local_ts"][0])
    cut = (events_before(events, t0 + 90 * 10**9), meta)
    s, rec = _assert_same(recording, _cfg(**{"forecaster.model": "none"}), tmp_path, events_meta=cut,
                          start_ns=t0 + 30 * 10**9)
    assert s["events"] > 400 and rec["pnl"][0][0] > t0 + 41 * 10**9  # 30 s in, then the 12 s warm-up
