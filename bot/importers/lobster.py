"""Import LOBSTER (NASDAQ TotalView-ITCH reconstructions) message + order-book files.

Input: the vendor's zip (or the two CSVs) ``TICKER_DATE_START_END_message_N.csv`` and
``..._orderbook_N.csv``. Message columns: time (seconds after midnight, New York local time,
up to ns decimals), type (1 submit, 2 partial cancel, 3 delete, 4 visible execution,
5 hidden execution, 7 trading halt), order id, size (shares), price (USD x 10000),
direction (1 buy order, -1 sell order). Order-book row i is the top N levels after message i:
ask px, ask size, bid px, bid size per level; empty levels are +/-9999999999 with size 0.

How the L2 book is rebuilt
--------------------------
LOBSTER's message file only holds the messages that change the book *inside the requested
N-level window*. Changes to deeper levels are not reported, and when a top level empties,
the level that moves into the window from below appears in the order-book file without a
message. So messages alone cannot give the N-level book; the rule used here:

* Start from order-book row 0 (the book after message 0): CLEAR rows then SNAPSHOT rows.
* For each later message, apply it to the current N-level view: type 1 adds ``size`` at the
  price, types 2, 3, 4 subtract it (4 is also a TRADE row), 5 is a TRADE row only (hidden
  liquidity is not in the book), 7 is ignored. The changed level is written as a DEPTH row
  with its new total size.
* Then reconcile with order-book row i, level by level, and classify every difference:

  - *reveal*: the vendor shows a level worse than every level we know on that side (it
    entered the window from below): written as a DEPTH row with the vendor's size;
  - *evict*: one of our levels is worse than the vendor's N-th level (pushed out of the
    window by a better one): written as a DEPTH row with size 0, because later changes to
    it would not be reported;
  - *mismatch*: anything else (a level inside both windows with another size, a missing
    level in the middle): a real inconsistency between the two files; corrected to the
    vendor's value and counted.

So after every message the recording's book equals the vendor's N-level book, and
``stats["mismatches"]`` says whether the messages and the book file ever disagreed (0 on the
sample files). :func:`verify_against_orderbook_file` reports the same classification
without writing anything.

Output rows: ``exch_ts = local_ts`` = the message time converted to ns since the Unix
epoch (UTC) using the New York time zone of the file's date (no separate receive time).
Prices USD per share (int / 10000), sizes shares. Trades: side = aggressor = the opposite
of the executed resting order's direction. ``first_id = last_id`` = the LOBSTER order id
for rows caused by a message, -1 for reconciliation rows.
"""

from __future__ import annotations

import datetime as _dt
import io
import re
import time
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numba as nb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from bot.errors import DataError
from bot.recording.io import RecordingWriter

_NAME_RE = re.compile(r"(?P<ticker>[A-Za-z.]+)_(?P<date>\d{4}-\d{2}-\d{2})_(?P<start>\d+)_(?P<end>\d+)_(?P<what>message|orderbook)_(?P<levels>\d+)\.csv$")
_EMPTY_ASK = 9999999999
_EMPTY_BID = -9999999999
PRICE_SCALE = 10_000


@dataclass
class LobsterStats:
    """Result of :func:`import_lobster` / :func:`verify_against_orderbook_file`."""

    source: str
    symbol: str = ""
    date: str = ""
    levels: int = 0
    messages: int = 0
    events: int = 0
    rows_by_kind: dict[str, int] = field(default_factory=dict)
    trades_visible: int = 0
    trades_hidden: int = 0
    halts: int = 0
    rows_exact: int = 0  # book after the message equals the vendor row with no reconciliation
    rows_reveal: int = 0  # rows that needed reveals/evictions only
    reveals: int = 0
    evictions: int = 0
    mismatches: int = 0  # level differences that are neither reveal nor eviction
    mismatch_rows: int = 0
    first_mismatches: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------
def _ny_utc_offset_s(date: _dt.date) -> int:
    """UTC offset of New York at noon of ``date``, seconds (EDT -14400, EST -18000)."""
    try:
        from zoneinfo import ZoneInfo

        tz = ZoneInfo("America/New_York")
        return int(_dt.datetime(date.year, date.month, date.day, 12, tzinfo=tz).utcoffset().total_seconds())
    except Exception:  # noqa: BLE001 - no tz database: US rule since 2007
        mar = _dt.date(date.year, 3, 8)
        dst_start = mar + _dt.timedelta(days=(6 - mar.weekday()) % 7)  # second Sunday of March
        nov = _dt.date(date.year, 11, 1)
        dst_end = nov + _dt.timedelta(days=(6 - nov.weekday()) % 7)  # first Sunday of November
        return -14400 if dst_start <= date < dst_end else -18000


def _read_csv(data: bytes, name: str, ncols: int, what: str) -> list[np.ndarray]:
    """CSV without header -> (rows, ncols) arrays via pyarrow; errors name the file/line."""
    ro = pacsv.ReadOptions(autogenerate_column_names=True, block_size=1 << 24)
    try:
        tab = pacsv.read_csv(io.BytesIO(data), read_options=ro)
    except pa.ArrowInvalid as e:
        raise DataError(f"{name}:{_find_bad_line(data, ncols)}: {what} file unreadable: {e}") from None
    if tab.num_columns != ncols:
        raise DataError(f"{name}:1: {what} file has {tab.num_columns} columns, expected {ncols}")
    cols = []
    for i in range(ncols):
        c = tab.column(i)
        if c.null_count:
            raise DataError(f"{name}:{int(np.flatnonzero(c.is_null().to_numpy(zero_copy_only=False))[0]) + 1}: empty field in column {i + 1}")
        if not (pa.types.is_integer(c.type) or pa.types.is_floating(c.type)):
            raise DataError(f"{name}:{_find_bad_line(data, ncols)}: {what} column {i + 1} is not numeric")
        cols.append(c.to_numpy())
    return cols


def _find_bad_line(data: bytes, ncols: int) -> int:
    for ln, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        parts = line.split(b",")
        if len(parts) != ncols:
            return ln
        try:
            [float(p) for p in parts]
        except ValueError:
            return ln
    return 0


def _load(path: Path, message_path: Path | None = None, orderbook_path: Path | None = None):
    """Return (ticker, date, levels, msg columns, book matrix, source names)."""
    if message_path is None:
        if path.suffix.lower() == ".zip":
            try:
                z = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as e:
                raise DataError(f"{path}: not a readable zip: {e}") from None
            with z:
                names = z.namelist()
                mnames = [n for n in names if _NAME_RE.search(n) and "_message_" in n]
                if len(mnames) != 1:
                    raise DataError(f"{path}: expected one LOBSTER message file, found {mnames}")
                mname = mnames[0]
                oname = mname.replace("_message_", "_orderbook_")
                if oname not in names:
                    raise DataError(f"{path}: order-book file {oname} missing")
                try:
                    mdata, odata = z.read(mname), z.read(oname)
                except (zipfile.BadZipFile, OSError, zlib.error) as e:
                    raise DataError(f"{path}: corrupt member: {e}") from None
            msrc, osrc = f"{path}!{mname}", f"{path}!{oname}"
        else:
            message_path = path
    if message_path is not None:
        orderbook_path = orderbook_path or message_path.with_name(message_path.name.replace("_message_", "_orderbook_"))
        mname, oname = message_path.name, orderbook_path.name
        try:
            mdata, odata = message_path.read_bytes(), orderbook_path.read_bytes()
        except OSError as e:
            raise DataError(f"cannot read LOBSTER files: {e}") from None
        msrc, osrc = str(message_path), str(orderbook_path)
    m = _NAME_RE.search(mname)
    if not m:
        raise DataError(f"{msrc}: file name does not follow LOBSTER's TICKER_DATE_START_END_message_N.csv")
    ticker, date, levels = m["ticker"], m["date"], int(m["levels"])
    mcols = _read_csv(mdata, msrc, 6, "message")
    ocols = _read_csv(odata, osrc, 4 * levels, "order-book")
    if mcols[0].shape[0] != ocols[0].shape[0]:
        raise DataError(f"{osrc}: {ocols[0].shape[0]} rows but the message file has {mcols[0].shape[0]}")
    book = np.empty((ocols[0].shape[0], 4 * levels), dtype=np.int64)
    for i, c in enumerate(ocols):
        book[:, i] = c
    return ticker, date, levels, mcols, book, (msrc, osrc)


# ---------------------------------------------------------------------------------------
@nb.njit(cache=True)
def _side_set(px, sz, n, price, size, best_first_desc):
    """Set level ``price`` to ``size`` in a small sorted side (best first). Returns new n."""
    for k in range(n):
        if px[k] == price:
            if size > 0:
                sz[k] = size
                return n
            for j in range(k, n - 1):
                px[j] = px[j + 1]
                sz[j] = sz[j + 1]
            return n - 1
    if size <= 0:
        return n
    # insert keeping order (bids descending, asks ascending)
    k = 0
    while k < n and ((best_first_desc and px[k] > price) or ((not best_first_desc) and px[k] < price)):
        k += 1
    for j in range(n, k, -1):
        px[j] = px[j - 1]
        sz[j] = sz[j - 1]
    px[k] = price
    sz[k] = size
    return n + 1


@nb.njit(cache=True)
def _side_get(px, sz, n, price):
    for k in range(n):
        if px[k] == price:
            return sz[k]
    return 0


@nb.njit(cache=True, nogil=True)
def _rebuild(t_ns, mtype, oid, msize, mprice, mdir, book, N, out_cap, max_report):
    """Rebuild the N-level book from messages with the window rule (see module doc).

    book: (n, 4N) int64 vendor rows. Returns event columns, per-row status (0 exact,
    1 reveal/evict only, 2 mismatch), counters [reveals, evictions, mismatches, vis, hid,
    halts] and the first mismatch reports (row, side, price, ours, vendor)."""
    n = mtype.shape[0]
    o_kind = np.empty(out_cap, np.uint8)
    o_side = np.empty(out_cap, np.int8)
    o_ts = np.empty(out_cap, np.int64)
    o_px = np.empty(out_cap, np.int64)
    o_qty = np.empty(out_cap, np.int64)
    o_id = np.empty(out_cap, np.int64)
    status = np.zeros(n, np.int8)
    msg_end = np.zeros(n, np.int64)
    counters = np.zeros(6, np.int64)
    report = np.zeros((max_report, 5), np.int64)
    nrep = 0
    bpx = np.zeros(N + 2, np.int64)
    bsz = np.zeros(N + 2, np.int64)
    apx = np.zeros(N + 2, np.int64)
    asz = np.zeros(N + 2, np.int64)
    vbpx = np.zeros(N, np.int64)
    vbsz = np.zeros(N, np.int64)
    vapx = np.zeros(N, np.int64)
    vasz = np.zeros(N, np.int64)
    w = 0
    nb_ = 0
    na_ = 0
    if n == 0:
        return o_kind, o_side, o_ts, o_px, o_qty, o_id, w, status, counters, report, nrep, msg_end
    # row 0 -> snapshot (after message 0's trade row, if message 0 is an execution)
    for i in range(n):
        typ = mtype[i]
        ts = t_ns[i]
        if typ == 4 or typ == 5:
            o_kind[w] = 2
            o_side[w] = -mdir[i]
            o_ts[w] = ts
            o_px[w] = mprice[i]
            o_qty[w] = msize[i]
            o_id[w] = oid[i]
            w += 1
            if typ == 4:
                counters[3] += 1
            else:
                counters[4] += 1
        elif typ == 7:
            counters[5] += 1
        if i > 0 and (typ == 1 or typ == 2 or typ == 3 or typ == 4):
            if mdir[i] == 1:
                cur = _side_get(bpx, bsz, nb_, mprice[i])
                new = cur + msize[i] if typ == 1 else cur - msize[i]
                if new < 0:
                    new = 0
                nb_ = _side_set(bpx, bsz, nb_, mprice[i], new, True)
                sv = 1
            else:
                cur = _side_get(apx, asz, na_, mprice[i])
                new = cur + msize[i] if typ == 1 else cur - msize[i]
                if new < 0:
                    new = 0
                na_ = _side_set(apx, asz, na_, mprice[i], new, False)
                sv = -1
            o_kind[w] = 1
            o_side[w] = sv
            o_ts[w] = ts
            o_px[w] = mprice[i]
            o_qty[w] = new
            o_id[w] = oid[i]
            w += 1
        # vendor row i
        nvb = 0
        nva = 0
        for l in range(N):
            ap = book[i, 4 * l]
            aq = book[i, 4 * l + 1]
            bp = book[i, 4 * l + 2]
            bq = book[i, 4 * l + 3]
            if aq > 0:
                vapx[nva] = ap
                vasz[nva] = aq
                nva += 1
            if bq > 0:
                vbpx[nvb] = bp
                vbsz[nvb] = bq
                nvb += 1
        if i == 0:
            for sv in (1, -1):
                o_kind[w] = 4
                o_side[w] = sv
                o_ts[w] = ts
                o_px[w] = 0
                o_qty[w] = 0
                o_id[w] = -1
                w += 1
            for k in range(nvb):
                nb_ = _side_set(bpx, bsz, nb_, vbpx[k], vbsz[k], True)
                o_kind[w] = 3
                o_side[w] = 1
                o_ts[w] = ts
                o_px[w] = vbpx[k]
                o_qty[w] = vbsz[k]
                o_id[w] = -1
                w += 1
            for k in range(nva):
                na_ = _side_set(apx, asz, na_, vapx[k], vasz[k], False)
                o_kind[w] = 3
                o_side[w] = -1
                o_ts[w] = ts
                o_px[w] = vapx[k]
                o_qty[w] = vasz[k]
                o_id[w] = -1
                w += 1
            msg_end[i] = w
            continue
        # reconcile both sides
        st = 0
        for sd in range(2):
            if sd == 0:
                opx = bpx
                osz = bsz
                on = nb_
                vpx = vbpx
                vsz = vbsz
                vn = nvb
                sv = 1
            else:
                opx = apx
                osz = asz
                on = na_
                vpx = vapx
                vsz = vasz
                vn = nva
                sv = -1
            # worst known prices
            o_worst = opx[on - 1] if on > 0 else 0
            v_worst = vpx[vn - 1] if vn > 0 else 0
            # vendor levels
            for k in range(vn):
                p = vpx[k]
                q = vsz[k]
                cur = _side_get(opx, osz, on, p)
                if cur == q:
                    continue
                if cur == 0 and (on == 0 or (sv == 1 and p < o_worst) or (sv == -1 and p > o_worst)):
                    counters[0] += 1
                    if st < 1:
                        st = 1
                else:
                    counters[2] += 1
                    st = 2
                    if nrep < max_report:
                        report[nrep, 0] = i
                        report[nrep, 1] = sv
                        report[nrep, 2] = p
                        report[nrep, 3] = cur
                        report[nrep, 4] = q
                    nrep += 1
                o_kind[w] = 1
                o_side[w] = sv
                o_ts[w] = ts
                o_px[w] = p
                o_qty[w] = q
                o_id[w] = -1
                w += 1
            # our levels the vendor does not show
            k = 0
            while k < on:
                p = opx[k]
                found = False
                for j in range(vn):
                    if vpx[j] == p:
                        found = True
                        break
                if not found:
                    if vn == N and ((sv == 1 and p < v_worst) or (sv == -1 and p > v_worst)):
                        counters[1] += 1
                        if st < 1:
                            st = 1
                    else:
                        counters[2] += 1
                        st = 2
                        if nrep < max_report:
                            report[nrep, 0] = i
                            report[nrep, 1] = sv
                            report[nrep, 2] = p
                            report[nrep, 3] = osz[k]
                            report[nrep, 4] = 0
                        nrep += 1
                    o_kind[w] = 1
                    o_side[w] = sv
                    o_ts[w] = ts
                    o_px[w] = p
                    o_qty[w] = 0
                    o_id[w] = -1
                    w += 1
                k += 1
            # our side := vendor side
            for j in range(vn):
                opx[j] = vpx[j]
                osz[j] = vsz[j]
            if sd == 0:
                nb_ = vn
            else:
                na_ = vn
        status[i] = st
        msg_end[i] = w
    return o_kind, o_side, o_ts, o_px, o_qty, o_id, w, status, counters, report, nrep, msg_end


def _run(path: Path, message_path=None, orderbook_path=None, max_report: int = 20):
    ticker, date, levels, mcols, book, srcs = _load(path, message_path, orderbook_path)
    tsec, mtype, oid, msize, mprice, mdir = mcols
    n = tsec.shape[0]
    d = _dt.date.fromisoformat(date)
    midnight_utc_ns = (
        int(_dt.datetime(d.year, d.month, d.day, tzinfo=_dt.timezone.utc).timestamp()) - _ny_utc_offset_s(d)
    ) * 1_000_000_000
    t_ns = midnight_utc_ns + np.rint(np.asarray(tsec, np.float64) * 1e9).astype(np.int64)
    mtype = np.asarray(mtype, np.int64)
    bad = ~np.isin(mtype, (1, 2, 3, 4, 5, 7))
    if bad.any():
        ln = int(np.flatnonzero(bad)[0]) + 1
        raise DataError(f"{srcs[0]}:{ln}: unknown LOBSTER event type {int(mtype[ln - 1])}")
    mdir = np.asarray(mdir, np.int64)
    badd = ~np.isin(mdir, (1, -1))
    if badd.any():
        ln = int(np.flatnonzero(badd)[0]) + 1
        raise DataError(f"{srcs[0]}:{ln}: direction must be 1 or -1, got {int(mdir[ln - 1])}")
    if n > 1 and np.any(np.diff(t_ns) < 0):
        ln = int(np.flatnonzero(np.diff(t_ns) < 0)[0]) + 2
        raise DataError(f"{srcs[0]}:{ln}: time goes backwards")
    # per message at most a trade, a level change and 2N+1 reconciliation rows a side
    out_cap = n * (4 * levels + 4) + 4 * levels + 8
    res = _rebuild(
        t_ns, mtype, np.asarray(oid, np.int64), np.asarray(msize, np.int64), np.asarray(mprice, np.int64), mdir,
        book, levels, out_cap, max_report,
    )
    return ticker, date, levels, srcs, n, res


def _fill_stats(stats: LobsterStats, n: int, res) -> None:
    (_k, _s, _t, _p, _q, _i, w, status, counters, report, nrep, _m) = res
    stats.messages = int(n)
    stats.events = int(w)
    stats.rows_exact = int(np.count_nonzero(status == 0))
    stats.rows_reveal = int(np.count_nonzero(status == 1))
    stats.mismatch_rows = int(np.count_nonzero(status == 2))
    stats.reveals, stats.evictions, stats.mismatches = (int(x) for x in counters[:3])
    stats.trades_visible, stats.trades_hidden, stats.halts = (int(x) for x in counters[3:6])
    for r in report[: min(nrep, report.shape[0])]:
        row, sv, p, ours, vend = (int(x) for x in r)
        stats.first_mismatches.append({"line": row + 1, "side": "bid" if sv == 1 else "ask",
                                       "price": p / PRICE_SCALE, "rebuilt_size": ours, "vendor_size": vend})


def verify_against_orderbook_file(path: Path | str, *, message_path=None, orderbook_path=None) -> LobsterStats:
    """Rebuild the book from the messages (window rule, module doc) and compare it with the
    vendor's order-book file after every message, for all N levels. Nothing is written.

    The result counts rows equal with no help (``rows_exact``), rows that only needed levels
    moving into/out of the N-level window (``rows_reveal``, which messages cannot tell) and
    real disagreements (``mismatches``, ``mismatch_rows``, ``first_mismatches`` with line
    numbers of the message file)."""
    t0 = time.perf_counter()
    path = Path(path)
    ticker, date, levels, srcs, n, res = _run(path, message_path, orderbook_path)
    stats = LobsterStats(source=f"{srcs[0]} + {srcs[1]}", symbol=ticker, date=date, levels=levels)
    _fill_stats(stats, n, res)
    stats.elapsed_s = time.perf_counter() - t0
    return stats


def import_lobster(
    path: Path | str,
    out_dir: Path | str,
    *,
    message_path: Path | str | None = None,
    orderbook_path: Path | str | None = None,
    overwrite: bool = True,
    tick_size: float = 0.01,
) -> LobsterStats:
    """Import one LOBSTER sample (zip, or ``message_path``/``orderbook_path`` CSVs) into a
    recording at ``out_dir`` (market ``equity``, exchange ``nasdaq``, prices USD/share,
    sizes shares, tick 0.01 by default). Returns :class:`LobsterStats` (also in meta)."""
    t0 = time.perf_counter()
    path = Path(path)
    mp = Path(message_path) if message_path else None
    op = Path(orderbook_path) if orderbook_path else None
    ticker, date, levels, srcs, n, res = _run(path, mp, op)
    stats = LobsterStats(source=f"{srcs[0]} + {srcs[1]}", symbol=ticker, date=date, levels=levels)
    _fill_stats(stats, n, res)
    (o_kind, o_side, o_ts, o_px, o_qty, o_id, w, *_rest, msg_end) = res
    cols = {
        "kind": o_kind[:w], "side": o_side[:w], "exch_ts": o_ts[:w], "local_ts": o_ts[:w],
        "px": o_px[:w] / PRICE_SCALE, "qty": o_qty[:w].astype(np.float64), "first_id": o_id[:w], "last_id": o_id[:w],
    }
    counts = np.bincount(cols["kind"], minlength=5)
    stats.rows_by_kind = {"depth": int(counts[1]), "trade": int(counts[2]), "snapshot": int(counts[3]), "clear": int(counts[4])}
    meta = {
        "exchange": "nasdaq",
        "symbol": ticker,
        "market": "equity",
        "tick_size": tick_size,
        "lot_size": 1.0,
        "qty_unit": "shares",
        "levels": levels,
        "book_view": f"top {levels} levels (LOBSTER window); deeper levels are not in the data",
        "time_zone_of_source": "America/New_York",
        "source_files": list(srcs),
        "importer": "bot.importers.lobster",
    }
    writer = RecordingWriter(out_dir, meta, overwrite=overwrite)
    writer.append_columns(cols)
    # LOBSTER line i (1-based) -> the recording's book after event row end-1 is order-book row i
    idx = np.empty(n, dtype=[("line", np.int64), ("event_end", np.int64)])
    idx["line"] = np.arange(1, n + 1)
    idx["event_end"] = msg_end
    writer.write_aux("message_index", idx)
    stats.elapsed_s = time.perf_counter() - t0
    writer.close(stats=stats.as_dict())
    return stats
