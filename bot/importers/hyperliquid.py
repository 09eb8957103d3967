"""Import Hyperliquid websocket captures (``l2Book`` and ``trades`` channels) into a recording.

Input: one message per line, ``<local receive time, ns> <json>``, the JSON being
``{"channel": "l2Book", "data": {"coin", "time" (ms), "levels": [bids, asks]}}`` (each
level ``{"px", "sz", "n"}``, best first, 20 levels a side) or ``{"channel": "trades",
"data": [{"coin", "side": "B"|"A", "px", "sz", "time" (ms), "tid", ...}, ...]}``.

What is written (see docs/recording_format.md):
* the first book is a snapshot (a CLEAR row per side, then SNAPSHOT rows);
* every later book is diffed against the previous one into DEPTH rows: a level whose size
  changed gets its new size, a level that left the book gets size 0. Hyperliquid sends only
  the top 20 levels a side, so a level that merely moved beyond the 20th is recorded as
  removed (the recording is the 20-level view, as the feed is);
* trades: side ``B`` (the buyer was the aggressor) -> +1, ``A`` -> -1; exch_ts = trade time,
  first_id = last_id = tid. A trades message may repeat recent history on subscription:
  trades are written in the order received, with the exchange time they carry.
Units: prices USD per coin, sizes coins, timestamps ns since the epoch. Tick and lot are
inferred from the prices and sizes seen unless given.
"""

from __future__ import annotations

import gzip
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bot.errors import DataError
from bot.recording.io import RecordingWriter
from bot.recording.schema import ASK, BID, CLEAR, DEPTH, EVENT_DTYPE, SNAPSHOT, TRADE

try:
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover
    import json

    _loads = json.loads


@dataclass
class HyperliquidStats:
    out_dir: str
    files: list[str]
    symbol: str = ""
    lines: int = 0
    books: int = 0
    trade_messages: int = 0
    trades: int = 0
    events: int = 0
    lines_skipped: int = 0
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _book(levels, where: str) -> tuple[dict[float, float], dict[float, float]]:
    if not isinstance(levels, list) or len(levels) != 2:
        raise ValueError("l2Book levels must be [bids, asks]")
    sides = []
    for side in levels:
        sides.append({float(lv["px"]): float(lv["sz"]) for lv in side})
    return sides[0], sides[1]


def import_hyperliquid(paths: list[Path] | list[str], out_dir: Path | str, *, lenient: bool = False, overwrite: bool = True,
                       tick_size: float | None = None, lot_size: float | None = None) -> HyperliquidStats:
    """Import one coin's capture files, in order, into one recording at ``out_dir``."""
    paths = [Path(p) for p in paths]
    st = HyperliquidStats(str(out_dir), [str(p) for p in paths])
    rows: list[tuple] = []
    prev: tuple[dict[float, float], dict[float, float]] | None = None
    coin = ""
    for path in paths:
        opener = gzip.open if path.suffix == ".gz" else open
        try:
            with opener(path, "rb") as fh:
                for lineno, raw in enumerate(fh, 1):
                    st.lines += 1
                    raw = raw.strip()
                    if not raw:
                        continue
                    try:
                        ts_s, _, body = raw.partition(b" ")
                        local = int(ts_s)
                        msg = _loads(body)
                        ch = msg["channel"]
                        data = msg["data"]
                        if ch == "l2Book":
                            coin = coin or data.get("coin", "")
                            exch = int(data["time"]) * 1_000_000
                            bids, asks = _book(data["levels"], f"{path}:{lineno}")
                            st.books += 1
                            if prev is None:
                                rows.append((CLEAR, BID, exch, local, 0.0, 0.0, -1, -1))
                                rows.append((CLEAR, ASK, exch, local, 0.0, 0.0, -1, -1))
                                rows += [(SNAPSHOT, BID, exch, local, p, q, -1, -1) for p, q in bids.items()]
                                rows += [(SNAPSHOT, ASK, exch, local, p, q, -1, -1) for p, q in asks.items()]
                            else:
                                for sgn, new, old in ((BID, bids, prev[0]), (ASK, asks, prev[1])):
                                    # deletions first, so a message never shows a transient cross
                                    rows += [(DEPTH, sgn, exch, local, p, 0.0, -1, -1) for p in old if p not in new]
                                    rows += [(DEPTH, sgn, exch, local, p, q, -1, -1) for p, q in new.items() if old.get(p) != q]
                            prev = (bids, asks)
                        elif ch == "trades":
                            st.trade_messages += 1
                            for t in data:
                                coin = coin or t.get("coin", "")
                                side = {"B": 1, "A": -1}[t["side"]]
                                tid = int(t["tid"])
                                rows.append((TRADE, side, int(t["time"]) * 1_000_000, local, float(t["px"]), float(t["sz"]), tid, tid))
                                st.trades += 1
                        # other channels (subscriptionResponse, pong) carry no market data
                    except (ValueError, KeyError, TypeError, IndexError) as e:
                        reason = f"{path}:{lineno}: not a Hyperliquid capture line ({type(e).__name__}: {e})"
                        if not lenient:
                            raise DataError(reason) from None
                        st.lines_skipped += 1
                        if len(st.skipped) < 100:
                            st.skipped.append(reason)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: cannot be read ({e})") from None
    if prev is None:
        raise DataError(f"{', '.join(map(str, paths))}: no l2Book message: nothing to build a book from")
    events = np.array(rows, dtype=EVENT_DTYPE)
    st.symbol = f"{coin}/USD" if coin else "?/USD"
    st.events = len(events)
    meta = {"exchange": "hyperliquid", "symbol": st.symbol, "market": "perp", "tick_size": tick_size, "lot_size": lot_size,
            "source_files": [{"path": str(p), "bytes": p.stat().st_size} for p in paths], "importer": __name__,
            "stats": st.as_dict()}
    w = RecordingWriter(out_dir, meta, overwrite=overwrite)
    w.append(events)
    w.close()
    return st
