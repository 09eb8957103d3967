"""On-disk cache of a replay's precomputed forecasts (:class:`models.batch_forecast.ForecastTable`).

Key: SHA-256 of a JSON document holding

* the content hash of the data replayed (a recording directory: its ``meta.json`` and chunk
  files; events in memory: their bytes and the meta),
* the SHA-256 of the model file,
* the decision grid (``replay.interval_s``, ``replay.warmup_s``, the start time ns or None),
* the forecaster config (``cfg.forecaster``, all fields),
* the code version: the hash of the source files that turn a recording into forecasts
  (:data:`CODE_FILES`) and :data:`VERSION` (the file format).

Location: ``$MMBOT_CACHE_DIR/forecasts/<key>.npz`` (default ``~/.cache/mmbot/forecasts/``).
Writes are atomic (a temporary file renamed into place). A missing entry is computed; an
unreadable one is recomputed with a warning and rewritten; an entry that cannot be written
is only a warning. Reading an entry needs numpy only (no torch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from models.batch_forecast import ForecastTable

log = logging.getLogger(__name__)

VERSION = 2  # bump when the entry's layout changes
_ROOT = Path(__file__).resolve().parents[1]
# the code between a recording and its forecasts: a change to any of these invalidates the cache
CODE_FILES = ("models/features.py", "models/baseline_inputs.py", "models/forecaster.py", "models/forecast.py",
              "models/batch_forecast.py", "models/forecast_cache.py", "paper_trading/replay.py", "paper_trading/venue.py",
              "paper_trading/stream_venue.py", "paper_trading/backtest.py", "bot/market_data/trade_side.py")
_FIELDS = ("ts_ns", "drift", "has_drift", "sigma", "has_sigma", "horizon_s", "source", "inputs_ns")
_EVENTS = ("sw_row", "sw_ts", "sw_head", "sw_fallback", "sw_ratio", "log_row", "log_level")


def cache_dir() -> Path:
    base = os.environ.get("MMBOT_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "mmbot") / "forecasts"


_memo: dict = {}


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (memoized per process by path, size and mtime)."""
    st = path.stat()
    k = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if k not in _memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while b := f.read(1 << 20):
                h.update(b)
        _memo[k] = h.hexdigest()
    return _memo[k]


def recording_digest(path: str | Path) -> str:
    """Content hash of a recording directory: its meta.json and the chunk files it lists."""
    p = Path(path)
    meta_file = p / "meta.json"
    h = hashlib.sha256(meta_file.read_bytes())
    for c in json.loads(meta_file.read_text()).get("chunks", []):
        h.update(f"{c['file']}:{file_digest(p / c['file'])}".encode())
    return h.hexdigest()


def events_digest(events: np.ndarray, meta: dict, rows: int = 1 << 20) -> str:
    """Content hash of events in memory (each field's values, ``rows`` rows at a time: the
    padding bytes of an aligned structured array are undefined) and their recording's meta."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode())
    h.update(f"{events.dtype.descr}:{len(events)}".encode())
    names = events.dtype.names or ()
    for i in range(0, len(events), rows):
        part = events[i : i + rows]
        for name in names:
            h.update(np.ascontiguousarray(part[name]).view(np.uint8))
    return h.hexdigest()


def code_version() -> str:
    h = hashlib.sha256(str(VERSION).encode())
    for f in CODE_FILES:
        p = _ROOT / f
        h.update(f.encode())
        h.update(p.read_bytes() if p.exists() else b"-")
    return h.hexdigest()


def cache_key(data_digest: str, model_path: Path, cfg, start_ns: int | None) -> str:
    """The entry name for forecasts of ``data_digest``'s replay with the config ``cfg``."""
    r = cfg.replay
    doc = {"data": data_digest, "model": file_digest(model_path),
           "grid": {"interval_s": r.interval_s, "warmup_s": r.warmup_s, "start_ns": start_ns},
           "forecaster": cfg.forecaster.model_dump(mode="json"), "code": code_version()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def load(key: str) -> ForecastTable | None:
    """The cached table of ``key``; None when absent or unreadable (the latter with a warning)."""
    entry = cache_dir() / f"{key}.npz"
    if not entry.exists():
        return None
    try:
        with np.load(entry, allow_pickle=False) as z:
            arrays = {k: np.array(z[k]) for k in _FIELDS}
            events = {k: np.array(z[k]) for k in _EVENTS}
            sources = json.loads(str(z["sources"]))
            status = json.loads(str(z["status"]))
            log_msg = json.loads(str(z["log_msg"]))
        n = len(arrays["ts_ns"])
        if any(len(a) != n for a in arrays.values()) or not isinstance(sources, list) or not isinstance(status, dict):
            raise ValueError("inconsistent arrays")
        if n and int(arrays["source"].max()) >= len(sources):
            raise ValueError("source index out of range")
        if len({len(events[k]) for k in _EVENTS[:5]}) != 1 or not len(events["log_row"]) == len(events["log_level"]) == len(log_msg):
            raise ValueError("inconsistent guard switches or log lines")
    except Exception as e:  # noqa: BLE001 - any unreadable entry is recomputed, never a crash
        log.warning("forecast cache entry %s is unreadable (%s): recomputing it", entry, str(e)[:200] or type(e).__name__)
        return None
    return ForecastTable(sources=sources, status=status, log_msg=log_msg, **arrays, **events)


def store(key: str, table: ForecastTable) -> Path | None:
    """Write ``table`` as the entry of ``key`` (atomic); its path, or None (with a warning) if it could not be written."""
    entry = cache_dir() / f"{key}.npz"
    tmp = entry.with_name(f"{entry.name}.{os.getpid()}.tmp.npz")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **{k: getattr(table, k) for k in _FIELDS + _EVENTS}, sources=np.array(json.dumps(table.sources)),
                     log_msg=np.array(json.dumps(table.log_msg)),
                     status=np.array(json.dumps(table.status, default=str)))
        os.replace(tmp, entry)
        return entry
    except OSError as e:
        log.warning("forecast cache entry %s not written: %s", entry, e)
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        return None


def cached(key: str, compute: Callable[[], ForecastTable], use_cache: bool = True) -> tuple[ForecastTable, bool]:
    """(table, whether it came from the cache): the entry of ``key``, else ``compute()`` stored under it."""
    if use_cache:
        t = load(key)
        if t is not None:
            return t, True
    t = compute()
    if use_cache:
        store(key, t)
    return t, False
