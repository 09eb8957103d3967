"""Backtest throughput on a real Binance capture, data already imported.

An event = one price-level update or one trade (one row of the recording). Figures:
* replay_only: the venue kernel applying every row to the array book (no orders), in one
  call and in 100 ms decision steps;
* full_strategy: ``mmbot backtest`` on the default config (config/backtest.yaml: GLFT with
  online A/k calibration, the LSTM forecaster, queue model, latency, fees, the engine, order
  manager and SQLite record), events divided
  by the wall time of ``run_backtest`` (loading the recording included, report not);
  ``cold`` is the first run in a fresh process (numba cache load, imports), the median
  is over the following runs; ``glft_no_forecaster_no_calibration`` is the same without the
  forecaster and the A/k estimator.

Usage: python bench/backtest_throughput.py [--data RAW_CAPTURE.gz] [--runs 5]
Prints one JSON line. The raw capture is imported once into bench/out/ (not committed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT = ROOT.parent / "shared" / "data" / "binance" / "usdm" / "btcusdt_20240808.gz"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if not args.data.exists():
        sys.exit(f"capture {args.data} not found (the benchmark needs ../shared/data)")
    from bot.importers.binance import import_binance

    rec = ROOT / "bench" / "out" / (args.data.name.replace(".gz", "").replace(".dat", "") + "_" + args.data.parent.name)
    if not (rec / "meta.json").exists():
        t = time.perf_counter()
        import_binance([args.data], rec)
        print(f"imported {args.data} in {time.perf_counter() - t:.2f} s", file=sys.stderr)

    import numpy as np

    from bot.config import load_config
    from bot.persistence.store import open_store
    from paper_trading.backtest import load_recording, run_backtest
    from paper_trading.venue import Venue, VenueParams

    events, meta = load_recording(rec)
    n = len(events)
    tick, lot = float(meta["tick_size"]), float(meta.get("lot_size") or 1e-8)
    one, stepped = [], []
    t_end = int(events["local_ts"][-1])
    grid = np.arange(int(events["local_ts"][0]), t_end + 100_000_000, 100_000_000)
    for r in range(args.runs + 1):
        v = Venue(events, tick, lot, VenueParams())
        t = time.perf_counter()
        v.advance_to(t_end)
        one.append(time.perf_counter() - t)
        v = Venue(events, tick, lot, VenueParams())
        t = time.perf_counter()
        for x in grid.tolist():
            v.advance_to(x)
        stepped.append(time.perf_counter() - t)
    one, stepped = one[1:], stepped[1:]  # the first includes numba's cache load

    from bot.config import with_overrides

    med = statistics.median
    cfg = load_config(ROOT / "config" / "backtest.yaml")

    def timed(c):
        times = []
        with tempfile.TemporaryDirectory() as d:
            for r in range(args.runs + 1):
                store = open_store(str(Path(d) / f"bt{r}.db"))
                t = time.perf_counter()
                s = run_backtest(rec, c, store)
                times.append(time.perf_counter() - t)
                store.close()
        return times, s

    full, s = timed(cfg)
    decisions, fills = s["events"], s["fills"]
    cold, warm = full[0], full[1:]
    plain, _ = timed(with_overrides(cfg, **{"forecaster.model": "none", "strategy.pricing.calibrate_intensity": False}))
    print(json.dumps({
        "bench": "backtest_throughput", "data": str(args.data.relative_to(ROOT.parent)) if args.data.is_relative_to(ROOT.parent) else str(args.data),
        "events": n, "runs": args.runs,
        "replay_only_events_per_s": round(n / med(one)),
        "replay_only_100ms_steps_events_per_s": round(n / med(stepped)),
        "full_strategy_events_per_s": round(n / med(warm)),
        "full_strategy_cold_events_per_s": round(n / cold),
        "full_strategy_median_s": round(med(warm), 4),
        "glft_no_forecaster_no_calibration_events_per_s": round(n / med(plain[1:])),
        "decisions": decisions, "fills": fills,
    }))


if __name__ == "__main__":
    main()
