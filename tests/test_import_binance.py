"""Binance capture importer: fast/slow parser agreement, corrupt lines, gaps and resync, and
the real spot/futures captures rebuilt against their own bookTicker streams."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.errors import DataError
from bot.importers import binance as bn
from bot.importers.binance import import_binance, validate_against_bookticker
from bot.recording import CLEAR, DEPTH, SNAPSHOT, TRADE, open_recording
from bot.recording.book_replay import message_ends, replay_depth, replay_top
from real_data import needs, require

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BIN = DATA / "binance"
SPOT = [BIN / "spot" / "btcusdt_20240808.gz", BIN / "spot" / "btcusdt_20240809.gz"]
USDM = [BIN / "usdm" / "btcusdt_20240718.gz", BIN / "usdm" / "btcusdt_20240719.gz"]

needs_data = needs(*SPOT, *USDM)  # skipped in a fresh clone, failed in CI


def _head(path: Path, n: int) -> list[bytes]:
    out = []
    with gzip.open(path, "rb") as f:
        for line in f:
            out.append(line.rstrip(b"\n"))
            if len(out) >= n:
                break
    return out


def _write_gz(path: Path, lines: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    return path


# -- parser units --------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"\A[0-9]{1,12}(\.[0-9]{1,12})?\Z", fullmatch=True))
def test_fast_decimal_parse_is_bit_identical_to_float(text):
    buf = np.frombuffer(text.encode() + b'"', dtype=np.uint8)
    val, end, ok = bn._parse_dec(buf, 0, buf.shape[0], bn._POW10)
    if ok:
        assert val == float(text)
        assert end == buf.shape[0]
    else:  # declined only when the literal has more than 18 digits (leading zeros included) or
        # the exact mantissa does not fit a double (then orjson decides)
        digits = text.replace(".", "").lstrip("0").rstrip("0") or "0"
        assert len(text.replace(".", "")) > 18 or int(digits) >= 2**53


def test_fast_decimal_parse_declines_odd_numbers():
    for bad in (b"1e5", b"-1.0", b"1.", b".5", b"", b"1.2.3", b"12345678901234567890"):
        buf = np.frombuffer(bad + b'"', dtype=np.uint8)
        assert not bn._parse_dec(buf, 0, buf.shape[0], bn._POW10)[2]


@needs_data
@pytest.mark.parametrize("path", [
    BIN / "spot" / "btcusdt_20240808.gz", BIN / "usdm" / "btcusdt_20240808.gz",
    BIN / "cm" / "btcusd_perp_20240808.gz", BIN / "spot" / "btcusdt_20230405.dat.gz",
])
def test_fast_path_equals_orjson_path(path):
    """Every line the numba scanner accepts gives exactly what the orjson path gives."""
    lines = _head(path, 3000)
    data = b"\n".join(lines) + b"\n"
    stats = bn.ImportStats(out_dir="", files=[])
    tab, sym = bn._scan_file(path, data, "", False, stats)
    ndig = bn._first_line_info(data, path)[0]
    c = tab.cols
    assert stats.fallback_lines <= 1  # only the REST snapshot
    checked = 0
    for row, line in enumerate(lines):
        typ, v = bn._slow_line(line, ndig, sym)
        assert c["mtype"][row] == typ
        assert c["local"][row] == v["local"]
        if typ == bn.M_DEPTH:
            assert (c["exch"][row], c["uid_first"][row], c["uid_last"][row], c["uid_prev"][row]) == (
                v["exch"], v["U"], v["u"], v["pu"])
            b0, nb_, a0, na_ = c["bstart"][row], c["nbid"][row], c["astart"][row], c["nask"][row]
            np.testing.assert_array_equal(tab.lvl_px[b0 : b0 + nb_], v["bids"][:, 0])
            np.testing.assert_array_equal(tab.lvl_qty[b0 : b0 + nb_], v["bids"][:, 1])
            np.testing.assert_array_equal(tab.lvl_px[a0 : a0 + na_], v["asks"][:, 0])
            np.testing.assert_array_equal(tab.lvl_qty[a0 : a0 + na_], v["asks"][:, 1])
            checked += 1
        elif typ == bn.M_TRADE:
            assert (c["exch"][row], c["uid_first"][row], c["f_px"][row], c["f_qty"][row], c["flag"][row]) == (
                v["exch"], v["t"], v["p"], v["q"], int(v["m"]))
            checked += 1
        elif typ == bn.M_BOOKTICKER:
            assert (c["exch"][row], c["uid_last"][row], c["f_px"][row], c["f_qty"][row], c["f_px2"][row],
                    c["f_qty2"][row]) == (v["exch"], v["u"], v["b"], v["B"], v["a"], v["A"])
            checked += 1
    assert checked > 2500


# -- corrupt input -------------------------------------------------------------------------
def _corrupt_cases(lines: list[bytes]):
    """(description, line number 1-based, new content, expected message part)."""
    depth = [i for i, l in enumerate(lines) if b"depthUpdate" in l and i > 20]
    trade = [i for i, l in enumerate(lines) if b'"e":"trade"' in l]
    d, t = depth[0], trade[3]
    L = lines
    return [
        ("truncated", d, L[d][: len(L[d]) // 2], "invalid JSON"),
        ("bad number", d, L[d].replace(b'"b":[["', b'"b":[["6x', 1), "not a number"),
        ("missing u", d, L[d].replace(b',"u":', b',"x":', 1), "missing field 'u'"),
        ("bad ts", t, b"17231612x4087896568" + L[t][L[t].index(b" "):], "bad local timestamp"),
        ("short ts", t, L[t][3:], "digits"),
        ("other symbol", t, L[t].replace(b"btcusdt@trade", b"ethusdt@trade"), "another symbol"),
        ("not an object", t, L[t][: L[t].index(b" ")] + b" [1,2,3]", "expected an object"),
        ("bad m", t, L[t].replace(b'"m":true', b'"m":"yes"').replace(b'"m":false', b'"m":"no"'), "'m'"),
    ]


@needs_data
def test_corrupt_line_is_data_error_naming_file_and_line(tmp_path):
    lines = _head(SPOT[0], 400)
    for i, (name, idx, new, expect) in enumerate(_corrupt_cases(lines)):
        bad = list(lines)
        bad[idx] = new
        f = _write_gz(tmp_path / f"c{i}" / "btcusdt_20240808.gz", bad)
        with pytest.raises(DataError) as ei:
            import_binance([f], tmp_path / f"out{i}")
        msg = str(ei.value)
        assert msg.startswith(f"{f}:{idx + 1}: "), (name, msg)
        assert expect in msg, (name, msg)


@needs_data
def test_lenient_mode_counts_and_skips(tmp_path):
    lines = _head(SPOT[0], 400)
    cases = _corrupt_cases(lines)
    bad = list(lines)
    used = set()
    for _name, idx, new, _e in cases:
        if idx not in used:
            bad[idx] = new
            used.add(idx)
    bad.insert(100, b"")  # a blank line is not an error
    f = _write_gz(tmp_path / "spot" / "btcusdt_20240808.gz", bad)
    stats = import_binance([f], tmp_path / "out", lenient=True)
    assert stats.lines_skipped == len(used)
    assert stats.blank_lines == 1
    assert len(stats.skipped) == len(used)
    assert all(s.startswith(f"{f}:") for s in stats.skipped)
    rec = open_recording(tmp_path / "out")
    assert rec.meta["stats"]["lines_skipped"] == len(used)
    good = import_binance([_write_gz(tmp_path / "ok" / "spot" / "btcusdt_20240808.gz", lines)], tmp_path / "out2")
    assert stats.messages == good.messages - len(used)


@needs_data
def test_line_numbers_across_inflate_blocks(tmp_path):
    """Big files are parsed block by block while they inflate; errors still name the line."""
    with gzip.open(SPOT[1], "rb") as fh:
        lines = fh.read().split(b"\n")
    assert len(lines) > 50_000
    for idx in (35_123, 58_000):
        bad = list(lines)
        bad[idx] = bad[idx][:-7]
        f = _write_gz(tmp_path / f"b{idx}" / "spot" / "btcusdt_20240809.gz", bad)
        with pytest.raises(DataError, match=f"{f}:{idx + 1}: invalid JSON"):
            import_binance([f], tmp_path / "out")
    stats = import_binance([f], tmp_path / "out", lenient=True)
    assert stats.lines_skipped == 1 and stats.skipped[0].startswith(f"{f}:{58_001}:")


@needs_data
def test_truncated_gzip(tmp_path):
    lines = _head(SPOT[0], 400)
    raw = gzip.compress(b"\n".join(lines) + b"\n")
    f = tmp_path / "spot" / "btcusdt_20240808.gz"
    f.parent.mkdir()
    f.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(DataError, match=f"{f}: corrupt or truncated gzip"):
        import_binance([f], tmp_path / "out")
    stats = import_binance([f], tmp_path / "out", lenient=True)
    assert stats.truncated_files == [str(f)]
    assert 0 < stats.lines < 400


# -- sync rule -----------------------------------------------------------------------------
def _book_snapshot_line(rec_dir: Path, local_ts: int, at_update_id: int) -> bytes:
    """A REST-style snapshot line made from a rebuilt book at update id ``at_update_id``."""
    rec = open_recording(rec_dir)
    ev = rec.events()
    ends = np.flatnonzero(message_ends(ev) & (ev["kind"] == DEPTH) & (ev["last_id"] == at_update_id))
    d = replay_depth(ev, ends[-1:], 5000)
    bids = [[repr(float(p)), repr(float(q))] for p, q in zip(d["bid_px"][0], d["bid_qty"][0]) if q > 0]
    asks = [[repr(float(p)), repr(float(q))] for p, q in zip(d["ask_px"][0], d["ask_qty"][0]) if q > 0]
    return str(local_ts).encode() + b" " + orjson.dumps({"lastUpdateId": at_update_id, "bids": bids, "asks": asks})


@needs_data
def test_spot_gap_is_recorded_and_snapshot_resyncs(tmp_path):
    lines = _head(SPOT[0], 1500)
    depth = [i for i, l in enumerate(lines) if b"depthUpdate" in l]
    ref = import_binance([_write_gz(tmp_path / "ref" / "spot" / "btcusdt_20240808.gz", lines)], tmp_path / "ref_rec")
    assert ref.gaps_found == 0 and ref.synced_at_end

    drop = depth[30]
    gapped = lines[:drop] + lines[drop + 1 :]
    f = _write_gz(tmp_path / "gap" / "spot" / "btcusdt_20240808.gz", gapped)
    stats = import_binance([f], tmp_path / "gap_rec")
    assert stats.gaps_found == 1
    g = stats.gaps[0]
    # detected at the next diff; it sits at index depth[31] - 1 of the gapped file
    assert (g["file"], g["line"], g["reason"]) == (str(f), depth[31], "update id gap")
    dropped = orjson.loads(lines[drop].split(b" ", 1)[1])["data"]
    assert g["previous_u"] == dropped["U"] - 1 and g["U"] == dropped["u"] + 1
    assert g["resynced_at"] is None and not stats.synced_at_end
    assert stats.unsynced[-1]["to_local_ts"] is None

    # a snapshot later in the input re-bases the book: from then on it equals the reference
    k = depth[60]
    u_k = orjson.loads(lines[k].split(b" ", 1)[1])["data"]["u"]
    local_next = int(lines[k + 1].split(b" ", 1)[0])
    snap = _book_snapshot_line(tmp_path / "ref_rec", local_next, u_k)
    resync = gapped[:k] + [snap] + gapped[k:]  # after the (shifted) diff k, before the next line
    f2 = _write_gz(tmp_path / "resync" / "spot" / "btcusdt_20240808.gz", resync)
    st2 = import_binance([f2], tmp_path / "resync_rec")
    assert st2.gaps_found == 1 and st2.snapshots == 2
    assert st2.gaps[0]["resynced_at"] == f"{f2}:{k + 1}"
    assert st2.synced_at_end and st2.unsynced[0]["to_local_ts"] == local_next
    a = open_recording(tmp_path / "ref_rec").events()
    b = open_recording(tmp_path / "resync_rec").events()
    ta, tb = replay_top(a), replay_top(b)
    ia = np.flatnonzero(a["local_ts"] > local_next)
    ib = np.flatnonzero(b["local_ts"] > local_next)
    assert ia.size == ib.size > 1000
    for name in ("bid_px", "bid_qty", "ask_px", "ask_qty"):
        np.testing.assert_array_equal(ta[name][ia], tb[name][ib])


@needs_data
def test_futures_gap_uses_pu(tmp_path):
    lines = _head(USDM[0], 600)
    depth = [i for i, l in enumerate(lines) if b"depthUpdate" in l]
    drop = depth[40]
    f = _write_gz(tmp_path / "usdm" / "btcusdt_20240718.gz", lines[:drop] + lines[drop + 1 :])
    stats = import_binance([f], tmp_path / "rec")
    assert stats.market == "usdm"
    assert stats.gaps_found == 1
    g = stats.gaps[0]
    assert g["line"] == depth[41]
    assert g["pu"] == orjson.loads(lines[drop].split(b" ", 1)[1])["data"]["u"] != g["previous_u"]


@needs_data
def test_futures_first_diff_must_cover_snapshot(tmp_path):
    """Drop the held-back diff that contains lastUpdateId: the next one cannot connect."""
    lines = _head(USDM[0], 600)
    snap = next(i for i, l in enumerate(lines) if b"lastUpdateId" in l)
    L = orjson.loads(lines[snap].split(b" ", 1)[1])["lastUpdateId"]
    covering = [i for i in range(snap) if b"depthUpdate" in lines[i]
                and orjson.loads(lines[i].split(b" ", 1)[1])["data"]["u"] >= L]
    assert len(covering) >= 1
    ok = import_binance([_write_gz(tmp_path / "ok" / "usdm" / "btcusdt_20240718.gz", lines)], tmp_path / "ok_rec")
    assert ok.gaps_found == 0 and ok.depth_dropped_before_snapshot > 0
    bad = [l for i, l in enumerate(lines) if i != covering[0]]
    f = _write_gz(tmp_path / "bad" / "usdm" / "btcusdt_20240718.gz", bad)
    stats = import_binance([f], tmp_path / "bad_rec")
    assert stats.gaps_found == 1
    g = stats.gaps[0]
    assert g["reason"] == "first diff after snapshot does not connect"
    assert g["snapshot_last_update_id"] == L and g["pu"] > L
    assert g["resynced_at"] is None and not stats.synced_at_end
    # detected at the first diff after the snapshot line (line numbers of the edited file)
    first_after = next(i for i in range(snap, len(bad)) if b"depthUpdate" in bad[i])
    assert g["line"] == first_after + 1
    assert stats.unsynced[0]["from_local_ts"] == g["local_ts"] == int(bad[first_after].split(b" ", 1)[0])


# -- real captures -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spot_rec(tmp_path_factory):
    require(*SPOT)
    out = tmp_path_factory.mktemp("spot") / "btcusdt"
    stats = import_binance(SPOT, out)
    return out, stats


@needs_data
def test_spot_pair_imports_in_sync(spot_rec):
    out, stats = spot_rec
    assert stats.symbol == "BTCUSDT" and stats.market == "spot"
    assert stats.lines == 41249 + 58325
    assert stats.snapshots == 1 and stats.gaps_found == 0 and stats.synced_at_end
    assert stats.fallback_lines == 1 and stats.lines_skipped == 0
    assert stats.nonmonotonic_local_ts == 0
    rec = open_recording(out)
    assert rec.meta["tick_size"] == pytest.approx(0.01)
    assert rec.meta["stats"]["events"] == len(rec)
    assert rec.bookticker().shape[0] == stats.bookticker_messages == 28040 + 45134
    ev = rec.events()
    # the snapshot, then the diff received before the snapshot line that it does not contain
    first_clear = int(np.flatnonzero(ev["kind"] == CLEAR)[0])
    snap_ts = 1723161254206652067
    assert ev["local_ts"][first_clear] == snap_ts and ev["first_id"][first_clear] == 50093239218
    after = first_clear + 2 + int((ev["kind"] == SNAPSHOT).sum())
    assert ev["kind"][after] == DEPTH
    assert (ev["first_id"][after], ev["last_id"][after], ev["local_ts"][after]) == (50093239208, 50093239224, snap_ts)
    # first trade of the file: m=true => seller aggressed
    t0 = ev[ev["kind"] == TRADE][0]
    assert (t0["side"], t0["px"], t0["qty"], t0["first_id"]) == (-1, 61837.63, 0.02, 3735683259)
    assert (t0["exch_ts"], t0["local_ts"]) == (1723161255343 * 10**6, 1723161254087896568)


@needs_data
def test_spot_book_never_crossed_and_matches_bookticker(spot_rec):
    out, _ = spot_rec
    rec = open_recording(out)
    ev = rec.events()
    top = replay_top(ev, rec.tick_size)
    synced_from = int(np.flatnonzero(ev["kind"] == SNAPSHOT)[-1]) + 1
    assert not top["crossed"][synced_from:].any()
    assert not np.isnan(top["bid_px"][synced_from:]).any()
    res = validate_against_bookticker(out)
    assert res["bookticker_compared"] > 5000
    assert res["bookticker_px_match"] >= 0.99
    assert res["bookticker_match"] >= 0.99  # price and size, both sides
    assert res["state_match"] >= 0.99
    assert res["crossed_states"] == 0


@needs_data
def test_usdm_pair_matches_bookticker(tmp_path):
    stats = import_binance(USDM, tmp_path / "usdm")
    assert stats.market == "usdm" and stats.snapshots == 1 and stats.gaps_found == 0
    assert stats.depth_reapplied_after_snapshot == 0 and stats.depth_dropped_before_snapshot > 0
    res = validate_against_bookticker(tmp_path / "usdm")
    assert res["bookticker_compared"] > 3000
    assert res["bookticker_match"] >= 0.99
    assert res["crossed_states"] == 0


@needs_data
def test_capture_without_snapshot_is_marked_unsynced(tmp_path):
    f = BIN / "spot" / "btcusdt_20230405.dat.gz"
    stats = import_binance([f], tmp_path / "r")
    assert stats.snapshots == 0 and not stats.synced_at_end
    assert stats.unsynced and stats.unsynced[0]["to_local_ts"] is None
    ev = open_recording(tmp_path / "r").events()
    assert ev["local_ts"][0] == 1680652800004107 * 1000  # microseconds -> ns
    assert (ev["kind"] == DEPTH).sum() > 0 and (ev["kind"] == CLEAR).sum() == 0
