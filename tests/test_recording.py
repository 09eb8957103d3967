"""Recording format: writer/reader round trip, crash safety, bad files, numba book replay."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.errors import DataError
from bot.recording import (
    BOOKTICKER_DTYPE,
    CLEAR,
    DEPTH,
    EVENT_DTYPE,
    SNAPSHOT,
    TRADE,
    RecordingWriter,
    infer_tick_size,
    make_events,
    open_recording,
)
from bot.recording.book_replay import message_ends, replay_depth, replay_top


def _random_events(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ev = np.empty(n, EVENT_DTYPE)
    ev["kind"] = rng.choice([DEPTH, TRADE, SNAPSHOT, CLEAR], size=n, p=[0.7, 0.2, 0.08, 0.02])
    ev["side"] = rng.choice([1, -1], size=n)
    ev["local_ts"] = 1_700_000_000_000_000_000 + np.cumsum(rng.integers(0, 1_000_000, size=n))
    ev["exch_ts"] = ev["local_ts"] - 5_000_000
    ev["px"] = np.round(30000 + rng.integers(-500, 500, size=n) * 0.1, 1)
    ev["qty"] = np.round(rng.random(n) * 3, 3)
    ev["first_id"] = np.arange(n)
    ev["last_id"] = np.arange(n) + 1
    return ev


def test_dtype_is_aligned_and_flat():
    assert EVENT_DTYPE.names == ("kind", "side", "exch_ts", "local_ts", "px", "qty", "first_id", "last_id")
    assert EVENT_DTYPE.isalignedstruct
    assert EVENT_DTYPE.itemsize == 56
    assert EVENT_DTYPE.fields["exch_ts"][1] % 8 == 0


def test_round_trip_chunks_and_meta(tmp_path):
    ev = _random_events(25_000)
    rec_dir = tmp_path / "rec"
    w = RecordingWriter(rec_dir, {"exchange": "test", "symbol": "BTCUSDT", "market": "spot"}, chunk_rows=10_000)
    # uneven appends, one of them as columns
    w.append(ev[:3])
    w.append(ev[3:12_345])
    assert sorted(p.name for p in rec_dir.glob("events-*.parquet")) == ["events-00000.parquet"]
    assert json.loads((rec_dir / "meta.json").read_text())["complete"] is False
    w.append_columns({name: ev[name][12_345:20_000] for name in EVENT_DTYPE.names})
    assert len(list(rec_dir.glob("events-*.parquet"))) == 2
    w.append(ev[20_000:])
    meta = w.close()
    assert sorted(p.name for p in rec_dir.glob("events-*.parquet")) == [
        "events-00000.parquet", "events-00001.parquet", "events-00002.parquet"]
    assert [c["rows"] for c in meta["chunks"]] == [10_000, 10_000, 5_000]

    rec = open_recording(rec_dir)
    assert rec.meta["complete"] is True
    assert rec.meta["rows"] == len(rec) == 25_000
    out = rec.events()
    assert out.dtype == EVENT_DTYPE
    for name in EVENT_DTYPE.names:
        np.testing.assert_array_equal(out[name], ev[name])
    np.testing.assert_array_equal(np.concatenate(list(rec.iter_chunks())), out)
    kinds = {k: int((ev["kind"] == v).sum()) for k, v in (("depth", 1), ("trade", 2), ("snapshot", 3), ("clear", 4))}
    assert rec.meta["rows_by_kind"] == {k: v for k, v in kinds.items() if v}
    assert rec.meta["first_local_ts"] == int(ev["local_ts"][0])
    assert rec.meta["last_local_ts"] == int(ev["local_ts"][-1])
    assert rec.meta["first_exch_ts"] == int(ev["exch_ts"].min())
    assert rec.meta["tick_size"] == pytest.approx(0.1)
    assert rec.meta["tick_size_source"] == "inferred"
    assert rec.meta["lot_size"] == pytest.approx(0.001)
    assert rec.meta["symbol"] == "BTCUSDT"


def test_given_tick_is_kept_and_aux_table(tmp_path):
    ev = _random_events(100)
    bt = np.zeros(7, BOOKTICKER_DTYPE)
    bt["update_id"] = np.arange(7)
    bt["bid_px"] = 1.5
    with RecordingWriter(tmp_path / "r", {"tick_size": 0.05, "lot_size": None}) as w:
        w.append(ev)
        w.write_aux("bookticker", bt)
    rec = open_recording(tmp_path / "r")
    assert rec.meta["tick_size"] == 0.05 and rec.meta["tick_size_source"] == "given"
    assert rec.meta["lot_size_source"] == "inferred"
    got = rec.bookticker()
    assert got.dtype.names == BOOKTICKER_DTYPE.names
    np.testing.assert_array_equal(got["update_id"], bt["update_id"])
    with pytest.raises(KeyError):
        rec.aux("nope")


def test_writer_refuses_existing_recording_unless_overwrite(tmp_path):
    ev = _random_events(10)
    with RecordingWriter(tmp_path / "r", {}) as w:
        w.append(ev)
    with pytest.raises(FileExistsError):
        RecordingWriter(tmp_path / "r", {})
    with RecordingWriter(tmp_path / "r", {}, overwrite=True) as w:
        w.append(ev[:4])
    assert len(open_recording(tmp_path / "r")) == 4


def test_crash_loses_at_most_the_open_chunk(tmp_path):
    ev = _random_events(2_500)
    w = RecordingWriter(tmp_path / "r", {"exchange": "x"}, chunk_rows=1_000)
    w.append(ev)  # two full chunks flushed, 500 rows open
    del w  # "crash": never closed
    with pytest.raises(DataError, match="incomplete"):
        open_recording(tmp_path / "r")
    rec = open_recording(tmp_path / "r", allow_incomplete=True)
    got = rec.events()
    assert len(got) == 2_000
    np.testing.assert_array_equal(got, ev[:2_000])
    assert not list((tmp_path / "r").glob("*.tmp"))


def _closed_recording(path, n=3_000, chunk_rows=1_000):
    ev = _random_events(n)
    with RecordingWriter(path, {}, chunk_rows=chunk_rows) as w:
        w.append(ev)
    return ev


def test_missing_or_bad_meta_is_data_error(tmp_path):
    with pytest.raises(DataError, match="recording directory not found"):
        open_recording(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"meta\.json.*missing"):
        open_recording(tmp_path / "empty")
    _closed_recording(tmp_path / "r")
    meta_path = tmp_path / "r" / "meta.json"
    meta_path.write_text("{not json")
    with pytest.raises(DataError, match=r"meta\.json: unreadable"):
        open_recording(tmp_path / "r")
    meta_path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match=r"meta\.json: format"):
        open_recording(tmp_path / "r")
    meta_path.write_text(json.dumps({"format": "mmbot-l2-events", "format_version": 99, "chunks": []}))
    with pytest.raises(DataError, match="format_version"):
        open_recording(tmp_path / "r")


def test_missing_truncated_or_wrong_chunk_is_data_error(tmp_path):
    _closed_recording(tmp_path / "a")
    (tmp_path / "a" / "events-00001.parquet").unlink()
    rec = open_recording(tmp_path / "a")
    with pytest.raises(DataError, match=r"events-00001\.parquet: chunk file missing"):
        rec.events()

    _closed_recording(tmp_path / "b")
    p = tmp_path / "b" / "events-00002.parquet"
    p.write_bytes(p.read_bytes()[:200])
    rec = open_recording(tmp_path / "b")
    chunks = rec.iter_chunks()
    next(chunks)
    next(chunks)
    with pytest.raises(DataError, match=r"events-00002\.parquet: unreadable"):
        next(chunks)

    _closed_recording(tmp_path / "c")
    shutil.copy(tmp_path / "c" / "events-00000.parquet", tmp_path / "c" / "x")
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    meta["chunks"][0]["rows"] = 999
    (tmp_path / "c" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"events-00000\.parquet: 1000 rows, meta\.json says 999"):
        open_recording(tmp_path / "c").events()


def test_infer_tick_size():
    assert infer_tick_size(np.array([61837.63, 61837.64, 61900.0])) == pytest.approx(0.01)
    assert infer_tick_size(np.array([61800.2, 61800.3, 61801.0])) == pytest.approx(0.1)
    assert infer_tick_size(np.array([100.5, 101.0, 102.5])) == pytest.approx(0.5)
    assert infer_tick_size(np.array([])) is None


# -- book replay ------------------------------------------------------------------------
def _ev(rows):
    return make_events(*zip(*[(k, s, 0, i, p, q, -1, -1) for i, (k, s, p, q) in enumerate(rows)]))


def test_replay_top_basic():
    ev = _ev([
        (CLEAR, 1, 0, 0), (CLEAR, -1, 0, 0),
        (SNAPSHOT, 1, 100.0, 1.0), (SNAPSHOT, 1, 99.0, 2.0), (SNAPSHOT, -1, 101.0, 3.0), (SNAPSHOT, -1, 102.0, 4.0),
        (DEPTH, 1, 100.5, 0.5),  # new best bid
        (TRADE, -1, 100.5, 0.2),  # trades leave the book alone
        (DEPTH, 1, 100.5, 0.0),  # delete best -> back to 100
        (DEPTH, -1, 101.0, 0.0),  # delete best ask -> 102
        (DEPTH, -1, 99.5, 1.0),  # crossing ask
        (CLEAR, 1, 0, 0),
    ])
    top = replay_top(ev, tick_size=0.5)
    assert np.isnan(top["bid_px"][1]) and np.isnan(top["ask_px"][1])
    assert (top["bid_px"][5], top["bid_qty"][5], top["ask_px"][5], top["ask_qty"][5]) == (100.0, 1.0, 101.0, 3.0)
    assert top["bid_px"][6] == 100.5 and top["bid_px"][7] == 100.5
    assert top["bid_px"][8] == 100.0 and top["ask_px"][9] == 102.0
    assert top["crossed"][10] and not top["crossed"][:10].any()
    assert np.isnan(top["bid_px"][11]) and top["ask_px"][11] == 99.5 and not top["crossed"][11]
    d = replay_depth(ev, np.array([5, 9]), 3)
    np.testing.assert_array_equal(d["bid_px"][0], [100.0, 99.0, np.nan])
    np.testing.assert_array_equal(d["ask_qty"][1], [4.0, 0.0, 0.0])


def test_message_ends():
    ev = make_events([3, 3, 1, 1, 2, 2, 1], 1, [5, 5, 6, 6, 7, 7, 8], 0, 1.0, 1.0, [1, 1, 2, 2, 3, 4, 5], [1, 1, 2, 2, 3, 4, 5])
    np.testing.assert_array_equal(message_ends(ev), [False, True, False, True, True, True, True])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 1, 1, 3, 4, 2]), st.sampled_from([1, -1]),
                          st.integers(0, 40), st.sampled_from([0.0, 0.0, 1.0, 2.5])), min_size=1, max_size=120))
def test_replay_matches_dict_book(rows):
    """The numba array book equals a plain dict book after every event."""
    ev = _ev([(k, s, 100.0 + p * 0.25, q) for k, s, p, q in rows])
    top = replay_top(ev)
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    for i, (k, s, p, q) in enumerate(rows):
        px = 100.0 + p * 0.25
        book = bids if s > 0 else asks
        if k in (1, 3):
            if q > 0:
                book[px] = q
            else:
                book.pop(px, None)
        elif k == 4:
            book.clear()
        bb = max(bids) if bids else None
        ba = min(asks) if asks else None
        assert (np.isnan(top["bid_px"][i]) if bb is None else top["bid_px"][i] == bb)
        assert (np.isnan(top["ask_px"][i]) if ba is None else top["ask_px"][i] == ba)
        assert top["bid_qty"][i] == (bids[bb] if bb is not None else 0.0)
        assert top["ask_qty"][i] == (asks[ba] if ba is not None else 0.0)
        assert bool(top["crossed"][i]) == (bb is not None and ba is not None and bb >= ba)
