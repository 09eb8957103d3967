"""The pooled ingest pipeline (pieces scanned in place by worker threads, lines split between
pieces bridged) writes exactly what the previous block-by-block pipeline wrote, on a slice of
a real USD-M capture (REST snapshot, depth diffs, trades, bookTicker), also with a corrupt
line (same line numbers) and with a truncated gzip stream; and the recording's int64 columns
are written without dictionary encoding (same content, less time and space)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from bot.errors import DataError
from bot.importers import binance as bn
from bot.importers.binance import import_binance
from bot.recording import open_recording
from real_data import DATA, needs

SRC = DATA / "binance" / "usdm" / "btcusdt_20240808.gz"
N_LINES = 3000  # the REST snapshot is line 55


def _slice(tmp_path: Path, lines: list[bytes], name: str = "btcusdt_20240808.gz", gz: bool = True) -> Path:
    d = tmp_path / name.replace(".", "_") / "usdm"
    d.mkdir(parents=True)
    text = b"\n".join(lines) + b"\n"
    f = d / name
    f.write_bytes(gzip.compress(text) if gz else text)
    return f


def _lines() -> list[bytes]:
    out = []
    with gzip.open(SRC, "rb") as fh:
        for line in fh:
            out.append(line.rstrip(b"\n"))
            if len(out) >= N_LINES:
                break
    return out


def _run(monkeypatch, pipeline: str, f: Path, out: Path, **kw):
    monkeypatch.setattr(bn, "_PIPELINE", pipeline)
    # small inflate pieces: many blocks, most lines that cross a piece boundary
    monkeypatch.setattr(bn, "_POOL_PIECE", 1 << 11)
    stats = import_binance([f], out, **kw)
    rec = open_recording(out)
    st = {k: v for k, v in stats.as_dict().items() if k not in ("elapsed_s", "timings_s", "out_dir")}
    return rec.events(), rec.bookticker(), st


def _assert_same(a, b, ignore=()):
    ev_a, bt_a, st_a = a
    ev_b, bt_b, st_b = b
    assert ev_a.shape == ev_b.shape and ev_a.shape[0] > 10_000
    for name in ev_a.dtype.names:
        assert np.ascontiguousarray(ev_a[name]).tobytes() == np.ascontiguousarray(ev_b[name]).tobytes(), name
    assert bt_a.shape == bt_b.shape and bt_a.shape[0] > 100
    for name in bt_a.dtype.names:
        assert np.ascontiguousarray(bt_a[name]).tobytes() == np.ascontiguousarray(bt_b[name]).tobytes(), name
    assert {k: v for k, v in st_a.items() if k not in ignore} == {k: v for k, v in st_b.items() if k not in ignore}


@needs(SRC)
def test_pooled_pipeline_writes_what_the_previous_pipeline_wrote(tmp_path, monkeypatch):
    lines = _lines()
    f = _slice(tmp_path, lines)
    new = _run(monkeypatch, "pool", f, tmp_path / "new")
    assert new[2]["snapshots"] == 1 and new[2]["lines"] == N_LINES and new[2]["synced_at_end"]
    _assert_same(new, _run(monkeypatch, "v1", f, tmp_path / "old"))
    # the uncompressed file (read whole, no pipeline) gives the same recording too
    plain = _slice(tmp_path, lines, name="btcusdt_20240808.txt", gz=False)
    _assert_same(new, _run(monkeypatch, "pool", plain, tmp_path / "plain"), ignore=("files",))


@needs(SRC)
def test_pooled_pipeline_names_the_same_bad_line(tmp_path, monkeypatch):
    lines = _lines()
    bad_idx = 2345
    lines[bad_idx] = lines[bad_idx][:-9]  # cut inside the JSON
    f = _slice(tmp_path, lines)
    for pipeline in ("pool", "v1"):
        monkeypatch.setattr(bn, "_PIPELINE", pipeline)
        monkeypatch.setattr(bn, "_POOL_PIECE", 1 << 11)
        with pytest.raises(DataError, match=f"{f}:{bad_idx + 1}: "):
            import_binance([f], tmp_path / f"strict-{pipeline}")
    new = _run(monkeypatch, "pool", f, tmp_path / "new", lenient=True)
    assert new[2]["lines_skipped"] == 1 and new[2]["skipped"][0].startswith(f"{f}:{bad_idx + 1}: ")
    _assert_same(new, _run(monkeypatch, "v1", f, tmp_path / "old", lenient=True))


@needs(SRC)
def test_pooled_pipeline_truncated_gzip(tmp_path, monkeypatch):
    raw = gzip.compress(b"\n".join(_lines()) + b"\n")
    f = tmp_path / "t" / "usdm" / "btcusdt_20240808.gz"
    f.parent.mkdir(parents=True)
    f.write_bytes(raw[: len(raw) * 3 // 4])
    monkeypatch.setattr(bn, "_POOL_PIECE", 1 << 11)
    with pytest.raises(DataError, match=f"{f}: corrupt or truncated gzip"):
        import_binance([f], tmp_path / "strict")
    new = _run(monkeypatch, "pool", f, tmp_path / "new", lenient=True)
    assert new[2]["truncated_files"] == [str(f)] and 1000 < new[2]["lines"] < N_LINES
    _assert_same(new, _run(monkeypatch, "v1", f, tmp_path / "old", lenient=True))


@needs(SRC)
def test_int64_columns_are_not_dictionary_encoded(tmp_path):
    f = _slice(tmp_path, _lines())
    out = tmp_path / "rec"
    import_binance([f], out)
    rec = open_recording(out)
    files = [out / c["file"] for c in rec.meta["chunks"]] + [out / rec.meta["aux"]["bookticker"]["file"]]
    for path in files:
        md = pq.ParquetFile(path).metadata
        schema = md.schema.to_arrow_schema()
        for i in range(md.num_columns):
            col = md.row_group(0).column(i)
            dict_enc = col.has_dictionary_page
            if str(schema.field(i).type) == "int64":
                assert not dict_enc, (path.name, col.path_in_schema)
            elif schema.field(i).name in ("kind", "side", "px", "qty"):
                assert dict_enc, (path.name, col.path_in_schema)
