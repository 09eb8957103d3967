"""`mmbot import`, `mmbot backtest` and `mmbot paper --replay` on every market in
../shared/data/binance (spot, USD-M, COIN-M, Hyperliquid) and on the Bitstamp day.
Skipped when ../shared/data is absent (failed in CI: tests/real_data.py)."""

import asyncio
import json
from decimal import Decimal
from pathlib import Path

import pytest

from bot.config import load_config, with_overrides
from bot.persistence.store import open_store
from paper_trading.backtest import build_replay_engine, run_backtest
from pnl_check import check_pnl
from real_data import needs

ROOT = Path(__file__).resolve().parents[1]
D = ROOT.parent / "shared" / "data"
B = D / "binance"

MARKETS = {
    "spot_btc_2024": ["spot/btcusdt_20240808.gz", "spot/btcusdt_20240809.gz"],
    "spot_eth_2024": ["spot/ethusdt_20240808.gz", "spot/ethusdt_20240809.gz"],
    "spot_btc_2023": ["spot/btcusdt_20230405.dat.gz"],
    "usdm_btc_0808": ["usdm/btcusdt_20240808.gz"],
    "usdm_eth_0808": ["usdm/ethusdt_20240808.gz"],
    "usdm_btc_0718": ["usdm/btcusdt_20240718.gz", "usdm/btcusdt_20240719.gz"],
    "usdm_eth_0718": ["usdm/ethusdt_20240718.gz", "usdm/ethusdt_20240719.gz"],
    "usdm_btc_2023": ["usdm/btcusdt_20230404.dat.gz", "usdm/btcusdt_20230405.dat.gz"],
    "cm_btc": ["cm/btcusd_perp_20240808.gz", "cm/btcusd_perp_20240809.gz"],
    "cm_eth": ["cm/ethusd_perp_20240808.gz", "cm/ethusd_perp_20240809.gz"],
    "hyperliquid_btc": ["hyperliquid/btcusd_20250126.gz"],
}




def _import(name: str, out: Path):
    files = [B / f for f in MARKETS[name]]
    if name.startswith("hyperliquid"):
        from bot.importers.hyperliquid import import_hyperliquid

        return import_hyperliquid(files, out)
    from bot.importers.binance import import_binance

    return import_binance(files, out)


def _cfg(name: str, db: Path):
    over = {"database.url": str(db)}
    if name.startswith("cm_"):  # COIN-M sizes are contracts (100 USD BTC, 10 USD ETH)
        over |= {"strategy.controls.order_size": 1.0, "strategy.controls.max_inventory": 10.0}
    if name.startswith("hyperliquid"):  # 26 s of data: start deciding right away
        over |= {"replay.warmup_s": 0.0}
    return with_overrides(load_config(ROOT / "config" / "backtest.yaml"), **over)


@pytest.mark.parametrize("name", [pytest.param(n, marks=needs(*(B / f for f in fs))) for n, fs in MARKETS.items()])
def test_import_backtest_and_replay(name, tmp_path):
    rec = tmp_path / name
    stats = _import(name, rec).as_dict()
    assert stats["events"] > 0
    meta = json.loads((rec / "meta.json").read_text())
    assert meta["complete"] and meta["tick_size"] > 0
    cfg = _cfg(name, tmp_path / "bt.db")
    store = open_store(cfg.database.url)
    try:
        s = run_backtest(rec, cfg, store)
    finally:
        store.close()
    assert s["status"] == "completed"
    assert s["events_replayed"] == stats["events"]  # every row went through the venue
    assert s["orders_placed"] > 0  # the strategy quoted on this market
    # the PnL recomputed from the fills in the database and the recorded book (not the
    # identity total = spread capture + inventory PnL - fees, which cannot fail)
    check_pnl(tmp_path / "bt.db", s, rec)
    # paper --replay through the same engine, as fast as possible
    store = open_store(str(tmp_path / "replay.db"))
    try:
        engine, _ = build_replay_engine(rec, cfg, store, mode="paper", speed=0.0)
        r = asyncio.run(engine.run())
    finally:
        store.close()
    assert r["status"] == "completed" and r["fills"] == s["fills"]  # same data, same strategy, same fills


@needs(D / "bitstamp_2015" / "2015-05-01.log.bz2")
def test_bitstamp_day(tmp_path):
    from bot.importers.bitstamp import import_bitstamp

    rec = tmp_path / "bitstamp"
    stats = import_bitstamp(D / "bitstamp_2015" / "2015-05-01.log.bz2", rec).as_dict()
    cfg = _bitstamp_cfg(tmp_path / "bs.db")
    store = open_store(cfg.database.url)
    try:
        s = run_backtest(rec, cfg, store)
    finally:
        store.close()
    assert s["status"] == "completed" and s["events_replayed"] == stats["events"]
    assert s["orders_placed"] > 0 and s["fills"] > 0
    check_pnl(tmp_path / "bs.db", s, rec)


def _bitstamp_cfg(db: Path):
    return with_overrides(load_config(ROOT / "config" / "backtest.yaml"), **{
        "database.url": str(db), "replay.interval_s": 1.0,
        # BTC near 236 USD in 2015: a 0.01 BTC order, quotes a few cents wide
        "strategy.controls.order_size": 0.01, "strategy.controls.max_inventory": 0.1,
        "strategy.pricing.intensity_depth_step": 0.01, "strategy.pricing.initial_sigma": 0.05})


@needs(D / "bitstamp_2015" / "2015-05-01.log.bz2")
def test_the_pnl_check_can_fail(tmp_path):
    """The independent PnL check catches a fill stored one tick off and a wrong final mark."""
    import sqlite3

    from bot.importers.bitstamp import import_bitstamp

    rec = tmp_path / "bitstamp"
    import_bitstamp(D / "bitstamp_2015" / "2015-05-01.log.bz2", rec, max_lines=30_000)
    cfg = _bitstamp_cfg(tmp_path / "bt.db")
    store = open_store(cfg.database.url)
    try:
        s = run_backtest(rec, cfg, store)
    finally:
        store.close()
    check_pnl(tmp_path / "bt.db", s, rec)
    assert s["fills"] > 0
    bad = tmp_path / "bad.db"
    src = sqlite3.connect(tmp_path / "bt.db")
    con = sqlite3.connect(bad)
    src.backup(con)  # the database is in WAL mode: a file copy could miss the last commits
    src.close()
    fid, px = con.execute("SELECT id, price FROM fills ORDER BY id LIMIT 1").fetchone()
    con.execute("UPDATE fills SET price = ? WHERE id = ?", (str(Decimal(px) + Decimal("0.01")), fid))
    con.commit()
    con.close()
    with pytest.raises(AssertionError):
        check_pnl(bad, s, rec)
    with pytest.raises(AssertionError):
        check_pnl(tmp_path / "bt.db", {**s, "final_mid": s["final_mid"] + 0.01}, rec)
