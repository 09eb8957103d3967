"""Record live L2 market data (order book + public trades) into mmbot recordings.

:func:`record` connects through ccxt, writes the flat event rows of
:mod:`bot.recording.schema` through a :class:`~bot.recording.io.RecordingWriter` and returns
statistics. It is what ``mmbot record`` runs (see ``docs/recorder.md``).

Sources
-------
* **websocket** (default where ``ccxt.pro`` has ``watchOrderBook``): ``watch_order_book``
  and ``watch_trades`` run concurrently. ccxt keeps the book in sync itself (Binance: it
  subscribes ``<sym>@depth@100ms``, buffers the diffs, fetches the REST snapshot
  ``GET /api/v3/depth?limit=<depth>``, drops stale diffs and checks ``U == previous u + 1``;
  on a gap it raises ``ChecksumError``). ccxt hands over the *book state* after each update,
  not the diffs, so the recorder diffs consecutive states itself (:class:`BookDiffer`).
* **REST polling** (exchanges without ``watchOrderBook``, or ``use_ws=False``):
  ``fetch_order_book(symbol, depth)`` every ``poll_interval_s`` and ``fetch_trades`` on the
  same schedule, every request through one ``asyncio_throttle.Throttler`` capped at
  ``rate_limit_per_s`` (ccxt's own rate limiter applies on top). Consecutive snapshots are
  diffed the same way.

Rows written
------------
* The first book state (and every book state after a resync) is written as a snapshot: one
  CLEAR row per side, then SNAPSHOT rows (``first_id = last_id = nonce``).
* Every later book state becomes DEPTH rows for the levels whose size changed (``qty`` = new
  size, 0 = level gone; deletions first). ``first_id = previous nonce + 1``,
  ``last_id = nonce`` (Binance: the ``U..u`` range of the diffs ccxt applied since the last
  state, several diffs can be coalesced into one state). ``exch_ts`` is ccxt's book
  ``timestamp`` (Binance: ``E`` of the last diff applied; -1 if none yet).
* Trades become TRADE rows: ``side`` +1 when ccxt's ``side`` (the taker side) is ``buy``, -1
  for ``sell``, 0 when unknown; ``first_id = last_id =`` the trade id when it is an integer,
  else -1; ``exch_ts`` the message's event time ``E`` when ccxt's ``info`` has one
  (Binance), else ccxt's ``timestamp``.
* ``local_ts`` is ``time.time_ns()`` when the recorder received the state or trades, forced
  non-decreasing.

The recorded book is ccxt's book, which ccxt keeps at most ``depth`` levels per side: a
level pushed beyond ``depth`` is written as deleted (qty 0), and comes back when the
exchange updates it again. Replaying the rows reproduces, after every message, exactly the
book the recorder saw.

Resync rule
-----------
The next book state is written as a snapshot (CLEAR + SNAPSHOT) instead of a diff when:
``watch_order_book`` raised since the last state (``InvalidNonce``/``ChecksumError`` = ccxt
found a sequence gap; a ``NetworkError`` = disconnect; ccxt re-subscribes and re-fetches the
REST snapshot on the next call), or ccxt's book object changed identity (ccxt builds a new
one after a gap), or the nonce went backwards. In REST mode every poll is a full snapshot:
only the first poll (and the first after a rotation) is written as a snapshot.

Rotation and crash safety
-------------------------
Without ``rotate_minutes`` ``out_dir`` itself is the recording. With it, recordings are
``out_dir/part-0000``, ``part-0001``, ...: every ``rotate_minutes`` the current part is
closed (final ``meta.json``) and the next one starts with a snapshot of the current book
(CLEAR + SNAPSHOT rows rebuilt from the recorded book, ids = the last nonce), so each part
replays on its own. Rows reach the writer within ~0.2 s; the writer writes each full chunk
of ``chunk_rows`` rows to disk at once (tmp + rename, ``meta.json`` with
``"complete": false``), so a crash loses at most the open chunk. Stopping by duration,
``stop_event``, cancellation or SIGINT (the CLI turns it into ``stop_event``) writes the open
chunk and the final ``meta.json``.

Units: prices quote/base, sizes base units, timestamps int ns since the Unix epoch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import ccxt
import ccxt.async_support as ccxt_async
import numpy as np
from asyncio_throttle import Throttler

from bot.errors import ConfigError, ExchangeError
from bot.exchanges.ccxt_client import (
    _deep_merge,
    create_ccxt_exchange,
    create_pro_exchange,
    load_market,
    map_ccxt_error,
    short_reason,
)
from bot.recording.io import META_FILE, RecordingWriter
from bot.recording.schema import ASK, BID, CLEAR, DEPTH, EVENT_DTYPE, SNAPSHOT, TRADE

log = logging.getLogger(__name__)

#: Levels per side ccxt keeps / the REST snapshot asks for, websocket mode (ccxt's default).
DEFAULT_WS_DEPTH = 1000
#: Levels per side per poll, REST mode (Binance weight 5 per request up to 100).
DEFAULT_REST_DEPTH = 100
#: Rows per parquet chunk: at most this many rows are lost in a crash.
DEFAULT_CHUNK_ROWS = 100_000
#: Trades asked for per REST poll.
DEFAULT_TRADES_LIMIT = 1000

#: Per-exchange ccxt options for the REST path: Binance's default fetch_trades endpoint is
#: aggTrades (aggregate ids); /api/v3/trades gives the trade ids the websocket stream uses.
_REST_OPTIONS: dict[str, dict[str, Any]] = {"binance": {"fetchTradesMethod": "publicGetTrades"}}

_DRAIN_ROWS = 1024  # rows buffered before they are handed to the writer
_TICK_S = 0.2  # housekeeping period: drain the buffer, rotate, report status
_MAX_RESYNCS_IN_A_ROW = 20

Row = tuple  # (kind, side, exch_ts, local_ts, px, qty, first_id, last_id)


# -- book diffing ---------------------------------------------------------------------------
def _levels(side: Iterable[Sequence[Any]], depth: int | None) -> dict[float, float]:
    """``{price: size}`` from ccxt levels ``[price, size, ...]`` (best first), first ``depth``."""
    out: dict[float, float] = {}
    for i, lvl in enumerate(side):
        if depth is not None and i >= depth:
            break
        q = lvl[1]
        if q:
            out[float(lvl[0])] = float(q)
    return out


class BookDiffer:
    """The book as the rows written so far describe it; turns new book states into rows.

    ``bids``/``asks`` map price -> size (quote/base, base units). ``valid`` is False before
    the first snapshot and after :meth:`invalidate` (then the next state is a snapshot).
    ``source`` is the object the state came from (ccxt's OrderBook): a different object
    means ccxt rebuilt its book, which also forces a snapshot.
    """

    def __init__(self, depth: int | None = None) -> None:
        self.depth = depth
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.nonce: int | None = None
        self.exch_ts = -1
        self.valid = False
        self.source: Any = None

    def invalidate(self) -> None:
        self.valid = False

    def needs_snapshot(self, source: Any, nonce: int | None) -> bool:
        if not self.valid or source is not self.source:
            return True
        return nonce is not None and self.nonce is not None and nonce < self.nonce

    def snapshot(self, bids: Iterable, asks: Iterable, exch_ts: int, local_ts: int,
                 nonce: int | None, source: Any = None) -> list[Row]:
        """Make ``bids``/``asks`` (ccxt levels) the book; rows CLEAR x2 + SNAPSHOT."""
        self.bids, self.asks = _levels(bids, self.depth), _levels(asks, self.depth)
        self.nonce, self.source, self.valid = nonce, source, True
        if exch_ts >= 0:
            self.exch_ts = exch_ts
        return self.snapshot_rows(local_ts)

    def snapshot_rows(self, local_ts: int) -> list[Row]:
        """The current book as CLEAR + SNAPSHOT rows (used again when a new part starts)."""
        i = -1 if self.nonce is None else int(self.nonce)
        e = self.exch_ts
        rows: list[Row] = [(CLEAR, BID, e, local_ts, 0.0, 0.0, i, i), (CLEAR, ASK, e, local_ts, 0.0, 0.0, i, i)]
        rows.extend((SNAPSHOT, BID, e, local_ts, p, q, i, i) for p, q in sorted(self.bids.items(), reverse=True))
        rows.extend((SNAPSHOT, ASK, e, local_ts, p, q, i, i) for p, q in sorted(self.asks.items()))
        return rows

    def diff(self, bids: Iterable, asks: Iterable, exch_ts: int, local_ts: int, nonce: int | None) -> list[Row]:
        """DEPTH rows turning the current book into ``bids``/``asks``; deletions first."""
        nb, na = _levels(bids, self.depth), _levels(asks, self.depth)
        if nonce is not None and self.nonce is not None:
            first, last = int(self.nonce) + 1, int(nonce)
        else:
            first = last = -1 if nonce is None else int(nonce)
        if exch_ts >= 0:
            self.exch_ts = exch_ts
        e = exch_ts if exch_ts >= 0 else self.exch_ts
        dels: list[Row] = []
        sets: list[Row] = []
        for side, old, new in ((BID, self.bids, nb), (ASK, self.asks, na)):
            for p in old.keys() - new.keys():
                dels.append((DEPTH, side, e, local_ts, p, 0.0, first, last))
            for p, q in new.items():
                if old.get(p) != q:
                    sets.append((DEPTH, side, e, local_ts, p, q, first, last))
        self.bids, self.asks = nb, na
        if nonce is not None:
            self.nonce = nonce
        return dels + sets

    def best(self) -> tuple[float | None, float | None]:
        return (max(self.bids) if self.bids else None, min(self.asks) if self.asks else None)


# -- output ---------------------------------------------------------------------------------
class _Sink:
    """Buffers rows and writes them to the current part's RecordingWriter; rotates parts."""

    def __init__(self, out_dir: Path, rotate_s: float | None, chunk_rows: int, meta: dict) -> None:
        self.out_dir = out_dir
        self.rotate_s = rotate_s
        self.chunk_rows = chunk_rows
        self.meta = meta
        self.part = -1
        self.paths: list[str] = []
        self.writer: RecordingWriter | None = None
        self.part_started = 0.0  # monotonic
        self.part_rows = 0
        self._buf: list[Row] = []
        self._drain_at = max(1, min(chunk_rows, _DRAIN_ROWS))
        self.rows = 0

    def part_path(self, part: int) -> Path:
        return self.out_dir if self.rotate_s is None else self.out_dir / f"part-{part:04d}"

    def open_next(self) -> None:
        self.part += 1
        path = self.part_path(self.part)
        meta = dict(self.meta)
        if self.rotate_s is not None:
            meta["part"] = self.part
        self.writer = RecordingWriter(path, meta, chunk_rows=self.chunk_rows)
        self.paths.append(str(path))
        self.part_started = time.monotonic()
        self.part_rows = 0

    def add(self, rows: list[Row]) -> None:
        if rows:
            self._buf.extend(rows)
            self.rows += len(rows)
            self.part_rows += len(rows)
            if len(self._buf) >= self._drain_at:
                self.drain()

    def drain(self) -> None:
        if self._buf and self.writer is not None:
            arr = np.array(self._buf, dtype=EVENT_DTYPE)
            self._buf = []
            self.writer.append(arr)

    def rotation_due(self) -> bool:
        return self.rotate_s is not None and time.monotonic() - self.part_started >= self.rotate_s

    def close_part(self, **meta: Any) -> None:
        self.drain()
        w, self.writer = self.writer, None
        if w is not None:
            w.close(**meta)


# -- the recorder ----------------------------------------------------------------------------
class _Recorder:
    def __init__(self, exchange_id: str, symbol: str, out_dir: Path, *, duration_s: float | None,
                 api_url: str | None, ws_url: str | None, depth: int | None, chunk_rows: int,
                 rotate_s: float | None, use_ws: bool | None, poll_interval_s: float,
                 rate_limit_per_s: float, on_status: Callable[[dict], Any] | None,
                 status_interval_s: float, stop_event: asyncio.Event | None, options: dict | None,
                 trades_limit: int, max_consecutive_errors: int, retry_backoff_s: float,
                 max_backoff_s: float) -> None:
        self.eid = exchange_id.strip().lower()
        self.symbol = symbol
        self.out_dir = out_dir
        self.duration_s = duration_s
        self.api_url, self.ws_url = api_url, ws_url
        self.depth_arg = depth
        self.chunk_rows = chunk_rows
        self.rotate_s = rotate_s
        self.use_ws = use_ws
        self.poll_interval_s = poll_interval_s
        self.on_status = on_status
        self.status_interval_s = status_interval_s
        self.stop_event = stop_event
        self.options = options
        self.trades_limit = trades_limit
        self.max_errors = max_consecutive_errors
        self.retry_backoff_s = retry_backoff_s
        self.max_backoff_s = max_backoff_s
        if rate_limit_per_s >= 1:
            self.throttler = Throttler(rate_limit=int(rate_limit_per_s), period=1.0)
        else:
            self.throttler = Throttler(rate_limit=1, period=1.0 / rate_limit_per_s)
        self.exchange: Any = None
        self.mode = "?"
        self.depth = 0
        self.book: BookDiffer = BookDiffer()
        self.sink: _Sink | None = None
        self._last_local = 0
        self._last_trade_obj: Any = None
        # REST trade watermark (see _on_rest_trades)
        self._trades_primed = False
        self._trade_wm_id: int | None = None
        self._trade_wm_ts = 0
        self._trade_seen: set[str] = set()
        self._started_wall = 0
        self._started_mono = 0.0
        self.stats: dict[str, Any] = {
            "exchange": self.eid, "symbol": symbol, "mode": None, "depth": None,
            "book_updates": 0, "depth_rows": 0, "snapshots": 0, "resyncs": 0, "reconnects": 0,
            "trades": 0, "trade_gaps": 0, "requests": 0, "errors": 0, "rows": 0,
            "parts": 0, "paths": [], "stopped_by": None, "error": None,
        }

    # -- helpers ---------------------------------------------------------------------------
    def _now(self) -> int:
        t = time.time_ns()
        if t < self._last_local:
            t = self._last_local
        self._last_local = t
        return t

    def _emit(self, rows: list[Row]) -> None:
        sink = self.sink
        if sink is None or not rows:
            return
        if sink.rotation_due():
            self._rotate()
        sink.add(rows)
        self.stats["rows"] = sink.rows

    def _rotate(self) -> None:
        sink = self.sink
        assert sink is not None
        closing = self._stats_snapshot()
        closing["stopped_by"] = "rotated"
        sink.close_part(recorder_stats=closing)
        sink.open_next()
        self.stats["parts"] = len(sink.paths)
        self.stats["paths"] = list(sink.paths)
        if self.book.valid:
            rows = self.book.snapshot_rows(self._now())
            sink.add(rows)
            self.stats["snapshots"] += 1
        self.stats["rows"] = sink.rows

    def _stats_snapshot(self) -> dict:
        s = dict(self.stats)
        s["paths"] = list(s["paths"])
        s["elapsed_s"] = round(time.monotonic() - self._started_mono, 3) if self._started_mono else 0.0
        bb, ba = self.book.best()
        s["best_bid"], s["best_ask"] = bb, ba
        s["book_nonce"] = self.book.nonce
        return s

    def _backoff(self, n: int) -> float:
        return min(self.max_backoff_s, self.retry_backoff_s * 2 ** (n - 1))

    # -- book states -----------------------------------------------------------------------
    def _on_book(self, ob: Any, local_ts: int, *, source: Any) -> None:
        nonce = ob.get("nonce")
        nonce = int(nonce) if isinstance(nonce, (int, float)) and not isinstance(nonce, bool) else None
        ts = ob.get("timestamp")
        exch = int(ts) * 1_000_000 if isinstance(ts, (int, float)) and ts else -1
        if self.book.needs_snapshot(source, nonce):
            rows = self.book.snapshot(ob["bids"], ob["asks"], exch, local_ts, nonce, source)
            self.stats["snapshots"] += 1
        else:
            rows = self.book.diff(ob["bids"], ob["asks"], exch, local_ts, nonce)
            self.stats["depth_rows"] += len(rows)
        self.stats["book_updates"] += 1
        self._emit(rows)

    # -- trades ----------------------------------------------------------------------------
    @staticmethod
    def _trade_row(t: dict, local_ts: int) -> Row:
        side = {"buy": 1, "sell": -1}.get(str(t.get("side") or "").lower(), 0)
        tid = t.get("id")
        try:
            iid = int(tid) if tid is not None and str(tid).lstrip("-").isdigit() else -1
        except (TypeError, ValueError):
            iid = -1
        info = t.get("info")
        e = info.get("E") if isinstance(info, dict) else None
        if not isinstance(e, int) or isinstance(e, bool):
            e = t.get("timestamp")
        exch = int(e) * 1_000_000 if isinstance(e, (int, float)) and e else -1
        px = float(t.get("price") or 0.0)
        qty = float(t.get("amount") or 0.0)
        return (TRADE, side, exch, local_ts, px, qty, iid, iid)

    def _on_trades(self, trades: Sequence[dict], local_ts: int) -> None:
        rows = [self._trade_row(t, local_ts) for t in trades]
        if trades:
            self._last_trade_obj = trades[-1]
        self.stats["trades"] += len(rows)
        self._emit(rows)

    # -- websocket workers -----------------------------------------------------------------
    async def _ws_book_loop(self) -> None:
        ex = self.exchange
        errors = 0
        resyncs_in_a_row = 0
        while True:
            try:
                ob = await ex.watch_order_book(self.symbol, self.depth)
            except ccxt.InvalidNonce as e:  # ChecksumError: sequence gap, ccxt resubscribes
                self.book.invalidate()
                self.stats["resyncs"] += 1
                resyncs_in_a_row += 1
                log.warning("%s %s: order book out of sync, resyncing: %s", self.eid, self.symbol,
                            short_reason(e, self.eid))
                if resyncs_in_a_row > _MAX_RESYNCS_IN_A_ROW:
                    raise ExchangeError(
                        f"{self.eid} {self.symbol}: order book lost sync {resyncs_in_a_row} times in a row"
                    ) from None
                continue
            except ccxt.NetworkError as e:
                self.book.invalidate()
                errors += 1
                self.stats["errors"] += 1
                self.stats["reconnects"] += 1
                await self._ws_retry("order book", errors, e)
                continue
            except ccxt.BaseError as e:
                raise map_ccxt_error(e, self.eid, self.symbol) from None
            errors = 0
            resyncs_in_a_row = 0
            self._on_book(ob, self._now(), source=ob)

    async def _ws_retry(self, stream: str, errors: int, e: BaseException) -> None:
        """After the ``errors``-th network failure in a row of a stream: give up with a
        one-line ExchangeError at ``max_errors``, else back off before ccxt reconnects."""
        if errors >= self.max_errors:
            raise ExchangeError(
                f"cannot reach {self.eid} websocket: {errors} failures in a row, last: {short_reason(e, self.eid)}"
            ) from None
        delay = self._backoff(errors)
        log.warning("%s %s stream failed (%d/%d), reconnecting in %.2fs: %s",
                    self.eid, stream, errors, self.max_errors, delay, short_reason(e, self.eid))
        await asyncio.sleep(delay)

    async def _ws_trades_loop(self) -> None:
        ex = self.exchange
        errors = 0
        while True:
            try:
                trades = await ex.watch_trades(self.symbol)
            except ccxt.NetworkError as e:
                errors += 1
                self.stats["errors"] += 1
                await self._ws_retry("trade", errors, e)
                continue
            except ccxt.BaseError as e:
                raise map_ccxt_error(e, self.eid, self.symbol) from None
            errors = 0
            self._on_trades(trades, self._now())

    def _ws_catch_up(self) -> None:
        """At stop: write what ccxt applied after the last state the loops received (a
        resolve that found no waiter is not lost, only not yet delivered)."""
        ex = self.exchange
        ob = (getattr(ex, "orderbooks", None) or {}).get(self.symbol)
        nonce = ob.get("nonce") if ob is not None else None
        if nonce is not None and not getattr(ob, "cache", None):  # synced, no snapshot pending
            if self.book.needs_snapshot(ob, nonce) or self.book.nonce is None or nonce > self.book.nonce:
                self._on_book(ob, self._now(), source=ob)
        cache = (getattr(ex, "trades", None) or {}).get(self.symbol)
        if cache:
            items = list(cache)
            start = 0
            if self._last_trade_obj is not None:
                idx = next((i for i in range(len(items) - 1, -1, -1) if items[i] is self._last_trade_obj), None)
                start = len(items) if idx is None else idx + 1
            if start < len(items):
                self._on_trades(items[start:], self._now())

    # -- REST workers ----------------------------------------------------------------------
    async def _rest_call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        async with self.throttler:
            self.stats["requests"] += 1
            return await fn(*args, **kwargs)

    async def _poll(self, what: str, call: Callable[[], Any], handle: Callable[[Any, int], None]) -> None:
        """Run ``call`` at t0 + k * poll_interval_s (late polls skip ahead, no bursts)."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        step = self.poll_interval_s
        errors = 0
        nxt = t0
        while True:
            now = loop.time()
            if nxt > now:
                await asyncio.sleep(nxt - now)
            now = loop.time()
            nxt = t0 + (math.floor((now - t0) / step) + 1) * step if step > 0 else now
            try:
                reply = await call()
            except ccxt.NetworkError as e:
                errors += 1
                self.stats["errors"] += 1
                if errors >= self.max_errors:
                    raise ExchangeError(
                        f"cannot reach {self.eid}: {errors} failures in a row, last: {short_reason(e, self.eid)}"
                    ) from None
                delay = self._backoff(errors)
                log.warning("%s %s poll failed (%d/%d), retrying in %.2fs: %s", self.eid, what, errors,
                            self.max_errors, delay, short_reason(e, self.eid))
                nxt = loop.time() + delay
                continue
            except ccxt.BaseError as e:
                raise map_ccxt_error(e, self.eid, self.symbol) from None
            errors = 0
            handle(reply, self._now())

    async def _rest_book_loop(self) -> None:
        ex = self.exchange

        def handle(ob: dict, local_ts: int) -> None:
            # every reply is a full snapshot: a diff against the previous one is exact
            self._on_book(ob, local_ts, source=None)

        await self._poll("order book", lambda: self._rest_call(ex.fetch_order_book, self.symbol, self.depth), handle)

    def _on_rest_trades(self, trades: list[dict], local_ts: int) -> None:
        """Keep the trades newer than the watermark: the highest integer trade id seen, or
        for exchanges without integer ids the latest timestamp plus the ids seen at it. The
        first poll only sets the watermark: its trades happened before the recording."""
        trades = sorted(trades or [], key=lambda t: (t.get("timestamp") or 0))
        new: list[dict] = []
        for t in trades:
            tid = t.get("id")
            num = int(tid) if tid is not None and str(tid).isdigit() else None
            ts = int(t.get("timestamp") or 0)
            if num is not None:
                fresh = self._trade_wm_id is None or num > self._trade_wm_id
                if fresh:
                    self._trade_wm_id = num
            else:
                fresh = ts > self._trade_wm_ts or (ts == self._trade_wm_ts and str(tid) not in self._trade_seen)
            if ts > self._trade_wm_ts:
                self._trade_wm_ts, self._trade_seen = ts, {str(tid)}
            elif ts == self._trade_wm_ts:
                self._trade_seen.add(str(tid))
            if fresh:
                new.append(t)
        if not self._trades_primed:
            self._trades_primed = True
            return
        if trades and len(new) == len(trades) and len(trades) >= self.trades_limit:
            self.stats["trade_gaps"] += 1  # the whole page is new: trades may have been missed
            log.warning("%s %s: %d new trades in one poll, some may be missing (poll faster)",
                        self.eid, self.symbol, len(new))
        self._on_trades(new, local_ts)

    async def _rest_trades_loop(self) -> None:
        ex = self.exchange
        await self._poll(
            "trades", lambda: self._rest_call(ex.fetch_trades, self.symbol, None, self.trades_limit),
            self._on_rest_trades,
        )

    # -- lifecycle -------------------------------------------------------------------------
    def _create_exchange(self) -> None:
        eid = self.eid
        if eid not in ccxt_async.exchanges:
            create_ccxt_exchange(eid)  # raises the "unknown exchange ... (ccxt knows: ...)" error
        ex = None
        if self.use_ws is not False:
            import ccxt.pro as ccxtpro

            if eid in ccxtpro.exchanges:
                ex = create_pro_exchange(eid, api_url=self.api_url, ws_url=self.ws_url, options=self.options)
                if not ex.has.get("watchOrderBook"):
                    if self.use_ws:
                        raise ExchangeError(f"ccxt.pro {eid} has no watchOrderBook; record with REST polling")
                    ex = None  # closed below, never opened a session
            elif self.use_ws:
                raise ExchangeError(f"{eid} has no websocket client in ccxt.pro; record with REST polling")
        if ex is not None:
            self.mode = "ws"
        else:
            opts = _deep_merge(_REST_OPTIONS.get(eid, {}), self.options or {})
            ex = create_ccxt_exchange(eid, api_url=self.api_url, options=opts)
            self.mode = "rest"
        self.exchange = ex
        self.depth = int(self.depth_arg or (DEFAULT_WS_DEPTH if self.mode == "ws" else DEFAULT_REST_DEPTH))
        self.book = BookDiffer(self.depth)
        self.stats["mode"], self.stats["depth"] = self.mode, self.depth

    def _workers(self) -> list[Callable[[], Any]]:
        ex = self.exchange
        has = ex.has or {}
        if self.mode == "ws":
            out = [self._ws_book_loop]
            if has.get("watchTrades"):
                out.append(self._ws_trades_loop)
            elif has.get("fetchTrades"):
                out.append(self._rest_trades_loop)
            return out
        out = [self._rest_book_loop]
        if has.get("fetchTrades"):
            out.append(self._rest_trades_loop)
        return out

    async def _ticker(self) -> None:
        last_status = 0.0
        while True:
            await asyncio.sleep(_TICK_S)
            sink = self.sink
            if sink is None:
                continue
            if sink.rotation_due():
                self._rotate()
            sink.drain()
            now = time.monotonic()
            if self.on_status is not None and now - last_status >= self.status_interval_s:
                last_status = now
                self._report()

    def _report(self) -> None:
        if self.on_status is None:
            return
        try:
            self.on_status(self._stats_snapshot())
        except Exception:  # noqa: BLE001 - a broken status display must not stop recording
            log.exception("on_status callback failed")

    def _meta(self, market: Any, market_type: str | None) -> dict:
        src = (
            f"ccxt.pro {self.eid} watch_order_book + watch_trades (websocket)" if self.mode == "ws"
            else f"ccxt {self.eid} fetch_order_book + fetch_trades (REST polling)"
        )
        return {
            "exchange": self.eid,
            "symbol": self.symbol,
            "market": market_type,
            "tick_size": float(market.tick),
            "lot_size": float(market.lot),
            "tick_size_source": "exchange",
            "lot_size_source": "exchange",
            "source": src,
            "recorder": {
                "mode": self.mode,
                "depth": self.depth,
                "poll_interval_s": self.poll_interval_s if self.mode == "rest" else None,
                "rotate_s": self.rotate_s,
                "ccxt_version": getattr(ccxt, "__version__", None),
                "started_ns": self._started_wall,
            },
        }

    async def run(self) -> dict:
        self._check_out_dir()
        self._create_exchange()
        ex = self.exchange
        tasks: list[asyncio.Task] = []
        stopped_by = "error"
        error: BaseException | None = None
        try:
            market = await load_market(ex, self.symbol)
            self.symbol = market.symbol
            self.stats["symbol"] = self.symbol
            try:
                market_type = (ex.market(self.symbol) or {}).get("type")
            except ccxt.BaseError:  # pragma: no cover - load_market succeeded
                market_type = None
            self._started_wall = time.time_ns()
            self._started_mono = time.monotonic()
            self.sink = _Sink(self.out_dir, self.rotate_s, self.chunk_rows, self._meta(market, market_type))
            self.sink.open_next()
            self.stats["parts"], self.stats["paths"] = 1, list(self.sink.paths)
            log.info("recording %s %s (%s, depth %d) to %s", self.eid, self.symbol, self.mode, self.depth, self.out_dir)
            tasks = [asyncio.create_task(w(), name=f"record-{w.__name__}") for w in self._workers()]
            tasks.append(asyncio.create_task(self._ticker(), name="record-ticker"))
            stopped_by = await self._supervise(tasks)
        except asyncio.CancelledError:
            stopped_by = "cancelled"
            raise
        except BaseException as e:
            error = e
            raise
        finally:
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            try:
                if self.sink is not None:
                    if self.mode == "ws" and error is None:
                        self._ws_catch_up()
                    self.stats["stopped_by"] = stopped_by
                    if error is not None:
                        self.stats["error"] = str(error) if isinstance(error, ExchangeError) else repr(error)
                    self.stats["ended_ns"] = time.time_ns()
                    self.sink.close_part(recorder_stats=self._stats_snapshot())
                    self.stats["rows"] = self.sink.rows
            finally:
                try:
                    await ex.close()
                except Exception as e:  # pragma: no cover - best effort
                    log.debug("closing %s client failed: %s", self.eid, e)
        out = self._stats_snapshot()
        out["started_ns"] = self._started_wall
        out["ended_ns"] = self.stats.get("ended_ns")
        return out

    async def _supervise(self, tasks: list[asyncio.Task]) -> str:
        loop = asyncio.get_running_loop()
        deadline = None if self.duration_s is None else loop.time() + self.duration_s
        pending: set[asyncio.Future] = set(tasks)
        stop_waiter = asyncio.ensure_future(self.stop_event.wait()) if self.stop_event is not None else None
        if stop_waiter is not None:
            pending.add(stop_waiter)
        try:
            while True:
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    return "duration"
                if stop_waiter is not None and stop_waiter in done:
                    return "stop"
                for t in done:
                    exc = t.exception()
                    if exc is not None:
                        raise exc
                if not (pending - {stop_waiter}):
                    return "finished"  # pragma: no cover - workers run until cancelled
        finally:
            if stop_waiter is not None and not stop_waiter.done():
                stop_waiter.cancel()

    def _check_out_dir(self) -> None:
        out = self.out_dir
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out}: exists and is not a directory")
        first = out / META_FILE if self.rotate_s is None else out / "part-0000"
        if first.exists():
            raise ConfigError(f"--out {out}: already holds a recording; choose a new directory")


async def record(
    exchange_id: str,
    symbol: str,
    out_dir: str | Path,
    *,
    minutes: float | None = None,
    seconds: float | None = None,
    api_url: str | None = None,
    ws_url: str | None = None,
    depth: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    rotate_minutes: float | None = None,
    use_ws: bool | None = None,
    poll_interval_s: float = 1.0,
    rate_limit_per_s: float = 5.0,
    on_status: Callable[[dict], Any] | None = None,
    status_interval_s: float = 1.0,
    stop_event: asyncio.Event | None = None,
    options: dict | None = None,
    trades_limit: int = DEFAULT_TRADES_LIMIT,
    max_consecutive_errors: int = 5,
    retry_backoff_s: float = 0.5,
    max_backoff_s: float = 10.0,
) -> dict:
    """Record ``symbol`` on ``exchange_id`` into ``out_dir`` until the duration has passed,
    ``stop_event`` is set or the task is cancelled; returns statistics.

    Args:
        exchange_id: ccxt exchange id (``"binance"``).
        symbol: ccxt unified symbol (``"BTC/USDT"``; the exchange's id is accepted too).
        out_dir: the recording directory; with ``rotate_minutes`` the parent of
            ``part-0000``, ``part-0001``, ... Must not already hold a recording.
        minutes, seconds: recording length (at most one; neither = until stopped).
        api_url: send REST calls to this ``scheme://host:port`` (tests, proxies).
        ws_url: send websocket connections to this ``ws[s]://host:port`` (paths kept);
            default: ``api_url`` with ``http`` -> ``ws``.
        depth: levels per side (websocket: the REST snapshot size and the levels ccxt keeps,
            default 1000; REST: levels per poll, default 100).
        chunk_rows: rows per parquet chunk (the most a crash can lose).
        rotate_minutes: start a new part every this many minutes (see module doc).
        use_ws: True = websocket (error if ccxt.pro lacks ``watchOrderBook``), False = REST
            polling, None = websocket when available.
        poll_interval_s, rate_limit_per_s: REST polling schedule and request cap.
        on_status: called about every ``status_interval_s`` with a stats dict.
        stop_event: set it to stop recording cleanly (what SIGINT does in the CLI).
        options: extra ccxt options (deep-merged over mmbot's defaults).
        trades_limit: trades asked for per REST poll.
        max_consecutive_errors: network failures in a row (per stream) before giving up;
            retried with exponential backoff from ``retry_backoff_s`` up to ``max_backoff_s``.

    Returns:
        ``mode`` ("ws"/"rest"), ``depth``, ``paths`` (recording directories), ``parts``,
        ``rows``, ``book_updates``, ``depth_rows``, ``snapshots``, ``resyncs``,
        ``reconnects``, ``trades``, ``trade_gaps``, ``errors``, ``requests`` (REST calls of
        the polling path), ``stopped_by`` ("duration"/"stop"), ``elapsed_s``, ``best_bid``,
        ``best_ask``, ``book_nonce``, ``started_ns``, ``ended_ns``.

    Raises:
        ExchangeError: unknown exchange or symbol, exchange unreachable, error replies, or
            too many failures in a row (the recording is closed cleanly first).
        ConfigError: invalid arguments or ``out_dir`` already holds a recording.
    """
    if minutes is not None and seconds is not None:
        raise ConfigError("give the recording length in minutes or in seconds, not both")
    duration = minutes * 60.0 if minutes is not None else seconds
    if duration is not None and not duration > 0:
        raise ConfigError(f"recording length must be positive, got {duration!r} s")
    if depth is not None and depth < 1:
        raise ConfigError(f"depth must be >= 1, got {depth}")
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if rotate_minutes is not None and not rotate_minutes > 0:
        raise ConfigError(f"rotate_minutes must be positive, got {rotate_minutes}")
    if poll_interval_s < 0 or not rate_limit_per_s > 0:
        raise ConfigError("poll_interval_s must be >= 0 and rate_limit_per_s > 0")
    if not symbol or not symbol.strip():
        raise ConfigError("symbol is required (e.g. BTC/USDT)")
    rec = _Recorder(
        exchange_id, symbol.strip(), Path(out_dir), duration_s=duration, api_url=api_url, ws_url=ws_url,
        depth=depth, chunk_rows=int(chunk_rows),
        rotate_s=None if rotate_minutes is None else float(rotate_minutes) * 60.0,
        use_ws=use_ws, poll_interval_s=float(poll_interval_s), rate_limit_per_s=float(rate_limit_per_s),
        on_status=on_status, status_interval_s=float(status_interval_s), stop_event=stop_event,
        options=options, trades_limit=int(trades_limit), max_consecutive_errors=int(max_consecutive_errors),
        retry_backoff_s=float(retry_backoff_s), max_backoff_s=float(max_backoff_s),
    )
    return await rec.run()


__all__ = ["BookDiffer", "DEFAULT_CHUNK_ROWS", "DEFAULT_REST_DEPTH", "DEFAULT_WS_DEPTH", "record"]
