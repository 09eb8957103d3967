"""Throughput of `mmbot tune`: trials per hour and events per second per worker, with 1 and
2 worker processes (``--jobs``), on the Binance USD-M BTC/USDT capture of 2024-08-08
(``../shared/data/binance/usdm/btcusdt_20240808.gz``, imported once into a temporary
directory unless ``--data`` gives a recording).

Each run is a fresh study of ``--trials`` trials: base config config/backtest.yaml, search
space config/tune.yaml, 3 walk-forward folds, 20 % held out, random sampler and no pruner
(so that every trial does the same work: three fold backtests over the first 80 % of the
recording). The 1- and 2-worker runs are interleaved (1, 2, 1, 2, ... ``--repeats`` pairs),
so that a change of the machine's load hits both alike; each pair gives a ratio.

Timed region: the workers' trial loops, from the first worker's first claim to the last
worker's end (claim the trial in the study's journal file, sample, backtest the folds,
report, tell). Process start, imports, loading the recording, the forecasts and one
warm-up backtest happen before it (the workers wait for each other, ``--min-workers``); the
held-out evaluation and the report after it.

Printed per run: ``trials_per_hour`` = trials / timed region; per worker
``events_per_s`` (recording rows replayed / its loop's wall time), ``events_per_cpu_s``
(/ its CPU time), ``cpu_share`` (CPU time / wall time: well below 1 means the worker
waited for a core, i.e. the machine is shared, not that it waited for the study) and
``overhead_ms_per_trial`` (loop wall time outside the fold backtests, per trial: claiming,
sampling, storage writes; the backtests include building the venue for a fold);
``load_avg`` = the 1-minute load average sampled every second during the run (mean and max),
and ``cpus``. Then ``ratio_2_to_1`` per pair and their median. On a machine shared with
other work the ratio measures the machine as much as mmbot: read it with the load and the
CPU shares (two workers on 2 cores can only reach 2x when the load besides them is near 0).
``cores_used`` = the workers' CPU seconds / the timed region, and ``trials_per_cpu_hour``.
``sched_autogroup``: Linux's autogroup scheduling is on (``/proc/sys/kernel/sched_autogroup_enabled``):
the CPU is then shared fairly between sessions (terminals, agents), not processes, and
every worker of one ``mmbot tune`` runs in the session that started it; on a busy machine
two workers then share the one session's share (``cores_used`` does not grow with the
workers), and the ratio says more about the other sessions than about mmbot.
``cpu_efficiency_2_to_1``: per pair, a 2-worker run's events per CPU-second per worker over
the 1-worker run's: what a second worker costs each worker per CPU-second it gets (storage
contention, memory bandwidth), whatever CPU the machine leaves them; 1.0 = nothing.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAPTURE = ROOT.parent / "shared" / "data" / "binance" / "usdm" / "btcusdt_20240808.gz"


class LoadSampler:
    """The 1-minute load average, sampled every second while the ``with`` block runs."""

    def __enter__(self):
        self.samples: list[float] = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.samples.append(os.getloadavg()[0])

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict:
        return {"mean": round(statistics.fmean(self.samples), 2), "max": round(max(self.samples), 2)}


def run(rec: Path, jobs: int, trials: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "bot.cli", "tune", "--data", str(rec), "--space", str(ROOT / "config" / "tune.yaml"),
           "--config", str(ROOT / "config" / "backtest.yaml"), "--trials", str(trials), "--jobs", str(jobs),
           "--min-workers", str(jobs), "--sampler", "random", "--pruner", "none", "--folds", "3", "--holdout", "0.2",
           "--out", str(out), "--no-progress", "--json"]
    with LoadSampler() as load:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    s = json.loads(r.stdout.strip().splitlines()[-1])
    w = s["workers"]
    span = max(x["loop_end"] for x in w) - min(x["loop_start"] for x in w)
    n = sum(x["trials"] for x in w)
    return {"jobs": jobs, "trials": n, "trials_per_worker": [x["trials"] for x in w], "timed_s": round(span, 2),
            "trials_per_hour": round(n / span * 3600),
            "events_per_s_per_worker": [round(x["events"] / x["wall_s"]) for x in w],
            "events_per_cpu_s_per_worker": [round(x["events"] / x["cpu_s"]) for x in w],
            "cpu_share": [round(x["cpu_s"] / x["wall_s"], 3) for x in w],
            "overhead_ms_per_trial": [round(1000 * (x["wall_s"] - x["backtest_s"]) / max(x["trials"], 1), 1) for x in w],
            "cores_used": round(sum(x["cpu_s"] for x in w) / span, 2),
            "trials_per_cpu_hour": round(n / sum(x["cpu_s"] for x in w) * 3600),
            "load_avg": load.summary(), "wall_s": s["wall_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="a recording directory (default: import the capture into a temp dir)")
    ap.add_argument("--trials", type=int, default=60, help="trials per run")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved pairs of runs (1 worker, then 2)")
    a = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        rec = a.data
        if rec is None:
            if not CAPTURE.exists():
                raise SystemExit(f"capture not found: {CAPTURE}")
            from bot.importers.binance import import_binance

            rec = Path(tmp) / "rec"
            import_binance([CAPTURE], rec)
        for k in range(a.repeats):
            for j in (1, 2):
                runs.append(run(rec, j, a.trials, Path(tmp) / f"out{k}_{j}"))
                print(json.dumps(runs[-1]), file=sys.stderr)  # progress, one line per run
    ratios = [round(b["trials_per_hour"] / a_["trials_per_hour"], 2) for a_, b in zip(runs[0::2], runs[1::2])]
    # what two workers lose against one per CPU-second they get (storage contention, memory
    # bandwidth), independent of how much CPU the machine's other work leaves them
    eff = [round(statistics.fmean(b["events_per_cpu_s_per_worker"]) / a_["events_per_cpu_s_per_worker"][0], 3)
           for a_, b in zip(runs[0::2], runs[1::2])]
    try:
        autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        autogroup = None
    print(json.dumps({"recording": CAPTURE.name, "cpus": os.cpu_count(), "sched_autogroup": autogroup, "runs": runs,
                      "ratio_2_to_1": ratios,
                      "ratio_2_to_1_median": statistics.median(ratios), "cpu_efficiency_2_to_1": eff,
                      "timed_region": "the workers' trial loops, first claim to last end (claim, sample, fold backtests, "
                                      "tell); startup, recording load, forecasts, warm-up, held-out evaluation and report "
                                      "excluded"}))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
