"""The Prometheus endpoint of a real ``mmbot paper`` process on the simulated market, scraped
over HTTP and checked against the database the same process writes.

Not racy by design: during the run only monotone bounds are checked (a counter is copied from
the engine after the event was committed, so the database read after a scrape holds at least
as many rows); exact equality is checked after the run ended, while ``--metrics-linger`` holds
the process (it says so on stderr), before SIGTERM lets it exit. All waits are on lines of
the process's stderr or its exit, with generous ceilings; nothing sleeps.
"""

from __future__ import annotations

import json
import math
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
CEILING_S = 240  # loaded CI machines: generous ceilings, never a timed assertion


class Proc:
    """A subprocess whose stderr lines are read by a thread into a queue."""

    def __init__(self, args: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
        self.p = subprocess.Popen([sys.executable, "-m", "bot.cli", *args], cwd=ROOT, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.p.stderr:  # type: ignore[union-attr]
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_line(self, prefix: str) -> str:
        while True:
            try:
                line = self.lines.get(timeout=CEILING_S)
            except queue.Empty:
                self.p.kill()
                pytest.fail(f"no stderr line starting {prefix!r} within {CEILING_S} s; seen: {self.seen}")
            if line is None:
                pytest.fail(f"process ended (code {self.p.wait()}) before a line starting {prefix!r}; stderr: {self.seen}")
            self.seen.append(line)
            if line.startswith(prefix):
                return line


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted label items): value} of one scrape."""
    with urllib.request.urlopen(url, timeout=60) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict, name: str, **labels) -> float:
    hits = [v for (n, lb), v in m.items() if n == name and all((k, v2) in lb for k, v2 in labels.items())]
    assert len(hits) == 1, f"{name} {labels}: {len(hits)} samples"
    return hits[0]


def db_counts(db: Path, run_id: int) -> dict:
    con = sqlite3.connect(db)
    try:
        fills = con.execute("select side, size, fee from fills where run_id = ?", (run_id,)).fetchall()
        run = con.execute("select status, summary_json from runs where id = ?", (run_id,)).fetchone()
    finally:
        con.close()
    inv = sum((Decimal(sz) if side == "buy" else -Decimal(sz)) for side, sz, _ in fills)
    return {"fills": len(fills), "inventory": inv, "fees": sum(Decimal(f) for *_, f in fills),
            "status": run[0] if run else None, "summary": json.loads(run[1]) if run and run[1] else None}


def test_metrics_scraped_during_and_after_a_paper_run_match_the_database(tmp_path):
    db = tmp_path / "m.db"
    cfg = tmp_path / "c.yaml"
    # a fast lag probe and frequent state copies, so a short run exercises both
    cfg.write_text("metrics:\n  update_interval_s: 0.01\n  loop_lag_interval_s: 0.001\n")
    p = Proc(["paper", "--config", str(cfg), "--exchange", "sim", "--duration", "300", "--speed", "200", "--seed", "5",
              "--db", str(db), "--no-live", "--json", "--metrics-port", "0", "--metrics-linger", "600"])
    try:
        url = p.wait_line("mmbot: metrics on ").split()[-1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")

        # during the run: monotone bounds only
        m1 = scrape(url)
        fills_1 = [v for (n, _), v in m1.items() if n == "mmbot_fills_total"]
        if fills_1:  # the run has started (its labels exist)
            run_id = int(dict(next(lb for (n, lb) in m1 if n == "mmbot_run_info"))["run_id"])
            assert fills_1[0] <= db_counts(db, run_id)["fills"]

        p.wait_line("mmbot: run ended; metrics held on ")
        m = scrape(url)
        run_labels = dict(next(lb for (n, lb) in m if n == "mmbot_run_info"))
        run_id = int(run_labels["run_id"])
        assert run_labels["mode"] == "paper" and run_labels["exchange"] == "sim" and run_labels["symbol"] == "SIM/USD"
        mk = {"exchange": "sim", "symbol": "SIM/USD"}
        assert value(m, "mmbot_run_ended", **mk) == 1
        d = db_counts(db, run_id)
        s = d["summary"]
        assert d["status"] == "completed" and s is not None
        assert d["fills"] > 0
        assert value(m, "mmbot_fills_total", **mk) == d["fills"]
        if fills_1:
            assert fills_1[0] <= value(m, "mmbot_fills_total", **mk)
        assert Decimal(repr(value(m, "mmbot_inventory_base", **mk))) == d["inventory"]
        assert value(m, "mmbot_pnl_quote", component="fees", **mk) == pytest.approx(float(d["fees"]), abs=1e-9)
        assert value(m, "mmbot_pnl_quote", component="total", **mk) == pytest.approx(s["pnl"], abs=1e-9)
        assert value(m, "mmbot_pnl_quote", component="spread_capture", **mk) == pytest.approx(s["spread_capture"], abs=1e-9)
        parts = (value(m, "mmbot_pnl_quote", component="spread_capture", **mk) + value(m, "mmbot_pnl_quote", component="inventory", **mk)
                 - value(m, "mmbot_pnl_quote", component="fees", **mk))
        assert parts == pytest.approx(s["pnl"], abs=1e-9)
        assert value(m, "mmbot_orders_placed_total", **mk) == s["orders_placed"]
        assert value(m, "mmbot_orders_canceled_total", **mk) == s["orders_canceled"]
        assert value(m, "mmbot_orders_rejected_total", **mk) == s["orders_rejected"]
        assert value(m, "mmbot_market_events_total", **mk) == s["events"]
        assert value(m, "mmbot_volume_quote_total", **mk) == pytest.approx(s["volume_quote"], rel=1e-12)
        assert value(m, "mmbot_mid_price", **mk) == s["final_mid"]
        # every processed event observed once in the latency histogram
        assert value(m, "mmbot_tick_to_quote_seconds_count", **mk) == s["events"]
        assert value(m, "mmbot_tick_to_quote_seconds_sum", **mk) > 0
        # the forecaster: the source in use and the guard's state as the run's summary has them
        fc = s["forecaster"]
        assert value(m, "mmbot_forecast_source", source=fc["source"], **mk) == 1
        assert value(m, "mmbot_forecast_guard_fallback", head="vol", **mk) == (1 if fc["vol_fallback"] else 0)
        assert value(m, "mmbot_forecast_guard_switches_total", head="vol", **mk) == fc["guard_switches"]["vol"]
        # the simulated market has no rate-limited client; staleness and loop lag are measured
        assert math.isnan(value(m, "mmbot_rate_limit_budget_per_second", **mk))
        assert value(m, "mmbot_feed_staleness_seconds", **mk) >= 0
        assert value(m, "mmbot_event_loop_lag_seconds_count") >= 1
        assert value(m, "mmbot_event_loop_lag_last_seconds") >= 0
        assert value(m, "process_resident_memory_bytes") > 0
    finally:
        if p.p.poll() is None:
            p.p.send_signal(signal.SIGTERM)
    out, _ = p.p.communicate(timeout=CEILING_S)
    assert p.p.returncode == 0, p.seen
    assert json.loads(out.strip().splitlines()[-1])["fills"] == d["fills"]


def test_metrics_port_in_use_is_one_line_and_exit_2(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "bot.cli", "paper", "--exchange", "sim", "--duration", "5", "--speed", "0",
                            "--db", str(tmp_path / "x.db"), "--no-live", "--metrics-port", str(port)],
                           cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=CEILING_S)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and f"--metrics-port {port}" in err[0] and "Traceback" not in r.stderr


def test_metrics_port_out_of_range_is_refused(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bot.cli", "paper", "--exchange", "sim", "--duration", "5", "--db", str(tmp_path / "x.db"),
                        "--no-live", "--metrics-port", "70000"],
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=CEILING_S)
    assert r.returncode == 2 and "--metrics-port" in r.stderr and "Traceback" not in r.stderr


HYPERLIQUID = ROOT.parent / "shared" / "data" / "binance" / "hyperliquid" / "btcusd_20250126.gz"


def test_backtest_on_a_real_recording_serves_metrics_and_writes_json_logs_matching_the_database(tmp_path):
    """``mmbot backtest`` (a replay at full speed) with both: the recording's market labels, the
    fills counter and the JSON fill lines equal the database's fills."""
    if not HYPERLIQUID.exists():
        pytest.skip(f"real market data not found at {HYPERLIQUID}")
    from bot.importers.hyperliquid import import_hyperliquid

    rec = tmp_path / "rec"
    import_hyperliquid([HYPERLIQUID], rec)
    db, log = tmp_path / "b.db", tmp_path / "b.jsonl"
    cfg = tmp_path / "tight.yaml"  # quotes at the touch (a spread finer than the $1 tick), so the short capture fills us
    cfg.write_text("forecaster:\n  model: none\nstrategy:\n  pricing:\n    gamma: 0.0001\n    k: 5.0\n    sigma: 1.0\n")
    p = Proc(["backtest", "--data", str(rec), "--config", str(cfg), "--db", str(db), "--out", str(tmp_path / "rep"), "--no-progress", "--json",
              "--metrics-port", "0", "--metrics-linger", "600", "--log-json", str(log)])
    try:
        url = p.wait_line("mmbot: metrics on ").split()[-1]
        p.wait_line("mmbot: run ended; metrics held on ")
        m = scrape(url)
        run_labels = dict(next(lb for (n, lb) in m if n == "mmbot_run_info"))
        run_id = int(run_labels["run_id"])
        assert run_labels["mode"] == "backtest" and run_labels["exchange"] == "hyperliquid"
        mk = {"exchange": "hyperliquid", "symbol": run_labels["symbol"]}
        d = db_counts(db, run_id)
        assert d["status"] == "completed" and d["fills"] > 0
        assert value(m, "mmbot_fills_total", **mk) == d["fills"]
        assert value(m, "mmbot_market_events_total", **mk) == d["summary"]["events"]
        assert Decimal(repr(value(m, "mmbot_inventory_base", **mk))) == d["inventory"]
    finally:
        if p.p.poll() is None:
            p.p.send_signal(signal.SIGTERM)
    p.p.communicate(timeout=CEILING_S)
    assert p.p.returncode == 0, p.seen
    lines = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines()]
    fill_lines = [x for x in lines if x["event"] == "fill"]
    assert len(fill_lines) == d["fills"]
    assert all(x["run_id"] == run_id and x["exchange"] == "hyperliquid" and x["mode"] == "backtest" for x in fill_lines)


def test_backtest_compare_refuses_metrics_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bot.cli", "backtest", "--data", str(tmp_path), "--compare", "glft,symmetric",
                        "--metrics-port", "0", "--db", str(tmp_path / "x.db")],
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=CEILING_S)
    assert r.returncode == 2 and "--compare" in r.stderr and "Traceback" not in r.stderr


async def test_rate_limit_metrics_of_a_polled_feed_against_a_local_binance(fake_binance, tmp_path):
    """On live public data (ccxt's REST client against a local Binance server) the rate-limit
    metrics come from the polling source: its budget as configured, its request count never
    ahead of the requests the server received (read after the scrape)."""
    import asyncio

    cfg = tmp_path / "live.yaml"
    cfg.write_text(f"market_data:\n  transport: rest\n  api_url: {fake_binance.base_url}\n  poll_interval_s: 0.05\n  rate_limit_per_s: 20\n"
                   "strategy:\n  pricing:\n    gamma: 0.001\n    k: 0.5\n    initial_sigma: 5.0\n"
                   "  controls:\n    order_size: 0.001\n    max_inventory: 0.01\nforecaster:\n  model: none\n"
                   "metrics:\n  update_interval_s: 0.01\n")
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "paper", "--config", str(cfg), "--exchange", "binance", "--symbol", "BTC/USDT",
        "--duration", "3600", "--db", str(tmp_path / "l.db"), "--no-live", "--json", "--metrics-port", "0",
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        line = (await asyncio.wait_for(p.stderr.readline(), CEILING_S)).decode()
        assert line.startswith("mmbot: metrics on "), line
        url = line.split()[-1]
        mk = {"exchange": "binance", "symbol": "BTC/USDT"}
        loop = asyncio.get_running_loop()
        end = loop.time() + CEILING_S
        while True:  # wait for the condition (three polls counted), with a ceiling
            m = await asyncio.to_thread(scrape, url)
            served = fake_binance.requests["/api/v3/depth"]
            reqs = [v for (n, lb), v in m.items() if n == "mmbot_rate_limit_requests_total"]
            if reqs:
                assert reqs[0] <= served  # copied after the poll's event was processed
                if reqs[0] >= 3:
                    break
            assert p.returncode is None and loop.time() < end, "no three polls counted"
            await asyncio.sleep(0.05)
        assert value(m, "mmbot_rate_limit_budget_per_second", **mk) == 20
        assert 0 <= value(m, "mmbot_rate_limit_window_used", **mk) <= 20
        assert value(m, "mmbot_feed_staleness_seconds", **mk) >= 0
        assert value(m, "mmbot_run_ended", **mk) == 0
        assert not math.isnan(value(m, "mmbot_mid_price", **mk))
        p.send_signal(signal.SIGINT)
        await asyncio.wait_for(p.communicate(), CEILING_S)
        assert p.returncode == 130
    finally:
        if p.returncode is None:
            p.kill()
            await p.communicate()


class CrossingBidStrategy:
    """A real strategy that always bids at the best ask: a post-only venue rejects every bid."""

    def __init__(self, market) -> None:
        self.market = market

    def on_trades(self, trades, now_ns) -> None:
        pass

    def on_update(self, book, inventory, now_ns, forecast=None):
        from strategies.base import QuoteLevel, Quotes

        ask = book.best_ask()
        px = Decimal(repr(ask[0] if isinstance(ask, tuple) else ask)).quantize(self.market.tick)
        return Quotes(bids=[QuoteLevel(px, self.market.lot)], asks=[], mid=book.mid())


async def test_order_errors_counted_by_type_and_logged_as_json(tmp_path):
    """An engine on the simulated market whose bids all cross: each rejection is counted under
    type post_only, logged as one order_error JSON line, and stored as a rejected order."""
    from bot.engine import Engine
    from bot.observability import Observers
    from bot.observability.jsonlog import JsonLog, JsonLogObserver
    from bot.observability.metrics import MetricsObserver, MmbotMetrics
    from bot.persistence.store import open_store
    from paper_trading.fees import MakerTakerFees
    from paper_trading.fill_models import IntensityFillModel
    from paper_trading.paper_exchange import PaperExchange
    from paper_trading.sim_market import SimulatedMarket

    store = open_store(str(tmp_path / "e.db"))
    jl = JsonLog(tmp_path / "e.jsonl")
    metrics = MmbotMetrics()
    try:
        eng = Engine(SimulatedMarket(duration_s=5.0, speed=0.0, seed=3), PaperExchange(IntensityFillModel(0.2, 1.5, seed=4), MakerTakerFees(0, 0)),
                     CrossingBidStrategy, store, handle_signals=False, config_snapshot={"exchange": "sim"})
        eng.observer = Observers(MetricsObserver(metrics), JsonLogObserver(jl))
        summary = await eng.run()
    finally:
        jl.close()
        store.close()
    from prometheus_client import generate_latest

    m = {}
    for fam in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for s in fam.samples:
            m[(s.name, tuple(sorted(s.labels.items())))] = s.value
    n = summary["orders_rejected"]
    assert n > 0
    assert value(m, "mmbot_order_errors_total", type="post_only", exchange="sim", symbol="SIM/USD") == n
    assert value(m, "mmbot_orders_rejected_total", exchange="sim", symbol="SIM/USD") == n
    con = sqlite3.connect(tmp_path / "e.db")
    try:
        assert con.execute("select count(*) from orders where state = 'rejected'").fetchone()[0] == n
    finally:
        con.close()
    errs = [json.loads(x) for x in (tmp_path / "e.jsonl").read_text().splitlines() if '"order_error"' in x]
    assert len(errs) == n and all(e["type"] == "post_only" and "would cross" in e["reason"] for e in errs)


async def test_loop_lag_probe_sees_a_blocked_loop():
    """A step that holds the loop for 50 ms (a busy wait on the monotonic clock) delays the
    probe's 1 ms wake-up by at least 49 ms: a lower bound that load can only raise."""
    import asyncio
    import time

    from bot.observability.looplag import LoopLagProbe

    seen: list[float] = []
    got = asyncio.Event()
    probe = LoopLagProbe(0.001, lambda s: (seen.append(s), got.set()))
    probe.start()
    await asyncio.sleep(0)  # the probe's task starts its sleep
    t_end = time.monotonic() + 0.05
    while time.monotonic() < t_end:  # hold the loop, as a long synchronous step would
        pass
    await asyncio.wait_for(got.wait(), CEILING_S)
    probe.stop()
    assert seen[0] >= 0.049 and probe.max_s >= 0.049


async def test_a_failing_observer_never_stops_the_run(tmp_path, caplog):
    """An observer that raises in every hook: the run completes as without it, the other
    observer still sees every event, and each failing hook is logged once."""
    from bot.engine import Engine
    from bot.observability import Observer, Observers
    from bot.persistence.store import open_store
    from paper_trading.fees import MakerTakerFees
    from paper_trading.fill_models import IntensityFillModel
    from paper_trading.paper_exchange import PaperExchange
    from paper_trading.sim_market import SimulatedMarket

    class Broken(Observer):
        def run_started(self, engine):
            raise RuntimeError("broken start")

        def tick(self, engine):
            raise RuntimeError("broken tick")

    class Counting(Observer):
        ticks = 0

        def tick(self, engine):
            Counting.ticks += 1

    store = open_store(str(tmp_path / "f.db"))
    try:
        eng = Engine(SimulatedMarket(duration_s=5.0, speed=0.0, seed=3), PaperExchange(IntensityFillModel(0.2, 1.5, seed=4), MakerTakerFees(0, 0)),
                     CrossingBidStrategy, store, handle_signals=False)
        eng.observer = Observers(Broken(), Counting())
        with caplog.at_level("WARNING", logger="mmbot.observability"):
            summary = await eng.run()
    finally:
        store.close()
    assert summary["status"] == "completed" and Counting.ticks == summary["events"] > 1
    msgs = [r.getMessage() for r in caplog.records if r.name == "mmbot.observability"]
    assert len(msgs) == 2 and any("Broken.tick failed" in m for m in msgs) and any("Broken.run_started failed" in m for m in msgs)
