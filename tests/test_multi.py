"""Many markets in one process (config ``markets:``): real ``mmbot paper`` processes on three
simulated markets, the record (one run per market, one session), ``mmbot report --session``,
the Prometheus endpoint, and in-process runs of the account's risk and of feed isolation.

No timed assertions: the waits are on process output, process exit or conditions, with
generous ceilings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from bot.config import config_from_dict, market_specs
from bot.multi import ForecasterPool, build_market_runs, new_session_id, run_markets
from bot.persistence.store import Store, make_engine

ROOT = Path(__file__).resolve().parents[1]
CEILING_S = 240
sys.path.insert(0, str(Path(__file__).parent))
from test_metrics_endpoint import Proc, scrape, value  # noqa: E402


def three_markets(db: Path, duration=60.0, speed=0.0, **extra) -> dict:
    """Three simulated markets, shared defaults plus per-market overrides."""
    cfg = {
        "duration_s": duration,
        "database": {"url": str(db)},
        "forecaster": {"model": "none"},
        "sim": {"speed": speed},
        "markets": [
            {"exchange": "sim", "symbol": "AAA/USD", "sim": {"seed": 11}},
            {"exchange": "sim", "symbol": "BBB/USD", "sim": {"seed": 12, "s0": 50.0}, "strategy": {"pricing": {"gamma": 0.2}}},
            {"exchange": "sim", "symbol": "CCC/USDT", "sim": {"seed": 13, "sigma": 0.12}},
        ],
    }
    cfg.update(extra)
    return cfg


def write(tmp_path: Path, cfg: dict, name="multi.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=CEILING_S)


def db_rows(db: Path, sql: str, *args) -> list:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


# -- one process, three markets, one session ---------------------------------------------
def test_one_paper_process_quotes_three_markets_into_one_session(tmp_path):
    db = tmp_path / "m.db"
    log = tmp_path / "events.jsonl"
    r = cli("paper", "--config", str(write(tmp_path, three_markets(db))), "--no-live", "--json", "--log-json", str(log))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    session = out["session_id"]
    runs = db_rows(db, "select id, mode, exchange, symbol, status, session_id from runs order by id")
    assert [(m, s, st, sid) for _, m, _, s, st, sid in runs] == [
        ("paper", "AAA/USD", "completed", session), ("paper", "BBB/USD", "completed", session),
        ("paper", "CCC/USDT", "completed", session)]
    per_run = {}
    for run_id, *_ in runs:
        orders = db_rows(db, "select count(*) from orders where run_id = ?", run_id)[0][0]
        fills = db_rows(db, "select side, price, size, fee from fills where run_id = ?", run_id)
        working = db_rows(db, "select count(*) from orders where run_id = ? and state in ('new','open','partially_filled')", run_id)[0][0]
        assert orders > 0 and fills, f"run {run_id}: {orders} orders, {len(fills)} fills"
        assert working == 0  # every market's shutdown cancelled its orders
        per_run[run_id] = (orders, fills)
    # the JSON log: each fill line carries its own run and market
    lines = [json.loads(ln) for ln in log.read_text().splitlines()]
    fill_lines = [(ln["run_id"], ln["symbol"]) for ln in lines if ln["event"] == "fill"]
    for run_id, _, _, symbol, *_ in runs:
        assert fill_lines.count((run_id, symbol)) == len(per_run[run_id][1])
    assert len(fill_lines) == sum(len(f) for _, f in per_run.values())
    # each market ran on its own parameters: the per-market overrides reached the runs' configs
    cfgs = {s: json.loads(c) for s, c in db_rows(db, "select symbol, config_json from runs")}
    assert cfgs["BBB/USD"]["sim"]["s0"] == 50.0 and cfgs["BBB/USD"]["strategy"]["pricing"]["gamma"] == 0.2
    assert cfgs["AAA/USD"]["sim"]["s0"] == 100.0 and cfgs["AAA/USD"]["strategy"]["pricing"]["gamma"] == 0.1
    assert cfgs["CCC/USDT"]["sim"]["seed"] == 13 and cfgs["CCC/USDT"]["markets"] is None

    rep = cli("report", "--db", str(db), "--session", session, "--json")
    assert rep.returncode == 0, rep.stderr
    sr = json.loads(rep.stdout)
    assert [m["symbol"] for m in sr["markets"]] == ["AAA/USD", "BBB/USD", "CCC/USDT"]
    assert sr["currencies_differ"] is True and set(sr["totals"]) == {"USD", "USDT"}
    for m in sr["markets"]:
        orders, fills = per_run[m["run_id"]]
        assert m["orders"] == orders and m["fills"] == len(fills)
        vol = sum(Decimal(p) * Decimal(s) for _, p, s, _ in fills)
        assert m["volume_quote"] == pytest.approx(float(vol), rel=1e-12)
    for cur, members in (("USD", ("AAA/USD", "BBB/USD")), ("USDT", ("CCC/USDT",))):
        ms = [m for m in sr["markets"] if m["symbol"] in members]
        t = sr["totals"][cur]
        assert t["markets"] == len(members)
        for k in ("orders", "fills", "volume_quote", "total_pnl", "spread_capture", "inventory_pnl", "fees"):
            assert t[k] == pytest.approx(sum(m[k] for m in ms), abs=1e-9), k
    # each market's total is its run's own report (and its paper summary)
    by_run = {m["run_id"]: m for m in out["markets"]}
    for m in sr["markets"]:
        assert m["total_pnl"] == pytest.approx(by_run[m["run_id"]]["pnl"], abs=1e-6)
    # the table says which currency and that they are not added
    table = cli("report", "--db", str(db), "--session", "latest")
    assert table.returncode == 0 and "total USD" in table.stdout and "total USDT" in table.stdout
    assert "quote currencies differ (USD, USDT)" in " ".join(table.stdout.split())


def test_prometheus_scrape_of_a_running_three_market_process(tmp_path):
    db = tmp_path / "m.db"
    # until stopped (a rolling horizon), so that the scrape happens while every market runs
    cfg = three_markets(db, duration=None, speed=20.0,
                        metrics={"update_interval_s": 0.01})
    cfg["strategy"] = {"pricing": {"horizon": "rolling"}}
    p = Proc(["paper", "--config", str(write(tmp_path, cfg)), "--no-live", "--json", "--metrics-port", "0",
              "--metrics-linger", "600"])
    symbols = ("AAA/USD", "BBB/USD", "CCC/USDT")
    try:
        url = p.wait_line("mmbot: metrics on ").split()[-1]
        deadline = time.monotonic() + CEILING_S
        while True:  # a condition, not a timing: every market has events and fills
            m = scrape(url)
            fills = {dict(lb).get("symbol"): v for (n, lb), v in m.items() if n == "mmbot_fills_total"}
            if all(fills.get(s, 0) > 0 for s in symbols):
                break
            assert p.p.poll() is None, p.seen
            assert time.monotonic() < deadline, f"not every market filled within {CEILING_S} s: {fills}"
            time.sleep(0.2)
        for s in symbols:
            assert value(m, "mmbot_run_ended", exchange="sim", symbol=s) == 0  # scraped while running
            assert value(m, "mmbot_market_events_total", exchange="sim", symbol=s) > 0
        run_ids = {dict(lb)["symbol"]: int(dict(lb)["run_id"]) for (n, lb) in m if n == "mmbot_run_info"}
        assert sorted(run_ids) == list(symbols) and len(set(run_ids.values())) == 3
        p.p.send_signal(signal.SIGTERM)  # stops every market
        p.wait_line("mmbot: run ended; metrics held on ")
        m = scrape(url)
        for s in symbols:
            n_db = db_rows(db, "select count(*) from fills where run_id = ?", run_ids[s])[0][0]
            assert value(m, "mmbot_run_ended", exchange="sim", symbol=s) == 1
            assert value(m, "mmbot_fills_total", exchange="sim", symbol=s) == n_db > 0
    finally:
        if p.p.poll() is None:
            p.p.send_signal(signal.SIGTERM)
    p.p.communicate(timeout=CEILING_S)
    assert p.p.returncode == 143, p.seen
    rows = db_rows(db, "select status, session_id, summary_json from runs")
    assert len(rows) == 3 and len({r[1] for r in rows}) == 1
    assert all(st == "interrupted" and json.loads(sj)["stop_reason"] == "SIGTERM" for st, _, sj in rows)


# -- in-process runs -----------------------------------------------------------------------
def _runs(tmp_path: Path, cfg: dict, on_tick=None):
    cfg = config_from_dict(cfg, "(test)")
    eng = make_engine(str(tmp_path / "r.db"))
    runs = build_market_runs(market_specs(cfg), lambda: Store(eng), new_session_id(), on_tick=on_tick, pool=ForecasterPool())
    return cfg, runs


def _close(runs) -> None:
    for r in runs:
        r.store.close()


def test_account_kill_switch_stops_every_market(tmp_path):
    db = tmp_path / "r.db"
    c = three_markets(db, duration=600.0, account={"max_total_loss": 0.5})
    # inventory from the start (long on one market, short on another): the summed PnL is a random
    # walk from 0 and soon crosses -0.5 quote (whatever the seeds, almost surely)
    c["markets"][0]["paper"] = {"initial_base": 50.0, "initial_quote": -5000.0}
    c["markets"][1]["paper"] = {"initial_base": -50.0, "initial_quote": 2500.0}
    cfg, runs = _runs(tmp_path, c)
    try:
        risk = asyncio.run(run_markets(runs, cfg.account, handle_signals=False))
    finally:
        _close(runs)
    assert risk.killed.startswith("account kill switch: total loss ")
    for r in runs:
        assert r.error is None
        assert r.summary["stop_reason"] == risk.killed
        assert r.summary["events"] < 12000  # stopped before its 600 s (12000 steps) were over
    rows = db_rows(db, "select id, status, summary_json from runs")
    assert len(rows) == 3 and all(json.loads(sj)["stop_reason"].startswith("account kill switch") for _, _, sj in rows)
    assert all(st == "killed" for _, st, _ in rows)
    assert db_rows(db, "select count(*) from orders where state in ('new','open','partially_filled')")[0][0] == 0
    # the loss that fired it: one currency's markets summed below -0.5
    cur = risk.killed.split()[6]
    assert sum(r.summary["pnl"] for r in runs if r.spec.cfg.symbol.endswith("/" + cur)) < -0.5


def _btc_markets(db: Path, cap: float | None) -> dict:
    cfg = {
        "duration_s": 150.0, "database": {"url": str(db)}, "forecaster": {"model": "none"},
        "sim": {"speed": 0.0, "sigma": 0.3},  # a weak inventory skew: inventories wander up to +-8
        "strategy": {"pricing": {"gamma": 0.005}, "controls": {"max_inventory_orders": 8}},
        "markets": [{"symbol": "BTC/USDT", "sim": {"seed": 21}}, {"symbol": "BTC/USDC", "sim": {"seed": 22}}],
    }
    if cap is not None:
        cfg["account"] = {"max_asset_inventory": {"BTC": cap}}
    return cfg


@pytest.mark.parametrize("cap", [None, 2.0])
def test_per_asset_inventory_cap_over_two_markets_of_one_asset(tmp_path, cap):
    seen = []

    def track(engine):
        seen.append(sum((e.inventory.base for e in engines), Decimal(0)))

    cfg, runs = _runs(tmp_path, _btc_markets(tmp_path / "r.db", cap), on_tick=track)
    engines = [r.engine for r in runs]
    try:
        asyncio.run(run_markets(runs, cfg.account, handle_signals=False))
    finally:
        _close(runs)
    assert all(r.error is None for r in runs)
    worst = max(abs(x) for x in seen)
    if cap is None:
        assert worst > 2  # without the cap the two markets together go beyond it ...
    else:
        assert worst <= 2  # ... with it, BTC summed over both never does
        assert all(r.summary["fills"] > 0 for r in runs)


class FailingSource:
    """A real market source that raises (``mode="raise"``) or falls silent forever
    (``mode="stall"``) after ``after`` events."""

    def __init__(self, inner, after: int, mode: str) -> None:
        self.inner, self.after, self.mode, self.n = inner, after, mode, 0
        self.stalled = asyncio.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def next(self):
        self.n += 1
        if self.n > self.after:
            if self.mode == "raise":
                raise ConnectionError("feed broke")
            self.stalled.set()
            await asyncio.Event().wait()  # never: stopped by the test
        return await self.inner.next()


def test_a_failing_feed_pulls_only_its_market(tmp_path):
    db = tmp_path / "r.db"
    after_failure: dict[int, int] = {}

    def track(engine):  # the other markets' working orders while market 0 is down
        if runs[0].engine.stop_reason and engine is not runs[0].engine:
            after_failure[id(engine)] = max(after_failure.get(id(engine), 0), len(engine.om.working))

    cfg, runs = _runs(tmp_path, three_markets(db, duration=120.0), on_tick=track)
    runs[0].engine.source = FailingSource(runs[0].engine.source, 300, "raise")
    try:
        asyncio.run(run_markets(runs, cfg.account, handle_signals=False))
    finally:
        _close(runs)
    assert isinstance(runs[0].error, ConnectionError) and runs[0].summary["status"] == "failed"
    assert [r.summary["status"] for r in runs[1:]] == ["completed", "completed"]
    assert all(r.summary["events"] == 2400 for r in runs[1:])  # their whole 120 s
    assert all(after_failure.get(id(r.engine), 0) > 0 for r in runs[1:])  # quoting on after the failure
    st = dict(db_rows(db, "select symbol, status from runs"))
    assert st == {"AAA/USD": "failed", "BBB/USD": "completed", "CCC/USDT": "completed"}
    # the status panel: a row per market, the failed one says why
    from rich.console import Console

    from bot.status import markets_table

    con = Console(record=True, width=250)
    con.print(markets_table([r.engine for r in runs]))
    lines = [ln for ln in con.export_text().splitlines() if "sim " in ln]
    assert [ln.split("│")[1].strip() for ln in lines] == ["sim AAA/USD", "sim BBB/USD", "sim CCC/USDT"]
    assert "stopped: error: ConnectionError: feed broke" in lines[0]
    assert lines[1].split("│")[7].strip() == str(runs[1].summary['fills'])
    run0 = runs[0].summary["run_id"]
    assert db_rows(db, "select count(*) from orders where run_id = ? and state in ('new','open','partially_filled')", run0)[0][0] == 0
    assert db_rows(db, "select count(*) from orders where run_id = ?", run0)[0][0] > 0


def test_a_silent_feed_has_its_quotes_pulled_while_the_others_quote(tmp_path):
    db = tmp_path / "r.db"
    cfg, runs = _runs(tmp_path, three_markets(db, duration=None, speed=50.0, account={"stale_after_s": 0.3},
                                              strategy={"pricing": {"horizon": "rolling"}}))
    stalled = FailingSource(runs[0].engine.source, 400, "stall")
    runs[0].engine.source = stalled
    seen: dict = {}

    async def main():
        task = asyncio.ensure_future(run_markets(runs, cfg.account, handle_signals=False))
        e0 = runs[0].engine
        deadline = time.monotonic() + CEILING_S
        await stalled.stalled.wait()
        seen["working_at_stall"] = len(e0.om.working)
        while not e0.quotes_pulled:
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.05)
        seen["working_after_pull"] = len(e0.om.working)
        events = [r.engine.state.events for r in runs[1:]]
        # the others go on: new events, and orders working (a loaded machine may have paused the
        # whole process long enough for them to be pulled too; they quote again on their next event)
        while any(r.engine.state.events <= n or not r.engine.om.working for r, n in zip(runs[1:], events)):
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.05)
        seen["others_working"] = [len(r.engine.om.working) for r in runs[1:]]
        seen["events0"] = e0.state.events
        for r in runs:
            r.engine.stop("test over")
        await task

    try:
        asyncio.run(main())
    finally:
        _close(runs)
    assert seen["working_at_stall"] > 0 and seen["working_after_pull"] == 0
    assert all(n > 0 for n in seen["others_working"])
    assert runs[0].engine.quotes_pulled.startswith("no market data for ")
    assert seen["events0"] == 400
    assert all(r.error is None for r in runs)


def test_markets_share_one_loaded_model_but_not_its_state(tmp_path):
    cfg = config_from_dict({"forecaster": {"model": "default"},
                            "markets": [{"symbol": "A/USD"}, {"symbol": "B/USD", "forecaster": {"guard": False}}]})
    pool = ForecasterPool()
    a, b = (pool.get(s.cfg) for s in market_specs(cfg))
    assert pool.loads == 1
    assert a is not b and a.feats is not b.feats and a.guard is not b.guard
    assert a.predictor.W is b.predictor.W  # the weights, loaded once
    assert a.guard_cfg.enabled and not b.guard_cfg.enabled


# -- bad configs -----------------------------------------------------------------------------
BAD = [
    ({"markets": [{"symbol": "A/USD"}, {"symbol": "A/USD"}]},
     "markets[1] (sim A/USD): the same market as markets[0]"),
    ({"markets": [{"symbol": "A/USD"}, {"symbol": "B/USD", "strategy": {"pricing": {"gamma": -1}}}]},
     "markets[1] (sim B/USD): strategy.pricing.gamma: Input should be greater than 0"),
    ({"markets": [{"exchange": "sim"}]}, "markets[0].symbol: required"),
    ({"markets": [{"symbol": "A/USD", "database": {"url": "x.db"}}]}, "markets[0].database: not a per-market field"),
    ({"markets": [{"symbol": "A/USD", "sim": {"seeed": 3}}]}, "markets[0] (sim A/USD): sim.seeed: unknown field"),
    ({"markets": []}, "markets: an empty list"),
    ({"markets": ["A/USD"]}, "markets[0]: must be a mapping"),
    ({"markets": [{"symbol": "A/USD", "sim": 3}]}, "markets[0] (sim A/USD): sim: must be a mapping"),
    ({"account": {"max_asset_inventory": {"BTC": -1}}, "markets": [{"symbol": "A/USD"}]}, "account.max_asset_inventory.BTC"),
    ({"markets": [{"symbol": "A/USD"}, {"exchange": "binanse", "symbol": "BTC/USDT"}]},
     "markets[1] (binanse BTC/USDT): exchange: unknown exchange 'binanse' (ccxt knows: binance"),
]


@pytest.mark.parametrize("cfg,expected", BAD, ids=[e for _, e in BAD])
def test_bad_multi_market_configs_are_one_line(tmp_path, cfg, expected):
    cfg = {"database": {"url": str(tmp_path / "x.db")}, **cfg}
    path = write(tmp_path, cfg)
    from bot.cli import run

    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = run(["paper", "--config", str(path), "--no-live"])
    lines = err.getvalue().strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"mmbot: error: invalid config {path}: ") and expected in lines[0], lines[0]
    assert not (tmp_path / "x.db").exists()


def test_markets_refuse_single_market_options(tmp_path):
    path = write(tmp_path, three_markets(tmp_path / "x.db"))
    from bot.cli import run

    import contextlib
    import io

    for opt in (["--symbol", "X/USD"], ["--replay", str(tmp_path)]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = run(["paper", "--config", str(path), "--no-live", *opt])
        assert code == 2 and err.getvalue().startswith(f"mmbot: error: {opt[0]}: the config lists several markets")


HYPERLIQUID = ROOT.parent / "shared" / "data" / "binance" / "hyperliquid" / "btcusd_20250126.gz"


@pytest.fixture(scope="module")
def hl_recording(tmp_path_factory) -> Path:
    from real_data import require

    require(HYPERLIQUID)
    from bot.importers.hyperliquid import import_hyperliquid

    rec = tmp_path_factory.mktemp("hl") / "rec"
    import_hyperliquid([HYPERLIQUID], rec)
    return rec


def test_a_replayed_recording_and_two_simulated_markets_in_one_session(tmp_path, hl_recording):
    """paper: a market replaying a real recording (Hyperliquid BTC, 26 s) next to two simulated ones."""
    db = tmp_path / "m.db"
    cfg = three_markets(db, duration=60.0, replay={"speed": 0.0})
    # quotes at the touch (a spread finer than the $1 tick), so the short capture fills us
    cfg["markets"][0] = {"exchange": "hyperliquid", "symbol": "BTC/USD", "data": str(hl_recording),
                         "strategy": {"pricing": {"gamma": 0.0001, "k": 5.0, "sigma": 1.0}}}
    r = cli("paper", "--config", str(write(tmp_path, cfg)), "--no-live", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    rows = db_rows(db, "select id, symbol, status, session_id, config_json from runs order by id")
    assert [(s, st, sid) for _, s, st, sid, _ in rows] == [
        ("BTC/USD", "completed", out["session_id"]), ("BBB/USD", "completed", out["session_id"]),
        ("CCC/USDT", "completed", out["session_id"])]
    assert json.loads(rows[0][4])["data"]["exchange"] == "hyperliquid"
    for run_id, *_ in rows:
        assert db_rows(db, "select count(*) from fills where run_id = ?", run_id)[0][0] > 0
    rep = json.loads(cli("report", "--db", str(db), "--session", out["session_id"], "--json").stdout)
    assert [m["source"] for m in rep["markets"]] == ["hyperliquid recording", "the simulated market", "the simulated market"]

    # the entry must name the recording's market (the record and the metrics label it so)
    cfg["markets"][0]["symbol"] = "ETH/USD"
    bad = cli("paper", "--config", str(write(tmp_path, cfg, "bad.yaml")), "--no-live")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "markets[0] (hyperliquid ETH/USD): data: " in bad.stderr and "is a recording of hyperliquid BTC/USD" in bad.stderr


# -- live public data: one ccxt client per exchange ---------------------------------------
def _binance_markets(db: Path, api_url: str) -> dict:
    live = {"pricing": {"gamma": 0.001, "k": 0.5, "initial_sigma": 5.0}, "controls": {"order_size": 0.001, "max_inventory": 0.01}}
    return {
        "duration_s": 3600.0, "database": {"url": str(db)}, "forecaster": {"model": "none"},
        "market_data": {"transport": "rest", "api_url": api_url, "poll_interval_s": 0.2, "rate_limit_per_s": 20},
        "markets": [
            {"exchange": "binance", "symbol": "BTC/USDT", "strategy": live},
            {"exchange": "binance", "symbol": "ETH/USDT", "market_data": {"rate_limit_per_s": 8},  # min notional 5 USDT
             "strategy": {**live, "controls": {"order_size": 0.002, "max_inventory": 0.02}}},
            {"exchange": "sim", "symbol": "SIM/USD", "sim": {"speed": 10.0}},
        ],
    }


def test_markets_of_one_exchange_get_one_client_and_one_request_budget(tmp_path):
    cfg, runs = _runs(tmp_path, _binance_markets(tmp_path / "r.db", "http://127.0.0.1:9"))
    try:
        a, b, sim = (r.engine.source for r in runs)
        assert a._throttler is b._throttler and a.rate_limit_per_s == b.rate_limit_per_s == 8  # the smallest
        assert a._shared is b._shared
        assert not hasattr(sim, "_throttler")
    finally:
        _close(runs)


async def test_paper_on_live_public_books_of_two_markets_shares_one_client(fake_binance, tmp_path):
    """Two Binance markets (REST polling against a local Binance on 127.0.0.1) and a simulated
    one in one process: ccxt loads the markets once (one client), both Binance markets quote."""
    from test_cli_live_data import start_mmbot, wait_then_interrupt
    from waiting import db_count

    fake_binance.set_book([(3000.00, 5.0), (2999.99, 5.0)], [(3000.01, 5.0), (3000.02, 5.0)], symbol="ETHUSDT")
    db = tmp_path / "live.db"
    path = write(tmp_path, _binance_markets(db, fake_binance.base_url))
    p = await start_mmbot("paper", "--config", str(path), "--no-live", "--json")

    def quoting() -> bool:
        return all(db_count(db, f"select count(*) from orders o join runs r on r.id = o.run_id where r.symbol = '{s}'") >= 2
                   for s in ("BTC/USDT", "ETH/USDT", "SIM/USD"))

    code, out, err = await wait_then_interrupt(p, quoting, "orders on all three markets")
    assert code == 130 and "Traceback" not in err, err
    assert fake_binance.requests["/api/v3/exchangeInfo"] == 1  # one client for both Binance markets
    assert fake_binance.unexpected == []
    rows = db_rows(db, "select symbol, status, session_id from runs order by symbol")
    assert [(s, st) for s, st, _ in rows] == [("BTC/USDT", "interrupted"), ("ETH/USDT", "interrupted"), ("SIM/USD", "interrupted")]
    assert len({sid for *_, sid in rows}) == 1 and rows[0][2] == json.loads(out.strip().splitlines()[-1])["session_id"]
    assert db_rows(db, "select count(*) from orders where state in ('new','open','partially_filled')")[0][0] == 0


@pytest.mark.parametrize("command", [["backtest", "--data", "nowhere"]])
def test_commands_of_one_market_refuse_a_markets_config(tmp_path, command):
    """Not silently the top-level market only: one line, exit 2, nothing written."""
    path = write(tmp_path, three_markets(tmp_path / "x.db"))
    r = cli(*command, "--config", str(path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"mmbot: error: {path}: markets: mmbot {command[0]} ")
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("cap", [None, 300.0])
def test_total_notional_cap_per_quote_currency(tmp_path, cap):
    """Open orders plus positions of the USD markets, summed after every event, stay within
    the cap (up to the mid's moves of held positions); the USDT market is not counted."""
    from bot.portfolio import open_notional, position_notional

    worst = [Decimal(0)]

    def track(engine):
        usd = [e for e in engines if e.market is not None and e.market.quote == "USD"]
        worst[0] = max(worst[0], sum((open_notional(e) + position_notional(e) for e in usd), Decimal(0)))

    c = three_markets(tmp_path / "r.db", duration=150.0, sim={"speed": 0.0, "sigma": 0.3})
    if cap is not None:
        c["account"] = {"max_total_notional": cap}
    cfg, runs = _runs(tmp_path, c, on_tick=track)
    engines = [r.engine for r in runs]
    try:
        asyncio.run(run_markets(runs, cfg.account, handle_signals=False))
    finally:
        _close(runs)
    assert all(r.error is None and r.summary["fills"] > 0 for r in runs)
    if cap is None:
        assert worst[0] > Decimal("450")  # both USD markets quote and hold far beyond 300
    else:
        assert worst[0] <= Decimal("315")  # 300 plus the drift of a held position's mark


def test_kill_switch_of_a_paper_process_exits_3_with_one_line(tmp_path):
    db = tmp_path / "k.db"
    c = three_markets(db, duration=600.0, account={"max_total_loss": 0.5})
    c["markets"][0]["paper"] = {"initial_base": 50.0, "initial_quote": -5000.0}
    c["markets"][1]["paper"] = {"initial_base": -50.0, "initial_quote": 2500.0}
    r = cli("paper", "--config", str(write(tmp_path, c)), "--no-live", "--json")
    assert r.returncode == 3, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("mmbot: account kill switch: total loss ")
    assert [st for (st,) in db_rows(db, "select status from runs")] == ["killed"] * 3


async def test_paper_on_websocket_books_of_two_markets_shares_one_pro_client(tmp_path):
    """transport ws: both Binance markets on one ccxt.pro client (markets loaded once), each
    market's book synced from its own depth stream, both quoting."""
    from fake_binance_ws import FakeBinanceWs
    from test_cli_live_data import start_mmbot, wait_then_interrupt
    from waiting import db_count

    server = FakeBinanceWs()
    await server.start()
    feeder = None
    try:
        server.set_book([(29999.0 - i, 1.0) for i in range(20)], [(30001.0 + i, 1.0) for i in range(20)])
        server.set_book([(2999.0 - i, 5.0) for i in range(20)], [(3001.0 + i, 5.0) for i in range(20)], symbol="ETHUSDT")
        db = tmp_path / "ws.db"
        c = _binance_markets(db, server.base_url)
        c["market_data"]["transport"] = "ws"
        c["markets"] = c["markets"][:2]
        p = await start_mmbot("paper", "--config", str(write(tmp_path, c)), "--no-live", "--json")

        async def market():  # sizes change at the best levels of both books; prices stay uncrossed
            i = 0
            while p.returncode is None:
                await server.push_depth([(29999.0, 1.0 + i % 3)], [(30001.0, 2.0 + i % 2)])
                await server.push_depth([(2999.0, 5.0 + i % 3)], [(3001.0, 6.0 + i % 2)], symbol="ETHUSDT")
                i += 1
                await asyncio.sleep(0.05)  # pacing of the fake market, not a wait for a result

        feeder = asyncio.ensure_future(market())

        def quoting() -> bool:
            return all(db_count(db, f"select count(*) from orders o join runs r on r.id = o.run_id where r.symbol = '{s}'") >= 2
                       for s in ("BTC/USDT", "ETH/USDT"))

        code, _, err = await wait_then_interrupt(p, quoting, "orders on both websocket markets")
        assert code == 130 and "Traceback" not in err, err
        assert server.requests["/api/v3/exchangeInfo"] == 1  # one ccxt.pro client
        assert server.subscribe_count("depth", "BTCUSDT") >= 1 and server.subscribe_count("depth", "ETHUSDT") >= 1
        rows = db_rows(db, "select symbol, status, session_id from runs order by symbol")
        assert [(s, st) for s, st, _ in rows] == [("BTC/USDT", "interrupted"), ("ETH/USDT", "interrupted")]
        assert len({sid for *_, sid in rows}) == 1
    finally:
        if feeder is not None:
            feeder.cancel()
            with contextlib.suppress(BaseException):
                await feeder
        await server.stop()


# -- live: several markets of one account -------------------------------------------------
def _live_markets(fake, db, **live) -> dict:
    return {
        "exchange": "binance", "duration_s": None, "forecaster": {"model": "none"}, "database": {"url": str(db)},
        "market_data": {"transport": "rest", "api_url": fake.base_url, "poll_interval_s": 0.1, "rate_limit_per_s": 100},
        "strategy": {"pricing": {"horizon": "rolling"}},
        "live": {"fills_transport": "rest", "poll_interval_s": 0.2, "reconcile_interval_s": 1, "request_timeout_s": 3,
                 "balance_check": False, **live},
        "markets": [
            {"symbol": "BTC/USDT", "strategy": {"controls": {"order_size": 0.001}}},
            {"symbol": "ETH/USDT", "strategy": {"controls": {"order_size": 0.002}}},  # min notional 5 USDT
        ],
    }


async def test_live_two_markets_of_one_account_in_one_process(fake_binance, tmp_path):
    """`mmbot live` on two markets against a local Binance (real ccxt, signed requests):
    both quote, the data and the trading client are one each for the exchange (exchangeInfo
    twice, not four times), SIGTERM cancels everything on both markets."""
    from test_live_cli import finish, mmbot as live_proc
    from test_live_engine import ours_open, wait_for

    fake = fake_binance
    fake.set_book([(3000.00, 5.0), (2999.99, 5.0)], [(3000.01, 5.0), (3000.02, 5.0)], symbol="ETHUSDT")
    db = tmp_path / "live.db"
    proc = await live_proc("live", "--config", str(write(tmp_path, _live_markets(fake, db))), "--yes", "--json")
    try:
        await wait_for(lambda: {o.symbol for o in ours_open(fake)} >= {"BTCUSDT", "ETHUSDT"}, "quotes on both markets")
    finally:
        proc.send_signal(signal.SIGTERM)
    rc, out, err = await finish(proc)
    assert rc == 143, err
    assert not ours_open(fake)
    assert fake.requests["/api/v3/exchangeInfo"] == 2  # one market-data client + one trading client
    rows = db_rows(db, "select symbol, status, session_id, exchange from runs order by symbol")
    assert [(s, st) for s, st, *_ in rows] == [("BTC/USDT", "interrupted"), ("ETH/USDT", "interrupted")]
    assert len({r[2] for r in rows}) == 1 and json.loads(out)["session_id"] == rows[0][2]
    assert db_rows(db, "select count(*) from orders where state in ('new','open','partially_filled','pending_cancel')")[0][0] == 0


@pytest.mark.parametrize("change,expected", [
    (lambda c: c.update(live={**c["live"], "balance_check": True}),
     "markets[1] (binance ETH/USDT) and markets[0] (binance BTC/USDT) share USDT: set live.balance_check: false"),
    (lambda c: c["markets"][1].update(exchange="kraken"), "markets[1] (kraken ETH/USDT): exchange: every market"),
    (lambda c: c["markets"][1].update(exchange="sim"), "markets[1] (sim ETH/USDT): mmbot live trades real exchanges only"),
])
async def test_live_markets_that_cannot_share_an_account_are_refused(fake_binance, tmp_path, change, expected):
    from test_live_cli import finish, mmbot as live_proc

    db = tmp_path / "x.db"
    c = _live_markets(fake_binance, db)
    change(c)
    path = write(tmp_path, c)
    rc, _, err = await finish(await live_proc("live", "--config", str(path), "--yes"))
    assert rc == 2 and err.count("\n") == 1 and f"invalid config {path}: {expected}" in err, err
    assert not db.exists()
