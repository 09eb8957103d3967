"""Peak memory of a backtest as the recording grows: 1x, 2x, 4x, 8x a real capture laid end to end.

The recordings are built in a temporary directory from the imported capture (bench/out/, as
in bench/backtest_throughput.py): copy k of the file follows copy k-1 with every timestamp
(``local_ts``, ``exch_ts``) shifted by k * (span + 1 s), written in chunks of ``--chunk-rows``
rows (default 1,000,000, the format's default). The streamed replay holds one batch of
250,000 rows, but pyarrow decompresses a chunk's whole row group (one per chunk) to read it:
the 1x file (466,577 rows) is one chunk smaller than the 2x file's first chunk, so the streamed
peak grows from 1x to 2x and is flat from there; ``--chunk-rows 250000`` holds the chunk size
fixed across sizes. Measured 2026-12-05 (2 cores, load 5.3-5.7): default chunks, streamed
409/473/469/478 MiB at 1x/2x/4x/8x (8x/1x 1.17), in memory 384/485/605/821 MiB (2.14);
250,000-row chunks, streamed 379/386/368/372 MiB (0.98), in memory 388/432/543/754 MiB (1.95). Each backtest runs in a fresh process
(``python bench/replay_memory.py --child ...``: ``run_backtest`` with config/backtest.yaml and
the forecasts precomputed as ``mmbot backtest`` runs it, so on the compiled loop (``loop`` in the
output), no HTML report) and reports its own peak resident set size (``ru_maxrss``, MiB): interpreter,
imports (numba, pyarrow, SQLAlchemy; torch only when the forecaster's packed weights are not
cached yet), the recording's data and the run. Two paths:

* ``streamed``: the default of ``mmbot backtest`` (recording read chunk by chunk);
* ``in_memory``: the whole recording loaded first (``load_recording``), as before streaming.

Each path runs twice per size, in a fresh forecast cache (``MMBOT_CACHE_DIR`` in the temporary
directory): the first process computes the forecasts (imports torch, runs the batch forward;
its peak is ``forecast_miss_peak_rss_mib``), the second, measured, reads them from the cache.
The figures above were measured before this (the child then stepped the forecaster in the
engine loop); the compiled loop's: measured 2026-12-05 (``--chunk-rows 250000``, load 1.3 ->
2.8 while a test suite ran), streamed 350/355/358/367 MiB at 1x/2x/4x/8x (8x/1x 1.05), in
memory 395/453/551/768 MiB (1.94); the forecast-miss runs (torch imported) 545/557/559/545 MiB
streamed.

Prints one JSON line: per size, rows, peak RSS MiB and wall seconds of each path, the ratio of
the 8x to the 1x peak, and the load average (1, 5, 15 min) at start and end.

Usage: python bench/replay_memory.py [--data RAW_CAPTURE.gz] [--sizes 1,2,4,8] [--paths streamed,in_memory]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT = ROOT.parent / "shared" / "data" / "binance" / "usdm" / "btcusdt_20240808.gz"


def _child(rec: str, db: str, path: str) -> None:
    from bot.config import load_config
    from bot.persistence.store import open_store
    from paper_trading.backtest import PRECOMPUTED, load_recording, run_backtest

    cfg = load_config(ROOT / "config" / "backtest.yaml")
    store = open_store(db)
    t = time.perf_counter()
    # as `mmbot backtest` runs it: forecasts precomputed (cached on disk), the compiled loop
    s = run_backtest(rec, cfg, store, events_meta=load_recording(rec) if path == "in_memory" else None,
                     forecaster=PRECOMPUTED)
    wall = time.perf_counter() - t
    store.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
    print(json.dumps({"peak_rss_mib": round(peak, 1), "run_backtest_s": round(wall, 3), "events": s["events_replayed"],
                      "fills": s["fills"], "loop": s.get("loop")}))


def _build(src: Path, out: Path, copies: int, chunk_rows: int) -> int:
    import numpy as np

    from bot.recording.io import RecordingWriter, open_recording

    rec = open_recording(src)
    ev = rec.events()
    span = int(ev["local_ts"][-1]) - int(ev["local_ts"][0]) + 1_000_000_000
    meta = {k: rec.meta[k] for k in ("exchange", "symbol", "market", "tick_size", "lot_size", "qty_unit") if k in rec.meta}
    with RecordingWriter(out, meta, chunk_rows=chunk_rows) as w:
        for k in range(copies):
            part = ev.copy()
            part["local_ts"] += k * span
            has = part["exch_ts"] > 0
            part["exch_ts"][has] += np.int64(k * span)
            w.append(part)
    return copies * len(ev)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _child(*sys.argv[2:])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT)
    ap.add_argument("--sizes", default="1,2,4,8")
    ap.add_argument("--paths", default="streamed,in_memory")
    ap.add_argument("--chunk-rows", type=int, default=1_000_000, help="rows per chunk of the built recordings (format default 1,000,000)")
    args = ap.parse_args()
    if not args.data.exists():
        sys.exit(f"capture {args.data} not found (the benchmark needs ../shared/data)")
    load_start = [round(x, 2) for x in os.getloadavg()]
    from bot.importers.binance import import_binance

    src = ROOT / "bench" / "out" / (args.data.name.replace(".gz", "").replace(".dat", "") + "_" + args.data.parent.name)
    if not (src / "meta.json").exists():
        import_binance([args.data], src)
    sizes = [int(x) for x in args.sizes.split(",")]
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    result: dict = {"bench": "replay_memory", "data": str(args.data.name), "chunk_rows": args.chunk_rows, "sizes": {}}
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   MMBOT_CACHE_DIR=str(Path(d) / "cache"))
        for x in sizes:
            rec = Path(d) / f"x{x}"
            rows = _build(src, rec, x, args.chunk_rows)
            row = {"rows": rows}
            for p in paths:
                runs = []
                for k in range(2):  # the first computes the forecasts (torch, batch forward) into the cache
                    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(rec),
                                        str(Path(d) / f"{p}{x}_{k}.db"), p], cwd=ROOT, env=env, capture_output=True, text=True)
                    if r.returncode != 0:
                        sys.exit(f"{p} x{x} failed: {r.stderr.strip()[-500:]}")
                    runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
                row[p] = runs[1]
                row[p]["forecast_miss_peak_rss_mib"] = runs[0]["peak_rss_mib"]
            result["sizes"][f"{x}x"] = row
            import shutil

            shutil.rmtree(rec)
    lo, hi = f"{min(sizes)}x", f"{max(sizes)}x"
    for p in paths:
        result[f"{p}_peak_ratio_{hi}_over_{lo}"] = round(result["sizes"][hi][p]["peak_rss_mib"] / result["sizes"][lo][p]["peak_rss_mib"], 3)
    result["load_avg_start"], result["load_avg_end"] = load_start, [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
