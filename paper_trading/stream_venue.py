"""The replay venue over a recording read chunk by chunk from disk (peak memory flat in the
recording's length).

:class:`StreamingVenue` is a :class:`~paper_trading.venue.Venue` (same kernel, same book,
same fills) whose columns are a *window* of the recording instead of all of it:

* Price axis. The venue's sparse price axis needs every distinct recorded price before the
  first row is applied. A first pass reads only the ``kind``, ``side`` and ``px`` columns of
  each chunk (one at a time) and keeps the sorted distinct ticks of each, merged as it goes:
  memory is one chunk's three columns plus the distinct prices (a few thousand for a
  liquid market), not the recording (read in batches of ``batch_rows``). The same pass counts prices off the tick grid and
  trades without an aggressor side, and reads the first and last local times.
* Window. Replay holds the columns of the rows not yet applied from the current batch plus
  the next batch when needed (a batch: ``batch_rows`` rows of a chunk, 250,000 by default, so
  the window does not grow with the chunk size either). A window never ends inside a message (rows sharing
  ``local_ts``): the rows of its last local time are only applied once the next batch is
  appended (or at the end of the recording), so the kernel sees every message whole, as in
  memory. When the window ends before ``t_stop``, the order actions due by ``t_stop`` wait
  for the next window (kernel flag ``hold``), as they would wait for the next row in memory.
  Rows applied in the current ``advance_to`` call stay in the window until the next call
  (the replay source reads the public trades among them), as does the last applied row.
* What is kept is bounded by one batch plus one decision interval of rows (or the warm-up,
  at the start): it does not grow with the recording. (pyarrow decompresses a chunk's whole
  row group while its batches are read: peak memory also holds one chunk's columns.)

:meth:`StreamingVenue.prefix` re-reads the first rows from disk (the strategy's warm-up
history). Units as in :mod:`paper_trading.venue`: prices quote per base, sizes base units,
times int ns of local receive time.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bot.errors import DataError
from bot.recording.io import Recording
from bot.recording.schema import DEPTH, EVENT_DTYPE, SNAPSHOT, TRADE, prices_off_tick
from paper_trading.venue import Venue, VenueParams, advance

_COLS = ("kind", "side", "local_ts", "exch_ts", "px", "qty", "last_id")


class FirstPass:
    """What one pass over the chunks' kind/side/px/local_ts columns finds (see module docstring)."""

    def __init__(self, rec: Recording, tick: float) -> None:
        ticks: np.ndarray = np.zeros(0, np.int64)
        self.off = self.total = 0
        self.example: float | None = None
        self.unsided_trades = 0
        self.t_first: int | None = None
        self.t_last: int | None = None
        chunks = [c for c in rec.meta["chunks"] if int(c["rows"]) > 0]
        for cols in _batches(rec, chunks, ("kind", "side", "px", "local_ts"), StreamingVenue.batch_rows):
            if len(cols["kind"]) == 0:
                continue
            kind, px = cols["kind"], cols["px"]
            has_px = (kind == DEPTH) | (kind == SNAPSHOT) | (kind == TRADE)
            ticks = np.union1d(ticks, np.unique(np.rint(px[has_px] / tick).astype(np.int64)))
            off, total, ex = prices_off_tick(cols, tick)
            self.off += off
            self.total += total
            if self.example is None:
                self.example = ex
            self.unsided_trades += int(np.count_nonzero((kind == TRADE) & (cols["side"] == 0)))
            lts = cols["local_ts"]
            if self.t_first is None:
                self.t_first = int(lts[0])
            self.t_last = int(lts[-1])
        self.rank_tick = ticks


def _batches(rec: Recording, chunks: list[dict], columns, batch_rows: int):
    """Columns of the chunks' rows, ``batch_rows`` rows at a time (a chunk's last batch may be
    shorter), as contiguous numpy arrays of EVENT_DTYPE's field types."""
    for info in chunks:
        path = rec.path / info["file"]
        if not path.exists():
            raise DataError(f"{path}: chunk file missing")
        rows = 0
        try:
            f = pq.ParquetFile(path)
            for batch in f.iter_batches(batch_size=batch_rows, columns=list(columns)):
                rows += batch.num_rows
                yield {name: np.ascontiguousarray(_numpy(batch.column(name)), dtype=EVENT_DTYPE.fields[name][0])
                       for name in columns}
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{path}: unreadable parquet file: {e}") from None
        except Exception as e:  # noqa: BLE001 - pyarrow errors: a data error naming the file
            if isinstance(e, DataError):
                raise
            raise DataError(f"{path}: unreadable parquet file: {e}") from None
        if rows != int(info["rows"]):
            raise DataError(f"{path}: {rows} rows, meta.json says {info['rows']}")


def _numpy(col) -> np.ndarray:
    """A pyarrow column as numpy: a view of its data buffer when it is one primitive chunk
    without nulls (pyarrow's own ``to_numpy`` imports pandas, about 0.6 s of a cold start),
    else ``to_numpy``."""
    if isinstance(col, pa.ChunkedArray):
        if col.num_chunks != 1:
            return col.to_numpy()
        col = col.chunk(0)
    t = col.type
    if col.null_count == 0 and (pa.types.is_integer(t) or pa.types.is_floating(t)):
        dt = np.dtype(t.to_pandas_dtype())
        return np.frombuffer(col.buffers()[1], dtype=dt, count=len(col), offset=col.offset * dt.itemsize)
    return col.to_numpy(zero_copy_only=False)


def _read(rec: Recording, info: dict, columns) -> dict[str, np.ndarray]:
    """Columns of one chunk as contiguous numpy arrays of EVENT_DTYPE's field types."""
    path = rec.path / info["file"]
    if not path.exists():
        raise DataError(f"{path}: chunk file missing")
    try:
        table = pq.ParquetFile(path).read(columns=list(columns))  # (read_table imports pyarrow.dataset, and pandas)
    except Exception as e:  # noqa: BLE001 - any unreadable chunk is a data error naming the file
        raise DataError(f"{path}: unreadable parquet file: {e}") from None
    if table.num_rows != int(info["rows"]):
        raise DataError(f"{path}: {table.num_rows} rows, meta.json says {info['rows']}")
    out = {}
    for name in columns:
        want = EVENT_DTYPE.fields[name][0]
        out[name] = np.ascontiguousarray(_numpy(table.column(name)), dtype=want)
    return out


class StreamingVenue(Venue):
    """A :class:`Venue` over a :class:`~bot.recording.io.Recording` read chunk by chunk."""

    batch_rows = 250_000  # rows read from disk at a time (a chunk is read in batches of this size)

    def __init__(self, rec: Recording, tick: float, lot: float = 1e-8, params: VenueParams | None = None,
                 first_pass: FirstPass | None = None, batch_rows: int | None = None) -> None:
        self._init_params(tick, lot, params)
        fp = first_pass or FirstPass(rec, self.tick)
        if fp.t_first is None:
            raise DataError(f"recording {rec.path} holds no events")
        self.rec = rec
        self.first_pass = fp
        self.n = len(rec)
        self._chunks = [c for c in rec.meta["chunks"] if int(c["rows"]) > 0]
        if batch_rows is not None:
            self.batch_rows = int(batch_rows)
        self._source = _batches(rec, self._chunks, _COLS, self.batch_rows)
        self._final = False  # the window holds the recording's last row
        self._init_book(fp.rank_tick)
        self.base = 0
        self.i = 0
        self._set_window({k: np.zeros(0, EVENT_DTYPE.fields[k][0]) for k in _COLS})
        self._extend(0)

    @property
    def t_first(self) -> int:
        return int(self.first_pass.t_first)

    @property
    def t_last(self) -> int:
        return int(self.first_pass.t_last)

    def _set_window(self, cols: dict[str, np.ndarray]) -> None:
        self.kind, self.side, self.local_ts = cols["kind"], cols["side"], cols["local_ts"]
        self.exch_ts, self.qty, self._px, self._last_id = cols["exch_ts"], cols["qty"], cols["px"], cols["last_id"]
        has_px = (self.kind == DEPTH) | (self.kind == SNAPSHOT) | (self.kind == TRADE)
        level = np.full(len(self.kind), -1, np.int64)
        level[has_px] = np.searchsorted(self.rank_tick, np.rint(self._px[has_px] / self.tick).astype(np.int64))
        self.level = level

    def _extend(self, drop: int) -> None:
        """Drop the window's first ``drop`` rows and append chunks until the window ends with
        a whole message or holds the last row; sets ``_avail`` (rows the kernel may apply)."""
        cols = {"kind": self.kind, "side": self.side, "local_ts": self.local_ts, "exch_ts": self.exch_ts,
                "qty": self.qty, "px": self._px, "last_id": self._last_id}
        cols = {k: v[drop:] for k, v in cols.items()}
        self.base += drop
        while True:
            new = next(self._source, None)
            if new is None:
                self._final = True
                break
            cols = {k: np.concatenate([cols[k], new[k]]) for k in _COLS}
            lts = cols["local_ts"]
            # rows of the last local time may continue in the next batch: hold them back
            if int(np.searchsorted(lts, lts[-1], "left")) > 0:
                break
        self._set_window(cols)
        lts = self.local_ts
        self._avail = len(lts) if self._final else int(np.searchsorted(lts, lts[-1], "left"))

    def advance_to(self, t_stop: int):
        """Apply every row with local_ts <= t_stop, reading chunks as needed; reports in time order."""
        keep = self.i - self.base  # rows of this call stay readable until the next one
        reports = []
        while True:
            hold = (not self._final) and int(self.local_ts[self._avail]) <= t_stop
            li, nrep = advance(self.kind, self.side, self.local_ts, self.level, self.qty, self.i - self.base, self._avail,
                               t_stop, hold, *self._state)
            self.i = self.base + li
            reports += self._reports(nrep)
            if not hold:
                break
            drop = max(0, min(keep, li) - 1)  # keep the last applied row (now_ns, recorded latency)
            self._extend(drop)
            keep -= drop
        self._update_best_px()
        return reports

    def _px_col(self) -> np.ndarray:
        return self._px

    def _last_id_col(self) -> np.ndarray:
        return self._last_id

    def prefix(self, i: int) -> np.ndarray:
        """Rows 0..i-1 of the recording, re-read from disk (EVENT_DTYPE)."""
        out = np.empty(i, EVENT_DTYPE)
        off = 0
        for info in self._chunks:
            if off >= i:
                break
            cols = _read(self.rec, info, EVENT_DTYPE.names)
            take = min(int(info["rows"]), i - off)
            for k in EVENT_DTYPE.names:
                out[k][off : off + take] = cols[k][:take]
            off += take
        return out
