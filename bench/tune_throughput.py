"""Throughput of `mmbot tune`: trials per hour and events per second per worker, with 1 and
2 worker processes (``--jobs``), on the Binance USD-M BTC/USDT capture of 2024-08-08
(``../shared/data/binance/usdm/btcusdt_20240808.gz``, imported once into a temporary
directory unless ``--data`` gives a recording).

Each run is a fresh study of ``--trials`` trials: base config config/backtest.yaml (the
forecaster off, as in every tuning run), search space config/tune.yaml, 3 walk-forward folds,
20 % held out, random sampler and no pruner (so that every trial does the same work: three
fold backtests over the first 80 % of the recording).

Timed region: each worker's trial loop, from its first claimed trial to its last (claim the
trial in the study's SQLite storage, sample, backtest the folds, report, tell). Process
start, imports, loading the recording and one warm-up backtest happen before it (the
workers wait for each other, ``--min-workers``, so both loops start together); the held-out
evaluation and the report after it. ``trials_per_hour`` = trials / the longest worker loop;
``events_per_s_per_worker`` = recording rows replayed by a worker / its loop time.
``events_per_cpu_s_per_worker`` divides by the worker's CPU time instead, and ``cpu_share``
is CPU time / loop time: on a machine shared with other work, a share well below 1 means
the worker waited for a core, not for the study. ``wall_s`` is the whole command, startup
and outputs included.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAPTURE = ROOT.parent / "shared" / "data" / "binance" / "usdm" / "btcusdt_20240808.gz"


def run(rec: Path, jobs: int, trials: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "bot.cli", "tune", "--data", str(rec), "--space", str(ROOT / "config" / "tune.yaml"),
           "--config", str(ROOT / "config" / "backtest.yaml"), "--trials", str(trials), "--jobs", str(jobs),
           "--min-workers", str(jobs), "--sampler", "random", "--pruner", "none", "--folds", "3", "--holdout", "0.2",
           "--out", str(out), "--no-progress", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    s = json.loads(r.stdout.strip().splitlines()[-1])
    w = s["workers"]
    loop = max(x["wall_s"] for x in w)
    return {"jobs": jobs, "trials": sum(x["trials"] for x in w), "trials_per_worker": [x["trials"] for x in w],
            "loop_s": round(loop, 2), "trials_per_hour": round(sum(x["trials"] for x in w) / loop * 3600),
            "events_per_s_per_worker": [round(x["events"] / x["wall_s"]) for x in w],
            "events_per_cpu_s_per_worker": [round(x["events"] / x["cpu_s"]) for x in w],
            "cpu_share": [round(x["cpu_s"] / x["wall_s"], 3) for x in w],
            "backtest_share": [round(x["backtest_s"] / x["wall_s"], 3) for x in w], "wall_s": s["wall_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="a recording directory (default: import the capture into a temp dir)")
    ap.add_argument("--trials", type=int, default=40)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rec = a.data
        if rec is None:
            if not CAPTURE.exists():
                raise SystemExit(f"capture not found: {CAPTURE}")
            from bot.importers.binance import import_binance

            rec = Path(tmp) / "rec"
            import_binance([CAPTURE], rec)
        res = [run(rec, j, a.trials, Path(tmp) / f"out{j}") for j in (1, 2)]
    speedup = res[1]["trials_per_hour"] / res[0]["trials_per_hour"]
    print(json.dumps({"recording": str(CAPTURE.name), "runs": res, "speedup_2_workers": round(speedup, 2),
                      "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                      "timed_region": "each worker's trial loop (claim, sample, fold backtests, tell); startup, "
                                      "recording load, warm-up, held-out evaluation and report excluded"}))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
