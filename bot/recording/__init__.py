"""mmbot's own recording format for L2 market data.

A recording is a directory with ``meta.json`` and parquet chunks of flat events (one row per
price-level change or trade, see :mod:`bot.recording.schema` and ``docs/recording_format.md``).
Write with :class:`RecordingWriter`, read with :func:`open_recording`. The numba book replay
lives in :mod:`bot.recording.book_replay` (imported separately: it pulls in numba).

Units: prices quote/base, sizes base units, timestamps int ns since the Unix epoch.
"""

from bot.recording.io import Recording, RecordingWriter, open_recording
from bot.recording.schema import (
    ASK,
    BID,
    BOOKTICKER_DTYPE,
    BUY,
    CLEAR,
    DEPTH,
    EVENT_DTYPE,
    FORMAT_VERSION,
    SELL,
    SNAPSHOT,
    TRADE,
    infer_lot_size,
    infer_tick_size,
    make_events,
)

__all__ = [
    "ASK",
    "BID",
    "BOOKTICKER_DTYPE",
    "BUY",
    "CLEAR",
    "DEPTH",
    "EVENT_DTYPE",
    "FORMAT_VERSION",
    "Recording",
    "RecordingWriter",
    "SELL",
    "SNAPSHOT",
    "TRADE",
    "infer_lot_size",
    "infer_tick_size",
    "make_events",
    "open_recording",
]
