"""The forecast's value in trading (issue 10 item 5): ``mmbot backtest --compare
lstm,baseline,oracle`` on real recordings.

* the oracle's forecasts are the realized future: at decision times of a replay of a real
  capture, drift = mid(t + horizon) - mid(t) and the variance = the sum of squared 1-s log
  returns of the mids the replay's books show over the horizon; no view near the end;
* the baseline is causal: its forecasts do not change when the future of the data changes;
* adverse selection per fill against a hand computation on the recording's events;
* the command runs on two markets (Hyperliquid 26 s, Bitstamp 2015 first minutes) with every
  variant, a table per market and a total, and the JSON's adverse selection equals the one
  recomputed from the database's fills and the recording."""

from __future__ import annotations

import asyncio
import bz2
import json
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from real_data import DATA, needs
from tune_helpers import btc_slice

ROOT = Path(__file__).resolve().parents[1]
HYPERLIQUID = "binance/hyperliquid/btcusd_20250126.gz"
BITSTAMP = "bitstamp_2015/2015-05-01.log.bz2"
USDM = "binance/usdm/btcusdt_20240808.gz"
BITSTAMP_MINUTES = 8  # long enough for the shipped model's 300 one-second warm-up rows


def replay_decisions(rec: Path, forecaster, interval_s: float = 0.1, warmup_s: float = 2.0):
    """Drive a replay of ``rec`` (no strategy), calling ``forecaster.update`` at each decision;
    returns [(ts_ns, the book's mid, forecast)]."""
    from bot.config import load_config
    from paper_trading.backtest import load_recording, market_from_meta
    from paper_trading.replay import ReplaySource
    from paper_trading.venue import Venue

    events, meta = load_recording(rec)
    market = market_from_meta(meta, load_config(None))
    src = ReplaySource(Venue(events, float(market.tick), float(market.lot)), market, interval_s=interval_s, speed=0.0,
                       warmup_s=warmup_s, with_trades=True)
    out = []

    async def run():
        await src.start()
        while (ev := await src.next()) is not None:
            out.append((ev.ts_ns, ev.book.mid(), forecaster.update(ev.book, ev.ts_ns, ev.trades)))

    asyncio.run(run())
    return out


@needs(USDM)
def test_oracle_forecasts_are_the_realized_future(tmp_path_factory):
    from models.reference_forecasts import GridSpec, MidSeries, OracleForecaster

    rec = btc_slice(tmp_path_factory)
    spec = GridSpec(sample_ns=1_000_000_000, H=10, horizon_s=10.0, warmup_steps=5, lam=0.99)
    oracle = OracleForecaster(spec, MidSeries.from_recording(rec))
    rows = replay_decisions(rec, oracle)
    book_mid = {t: m for t, m, _ in rows}
    t_last = rows[-1][0]
    checked = 0
    for t, m0, fc in rows[60::200]:  # decision times spread over the slice, after the warm-up
        if t + 10_000_000_000 > t_last:
            continue
        path = [book_mid[t + k * 1_000_000_000] for k in range(11)]  # the replay's own books, 1 s apart
        r = [1e4 * math.log(b / a) for a, b in zip(path, path[1:])]
        var = sum(x * x for x in r)
        assert fc.source == "oracle (sees the future)"
        assert fc.drift == pytest.approx(path[-1] - path[0], abs=1e-9)
        assert fc.sigma == pytest.approx(m0 * math.sqrt(var / 1e8 / 10.0), rel=1e-9, abs=1e-12)
        checked += 1
    assert checked >= 3
    assert any(fc.drift != 0.0 for _, _, fc in rows[60:] if fc.drift is not None)  # the mid does move
    # warm-up: no view for the first rows; end of data: no view once t + 10 s is past the last event
    assert rows[0][2].drift is None and rows[0][2].source == "oracle-warmup"
    assert rows[-1][2].drift is None and rows[-1][2].sigma is None and oracle.no_view > 0


@needs(USDM)
def test_baseline_is_causal_and_zero_drift(tmp_path_factory):
    """The baseline's forecast at t uses nothing after t: replaying the full slice and the same
    slice cut short give the same forecasts up to the cut."""
    from models.reference_forecasts import BaselineForecaster, GridSpec

    rec = btc_slice(tmp_path_factory)
    spec = GridSpec(sample_ns=1_000_000_000, H=10, horizon_s=10.0, warmup_steps=20, lam=0.99, var_floor_bp2=0.1)
    full = replay_decisions(rec, BaselineForecaster(spec))

    class Cut:  # the same forecaster, but the books after the cut are never shown to it
        def __init__(self, inner, t_cut):
            self.inner, self.t_cut, self.last = inner, t_cut, None

        def update(self, book, now_ns, trades=()):
            if now_ns <= self.t_cut:
                self.last = self.inner.update(book, now_ns, trades)
            return self.last

    t_cut = full[len(full) // 2][0]
    cut = replay_decisions(rec, Cut(BaselineForecaster(spec), t_cut))
    got = [(t, fc) for t, _, fc in full if t <= t_cut]
    assert got == [(t, fc) for t, _, fc in cut if t <= t_cut]
    live = [fc for _, fc in got if fc.sigma is not None]
    assert live and all(fc.drift == 0.0 and fc.sigma > 0 for fc in live)
    assert got[0][1].sigma is None  # warm-up


@needs(USDM)
def test_adverse_selection_of_hand_checked_fills(tmp_path_factory):
    from models.reference_forecasts import MidSeries
    from paper_trading.backtest import load_recording, recorded_mids
    from paper_trading.forecast_value import adverse_selection

    rec = btc_slice(tmp_path_factory)
    events, meta = load_recording(rec)
    ts, mid = recorded_mids(events, float(meta["tick_size"]))
    mids = MidSeries(ts, mid)

    def by_hand(t):  # the mid after the last event at or before t, skipping one-sided/crossed books
        m = None
        for x, y in zip(ts.tolist(), mid.tolist()):
            if x > t:
                break
            if y == y:
                m = y
        return m

    def mid_moves_at(start):  # a fill at an event that moves the mid: "at or before t" must include it
        ch = np.flatnonzero((np.diff(mid) != 0) & np.isfinite(mid[1:]) & np.isfinite(mid[:-1])) + 1
        return int(ts[ch[np.searchsorted(ch, start)]])

    t0 = mid_moves_at(len(ts) // 3)
    t1 = mid_moves_at(2 * len(ts) // 3)
    late = int(ts[-1]) - 500_000_000  # 0.5 s before the end: no mid 1 s later
    fills_ts = np.array([t0, t1, late], dtype=np.int64)
    side = np.array([1, -1, 1], dtype=np.int8)  # a buy, a sell, a buy too late to score
    a = adverse_selection(fills_ts, side, mids, 1.0)
    buy = by_hand(t0) - by_hand(t0 + 1_000_000_000)  # we bought: the mid falling is against us
    sell = by_hand(t1 + 1_000_000_000) - by_hand(t1)  # we sold: the mid rising is against us
    assert a["n"] == 2 and a["dropped_end"] == 1
    assert a["quote"] == pytest.approx((buy + sell) / 2, abs=1e-9)
    assert a["bp"] == pytest.approx((buy / by_hand(t0) + sell / by_hand(t1)) / 2 * 1e4, abs=1e-9)


def test_oracle_edge_share_and_its_na():
    from paper_trading.forecast_value import edge_note, oracle_edge_share

    assert oracle_edge_share(3.0, 1.0, 5.0) == pytest.approx(0.5)
    assert oracle_edge_share(0.0, 1.0, 5.0) == pytest.approx(-0.25)  # worse than the baseline
    assert oracle_edge_share(3.0, 1.0, 1.0) is None and oracle_edge_share(3.0, 2.0, 1.0) is None
    rows = {k: {"pnl": p, "fills": 12} for k, p in (("lstm", 3.0), ("baseline", 1.0), ("oracle", 5.0))}
    assert edge_note(rows).startswith("0.5 (fills: lstm 12") and "noise" in edge_note(rows)
    rows["oracle"]["pnl"] = 0.5
    assert edge_note(rows).startswith("n/a")


def mmbot(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "bot.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}, timeout=timeout)


@pytest.fixture(scope="module")
def two_markets(tmp_path_factory) -> list[Path]:
    from bot.importers.bitstamp import import_bitstamp
    from bot.importers.hyperliquid import import_hyperliquid

    d = tmp_path_factory.mktemp("two_markets")
    import_hyperliquid([DATA / HYPERLIQUID], d / "hyperliquid")
    raw = d / "bitstamp_head.log.bz2"
    with bz2.open(DATA / BITSTAMP, "rt") as src, bz2.open(raw, "wt") as dst:
        t0 = None
        for line in src:
            t = int(line.split(" ", 1)[0])
            t0 = t if t0 is None else t0
            if t - t0 > BITSTAMP_MINUTES * 60_000:
                break
            dst.write(line)
    import_bitstamp(raw, d / "bitstamp")
    return [d / "hyperliquid", d / "bitstamp"]


@needs(HYPERLIQUID, BITSTAMP)
def test_compare_on_two_markets_every_variant_a_table_and_json(two_markets, tmp_path):
    from models.reference_forecasts import MidSeries
    from paper_trading.forecast_value import adverse_selection

    variants = "lstm,baseline,oracle,glft"
    db = tmp_path / "cmp.db"
    data = [a for p in two_markets for a in ("--data", p)]
    out = mmbot("backtest", *data, "--db", db, "--compare", variants, "--json", "--no-progress")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert list(res["markets"]) == ["hyperliquid", "bitstamp"]
    for mk in res["markets"].values():
        assert list(mk["variants"]) == variants.split(",")
        for r in mk["variants"].values():
            for k in ("pnl", "fills", "adverse_1s_bp", "adverse_10s_bp", "inv_risk", "inv_value_std"):
                assert k in r
    assert list(res["total"]["variants"]) == variants.split(",")
    bs = res["markets"]["bitstamp"]["variants"]
    # the forecasters left their warm-up on the 8-minute market: their forecasts drove the quotes
    assert bs["lstm"]["forecast"] != "lstm-warmup" and bs["oracle"]["forecast"] == "oracle (sees the future)"
    assert bs["baseline"]["forecast"] == "baseline (ewma, zero drift)"
    for name in ("lstm", "oracle"):
        assert res["total"]["variants"][name]["fills"] == sum(m["variants"][name]["fills"] for m in res["markets"].values())
        assert res["total"]["variants"][name]["pnl"] == pytest.approx(sum(m["variants"][name]["pnl"]
                                                                          for m in res["markets"].values()))
    # adverse selection recomputed from the database's fills and the recording
    con = sqlite3.connect(db)
    mids = MidSeries.from_recording(two_markets[1])
    for name in ("lstm", "oracle"):
        r = bs[name]
        fills = con.execute("select ts_ns, side from fills where run_id = ? order by ts_ns, id", (r["run_id"],)).fetchall()
        assert len(fills) == r["fills"]
        if fills:
            a = adverse_selection(np.array([f[0] for f in fills]), np.array([1 if f[1] == "buy" else -1 for f in fills]),
                                  mids, 10.0)
            assert r["adverse_10s_n"] == a["n"] and r["adverse_10s_bp"] == pytest.approx(a["bp"])
    con.close()
    # the text output: a table per market and the summary with total rows and every variant
    txt = mmbot("backtest", *data, "--db", tmp_path / "txt.db", "--compare", variants)
    assert txt.returncode == 0, txt.stderr
    assert "Variants on" in txt.stdout and txt.stdout.count("Variants on") == 2
    assert "sees the future" in txt.stdout.lower() or "SEES THE FUTURE" in txt.stdout
    lines = [ln for ln in txt.stdout.splitlines() if ln.startswith("│ TOTAL")]
    assert [ln.split("│")[2].strip() for ln in lines] == variants.split(",")
    assert "hyperliquid: variant 1/4: lstm" in txt.stderr and "bitstamp: variant 4/4: glft" in txt.stderr


def test_several_data_without_compare_is_one_line(tmp_path):
    out = mmbot("backtest", "--data", tmp_path, "--data", tmp_path, "--db", tmp_path / "x.db")
    assert out.returncode == 2 and "--compare" in out.stderr and "Traceback" not in out.stderr


def test_inventory_risk_is_time_weighted_notional():
    """Snapshots at 0, 1 and 3 s (run ends at 4 s) hold 1, 2 and 1 s: inventory values 0, +1
    and -1.1 quote."""
    from paper_trading.forecast_value import inventory_risk

    s = 1_000_000_000
    mean_abs, std = inventory_risk([0, s, 3 * s], [0.0, 0.01, -0.01], [100.0, 100.0, 110.0], 4 * s)
    assert mean_abs == pytest.approx((0 * 1 + 1.0 * 2 + 1.1 * 1) / 4)
    mu = (0 * 1 + 1.0 * 2 - 1.1 * 1) / 4
    assert std == pytest.approx(math.sqrt(((0 - mu) ** 2 + 2 * (1.0 - mu) ** 2 + (-1.1 - mu) ** 2) / 4))
    assert inventory_risk([], [], [], 0) == (None, None)
