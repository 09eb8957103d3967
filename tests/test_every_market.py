"""`mmbot import`, `mmbot backtest` and `mmbot paper --replay` on every market in
../shared/data/binance (spot, USD-M, COIN-M, Hyperliquid) and on the Bitstamp day.
Skipped when ../shared/data is absent (failed in CI: tests/real_data.py)."""

import asyncio
import json
from pathlib import Path

import pytest

from bot.config import load_config, with_overrides
from bot.persistence.store import open_store
from paper_trading.backtest import build_replay_engine, run_backtest
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
    m = s["metrics"]
    assert m["total_pnl"] == pytest.approx(m["spread_capture"] + m["inventory_pnl"] - m["fees"], abs=1e-9)
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
    cfg = with_overrides(load_config(ROOT / "config" / "backtest.yaml"), **{
        "database.url": str(tmp_path / "bs.db"), "replay.interval_s": 1.0,
        # BTC near 236 USD in 2015: a 0.01 BTC order, quotes a few cents wide
        "strategy.controls.order_size": 0.01, "strategy.controls.max_inventory": 0.1,
        "strategy.pricing.intensity_depth_step": 0.01, "strategy.pricing.initial_sigma": 0.05})
    store = open_store(cfg.database.url)
    try:
        s = run_backtest(rec, cfg, store)
    finally:
        store.close()
    assert s["status"] == "completed" and s["events_replayed"] == stats["events"]
    assert s["orders_placed"] > 0 and s["fills"] > 0
