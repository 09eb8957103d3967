"""Shared helpers for tests/test_models_*.py: real-data slices (skipped when ../shared/data is
absent), a replay driver for the online feature path, a synthetic book."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bot.market_data.base import Trade
from bot.orderbook import OrderBook
from bot.recording.schema import TRADE
from real_data import require

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BINANCE_SPOT = [DATA / "binance/spot/btcusdt_20240808.gz", DATA / "binance/spot/btcusdt_20240809.gz"]
BITSTAMP = DATA / "bitstamp_2015/2015-05-01.log.bz2"


def need(*paths: Path) -> None:
    require(*paths)  # skipped in a fresh clone, failed in CI (tests/real_data.py)


def binance_recording(out: Path) -> Path:
    need(*BINANCE_SPOT)
    from bot.importers.binance import import_binance

    import_binance(BINANCE_SPOT, out)
    return out


def binance_slice(tmp: Path, seconds: int = 150) -> tuple[Path, np.ndarray, dict]:
    """(recording dir, its first ``seconds`` of events, meta) of the Binance spot capture,
    imported into ``tmp``."""
    from bot.recording.io import open_recording

    rec = binance_recording(tmp / "rec")
    r = open_recording(rec)
    ev = r.events()
    return rec, ev[ev["local_ts"] <= ev["local_ts"][0] + seconds * 10**9], r.meta


def bitstamp_recording(out: Path, max_lines: int = 60_000) -> Path:
    need(BITSTAMP)
    from bot.importers.bitstamp import import_bitstamp

    import_bitstamp(BITSTAMP, out, max_lines=max_lines)
    return out


def change_future(ev: np.ndarray, cut_ns: int, seed: int = 1, drop: float = 0.3) -> np.ndarray:
    """A copy of ``ev`` whose rows after ``cut_ns`` (local time) are changed beyond recognition:
    sizes scaled, trade sides flipped and prices shifted, time stretched by 1.5 (so the mid
    changes come at other times and less often), and a share ``drop`` of the rows dropped
    (which leaves the book crossed much of the time). Rows at or before the cut are untouched."""
    fut = ev["local_ts"] > cut_ns
    ev2 = ev.copy()
    rng = np.random.default_rng(seed)
    ev2["qty"][fut] = ev2["qty"][fut] * rng.uniform(0.1, 3.0, fut.sum())
    tr = fut & (ev2["kind"] == TRADE)
    ev2["side"][tr] = -ev2["side"][tr]
    ev2["px"][tr] += 5.0
    dt = ev2["local_ts"][fut] - cut_ns
    ev2["local_ts"][fut] = cut_ns + dt + dt // 2
    return ev2[~(fut & (rng.random(len(ev2)) < drop))]


def write_recording(ev: np.ndarray, meta: dict, out: Path) -> Path:
    """Write events as a recording directory with the market metadata of ``meta``."""
    from bot.recording.io import RecordingWriter

    keep = {k: meta.get(k) for k in ("exchange", "symbol", "market", "tick_size", "lot_size")}
    with RecordingWriter(out, keep) as w:
        w.append(ev)
    return out


def replay_online(events: np.ndarray, tick: float, lot: float, grid: np.ndarray, step):
    """Advance a replay venue to each grid time and call ``step(book, t, trades)`` with the
    trades received since the previous grid time (as the engine's replay source would)."""
    from paper_trading.venue import ArrayBookView, Venue

    v = Venue(events, tick, lot)
    book = ArrayBookView(v)
    kind, lts, px, qty, side = events["kind"], events["local_ts"], events["px"], events["qty"], events["side"]
    names = {1: "buy", -1: "sell"}
    i_prev = 0
    out = []
    for t in grid:
        v.advance_to(int(t))
        idx = np.flatnonzero(kind[i_prev : v.i] == TRADE) + i_prev
        i_prev = v.i
        trades = [Trade(int(lts[j]), float(px[j]), float(qty[j]), names.get(int(side[j]), "")) for j in idx]
        out.append(step(book, int(t), trades))
    return out


class SyntheticMarket:
    """A 10-level book whose mid does a random walk in ticks; ``vol`` = probability of a move
    per grid step (the volatility regime)."""

    def __init__(self, seed: int = 0, mid: float = 100.0, tick: float = 0.01) -> None:
        self.rng = np.random.default_rng(seed)
        self.tick = tick
        self.m = int(round(mid / tick))
        self.book = OrderBook("SYN/USD")
        self._set()

    def _set(self) -> None:
        r = self.rng
        bids = [((self.m - 1 - j) * self.tick, float(r.uniform(0.5, 3.0))) for j in range(10)]
        asks = [((self.m + 1 + j) * self.tick, float(r.uniform(0.5, 3.0))) for j in range(10)]
        self.book.apply_snapshot(bids, asks)

    def step(self, vol: float, jump: int = 1) -> list[Trade]:
        r = self.rng
        if r.random() < vol:
            self.m += jump * (1 if r.random() < 0.5 else -1)
        self._set()
        return []
