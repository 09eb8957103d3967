"""Bitstamp 2015 importer: orders aggregated to L2 agree with the exchange's own top-20
snapshots; corrupt lines name file and line; lenient mode counts skips."""

from __future__ import annotations

import bz2
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import orjson
import pytest

from bot.errors import ConfigError, DataError
from bot.importers.bitstamp import import_bitstamp
from bot.recording import CLEAR, DEPTH, SNAPSHOT, TRADE, open_recording
from bot.recording.book_replay import message_ends, replay_depth, replay_top
from real_data import needs, require

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LOG = DATA / "bitstamp_2015" / "2015-05-01.log.bz2"
ROOT = Path(__file__).resolve().parents[1]

needs_data = needs(LOG)  # skipped in a fresh clone, failed in CI


@pytest.fixture(scope="module")
def head_lines() -> list[bytes]:
    require(LOG)
    with bz2.open(LOG, "rb") as f:
        return [next(f).rstrip(b"\n") for _ in range(30_000)]


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(bz2.compress(b"\n".join(lines) + b"\n"))
    return path


@needs_data
def test_head_import_and_snapshot_agreement(tmp_path, head_lines):
    f = _write(tmp_path / "head.log.bz2", head_lines)
    st = import_bitstamp(f, tmp_path / "rec")
    assert st.lines == 30_000 and st.lines_skipped == 0
    assert st.snapshots > 2000
    assert st.snapshot_levels_equal / st.snapshot_levels_compared > 0.99
    assert st.trade_side["unknown"] < 0.1 * st.trades
    rec = open_recording(tmp_path / "rec")
    assert rec.meta["exchange"] == "bitstamp" and rec.meta["tick_size"] == 0.01
    assert rec.meta["tick_size_source"] == "inferred" and rec.meta["lot_size"] == 1e-8 and st.warnings == []
    ev = rec.events()
    assert (np.diff(ev["local_ts"]) >= 0).all() and (ev["exch_ts"] == -1).all()
    # the first snapshot starts the book: CLEAR both sides, then SNAPSHOT rows
    first_book = int(np.flatnonzero(ev["kind"] != TRADE)[0])
    assert list(ev["kind"][first_book : first_book + 2]) == [CLEAR, CLEAR]
    assert ev["kind"][first_book + 2] == SNAPSHOT

    # after a later snapshot line (and anything else logged in the same ms), the rebuilt top
    # 20 equal it: the re-basing rows make it so (sampled every 97th snapshot)
    snaps = [(int(l.split(b" ", 2)[0]) * 1_000_000, orjson.loads(l.split(b" ", 2)[2]))
             for l in head_lines if b" order_book " in l][1:]
    lt = ev["local_ts"]
    at = np.searchsorted(lt, [t for t, _ in snaps], side="right") - 1
    d = replay_depth(ev, at, 20, rec.tick_size)
    for k in range(0, len(snaps), 97):
        s = snaps[k][1]
        exp_b = [float(p) for p, _ in s["bids"]]
        exp_a = [float(p) for p, _ in s["asks"]]
        assert list(d["bid_px"][k][: len(exp_b)]) == exp_b
        assert list(d["ask_px"][k][: len(exp_a)]) == exp_a
        assert list(d["bid_qty"][k][: len(exp_b)]) == [float(q) for _, q in s["bids"]]


@needs_data
def test_full_day(tmp_path):
    st = import_bitstamp(LOG, tmp_path / "rec")
    assert st.lines == 276_767 and st.order_events == 118_960 + 119_048 + 4_516
    assert st.trades == 4_251 and st.snapshots == 29_992
    assert st.snapshot_levels_equal / st.snapshot_levels_compared > 0.995
    rec = open_recording(tmp_path / "rec")
    ev = rec.events()
    top = replay_top(ev, rec.tick_size)
    ends = message_ends(ev)
    start = int(np.flatnonzero(ev["kind"] == SNAPSHOT)[-1])
    # crossed only transiently (a marketable order is published before its matches): < 1% of
    # the time, and never beyond the next snapshot's re-basing
    lt = ev["local_ts"][start:]
    crossed = top["crossed"][start:] & ends[start:]
    dt = np.diff(lt, append=lt[-1])
    assert dt[crossed].sum() / (lt[-1] - lt[0]) < 0.01
    c = top["crossed"][start:]
    begins = np.flatnonzero(c[1:] & ~c[:-1]) + 1
    stops = np.flatnonzero(~c[1:] & c[:-1]) + 1
    stops = stops[stops > begins[0]]
    m = min(begins.size, stops.size)
    assert (lt[stops[:m]] - lt[begins[:m]]).max() < 10 * 10**9
    assert (ev["kind"] == DEPTH).sum() > 240_000


@needs_data
def test_corrupt_lines(tmp_path, head_lines):
    cases = [
        (500, head_lines[500][:40], "invalid JSON"),
        (600, b"x" + head_lines[600], "expected '<local ms> <event> <json>'"),
        (700, head_lines[700].replace(b'"price": "', b'"price": "abc', 1) if b'"price": "' in head_lines[700]
         else head_lines[700].replace(b'"price": ', b'"price": "abc", "x": ', 1), "bad price"),
        (800, head_lines[800].split(b" ", 1)[0] + b" order_exploded {}", "unknown event"),
    ]
    for i, (idx, new, expect) in enumerate(cases):
        bad = list(head_lines[:2000])
        bad[idx] = new
        f = _write(tmp_path / f"c{i}.log.bz2", bad)
        with pytest.raises(DataError) as ei:
            import_bitstamp(f, tmp_path / "rec")
        assert str(ei.value).startswith(f"{f}:{idx + 1}: ") and expect in str(ei.value), str(ei.value)
    bad = list(head_lines[:2000])
    for idx, new, _ in cases:
        bad[idx] = new
    f = _write(tmp_path / "lenient.log.bz2", bad)
    st = import_bitstamp(f, tmp_path / "rec", lenient=True)
    assert st.lines_skipped == len(cases)
    assert [s.split(": ")[0] for s in st.skipped] == [f"{f}:{idx + 1}" for idx, _, _ in cases]

    trunc = tmp_path / "trunc.log.bz2"
    raw = bz2.compress(b"\n".join(head_lines[:2000]))
    trunc.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="trunc.log.bz2: corrupt or truncated"):
        import_bitstamp(trunc, tmp_path / "rec")


def _whole_dollars(line: bytes) -> bytes:
    """The same event with every price x 100: whole dollars, as in newer Bitstamp BTC/USD data
    (tick 1 USD at BTC ~ 23,647 instead of 0.01 at 236.47)."""
    ms, ev, js = line.split(b" ", 2)
    o = orjson.loads(js)
    if ev == b"order_book":
        for k in ("bids", "asks"):
            o[k] = [[str(Decimal(p) * 100), q] for p, q in o[k]]
    elif ev == b"trade":
        o["price"] = float(Decimal(repr(o["price"])) * 100)
    else:
        o["price"] = str(Decimal(o["price"]) * 100)
    return b" ".join((ms, ev, orjson.dumps(o)))


@needs_data
def test_tick_and_lot_are_inferred_not_assumed(tmp_path, head_lines):
    """Before: every recording said tick 0.01, whatever the data. Whole-dollar prices give a
    tick of 1; the given --tick/--lot win; prices finer than a given tick are a warning."""
    f = _write(tmp_path / "dollars.log.bz2", [_whole_dollars(l) for l in head_lines[:8000]])
    st = import_bitstamp(f, tmp_path / "rec")
    meta = open_recording(tmp_path / "rec").meta
    assert (st.tick_size, st.tick_source) == (1.0, "inferred")
    assert (meta["tick_size"], meta["tick_size_source"]) == (1.0, "inferred")
    assert (meta["lot_size"], meta["lot_size_source"]) == (1e-8, "inferred") and st.warnings == []

    f = _write(tmp_path / "cents.log.bz2", head_lines[:8000])
    st = import_bitstamp(f, tmp_path / "given", tick_size="1", lot_size="0.0001")
    meta = open_recording(tmp_path / "given").meta
    assert (meta["tick_size"], meta["tick_size_source"], meta["lot_size"], meta["lot_size_source"]) == (1.0, "given", 0.0001, "given")
    assert st.prices_off_tick > 0.9 * st.events and st.sizes_off_lot > 0
    assert len(st.warnings) == 2
    assert "finer than the given tick 1 " in st.warnings[0] and "finer than the given lot 0.0001 " in st.warnings[1]

    with pytest.raises(ConfigError, match="--tick must be a positive number"):
        import_bitstamp(f, tmp_path / "bad", tick_size="-1")
    with pytest.raises(ConfigError, match="finer than the importer's resolution"):
        import_bitstamp(f, tmp_path / "bad", tick_size="1e-9")


@needs_data
def test_a_tick_change_within_the_recording_is_a_warning(tmp_path, head_lines):
    """Cents for the first lines, whole dollars after: the recording's tick is the finest
    (0.01) and the importer says when the coarser one started."""
    lines = head_lines[:6000] + [_whole_dollars(l) for l in head_lines[6000:]]
    st = import_bitstamp(_write(tmp_path / "mixed.log.bz2", lines), tmp_path / "rec")
    assert st.tick_size == 0.01
    assert [t for _, t in st.tick_by_hour][0] == 0.01 and st.tick_by_hour[-1][1] == 1.0
    assert st.tick_by_hour[-1][0] > int(head_lines[6000].split(b" ", 1)[0])
    assert len(st.warnings) == 1 and "the price tick changes within the recording" in st.warnings[0]


@needs_data
def test_cli_tick_options_and_warning(tmp_path, head_lines):
    f = _write(tmp_path / "cents.log.bz2", head_lines[:3000])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "bot.cli", "import", "bitstamp", str(f), *a],  # noqa: E731
                                    capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    out = run("--out", str(tmp_path / "rec"), "--tick", "1", "--json")
    assert out.returncode == 0, out.stderr
    assert "mmbot: warning: " in out.stderr and "finer than the given tick 1 " in out.stderr
    assert json.loads(out.stdout)["tick_size"] == 1.0
    out = run("--out", str(tmp_path / "rec2"), "--json")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert json.loads(out.stdout)["tick_size"] == 0.01
    out = run("--out", str(tmp_path / "rec3"), "--tick", "0")
    assert out.returncode == 2 and out.stderr.strip() == "mmbot: error: --tick must be a positive number, got '0'", out.stderr


@needs_data
def test_replay_warns_when_prices_are_finer_than_the_tick(tmp_path, head_lines, caplog):
    """A recording whose tick is coarser than its prices (imported with a wrong --tick) would
    have its levels merged by the replay: building the replay says so; the right tick is quiet."""
    from bot.config import load_config, with_overrides
    from bot.persistence.store import open_store
    from paper_trading.backtest import build_replay_engine

    f = _write(tmp_path / "cents.log.bz2", head_lines[:3000])
    cfg = with_overrides(load_config(ROOT / "config" / "backtest.yaml"), **{"forecaster.model": "none"})
    for name, tick, warned in (("coarse", "1", True), ("right", None, False)):
        import_bitstamp(f, tmp_path / name, tick_size=tick)
        caplog.clear()
        store = open_store(str(tmp_path / f"{name}.db"))
        try:
            with caplog.at_level("WARNING", logger="paper_trading.backtest"):
                build_replay_engine(tmp_path / name, cfg, store, mode="backtest", speed=0.0)
        finally:
            store.close()
        msgs = [r.getMessage() for r in caplog.records if "finer than its tick" in r.getMessage()]
        assert bool(msgs) is warned, msgs
        if warned:
            assert "finer than its tick 1 " in msgs[0] and msgs[0].split(" of ")[0].isdigit()
