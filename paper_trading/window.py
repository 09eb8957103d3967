"""A time window of a recording for a backtest (``mmbot backtest --start/--end``), with the
semantics of a ``mmbot tune`` fold segment, so that a fold's figure can be reproduced by
``mmbot backtest``.

Times are int ns since the epoch, recorded local time (the recording's ``local_ts``). A
window [start_ns, end_ns) of a recording is backtested as a tune worker backtests a segment:

* the events are cut before ``end_ns`` (:func:`events_before`: rows with local_ts < end_ns;
  the replay then ends at the last of them, as for a recording that ended there);
* the replay starts at ``start_ns``: the book is built from the recording's start up to it
  (book states do not depend on our orders), then ``replay.warmup_s`` of recorded time
  passes before the first decision (the strategy warms its estimators on it), then the
  strategy trades until the end.

A window must leave room for the warm-up and one decision (``replay.warmup_s +
replay.interval_s``), like a tune segment (shorter segments are skipped by tune).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

import numpy as np

from bot.errors import ConfigError

_ISO = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}(?::\d{2})?)(?:[.,](\d{1,9}))?)?(Z|[+-]\d{2}:?\d{2})?$", re.I)


def parse_time_ns(value: str, option: str) -> int:
    """``value`` as int ns since the epoch: a non-negative integer (ns) or an ISO-8601 time
    (``2024-08-08T23:55:00.123456789Z``; up to 9 fraction digits; no offset means UTC, an
    offset is converted). ConfigError naming ``option`` otherwise."""
    v = str(value).strip()
    if re.fullmatch(r"\d+", v):
        return int(v)
    m = _ISO.match(v)
    bad = ConfigError(f"{option} {value!r}: not a time; give ISO-8601 UTC (e.g. 2024-08-08T23:55:00Z) or ns since the epoch")
    if not m:
        raise bad
    date, hms, frac, tz = m.groups()
    tz = tz or "+00:00"
    if tz.upper() == "Z":
        tz = "+00:00"
    elif ":" not in tz:
        tz = tz[:3] + ":" + tz[3:]
    try:
        dt = datetime.fromisoformat(f"{date}T{hms or '00:00'}{tz}")
    except ValueError:
        raise bad from None
    secs = int((dt - datetime(1970, 1, 1, tzinfo=timezone.utc)).total_seconds())
    if secs < 0:
        raise ConfigError(f"{option} {value!r}: before 1970")
    return secs * 1_000_000_000 + (int(frac.ljust(9, "0")) if frac else 0)


def format_ns(ns: int) -> str:
    """int ns since the epoch as ISO-8601 UTC with 9 fraction digits (exact)."""
    s, frac = divmod(int(ns), 1_000_000_000)
    return datetime.fromtimestamp(s, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def events_before(events, end_ns: int | None):
    """The rows of ``events`` (sorted by local_ts) with local_ts < ``end_ns`` (all when None)."""
    if end_ns is None:
        return events
    return events[: int(np.searchsorted(events["local_ts"], end_ns, side="left"))]


def check_window(start_ns: int | None, end_ns: int | None, first_ns: int, last_ns: int, warmup_s: float, interval_s: float,
                 where: str) -> None:
    """ConfigError (one line, naming the options and the recording ``where``) unless the
    window [start_ns, end_ns) overlaps the recording [first_ns, last_ns] by more than the
    warm-up plus one decision (seconds)."""
    if start_ns is not None and end_ns is not None and start_ns >= end_ns:
        raise ConfigError(f"--start {format_ns(start_ns)} is not before --end {format_ns(end_ns)}")
    span = f"{format_ns(first_ns)} .. {format_ns(last_ns)}"
    if start_ns is not None and start_ns > last_ns:
        raise ConfigError(f"--start {format_ns(start_ns)} is after the end of recording {where} ({span})")
    if end_ns is not None and end_ns <= first_ns:
        raise ConfigError(f"--end {format_ns(end_ns)} is not after the start of recording {where} ({span})")
    lo = max(first_ns, start_ns if start_ns is not None else first_ns)
    hi = min(last_ns, end_ns if end_ns is not None else last_ns)
    if (hi - lo) / 1e9 <= warmup_s + interval_s:
        raise ConfigError(f"--start/--end: the window {format_ns(lo)} .. {format_ns(hi)} of recording {where} is "
                          f"{(hi - lo) / 1e9:.3f} s, not longer than the warm-up plus one decision "
                          f"(replay.warmup_s + replay.interval_s = {warmup_s + interval_s:g} s)")


def load_window(data, start: str | None, end: str | None, cfg) -> tuple[tuple, int | None]:
    """``mmbot backtest --start/--end``: ((events, meta), start_ns) of the recording at
    ``data`` for the window (the events read whole into memory and cut before the end);
    ConfigError or DataError, one line, on a bad time or a window outside the recording."""
    from paper_trading.backtest import load_recording

    start_ns = parse_time_ns(start, "--start") if start is not None else None
    end_ns = parse_time_ns(end, "--end") if end is not None else None
    if start_ns is not None and end_ns is not None and start_ns >= end_ns:
        raise ConfigError(f"--start {format_ns(start_ns)} is not before --end {format_ns(end_ns)}")
    events, meta = load_recording(data)
    ts = events["local_ts"]
    check_window(start_ns, end_ns, int(ts[0]), int(ts[-1]), cfg.replay.warmup_s, cfg.replay.interval_s, str(data))
    return (events_before(events, end_ns), meta), start_ns
