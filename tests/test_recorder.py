"""The live recorder (bot/market_data/recorder.py) against a local Binance REST + websocket
fake (tests/fake_binance_ws.py): ccxt.pro's own binance code runs (SUBSCRIBE, diff
buffering, REST snapshot, U/u continuity check); nothing leaves 127.0.0.1.

Every test compares the recording with the server's book as it was at the update id each
recorded message claims (``last_id``), so a wrong diff, a missed resync or a stale snapshot
shows up at the message where it happens, not only at the end.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import AsyncIterator, Iterator

import numpy as np
import pytest

from bot.errors import ConfigError, ExchangeError
from bot.market_data.recorder import BookDiffer, record
from bot.recording import CLEAR, DEPTH, SNAPSHOT, TRADE, open_recording
from bot.recording.book_replay import message_ends, replay_top
from fake_binance_ws import FakeBinanceWs

SYMBOL = "BTC/USDT"
DEPTH_LIMIT = 50  # ccxt cost 1 per snapshot (limit <= 100): resyncs are not held up by ccxt's limiter


@pytest.fixture
async def server() -> AsyncIterator[FakeBinanceWs]:
    s = FakeBinanceWs()
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


class History:
    """The server's book after every update id (dropped diffs included)."""

    def __init__(self, server: FakeBinanceWs) -> None:
        self.server = server
        self.books = {server.update_id(): server.book()}

    async def push(self, bids=(), asks=(), **kw) -> int:
        u = await self.server.push_depth(bids, asks, **kw)
        self.books[u] = self.server.book()
        return u


def replay_messages(ev: np.ndarray) -> Iterator[tuple[int, int, list, list]]:
    """Replay rows into a dict book; yield (row index, last_id, bids, asks) at the end of
    every book message (best first)."""
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    ends = message_ends(ev)
    for i, e in enumerate(ev):
        k, side = int(e["kind"]), int(e["side"])
        book = bids if side > 0 else asks
        if k == CLEAR:
            book.clear()
        elif k in (DEPTH, SNAPSHOT):
            if e["qty"] == 0:
                book.pop(float(e["px"]), None)
            else:
                book[float(e["px"])] = float(e["qty"])
        if ends[i] and k != TRADE:
            yield i, int(e["last_id"]), sorted(bids.items(), reverse=True), sorted(asks.items())


def check_against_history(ev: np.ndarray, hist: History) -> tuple[list, list]:
    """Every book message's end state equals the server's book at its last_id; returns the
    final replayed book."""
    last = ([], [])
    n = 0
    for i, lid, b, a in replay_messages(ev):
        assert lid in hist.books, f"row {i}: last_id {lid} is no update id the server produced"
        assert (b, a) == hist.books[lid], f"row {i}: book after update {lid} differs from the server's"
        last = (b, a)
        n += 1
    assert n > 0
    return last


async def start_recording(server: FakeBinanceWs, out: Path, **kw) -> tuple[asyncio.Task, asyncio.Event, list]:
    stop = asyncio.Event()
    statuses: list[dict] = []
    kw.setdefault("depth", DEPTH_LIMIT)
    kw.setdefault("seconds", 15)  # safety net; tests stop through stop_event
    task = asyncio.create_task(record(
        "binance", SYMBOL, out, api_url=server.base_url, stop_event=stop, on_status=statuses.append,
        status_interval_s=0.1, retry_backoff_s=0.05, **kw,
    ))
    return task, stop, statuses


async def wait_ws_synced(server: FakeBinanceWs, task: asyncio.Task, depth_requests: int = 1) -> None:
    await server.wait_until(lambda: server.subscribe_count("depth") >= depth_requests
                            and server.count("/api/v3/depth") >= depth_requests
                            and server.subscribe_count("trade") >= 1 or task.done(), what="ws subscriptions")
    if task.done():
        task.result()
    await asyncio.sleep(0.15)  # the snapshot reply reaches ccxt


# -- websocket path ------------------------------------------------------------------------------
async def test_ws_records_book_trades_and_resyncs_on_gap(server: FakeBinanceWs, tmp_path: Path) -> None:
    out = tmp_path / "rec"
    hist = History(server)
    task, stop, statuses = await start_recording(server, out)
    await wait_ws_synced(server, task)

    await hist.push([(50000.00, 2.5)], [(50000.01, 0)])  # change + delete
    await server.push_trade("50000.02", "0.1", "buy")
    await hist.push([(49999.98, 0.7)], [(50000.03, 4), (50000.02, 2.5)])
    await server.push_trade("50000.00", "0.25", "sell")
    await hist.push([(50000.00, 0), (49999.99, 0)], [], n_ids=3)  # spans 3 ids
    await asyncio.sleep(0.2)
    # a lost diff: the server's book changes, ccxt sees U jump on the next one
    dropped = await hist.push([(49999.50, 1.0)], [], drop=True)
    await hist.push([(49999.40, 1.0)], [(50000.03, 0)])
    await server.wait_until(lambda: server.count("/api/v3/depth") >= 2, what="resync snapshot")
    await asyncio.sleep(0.2)
    await hist.push([(49999.45, 3.0)], [(50000.10, 0.5)])
    await server.push_trade("49999.98", "0.5", "sell")
    await asyncio.sleep(0.3)
    stop.set()
    stats = await asyncio.wait_for(task, 10)

    assert stats["mode"] == "ws" and stats["stopped_by"] == "stop"
    assert stats["resyncs"] == 1 and stats["snapshots"] == 2
    assert stats["trades"] == 3 and stats["paths"] == [str(out)]
    assert server.unexpected == []
    assert statuses and statuses[-1]["mode"] == "ws"

    rec = open_recording(out)  # complete
    m = rec.meta
    assert (m["exchange"], m["symbol"], m["market"]) == ("binance", SYMBOL, "spot")
    assert m["tick_size"] == 0.01 and m["lot_size"] == 0.00001 and m["complete"] is True
    ev = rec.events()
    assert len(ev) == stats["rows"]
    assert np.all(np.diff(ev["local_ts"]) >= 0)

    # two snapshot blocks: the start and the resync after the gap
    clears = np.flatnonzero(ev["kind"] == CLEAR)
    assert len(clears) == 4 and ev["side"][clears].tolist() == [1, -1, 1, -1]
    assert ev["last_id"][clears[2]] > dropped  # the resync snapshot contains the lost diff
    final = check_against_history(ev, hist)
    assert final == server.book()
    # the book between the gap and the resync never pretends to contain the lost level
    before = ev[: clears[2]]
    assert 49999.50 not in before["px"][before["kind"] != TRADE]

    # numba replay agrees on the top of book
    top = replay_top(ev, m["tick_size"])
    bids, asks = server.book()
    assert (top["bid_px"][-1], top["bid_qty"][-1]) == bids[0]
    assert (top["ask_px"][-1], top["ask_qty"][-1]) == asks[0]
    assert not top["crossed"][message_ends(ev)].any()

    # trades: taker side, price, size, trade id, Binance event time
    tr = ev[ev["kind"] == TRADE]
    assert tr["side"].tolist() == [1, -1, -1]
    assert tr["px"].tolist() == [50000.02, 50000.00, 49999.98]
    assert tr["qty"].tolist() == [0.1, 0.25, 0.5]
    assert tr["first_id"].tolist() == [1, 2, 3] and tr["last_id"].tolist() == [1, 2, 3]
    assert np.all(tr["exch_ts"] > 1_600_000_000 * 10**9)

    # depth rows carry the U..u range of the diffs ccxt applied (several may be coalesced):
    # within a sync block the ranges are contiguous, starting after the snapshot's id
    book = ev[ev["kind"] != TRADE]
    ends = message_ends(book)
    prev = None
    for e in book[ends]:
        if e["kind"] == SNAPSHOT:
            prev = int(e["last_id"])
        else:
            assert e["kind"] == DEPTH and int(e["first_id"]) == prev + 1 and int(e["last_id"]) >= prev + 1
            prev = int(e["last_id"])
    d = ev[ev["kind"] == DEPTH]
    for lid in set(d["last_id"].tolist()):  # deletions before updates within a message
        q = d["qty"][d["last_id"] == lid]
        assert np.all(np.diff((q > 0).astype(int)) >= 0)


async def test_chunks_reach_disk_while_recording(server: FakeBinanceWs, tmp_path: Path) -> None:
    out = tmp_path / "rec"
    hist = History(server)
    task, stop, _ = await start_recording(server, out, chunk_rows=4)
    await wait_ws_synced(server, task)
    for i in range(5):
        await hist.push([(round(49999.90 - i * 0.01, 2), 1 + i)], [])
        await server.push_trade("50000.01", "0.01", "buy")
    await server.wait_until(lambda: (out / "events-00002.parquet").exists(), what="chunk files")
    assert not task.done()
    live = open_recording(out, allow_incomplete=True)  # readable while the recorder runs
    assert live.meta["complete"] is False
    assert len(live) >= 12 and len(live) % 4 == 0
    assert live.events()["kind"][0] == CLEAR
    stop.set()
    stats = await asyncio.wait_for(task, 10)
    rec = open_recording(out)
    assert rec.meta["complete"] is True and len(rec) == stats["rows"]
    assert all(c["rows"] == 4 for c in rec.meta["chunks"][:-1])
    assert check_against_history(rec.events(), hist) == server.book()


async def test_reconnect_after_server_drops_connections(server: FakeBinanceWs, tmp_path: Path) -> None:
    out = tmp_path / "rec"
    hist = History(server)
    task, stop, _ = await start_recording(server, out)
    await wait_ws_synced(server, task)
    await hist.push([(49999.95, 1.0)], [])
    await asyncio.sleep(0.1)
    assert await server.drop_connections() == 2  # depth and trade connections
    await hist.push([(49999.94, 1.0)], [])  # nobody listens: lost
    await server.wait_until(lambda: server.count("/api/v3/depth") >= 2 and server.subscribe_count("trade") >= 2,
                            what="re-subscription")
    await asyncio.sleep(0.2)
    await hist.push([(49999.93, 1.0)], [])
    await server.push_trade("50000.01", "0.3", "buy")
    await asyncio.sleep(0.3)
    stop.set()
    stats = await asyncio.wait_for(task, 10)
    assert stats["reconnects"] >= 1 and stats["snapshots"] >= 2
    ev = open_recording(out).events()
    assert check_against_history(ev, hist) == server.book()
    assert ev["qty"][ev["kind"] == TRADE].tolist() == [0.3]


async def test_rotation_writes_self_contained_parts(server: FakeBinanceWs, tmp_path: Path) -> None:
    out = tmp_path / "rec"
    hist = History(server)
    task, stop, _ = await start_recording(server, out, rotate_minutes=0.5 / 60)
    await wait_ws_synced(server, task)
    for i in range(12):
        await hist.push([(round(49999.80 + i * 0.01, 2), 0.5 + i)], [])
        await server.push_trade("50000.01", "0.01", "buy")
        await asyncio.sleep(0.1)
    stop.set()
    stats = await asyncio.wait_for(task, 10)
    parts = sorted(p for p in out.iterdir() if p.is_dir())
    assert [p.name for p in parts][:2] == ["part-0000", "part-0001"]
    assert stats["parts"] == len(parts) >= 2 and stats["paths"] == [str(p) for p in parts]
    total = 0
    for i, p in enumerate(parts):
        rec = open_recording(p)
        assert rec.meta["complete"] is True and rec.meta["part"] == i
        ev = rec.events()
        total += len(ev)
        assert ev["kind"][0] == CLEAR and ev["kind"][1] == CLEAR  # every part starts from a snapshot
        final = check_against_history(ev, hist)
    assert final == server.book()
    assert total == stats["rows"]
    assert sum(int((open_recording(p).events()["kind"] == TRADE).sum()) for p in parts) == 12


async def test_cancel_closes_the_recording(server: FakeBinanceWs, tmp_path: Path) -> None:
    out = tmp_path / "rec"
    task, _, _ = await start_recording(server, out)
    await wait_ws_synced(server, task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rec = open_recording(out)
    assert rec.meta["complete"] is True and rec.meta["recorder_stats"]["stopped_by"] == "cancelled"
    assert rec.events()["kind"][0] == CLEAR


# -- REST fallback ----------------------------------------------------------------------------------
async def test_rest_polling_fallback(server: FakeBinanceWs, tmp_path: Path) -> None:
    out = tmp_path / "rec"
    await server.push_trade("49000", "1", "buy")  # before the recording: not recorded
    hist = History(server)
    task, stop, _ = await start_recording(server, out, use_ws=False, poll_interval_s=0.05, rate_limit_per_s=40,
                                          depth=20)
    await server.wait_until(lambda: server.count("/api/v3/trades") >= 1 and server.count("/api/v3/depth") >= 1,
                            what="first polls")
    await hist.push([(50000.00, 0.3)], [(50000.05, 2)])
    await server.push_trade("50000.01", "0.2", "buy")
    await server.push_trade("50000.00", "0.4", "sell")
    n = server.count("/api/v3/depth")
    await server.wait_until(lambda: server.count("/api/v3/depth") >= n + 2, what="polls")
    await hist.push([(49999.99, 0)], [(50000.01, 0)])
    await server.push_trade("50000.02", "0.6", "buy")
    n, t = server.count("/api/v3/depth"), server.count("/api/v3/trades")
    await server.wait_until(lambda: server.count("/api/v3/depth") >= n + 2 and server.count("/api/v3/trades") >= t + 2,
                            what="polls")
    stop.set()
    stats = await asyncio.wait_for(task, 10)
    assert stats["mode"] == "rest" and stats["depth"] == 20 and stats["snapshots"] == 1
    assert server.ws_connects == 0 and server.unexpected == []
    assert server.count("/api/v3/aggTrades") == 0  # binance: real trade ids from /api/v3/trades
    assert "limit=20" in next(c[3] for c in server.calls if c[2] == "/api/v3/depth")
    rec = open_recording(out)
    assert "REST" in rec.meta["source"]
    ev = rec.events()
    assert check_against_history(ev, hist) == server.book()
    tr = ev[ev["kind"] == TRADE]
    assert tr["px"].tolist() == [50000.01, 50000.00, 50000.02]
    assert tr["qty"].tolist() == [0.2, 0.4, 0.6]
    assert tr["side"].tolist() == [1, -1, 1]
    assert tr["first_id"].tolist() == [2, 3, 4]


# -- errors --------------------------------------------------------------------------------------------
async def test_errors_are_one_line(server: FakeBinanceWs, tmp_path: Path, closed_port_url: str) -> None:
    with pytest.raises(ExchangeError, match=r"^unknown symbol 'DOGE/EUR' on binance"):
        await record("binance", "DOGE/EUR", tmp_path / "a", api_url=server.base_url, seconds=1)
    assert not (tmp_path / "a" / "meta.json").exists()
    with pytest.raises(ExchangeError, match=r"unknown exchange 'binanse'"):
        await record("binanse", SYMBOL, tmp_path / "b", seconds=1)
    with pytest.raises(ExchangeError, match=r"^cannot reach binance: ") as ei:
        await record("binance", SYMBOL, tmp_path / "c", api_url=closed_port_url, seconds=1)
    assert "\n" not in str(ei.value)
    ws_down = "ws" + closed_port_url[len("http"):]  # REST answers, the websocket host does not
    with pytest.raises(ExchangeError, match=r"^cannot reach binance websocket: 2 failures in a row") as ei:
        await record("binance", SYMBOL, tmp_path / "g", api_url=server.base_url, ws_url=ws_down, seconds=10,
                     max_consecutive_errors=2, retry_backoff_s=0.01)
    assert "\n" not in str(ei.value)
    assert open_recording(tmp_path / "g").meta["recorder_stats"]["stopped_by"] == "error"
    import ccxt
    import ccxt.pro

    rest_only = next(e for e in ccxt.exchanges if e not in ccxt.pro.exchanges)
    with pytest.raises(ExchangeError, match="no websocket client"):  # decided before any request
        await record(rest_only, SYMBOL, tmp_path / "d", use_ws=True, seconds=1)
    with pytest.raises(ConfigError):
        await record("binance", SYMBOL, tmp_path / "e", minutes=0)
    # an existing recording is never overwritten
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "meta.json").write_text(json.dumps({}))
    with pytest.raises(ConfigError, match="already holds a recording"):
        await record("binance", SYMBOL, tmp_path / "f", api_url=server.base_url, seconds=1)


def test_book_differ_rows() -> None:
    d = BookDiffer(depth=2)
    rows = d.snapshot([[10.0, 1.0], [9.0, 2.0], [8.0, 5.0]], [[11.0, 1.0]], -1, 5, 100, source="x")
    assert [r[0] for r in rows] == [CLEAR, CLEAR, SNAPSHOT, SNAPSHOT, SNAPSHOT]  # depth 2: 8.0 not kept
    assert not d.needs_snapshot("x", 101) and d.needs_snapshot("y", 101) and d.needs_snapshot("x", 99)
    rows = d.diff([[10.0, 1.5], [8.0, 5.0]], [[11.0, 1.0], [12.0, 3.0]], 7_000_000, 6, 103)
    assert rows == [
        (DEPTH, 1, 7_000_000, 6, 9.0, 0.0, 101, 103),  # deletion first
        (DEPTH, 1, 7_000_000, 6, 10.0, 1.5, 101, 103),
        (DEPTH, 1, 7_000_000, 6, 8.0, 5.0, 101, 103),
        (DEPTH, -1, 7_000_000, 6, 12.0, 3.0, 101, 103),
    ]
    d.invalidate()
    assert d.needs_snapshot("x", 104)


# -- CLI -----------------------------------------------------------------------------------------------
def test_record_command_cli(tmp_path: Path) -> None:
    typer = pytest.importorskip("typer")
    from typer.testing import CliRunner

    from bot.market_data.record_cli import record_command

    app = typer.Typer()
    app.command("record")(record_command)
    app.command("noop")(lambda: None)  # keep "record" a subcommand

    # the fake runs in its own thread and loop: record_command calls asyncio.run itself
    ready = threading.Event()
    box: dict = {}

    def serve() -> None:
        async def main() -> None:
            s = FakeBinanceWs()
            await s.start()
            box["server"], box["loop"], box["stop"] = s, asyncio.get_running_loop(), asyncio.Event()
            ready.set()
            await box["stop"].wait()
            await s.stop()

        asyncio.run(main())

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    assert ready.wait(10)
    s = box["server"]
    try:
        out = tmp_path / "cli"
        res = CliRunner().invoke(app, ["record", "--exchange", "binance", "--symbol", SYMBOL, "--minutes", "0.01",
                                       "--out", str(out), "--api-url", s.base_url, "--depth", "20"])
        assert res.exit_code == 0, res.output + repr(res.exception)
        assert "recorded binance BTC/USDT" in res.output and "websocket" in res.output
        rec = open_recording(out)
        assert rec.meta["recorder"]["mode"] == "ws" and rec.events()["kind"][0] == CLEAR

        res = CliRunner().invoke(app, ["record", "--exchange", "binance", "--symbol", "NOPE/USDT", "--minutes", "0.01",
                                       "--out", str(tmp_path / "x"), "--api-url", s.base_url, "--rest"])
        assert isinstance(res.exception, ExchangeError) and "NOPE/USDT" in str(res.exception)
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        th.join(10)
