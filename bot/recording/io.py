"""Reading and writing recordings (directories of parquet chunks plus ``meta.json``).

Layout of a recording directory::

    meta.json               format, version, exchange, symbol, market, tick/lot size, sources,
                            row counts, first/last timestamps, importer stats, chunk list
    events-00000.parquet    events (schema: :data:`bot.recording.schema.EVENT_DTYPE`), one
    events-00001.parquet    row group per chunk, zstd; ``chunk_rows`` rows each except the last
    bookticker.parquet      optional auxiliary tables (``write_aux``), e.g. Binance bookTicker

Crash safety: each full chunk is written to a temporary file and renamed into place, and
``meta.json`` is rewritten with ``"complete": false`` after every chunk, so a crash loses at
most the open chunk and the chunks already on disk stay readable with
``open_recording(path, allow_incomplete=True)``. :meth:`RecordingWriter.close` writes the
final ``meta.json`` with ``"complete": true``.

Timestamps are int ns since the epoch, prices quote/base, sizes base units.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bot.errors import DataError
from bot.recording.schema import (
    CLEAR,
    EVENT_DTYPE,
    EVENT_FIELDS,
    FORMAT_NAME,
    FORMAT_VERSION,
    KIND_NAMES,
    infer_lot_size,
    infer_tick_size,
)

META_FILE = "meta.json"
CHUNK_PATTERN = "events-{:05d}.parquet"
_CHUNK_RE = re.compile(r"^events-(\d{5})\.parquet$")
DEFAULT_CHUNK_ROWS = 1_000_000
_SAMPLE_PER_CHUNK = 20_000


def _dtype_to_json(dtype: np.dtype) -> list[list[str]]:
    return [[name, dtype.fields[name][0].str] for name in dtype.names]


def _dtype_from_json(spec: Any, where: str) -> np.dtype:
    try:
        return np.dtype([(str(n), str(t)) for n, t in spec], align=True)
    except Exception as e:  # noqa: BLE001 - any malformed spec is a data error
        raise DataError(f"{where}: invalid dtype description {spec!r}: {e}") from None


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=False, allow_nan=False, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _as_columns(arr) -> dict[str, np.ndarray]:
    if isinstance(arr, dict):
        return arr
    return {name: arr[name] for name in arr.dtype.names}


def _write_parquet_atomic(path: Path, arr, compression: str) -> None:
    """Write a structured array or a dict of columns as one parquet row group (tmp + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    cols = _as_columns(arr)
    table = pa.table({name: pa.array(np.ascontiguousarray(c)) for name, c in cols.items()})
    # dictionary-encode floats and 1-byte columns only: int64 timestamps and ids are mostly
    # distinct, and a dictionary there costs time and size (same content either way)
    dict_cols = [name for name, c in cols.items() if c.dtype.kind == "f" or c.dtype.itemsize == 1]
    pq.write_table(
        table, tmp, compression=compression, row_group_size=max(table.num_rows, 1),
        write_statistics=False, use_dictionary=dict_cols,
    )
    os.replace(tmp, path)


class RecordingWriter:
    """Write events to a recording directory, chunk by chunk.

    Args:
        path: the recording directory (created if missing). It must not already hold a
            recording unless ``overwrite=True`` (then the old recording's files are removed).
        meta: descriptive metadata: ``exchange``, ``symbol``, ``market`` (spot, usdm, cm,
            equity, ...), ``tick_size`` (quote/base) and ``lot_size`` (base units) if known,
            ``source_files``, importer ``stats``... Any JSON-serialisable values. A missing or
            None ``tick_size``/``lot_size`` is inferred at :meth:`close` from the written
            prices/sizes and marked ``"tick_size_source": "inferred"``.
        chunk_rows: rows per parquet chunk (one row group each).
        compression: parquet codec (default zstd).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        meta: dict | None = None,
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        compression: str = "zstd",
        overwrite: bool = False,
    ) -> None:
        if chunk_rows <= 0:
            raise ValueError("chunk_rows must be positive")
        self.path = Path(path)
        self.meta: dict = dict(meta or {})
        self.chunk_rows = int(chunk_rows)
        self.compression = compression
        self.path.mkdir(parents=True, exist_ok=True)
        existing = [p for p in self.path.iterdir() if p.name == META_FILE or _CHUNK_RE.match(p.name)]
        if existing:
            if not overwrite:
                raise FileExistsError(f"{self.path}: already holds a recording (overwrite=False)")
            self._remove_old()
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_rows = 0
        self._chunks: list[dict] = []
        self._aux: dict[str, dict] = {}
        self._rows = 0
        self._kind_counts: dict[int, int] = {}
        self._first_local = None
        self._last_local = None
        self._first_exch = None
        self._last_exch = None
        self._px_samples: list[np.ndarray] = []
        self._qty_samples: list[np.ndarray] = []
        self._closed = False

    def _remove_old(self) -> None:
        old_meta = self.path / META_FILE
        aux_files: list[str] = []
        if old_meta.exists():
            try:
                aux_files = [v["file"] for v in json.loads(old_meta.read_text()).get("aux", {}).values()]
            except Exception:  # noqa: BLE001 - a broken old meta just means fewer files to remove
                aux_files = []
        for p in list(self.path.iterdir()):
            if p.name == META_FILE or _CHUNK_RE.match(p.name) or p.name in aux_files:
                p.unlink()

    # -- writing ------------------------------------------------------------------------
    def append(self, events: np.ndarray) -> None:
        """Queue events (an array of :data:`EVENT_DTYPE`, or one with the same field names);
        every full chunk is written to disk immediately. The writer may keep references to
        the array until its chunk is written: do not modify it afterwards."""
        events = np.asarray(events)
        if events.dtype.names is None or set(events.dtype.names) != set(EVENT_FIELDS):
            raise TypeError(f"events must have fields {EVENT_FIELDS}, got {events.dtype}")
        events = events.reshape(-1)
        self.append_columns({name: events[name] for name in EVENT_FIELDS})

    def append_columns(self, columns: dict[str, np.ndarray]) -> None:
        """Queue events given as one 1-d array per field of :data:`EVENT_DTYPE` (same length,
        cast to the field's type). Contiguous arrays of the right type are not copied; the
        writer keeps references until their chunk is written: do not modify them."""
        if self._closed:
            raise ValueError("RecordingWriter is closed")
        missing = set(EVENT_FIELDS) - set(columns)
        if missing:
            raise TypeError(f"missing event columns {sorted(missing)}")
        cols = {}
        n = None
        for name in EVENT_FIELDS:
            c = np.asarray(columns[name]).reshape(-1)
            want = EVENT_DTYPE.fields[name][0]
            if c.dtype != want:
                c = c.astype(want)
            if n is None:
                n = c.shape[0]
            elif c.shape[0] != n:
                raise ValueError(f"column {name!r} has {c.shape[0]} rows, expected {n}")
            cols[name] = c
        if not n:
            return
        self._pending.append(cols)
        self._pending_rows += n
        while self._pending_rows >= self.chunk_rows:
            self._flush_chunk(self.chunk_rows)

    def flush(self) -> None:
        """Write the pending rows now, as a (possibly short) chunk. Later rows start a new
        chunk. Lets a caller control when the parquet encoding happens."""
        if self._closed:
            raise ValueError("RecordingWriter is closed")
        if self._pending_rows:
            self._flush_chunk(self._pending_rows)

    def _take(self, n: int) -> dict[str, np.ndarray]:
        """Remove and return the first n pending rows as contiguous columns."""
        parts: list[dict[str, np.ndarray]] = []
        need = n
        while need:
            head = self._pending[0]
            m = head["kind"].shape[0]
            if m <= need:
                parts.append(head)
                self._pending.pop(0)
                need -= m
            else:
                parts.append({k: v[:need] for k, v in head.items()})
                self._pending[0] = {k: v[need:] for k, v in head.items()}
                need = 0
        self._pending_rows -= n
        if len(parts) == 1:
            return {k: np.ascontiguousarray(v) for k, v in parts[0].items()}
        return {k: np.concatenate([p[k] for p in parts]) for k in EVENT_FIELDS}

    def _flush_chunk(self, n: int) -> None:
        cols = self._take(n)
        idx = len(self._chunks)
        name = CHUNK_PATTERN.format(idx)
        _write_parquet_atomic(self.path / name, cols, self.compression)
        self._account(cols)
        self._chunks.append({"file": name, "rows": int(n)})
        _write_json_atomic(self.path / META_FILE, self._meta_dict(complete=False))

    def _account(self, cols: dict[str, np.ndarray]) -> None:
        kind = cols["kind"]
        self._rows += kind.shape[0]
        counts = np.bincount(kind, minlength=5)
        for k in np.flatnonzero(counts).tolist():
            self._kind_counts[k] = self._kind_counts.get(k, 0) + int(counts[k])
        lt = cols["local_ts"]
        et = cols["exch_ts"]
        if self._first_local is None:
            self._first_local = int(lt[0])
        self._last_local = int(lt[-1])
        et_valid = et[et >= 0]
        if et_valid.size:
            lo, hi = int(et_valid.min()), int(et_valid.max())
            self._first_exch = lo if self._first_exch is None else min(self._first_exch, lo)
            self._last_exch = hi if self._last_exch is None else max(self._last_exch, hi)
        book_idx = np.flatnonzero(kind != CLEAR)
        if book_idx.size:
            step = max(1, book_idx.size // _SAMPLE_PER_CHUNK)
            idx = book_idx[::step]
            self._px_samples.append(np.unique(cols["px"][idx]))
            q = cols["qty"][idx]
            self._qty_samples.append(np.unique(q[q > 0]))

    def write_aux(self, name: str, array: np.ndarray) -> None:
        """Write an auxiliary table ``<name>.parquet`` (any numpy structured array), e.g. the
        Binance bookTicker stream (:data:`~bot.recording.schema.BOOKTICKER_DTYPE`)."""
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name.startswith("events"):
            raise ValueError(f"invalid aux table name {name!r}")
        array = np.asarray(array).reshape(-1)
        if array.dtype.names is None:
            raise TypeError("aux tables must be numpy structured arrays")
        fname = f"{name}.parquet"
        _write_parquet_atomic(self.path / fname, array, self.compression)
        self._aux[name] = {"file": fname, "rows": int(array.size), "dtype": _dtype_to_json(array.dtype)}

    def _meta_dict(self, complete: bool) -> dict:
        m: dict[str, Any] = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "complete": complete}
        m.update(self.meta)
        m["rows"] = int(self._rows)
        m["rows_by_kind"] = {KIND_NAMES.get(k, str(k)): int(c) for k, c in sorted(self._kind_counts.items())}
        m["first_local_ts"] = self._first_local
        m["last_local_ts"] = self._last_local
        m["first_exch_ts"] = self._first_exch
        m["last_exch_ts"] = self._last_exch
        m["chunk_rows"] = self.chunk_rows
        m["chunks"] = list(self._chunks)
        m["aux"] = dict(self._aux)
        m["event_dtype"] = _dtype_to_json(EVENT_DTYPE)
        return m

    def close(self, **meta_updates: Any) -> dict:
        """Write the last (partial) chunk and the final ``meta.json``. ``meta_updates`` are
        merged into the metadata first (e.g. importer stats). Returns the metadata written."""
        if self._closed:
            raise ValueError("RecordingWriter is already closed")
        self.meta.update(meta_updates)
        if self._pending_rows:
            self._flush_chunk(self._pending_rows)
        for key, samples, fn in (
            ("tick_size", self._px_samples, infer_tick_size),
            ("lot_size", self._qty_samples, infer_lot_size),
        ):
            if self.meta.get(key) is None:
                val = fn(np.concatenate(samples)) if samples else None
                self.meta[key] = val
                self.meta[key + "_source"] = "inferred" if val is not None else "unknown"
            else:
                self.meta.setdefault(key + "_source", "given")
        meta = self._meta_dict(complete=True)
        _write_json_atomic(self.path / META_FILE, meta)
        self._closed = True
        return meta

    def __enter__(self) -> "RecordingWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._closed:
            self.close()


# -- reading ---------------------------------------------------------------------------
class Recording:
    """A recording on disk. ``meta`` is the parsed ``meta.json``."""

    def __init__(self, path: Path, meta: dict) -> None:
        self.path = path
        self.meta = meta
        self._chunks: list[dict] = meta["chunks"]

    def __len__(self) -> int:
        return int(sum(c["rows"] for c in self._chunks))

    @property
    def tick_size(self) -> float | None:
        return self.meta.get("tick_size")

    def _read_chunk_into(self, info: dict, out: np.ndarray) -> None:
        fpath = self.path / info["file"]
        _read_struct_into(fpath, out, int(info["rows"]))

    def events(self) -> np.ndarray:
        """All events as one :data:`EVENT_DTYPE` array (columns copied straight from arrow)."""
        out = np.empty(len(self), dtype=EVENT_DTYPE)
        off = 0
        for info in self._chunks:
            n = int(info["rows"])
            self._read_chunk_into(info, out[off : off + n])
            off += n
        return out

    def iter_chunks(self) -> Iterator[np.ndarray]:
        """Yield the events chunk by chunk (each an :data:`EVENT_DTYPE` array)."""
        for info in self._chunks:
            out = np.empty(int(info["rows"]), dtype=EVENT_DTYPE)
            self._read_chunk_into(info, out)
            yield out

    def aux_names(self) -> list[str]:
        return sorted(self.meta.get("aux", {}))

    def aux(self, name: str) -> np.ndarray:
        """An auxiliary table by name (e.g. ``"bookticker"``). KeyError if absent."""
        info = self.meta.get("aux", {}).get(name)
        if info is None:
            raise KeyError(f"{self.path}: no aux table {name!r} (have {self.aux_names()})")
        where = f"{self.path / META_FILE}: aux {name}"
        try:
            fname, rows, spec = info["file"], int(info["rows"]), info["dtype"]
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where}: malformed entry {info!r}") from None
        dtype = _dtype_from_json(spec, where)
        out = np.empty(rows, dtype=dtype)
        _read_struct_into(self.path / fname, out, rows)
        return out

    def bookticker(self) -> np.ndarray:
        """The ``bookticker`` aux table (:data:`~bot.recording.schema.BOOKTICKER_DTYPE`)."""
        return self.aux("bookticker")


def _read_struct_into(fpath: Path, out: np.ndarray, rows: int) -> None:
    if not fpath.exists():
        raise DataError(f"{fpath}: chunk file missing")
    try:
        table = pq.read_table(fpath, use_threads=True)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{fpath}: unreadable parquet file: {e}") from None
    if table.num_rows != rows:
        raise DataError(f"{fpath}: {table.num_rows} rows, meta.json says {rows}")
    names = set(table.column_names)
    for name in out.dtype.names:
        if name not in names:
            raise DataError(f"{fpath}: column {name!r} missing")
        col = table.column(name)
        try:
            arr = col.to_numpy()
        except (pa.ArrowException, ValueError) as e:
            raise DataError(f"{fpath}: column {name!r} unreadable: {e}") from None
        want = out.dtype.fields[name][0]
        if arr.dtype != want:
            if not np.can_cast(arr.dtype, want, casting="same_kind"):
                raise DataError(f"{fpath}: column {name!r} has type {arr.dtype}, expected {want}")
        out[name] = arr


def open_recording(path: str | os.PathLike, *, allow_incomplete: bool = False) -> Recording:
    """Open a recording directory. Raises :class:`~bot.errors.DataError` naming the file when
    ``meta.json`` is missing/malformed/of another format, or (on read) a chunk is missing or
    corrupt. A recording whose writer was not closed (``"complete": false``) is refused unless
    ``allow_incomplete`` (then the chunks written so far are readable)."""
    path = Path(path)
    mpath = path / META_FILE
    if not path.is_dir():
        raise DataError(f"{path}: recording directory not found")
    if not mpath.exists():
        raise DataError(f"{mpath}: missing (not a recording, or its writer never flushed)")
    try:
        meta = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{mpath}: unreadable: {e}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{mpath}: top level is not an object")
    if meta.get("format") != FORMAT_NAME:
        raise DataError(f"{mpath}: format {meta.get('format')!r}, expected {FORMAT_NAME!r}")
    ver = meta.get("format_version")
    if not isinstance(ver, int) or ver > FORMAT_VERSION or ver < 1:
        raise DataError(f"{mpath}: unsupported format_version {ver!r} (this mmbot reads <= {FORMAT_VERSION})")
    chunks = meta.get("chunks")
    if not isinstance(chunks, list) or not all(
        isinstance(c, dict) and isinstance(c.get("file"), str) and isinstance(c.get("rows"), int) and c["rows"] >= 0
        for c in chunks
    ):
        raise DataError(f"{mpath}: 'chunks' must be a list of {{file, rows}}")
    for c in chunks:
        if not _CHUNK_RE.match(c["file"]):
            raise DataError(f"{mpath}: invalid chunk file name {c['file']!r}")
    if not meta.get("complete", False) and not allow_incomplete:
        raise DataError(f"{mpath}: recording incomplete (writer not closed); open with allow_incomplete=True")
    return Recording(path, meta)
