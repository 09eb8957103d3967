"""Import the Bitstamp 2015 order-event log (``2015-05-01.log.bz2``) into a recording.

Input lines: ``<local ms> <event> <json>`` with events

* ``order_created`` / ``order_changed`` / ``order_deleted``: one individual order
  ``{"price": "236.47", "amount": "2.00000000", "datetime": "<s>", "id": N, "order_type": 0|1}``
  (0 bid, 1 ask; ``amount`` is the order's remaining size after the event; ``datetime`` is
  the order's creation time, not the event's);
* ``trade``: ``{"price": 236.47, "amount": 0.21, "id": N}`` (numbers, no side, no order ids);
* ``order_book``: the top 20 levels a side, ``{"bids": [["px", "qty"], ...], "asks": ...}``,
  about every 2.4 s.

What the importer does
----------------------
Individual orders are aggregated into L2 level sizes, in exact integer units (cents,
satoshis): each order event changes the size of its level(s) by the difference between the
order's new and old remaining amount, and the level's new total is written as a DEPTH row
(``first_id = last_id`` = the order id). An order that moves to another price changes two
levels.

Orders that rested before the log starts are unknown. The ``order_book`` snapshots fill that
hole and keep the aggregate honest:

* Before the first snapshot, orders are tracked but nothing is written (no base book). The
  first snapshot is written as CLEAR + SNAPSHOT rows, and each snapshot level's size beyond
  the known orders is kept as an anonymous *residual* for that level. Levels deeper than
  the snapshot's 20 hold only the orders seen in the log (so they are incomplete, more so
  early in the day).
* Every later snapshot is compared with the aggregate first (``stats["snapshot_levels_equal"]``
  / ``snapshot_levels_compared``, ``snapshots_equal``), then the aggregate is re-based on it:
  on the snapshot's side of its 20th level (bids at or above the 20th bid, asks at or below
  the 20th ask, which includes stale levels through the other side) every level is set to
  the snapshot's size (levels not in the snapshot to 0) by adjusting the residual, and each
  level that changed is written as a DEPTH row with ids -1 (``snapshot_corrections``).
* Unknown orders: a deletion of an unknown order takes its amount off the level's
  residual (not below 0); a change of an unknown order starts tracking it (its old amount
  is unknown, so the level is fixed only by the next snapshot).

On the 2015-05-01 log, 99.9% of the snapshot levels equal the aggregate before re-basing.
Bitstamp publishes a marketable order's creation before the changes/deletions of the
matching, so the book is briefly crossed around many trades (median ~120 ms, 0.5% of the
day; at most until the next snapshot); the rows show this as it was published.

Trades carry no side. The aggressor is inferred: if the latest ``order_created`` within 1 s
before the trade is a bid priced >= the trade price (an ask priced <=), it was the taker
(+1 / -1); otherwise, if the latest ``order_changed``/``order_deleted`` within 1 s was at the
trade price, that order was the maker and the aggressor is the other side; otherwise side 0
(unknown). Counts in ``stats["trade_side"]``.

Tick and lot. Bitstamp's price tick changed over the years (cents in 2015, whole dollars in
newer BTC/USD data), so neither is assumed: prices are read exactly on a 1e-8 grid and the
tick is the coarsest grid every price of the recording lies on (the gcd of the prices; the
lot likewise from the order and trade amounts), unless given (``tick_size`` / ``lot_size``,
``mmbot import bitstamp --tick/--lot``). ``meta.json`` says which (``tick_size_source``
``inferred`` / ``given``). Warnings (``stats["warnings"]``, printed by the CLI): prices finer
than a given tick (the replay would merge their levels) or sizes finer than a given lot; a
tick that changes within the recording (the gcd per hour differs: the recording's tick is the
finest, and quotes on it may be finer than the venue's tick of the time).

Timestamps: ``local_ts`` = the log's local ms in ns. The log has no exchange event time, so
``exch_ts`` = -1. Prices USD per BTC, sizes BTC.
"""

from __future__ import annotations

import bisect
import bz2
import gzip
import time
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np
import orjson

from bot.errors import ConfigError, DataError
from bot.recording.io import RecordingWriter

_SAT = 100_000_000  # size unit: 1e-8 BTC
_PX = 100_000_000  # price unit: 1e-8 USD (exact for any price with up to 8 decimals)
_TICK_BLOCK_MS = 3_600_000  # the tick is compared hour by hour to find a change
_MAX_EXAMPLES = 20
_SIDE_WINDOW_MS = 1000
_INF = 1 << 62


@dataclass
class BitstampStats:
    """Result of :func:`import_bitstamp` (also stored in ``meta.json["stats"]``)."""

    source: str
    lines: int = 0
    order_events: int = 0
    trades: int = 0
    snapshots: int = 0
    events: int = 0
    rows_by_kind: dict[str, int] = field(default_factory=dict)
    unknown_order_deletes: int = 0
    unknown_order_changes: int = 0
    order_price_moves: int = 0
    negative_levels: int = 0
    snapshot_levels_compared: int = 0
    snapshot_levels_equal: int = 0
    snapshots_equal: int = 0
    snapshot_corrections: int = 0
    trade_side: dict[str, int] = field(default_factory=dict)
    tick_size: float | None = None  # USD per BTC
    tick_source: str = ""  # inferred | given
    lot_size: float | None = None  # BTC
    lot_source: str = ""
    prices_off_tick: int = 0  # recording rows whose price is not a multiple of a given tick
    sizes_off_lot: int = 0  # order/trade amounts not a multiple of a given lot
    tick_by_hour: list[list] = field(default_factory=list)  # [first local ms, tick] where the hourly tick changes
    warnings: list[str] = field(default_factory=list)
    lines_skipped: int = 0
    skipped: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


class _LineError(Exception):
    pass


def _cents(x) -> int:
    """A price in units of 1e-8 USD (the name is historical: it was cents)."""
    if isinstance(x, bool):
        raise _LineError(f"bad price {x!r}")
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise _LineError(f"bad price {x!r}") from None
    if not (v > 0 and v < 1e10):
        raise _LineError(f"price out of range {x!r}")
    return int(round(v * _PX))


def _sats(x) -> int:
    if isinstance(x, bool):
        raise _LineError(f"bad amount {x!r}")
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise _LineError(f"bad amount {x!r}") from None
    if not (v >= 0 and v < 1e12):
        raise _LineError(f"amount out of range {x!r}")
    return int(round(v * _SAT))


class _Side:
    """One side: level -> [known satoshis, residual satoshis] and a sorted list of prices with
    a non-zero total."""

    def __init__(self) -> None:
        self.known: dict[int, int] = {}
        self.resid: dict[int, int] = {}
        self.prices: list[int] = []  # ascending, total != 0

    def total(self, p: int) -> int:
        return self.known.get(p, 0) + self.resid.get(p, 0)

    def _track(self, p: int, before: int, after: int) -> None:
        if before == 0 and after != 0:
            bisect.insort(self.prices, p)
        elif before != 0 and after == 0:
            i = bisect.bisect_left(self.prices, p)
            if i < len(self.prices) and self.prices[i] == p:
                del self.prices[i]

    def add_known(self, p: int, d: int) -> int:
        before = self.total(p)
        k = self.known.get(p, 0) + d
        if k:
            self.known[p] = k
        else:
            self.known.pop(p, None)
        after = self.total(p)
        self._track(p, before, after)
        return after

    def add_resid(self, p: int, d: int) -> int:
        before = self.total(p)
        r = self.resid.get(p, 0) + d
        if r:
            self.resid[p] = r
        else:
            self.resid.pop(p, None)
        after = self.total(p)
        self._track(p, before, after)
        return after

    def set_total(self, p: int, q: int) -> int:
        """Adjust the residual so the level total is q. Returns the old total."""
        old = self.total(p)
        if old != q:
            self.add_resid(p, q - old)
        return old

    def in_range(self, lo: int, hi: int) -> list[int]:
        a = bisect.bisect_left(self.prices, lo)
        b = bisect.bisect_right(self.prices, hi)
        return self.prices[a:b]


def _grid_units(value, name: str, scale: int) -> int | None:
    """A given tick/lot as an integer number of 1/scale units (None stays None)."""
    if value is None:
        return None
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise ConfigError(f"--{name} must be a positive number, got {value!r}") from None
    if not d.is_finite() or d <= 0:
        raise ConfigError(f"--{name} must be a positive number, got {value!r}")
    u = d * scale
    if u != u.to_integral_value():
        raise ConfigError(f"--{name} {value} is finer than the importer's resolution {Decimal(1) / scale}")
    return int(u)


def _units_to_float(u: int, scale: int) -> float:
    return float(Decimal(u) / Decimal(scale))


def _tick_and_lot(st: BitstampStats, px: np.ndarray, qpx: np.ndarray, ms: np.ndarray, amt: np.ndarray,
                  tick_u: int | None, lot_u: int | None) -> None:
    """Set the tick and lot in ``st`` (given, or inferred as the gcd of the prices / amounts,
    in 1e-8 units) and the warnings: prices or amounts off a given grid, a tick that changes
    from hour to hour. ``px``: the recording's price rows (1e-8 USD); ``qpx``: the order and
    trade prices as published, ``ms`` their local ms; ``amt``: non-zero order and trade
    amounts (1e-8 BTC)."""
    fmt = lambda u, scale: f"{Decimal(int(u)) / Decimal(scale):f}".rstrip("0").rstrip(".")  # noqa: E731
    if tick_u is not None:
        st.tick_size, st.tick_source = _units_to_float(tick_u, _PX), "given"
        off = px % tick_u != 0
        st.prices_off_tick = int(off.sum())
        if st.prices_off_tick:
            st.warnings.append(
                f"{st.prices_off_tick} of {px.size} prices are finer than the given tick {fmt(tick_u, _PX)} "
                f"(e.g. {fmt(px[off][0], _PX)}); the replay merges them into tick levels: check --tick")
    elif px.size:
        st.tick_size, st.tick_source = _units_to_float(int(np.gcd.reduce(px)), _PX), "inferred"
    if lot_u is not None:
        st.lot_size, st.lot_source = _units_to_float(lot_u, _SAT), "given"
        off = amt % lot_u != 0
        st.sizes_off_lot = int(off.sum())
        if st.sizes_off_lot:
            st.warnings.append(f"{st.sizes_off_lot} of {amt.size} order/trade amounts are finer than the given lot "
                               f"{fmt(lot_u, _SAT)} (e.g. {fmt(amt[off][0], _SAT)}): check --lot")
    elif amt.size:
        st.lot_size, st.lot_source = _units_to_float(int(np.gcd.reduce(amt)), _SAT), "inferred"
    if qpx.size == 0:
        return
    # the tick of the published prices hour by hour (hours with at least 100 of them): a change
    # means the venue's tick changed within the recording
    block = (ms - ms[0]) // _TICK_BLOCK_MS
    starts = np.flatnonzero(np.r_[True, block[1:] != block[:-1]])
    counts = np.diff(np.r_[starts, qpx.size])
    g = np.gcd.reduceat(qpx, starts)
    keep = counts >= 100
    prev = None
    for i in np.flatnonzero(keep):
        if g[i] != prev:
            st.tick_by_hour.append([int(ms[starts[i]]), _units_to_float(int(g[i]), _PX)])
            prev = g[i]
    if len(st.tick_by_hour) > 1:
        steps = ", ".join(f"{t} from {time.strftime('%Y-%m-%d %H:%M', time.gmtime(m / 1000))} UTC" for m, t in st.tick_by_hour)
        st.warnings.append(f"the price tick changes within the recording ({steps}); the recording's tick "
                           f"{st.tick_size} is the finest, so quotes on it can be finer than the venue's tick of the time")


def _open_text(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    try:
        if raw[:3] == b"BZh":
            return bz2.decompress(raw)
        if raw[:2] == b"\x1f\x8b":
            return gzip.decompress(raw)
    except (OSError, EOFError, ValueError) as e:
        raise DataError(f"{path}: corrupt or truncated compressed file: {e}") from None
    return raw


def import_bitstamp(
    path: Path | str,
    out_dir: Path | str,
    *,
    lenient: bool = False,
    overwrite: bool = True,
    max_lines: int | None = None,
    tick_size: float | str | Decimal | None = None,
    lot_size: float | str | Decimal | None = None,
) -> BitstampStats:
    """Import a Bitstamp 2015 log (``.log``, ``.log.bz2`` or ``.gz``) into a recording.

    Corrupt lines raise :class:`~bot.errors.DataError` ``"file:line: reason"`` unless
    ``lenient`` (then they are counted and skipped). ``max_lines`` reads only the first lines.
    ``tick_size`` (USD per BTC) / ``lot_size`` (BTC): the venue's price tick and size step;
    None = inferred from the data (see the module docstring). A bad value raises
    :class:`~bot.errors.ConfigError`.
    """
    t0 = time.perf_counter()
    tick_u = _grid_units(tick_size, "tick", _PX)
    lot_u = _grid_units(lot_size, "lot", _SAT)
    path = Path(path)
    data = _open_text(path)
    lines = data.split(b"\n")
    if max_lines is not None:
        lines = lines[:max_lines]
    st = BitstampStats(source=str(path))
    side_count = {"from_taker_order": 0, "from_maker_order": 0, "unknown": 0}

    kind_l: list[int] = []
    side_l: list[int] = []
    amt_l: list[int] = []  # order and trade amounts, 1e-8 BTC (for the lot)
    qpx_l: list[int] = []  # order and trade prices as published, 1e-8 USD (the tick hour by hour)
    qms_l: list[int] = []  # ... and their local ms
    ts_l: list[int] = []
    px_l: list[int] = []  # cents
    qty_l: list[int] = []  # satoshis
    id_l: list[int] = []

    def emit(k: int, s: int, ts: int, p: int, q: int, i: int) -> None:
        kind_l.append(k)
        side_l.append(s)
        ts_l.append(ts)
        px_l.append(p)
        qty_l.append(q)
        id_l.append(i)

    books = (_Side(), _Side())  # 0 bid, 1 ask
    orders: dict[int, tuple[int, int, int]] = {}  # id -> (side, cents, sats)
    started = False
    last_created: tuple[int, int, int] | None = None  # (ms, side, cents)
    last_touched: tuple[int, int, int] | None = None  # (ms, side, cents)

    def level_row(side: int, p: int, total: int, ts: int, oid: int) -> None:
        if not started:
            return
        if total < 0:
            st.negative_levels += 1
            total = 0
        emit(1, 1 if side == 0 else -1, ts, p, total, oid)

    for ln, line in enumerate(lines, 1):
        if not line.strip():
            continue
        st.lines += 1
        try:
            parts = line.split(b" ", 2)
            if len(parts) != 3 or not parts[0].isdigit():
                raise _LineError("expected '<local ms> <event> <json>'")
            ms = int(parts[0])
            ts = ms * 1_000_000
            ev = parts[1]
            try:
                o = orjson.loads(parts[2])
            except orjson.JSONDecodeError as e:
                raise _LineError(f"invalid JSON ({e})") from None
            if not isinstance(o, dict):
                raise _LineError("JSON is not an object")
            if ev in (b"order_created", b"order_changed", b"order_deleted"):
                try:
                    oid = o["id"]
                    side = o["order_type"]
                    p = _cents(o["price"])
                    q = _sats(o["amount"])
                except KeyError as e:
                    raise _LineError(f"{ev.decode()}: missing field {e}") from None
                if side not in (0, 1) or not isinstance(oid, int):
                    raise _LineError(f"{ev.decode()}: bad order_type/id")
                st.order_events += 1
                if q:
                    amt_l.append(q)
                qpx_l.append(p)
                qms_l.append(ms)
                bk = books[side]
                if ev == b"order_created":
                    old = orders.get(oid)
                    if old is not None:  # duplicate create: replace
                        books[old[0]].add_known(old[1], -old[2])
                    orders[oid] = (side, p, q)
                    level_row(side, p, bk.add_known(p, q), ts, oid)
                    last_created = (ms, side, p)
                elif ev == b"order_changed":
                    old = orders.get(oid)
                    if old is None:
                        st.unknown_order_changes += 1
                        orders[oid] = (side, p, q)
                        bk.add_known(p, q)
                        bk.add_resid(p, -q)  # the level's size is unchanged until we know more
                    else:
                        s0, p0, q0 = old
                        orders[oid] = (side, p, q)
                        if s0 != side or p0 != p:
                            st.order_price_moves += 1
                            level_row(s0, p0, books[s0].add_known(p0, -q0), ts, oid)
                            level_row(side, p, bk.add_known(p, q), ts, oid)
                        elif q != q0:
                            level_row(side, p, bk.add_known(p, q - q0), ts, oid)
                    last_touched = (ms, side, p)
                else:
                    old = orders.pop(oid, None)
                    if old is None:
                        st.unknown_order_deletes += 1
                        # take it off the anonymous residual, never below zero
                        take = min(q, max(bk.resid.get(p, 0), 0))
                        level_row(side, p, bk.add_resid(p, -take), ts, oid)
                    else:
                        s0, p0, q0 = old
                        level_row(s0, p0, books[s0].add_known(p0, -q0), ts, oid)
                    last_touched = (ms, side, p)
            elif ev == b"trade":
                try:
                    p = _cents(o["price"])
                    q = _sats(o["amount"])
                    tid = o["id"]
                except KeyError as e:
                    raise _LineError(f"trade: missing field {e}") from None
                st.trades += 1
                if q:
                    amt_l.append(q)
                qpx_l.append(p)
                qms_l.append(ms)
                s = 0
                if last_created and ms - last_created[0] <= _SIDE_WINDOW_MS and (
                    (last_created[1] == 0 and last_created[2] >= p) or (last_created[1] == 1 and last_created[2] <= p)
                ):
                    s = 1 if last_created[1] == 0 else -1
                    side_count["from_taker_order"] += 1
                elif last_touched and ms - last_touched[0] <= _SIDE_WINDOW_MS and last_touched[2] == p:
                    s = -1 if last_touched[1] == 0 else 1
                    side_count["from_maker_order"] += 1
                else:
                    side_count["unknown"] += 1
                emit(2, s, ts, p, q, int(tid) if isinstance(tid, int) else -1)
            elif ev == b"order_book":
                try:
                    bids = [(_cents(a), _sats(b)) for a, b in o["bids"]]
                    asks = [(_cents(a), _sats(b)) for a, b in o["asks"]]
                except (KeyError, TypeError, ValueError) as e:
                    raise _LineError(f"order_book: bad levels ({e})") from None
                st.snapshots += 1
                if not started:
                    started = True
                    emit(4, 1, ts, 0, 0, -1)
                    emit(4, -1, ts, 0, 0, -1)
                    for si, levels in ((0, bids), (1, asks)):
                        bk = books[si]
                        snap = dict(levels)
                        if levels:
                            lo, hi = (levels[-1][0], _INF) if si == 0 else (-_INF, levels[-1][0])
                            for pr in bk.in_range(lo, hi):
                                if pr not in snap:
                                    bk.set_total(pr, 0)
                        for pr, qq in levels:
                            bk.set_total(pr, qq)
                            if qq > 0:
                                emit(3, 1 if si == 0 else -1, ts, pr, qq, -1)
                        # deeper levels known from tracked orders
                        if levels:
                            deeper = bk.prices[: bisect.bisect_left(bk.prices, lo)] if si == 0 else bk.prices[bisect.bisect_right(bk.prices, hi) :]
                            for pr in deeper:
                                tq = bk.total(pr)
                                if tq > 0:
                                    emit(3, 1 if si == 0 else -1, ts, pr, tq, -1)
                else:
                    all_eq = True
                    for si, levels in ((0, bids), (1, asks)):
                        bk = books[si]
                        if not levels:
                            continue
                        snap = dict(levels)
                        lo, hi = (levels[-1][0], _INF) if si == 0 else (-_INF, levels[-1][0])
                        for pr, qq in levels:
                            st.snapshot_levels_compared += 1
                            if bk.total(pr) == qq:
                                st.snapshot_levels_equal += 1
                            else:
                                all_eq = False
                        for pr in bk.in_range(lo, hi):
                            if pr not in snap:
                                all_eq = False
                                bk.set_total(pr, 0)
                                st.snapshot_corrections += 1
                                emit(1, 1 if si == 0 else -1, ts, pr, 0, -1)
                        for pr, qq in levels:
                            if bk.set_total(pr, qq) != qq:
                                st.snapshot_corrections += 1
                                emit(1, 1 if si == 0 else -1, ts, pr, qq, -1)
                    st.snapshots_equal += all_eq
            else:
                raise _LineError(f"unknown event {ev[:40]!r}")
        except _LineError as e:
            msg = f"{path}:{ln}: {e}"
            if not lenient:
                raise DataError(msg) from None
            st.lines_skipped += 1
            if len(st.skipped) < _MAX_EXAMPLES:
                st.skipped.append(msg)
    st.trade_side = side_count
    n = len(kind_l)
    cols = {
        "kind": np.asarray(kind_l, np.uint8),
        "side": np.asarray(side_l, np.int8),
        "exch_ts": np.full(n, -1, np.int64),
        "local_ts": np.asarray(ts_l, np.int64),
        "px": np.asarray(px_l, np.float64) / _PX,
        "qty": np.asarray(qty_l, np.float64) / _SAT,
        "first_id": np.asarray(id_l, np.int64),
        "last_id": np.asarray(id_l, np.int64),
    }
    st.events = n
    counts = np.bincount(cols["kind"], minlength=5)
    st.rows_by_kind = {"depth": int(counts[1]), "trade": int(counts[2]), "snapshot": int(counts[3]), "clear": int(counts[4])}
    _tick_and_lot(st, np.asarray(px_l, np.int64)[cols["kind"] != 4], np.asarray(qpx_l, np.int64), np.asarray(qms_l, np.int64),
                  np.asarray(amt_l, np.int64), tick_u, lot_u)
    meta = {
        "exchange": "bitstamp",
        "symbol": "BTCUSD",
        "market": "spot",
        "tick_size": st.tick_size,
        "tick_size_source": st.tick_source,
        "lot_size": st.lot_size,
        "lot_size_source": st.lot_source,
        "qty_unit": "base",
        "source_files": [str(path)],
        "importer": "bot.importers.bitstamp",
        "book_view": "orders aggregated to L2; re-based on each top-20 snapshot; deeper levels partial",
    }
    writer = RecordingWriter(out_dir, meta, overwrite=overwrite)
    writer.append_columns(cols)
    st.elapsed_s = time.perf_counter() - t0
    writer.close(stats=st.as_dict())
    return st
