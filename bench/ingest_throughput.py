"""Ingest and replay throughput of the recording pipeline; prints one JSON line.

* ingest: ``import_binance`` of ``../shared/data/binance/usdm/btcusdt_20240808.gz`` (gzip
  read + inflate, parse, diff-sync, parquet write of events and bookTicker, meta), after one
  warm-up run (numba JIT / cache load), median of ``--runs`` runs. messages/s counts every
  input line (depth, trade, bookTicker, snapshot); events/s counts written event rows.
  ``ingest_cpu_s_median``: process CPU seconds (all threads: inflate, parse, sync, parquet
  encode) of one import, and ``ingest_messages_per_cpu_s`` = messages / that: less sensitive
  to other load on the machine than the wall-clock figures (load averages at start and end of
  the timed runs are printed).
* ``--compare``: also time the previous ingest path in the same process, interleaved with the
  current one (old, new, old, new, ...): the ``v1`` streaming pipeline of
  :mod:`bot.importers.binance` (each inflated block split in two and scanned by two threads,
  block after block; bookTicker encoded after the sync) and the previous parquet writer
  (dictionary encoding on every column, :func:`_old_write_parquet_atomic` below). Both write
  the same recording content. Prints ``old_*`` figures and ``speedup_median``. The glibc
  allocator setting the importer makes once per process (``_keep_freed_memory``) then also
  applies to the old runs, so the ratio understates the gain over a fresh old process.
* replay: the numba book replay (:mod:`bot.recording.book_replay`) over the imported
  recording: ``replay_kernel_events_per_s`` is the loop alone on prepared columns,
  ``replay_with_level_map_events_per_s`` includes mapping prices to level indices.

Usage: ``python bench/ingest_throughput.py [--runs 3] [--file PATH] [--compare]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_FILE = ROOT.parent / "shared" / "data" / "binance" / "usdm" / "btcusdt_20240808.gz"


def _old_write_parquet_atomic(path, arr, compression):
    """The recording writer's parquet write before the ingest work (dictionary on every
    column), for ``--compare``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bot.recording.io import _as_columns

    tmp = path.with_name(path.name + ".tmp")
    cols = _as_columns(arr)
    table = pa.table({name: pa.array(np.ascontiguousarray(c)) for name, c in cols.items()})
    pq.write_table(table, tmp, compression=compression, row_group_size=max(table.num_rows, 1),
                   write_statistics=False)
    os.replace(tmp, path)


class _OldPath:
    """Context manager: run the previous ingest path (see the module docstring)."""

    def __enter__(self):
        import bot.importers.binance as b
        import bot.recording.io as io

        self.saved = (b._PIPELINE, io._write_parquet_atomic)
        b._PIPELINE = "v1"
        io._write_parquet_atomic = _old_write_parquet_atomic
        return self

    def __exit__(self, *exc):
        import bot.importers.binance as b
        import bot.recording.io as io

        b._PIPELINE, io._write_parquet_atomic = self.saved


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--file", type=Path, default=DEFAULT_FILE)
    ap.add_argument("--compare", action="store_true", help="interleave runs of the previous ingest path")
    args = ap.parse_args()
    if not args.file.exists():
        print(json.dumps({"skipped": f"{args.file} not found (../shared/data is not part of the repository)"}))
        return 0

    import numpy as np

    from bot.importers.binance import import_binance
    from bot.recording import open_recording
    from bot.recording.book_replay import build_levels, replay_kernel_only

    tmp = Path(tempfile.mkdtemp(prefix="mmbot-bench-"))
    try:
        out = tmp / "rec"
        import_binance([args.file], out)  # warm-up: JIT/cache load, page cache
        times, cpus, stages = [], [], []
        old_times, old_cpus = [], []
        stats = None
        if args.compare:
            with _OldPath():
                import_binance([args.file], out)
        load_start = [round(x, 2) for x in os.getloadavg()]
        for _ in range(args.runs):
            if args.compare:
                with _OldPath():
                    c0 = time.process_time()
                    t0 = time.perf_counter()
                    import_binance([args.file], out)
                    old_times.append(time.perf_counter() - t0)
                    old_cpus.append(time.process_time() - c0)
            c0 = time.process_time()
            t0 = time.perf_counter()
            stats = import_binance([args.file], out)
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            stages.append(stats.timings_s)
        load_end = [round(x, 2) for x in os.getloadavg()]
        t_ing = statistics.median(times)
        cpu_ing = statistics.median(cpus)

        rec = open_recording(out)
        t0 = time.perf_counter()
        ev = rec.events()
        t_read = time.perf_counter() - t0
        kind = np.ascontiguousarray(ev["kind"])
        side = np.ascontiguousarray(ev["side"])
        qty = np.ascontiguousarray(ev["qty"])
        lv = build_levels(ev, rec.tick_size)
        replay_kernel_only(kind, side, lv.level, qty, lv.prices)  # JIT/cache load
        rk, rl = [], []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            replay_kernel_only(kind, side, lv.level, qty, lv.prices)
            rk.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            lv2 = build_levels(ev, rec.tick_size)
            replay_kernel_only(kind, side, lv2.level, qty, lv2.prices)
            rl.append(time.perf_counter() - t0)
        n_ev = int(ev.shape[0])
        res = {
            "bench": "ingest_throughput",
            "file": str(args.file),
            "runs": args.runs,
            "messages": stats.messages,
            "events": stats.events,
            "ingest_s_median": round(t_ing, 4),
            "ingest_s_all": [round(t, 4) for t in times],
            "ingest_messages_per_s": round(stats.messages / t_ing),
            "ingest_events_per_s": round(stats.events / t_ing),
            "ingest_stage_s_median": {k: round(statistics.median(s[k] for s in stages), 4) for k in stages[0]},
            "ingest_cpu_s_median": round(cpu_ing, 4),
            "ingest_messages_per_cpu_s": round(stats.messages / cpu_ing),
            "load_avg_start": load_start, "load_avg_end": load_end,
            "read_recording_events_per_s": round(n_ev / t_read),
            "replay_kernel_events_per_s": round(n_ev / statistics.median(rk)),
            "replay_with_level_map_events_per_s": round(n_ev / statistics.median(rl)),
            "cpus": os.cpu_count(),
        }
        if args.compare:
            t_old = statistics.median(old_times)
            res.update({
                "old_ingest_s_median": round(t_old, 4),
                "old_ingest_s_all": [round(t, 4) for t in old_times],
                "old_ingest_messages_per_s": round(stats.messages / t_old),
                "old_ingest_cpu_s_median": round(statistics.median(old_cpus), 4),
                "speedup_median": round(t_old / t_ing, 3),
            })
        print(json.dumps(res))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
