"""Streamed recordings: a backtest over a recording read chunk by chunk
(:class:`paper_trading.stream_venue.StreamingVenue`) records exactly what the in-memory
replay records, on real data re-chunked so that chunk boundaries fall inside messages."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from bot.config import load_config
from bot.persistence.store import open_store
from bot.recording.io import RecordingWriter, open_recording
from paper_trading.backtest import load_recording, run_backtest

ROOT = Path(__file__).resolve().parents[1]
CAPTURE = ROOT.parent / "shared" / "data" / "binance" / "usdm" / "btcusdt_20240808.gz"
ROWS = 100_000  # the first ~75 s of the capture
CHUNK_ROWS = 1_003  # small and odd: boundaries split messages (rows sharing local_ts)

TABLES = {
    "fills": "side, price, size, fee, liquidity, ts_ns, mid",
    "orders": "side, price, size, filled, state, post_only, level, created_ns, updated_ns, reason",
    "order_events": "ts_ns, state, filled, reason",
    "pnl_snapshots": "ts_ns, mid, inventory, cash, mtm, pnl, fees_paid, spread_capture",
}


@pytest.fixture(scope="module")
def chunked(tmp_path_factory) -> Path:
    """The first ROWS rows of a Binance USD-M capture (real data) as a recording of many small chunks."""
    if not CAPTURE.exists():
        pytest.skip(f"real market data not found at {CAPTURE}")
    from bot.importers.binance import import_binance

    d = tmp_path_factory.mktemp("stream")
    import_binance([CAPTURE], d / "one")
    src = open_recording(d / "one")
    meta = {k: src.meta[k] for k in ("exchange", "symbol", "market", "tick_size", "lot_size") if k in src.meta}
    with RecordingWriter(d / "chunked", meta, chunk_rows=CHUNK_ROWS) as w:
        w.append(src.events()[:ROWS])
    return d / "chunked"


def _rows(db: Path) -> dict[str, list]:
    con = sqlite3.connect(db)
    try:
        return {t: con.execute(f"select {cols} from {t} order by id").fetchall() for t, cols in TABLES.items()}
    finally:
        con.close()


def _run(rec: Path, db: Path, cfg, events_meta):
    store = open_store(str(db))
    try:
        return run_backtest(rec, cfg, store, events_meta=events_meta)
    finally:
        store.close()


@pytest.mark.parametrize("queue_model,latency_mode", [("prob", "constant"), ("conservative", "recorded")])
def test_streamed_backtest_equals_the_in_memory_one(chunked, tmp_path, queue_model, latency_mode):
    rec = open_recording(chunked)
    assert len(rec.meta["chunks"]) > 3
    ev = rec.events()
    cuts = np.cumsum([c["rows"] for c in rec.meta["chunks"]])[:-1]
    assert any(ev["local_ts"][c - 1] == ev["local_ts"][c] for c in cuts)  # a message split across chunks
    from bot.config import with_overrides

    cfg = with_overrides(load_config(ROOT / "config" / "backtest.yaml"),
                         **{"replay.queue_model": queue_model, "replay.latency_mode": latency_mode})
    mem = _run(chunked, tmp_path / "mem.db", cfg, load_recording(chunked))
    streamed = _run(chunked, tmp_path / "stream.db", cfg, None)
    a, b = _rows(tmp_path / "mem.db"), _rows(tmp_path / "stream.db")
    assert len(a["orders"]) > 10 and len(a["pnl_snapshots"]) > 10
    assert a == b
    for k in ("events", "events_replayed", "orders_placed", "orders_canceled", "fills", "pnl", "inventory", "fees",
              "forecaster", "strategy"):
        assert mem[k] == streamed[k], k
    assert streamed["events_replayed"] == len(ev)


@pytest.mark.parametrize("batch_rows", [None, 777])  # 777: batches split the chunks too
def test_streamed_venue_trades_and_prefix_match_memory(chunked, batch_rows):
    from paper_trading.stream_venue import StreamingVenue
    from paper_trading.venue import Venue, VenueParams

    rec = open_recording(chunked)
    ev = rec.events()
    tick, lot = float(rec.meta["tick_size"]), float(rec.meta["lot_size"])
    params = VenueParams(entry_latency_ns=40_000_000)
    mem, st = Venue(ev, tick, lot, params), StreamingVenue(rec, tick, lot, params, batch_rows=batch_rows)
    assert np.array_equal(mem.rank_tick, st.rank_tick)
    assert (st.t_first, st.t_last, st.n) == (mem.t_first, mem.t_last, mem.n)
    t = mem.t_first
    oid = 0
    live: list[int] = []
    n_reports = 0
    while mem.i < mem.n:
        t += 100_000_000
        i0 = mem.i
        ra, rb = mem.advance_to(t), st.advance_to(t)
        assert ra == rb
        n_reports += len(ra)
        assert st.i == mem.i and st.best_px == mem.best_px and st.now_ns == mem.now_ns
        # orders at the touch on both venues: their queue positions depend on when they
        # become active relative to the rows around chunk boundaries
        assert [mem.queue_ahead(o) for o in live] == [st.queue_ahead(o) for o in live]
        for o in live[:-2]:
            assert mem.cancel(o, t) == st.cancel(o, t)
        live = live[-2:]
        bb, ba = mem.best_px
        if bb is not None and ba is not None:
            for side, px in ((1, bb), (-1, ba)):
                oid += 1
                assert mem.submit(oid, side, px, 0.002, t) == st.submit(oid, side, px, 0.002, t)
                live.append(oid)
        a, b = mem.trades(i0, mem.i), st.trades(i0, st.i)
        assert (a is None) == (b is None)
        if a is not None:
            assert all(np.array_equal(x, y) for x, y in zip(a, b))
        assert np.array_equal(mem.bid, st.bid) and np.array_equal(mem.ask, st.ask)
        assert len(st.local_ts) <= 8 * CHUNK_ROWS  # the window never holds the whole recording
    assert n_reports > 100
    assert np.array_equal(st.prefix(12_345), ev[:12_345])


def test_a_corrupt_chunk_is_a_data_error_naming_the_file(chunked, tmp_path):
    import shutil

    from bot.errors import DataError
    from paper_trading.stream_venue import StreamingVenue

    bad = tmp_path / "bad"
    shutil.copytree(chunked, bad)
    victim = bad / open_recording(bad).meta["chunks"][3]["file"]
    victim.write_bytes(victim.read_bytes()[:200])
    rec = open_recording(bad)
    with pytest.raises(DataError, match=victim.name):
        StreamingVenue(rec, float(rec.meta["tick_size"]), float(rec.meta["lot_size"]))
