"""Backtest throughput on a real Binance capture; prints one JSON line.

An event = one row of the mmbot recording (one price-level update, snapshot level, CLEAR or
trade). All figures are medians over ``--runs`` repetitions after one discarded warm-up run,
except the ``cold_*`` ones. Every figure names its timed region:

* ``replay_only_*``: the venue kernel applying every row to the array book, no orders, no
  strategy. Timed: ``Venue.advance_to`` calls only (the ``Venue`` is built before the timer:
  price axis, contiguous columns), in one call (``_one_call``) or one call per 100 ms of
  recorded time (``_100ms_steps``).
* ``full_strategy_*``: ``run_backtest`` on the default config (config/backtest.yaml: GLFT with
  online A/k calibration, the LSTM forecaster, queue model, latency, fees, engine, order manager,
  SQLite record) in this process, recording already in memory, no HTML report.
  ``run_backtest`` reports its phases (``summary["timings_s"]``); the bench quotes
  - ``full_strategy_loop_*``: the loop phase only (``engine.run``: venue, strategy, forecaster,
    order manager, database writes and commits);
  - ``full_strategy_build_loop_*``: build (forecaster from its file, venue, engine) + loop;
  - ``full_strategy_metrics_s``: ``compute_metrics`` after the run (NOT in the two above).
  ``glft_plain_*`` is the same without forecaster and without A/k calibration.
  ``full_strategy_streamed_*``: the same as ``full_strategy_*`` with the recording streamed
  from disk chunk by chunk (the default of ``mmbot backtest``): build includes the first pass
  over the chunks' price columns, loop includes reading the chunks.
  ``full_strategy_precomputed_*``: the same as ``full_strategy_*`` (recording in memory) with
  the forecasts precomputed by the TorchScript batch forward (``models.batch_forecast``, computed
  once before the repetitions, NOT timed) and handed to the engine as a table.
  All ``full_strategy_*`` and ``glft_plain_*`` modes run the engine path (``loop="engine"``).
* ``compiled_*``: the same default strategy and forecasts as ``full_strategy_precomputed_*``
  (precomputed table, NOT timed) on the compiled loop (``run_backtest(..., loop="compiled")``,
  paper_trading/compiled_backtest.py). ``compiled_loop_*`` times its loop phase only
  (``run_compiled``: the source's start and the strategy's warm-up on the recorded mids, the
  kernel calls -- venue, strategy kernels, order diff, fills, inventory in arrays -- turning
  the logs into rows and their SQLite inserts and commits, the shutdown's cancel-all, final
  snapshot and the run's end); ``compiled_build_loop_*`` adds build (venue and its price axis,
  engine objects). ``compiled_streamed_*``: the same with the recording streamed from disk
  (what ``mmbot backtest`` runs): build includes the first pass over the chunks, loop the
  chunk reads. Not in any of them: ``compute_metrics`` (``compiled_metrics_s``).
* ``cold_cli_*``: ``python -m bot.cli backtest --data REC --json --no-progress`` in a fresh
  process each time, wall time from spawn to exit (interpreter start, imports, numba cache load,
  forecast cache read, recording load (streamed), build, loop, metrics; no HTML report: the CLI
  writes it only with --html), and the phases that process reported. The forecast cache
  (``MMBOT_CACHE_DIR``) is a fresh temporary directory: one priming run computes the forecasts
  (``cold_cli_forecast_miss_wall_s``: includes importing torch, loading the model and the
  batch forward over the recording), then ``cold_cli_wall_s`` is the median of ``--cold-runs``
  runs with the forecasts cached (torch not imported); ``cold_cli_no_forecast_cache_wall_s``:
  the same with ``--no-forecast-cache`` (the forecaster stepped in the engine, numba backend on
  cached weights). Numba's on-disk cache is the installation's (warm) for these.
  ``cold_cli_cpu_s``: user + system CPU seconds of the cached-forecast process (less sensitive
  than wall time to other load on the machine).
* ``numba_first_run_wall_s`` / ``numba_second_run_wall_s``: the same cold CLI backtest
  (forecasts cached) with ``NUMBA_CACHE_DIR`` pointing at a fresh empty directory: the first
  process compiles every kernel the backtest calls (what a fresh install pays once), the second
  loads them from that directory.

``--vs-hftbacktest [PYTHON]`` adds a side-by-side with hftbacktest 2.4.4 (optional, never a
dependency of mmbot). hftbacktest pins numpy < 2.3 and numba 0.61, so it usually lives in its
own environment: PYTHON is that interpreter (default: this one). When ``import hftbacktest``
fails there the JSON says so (``"hftbacktest": "not available: ..."``) and nothing else changes.
Otherwise the raw capture is converted with hftbacktest's own converter (bench/hbt_glft.py,
cached in bench/out/), a worker process runs its GLFT grid example (power-probabilistic queue
model, 5 ms constant order latency; see bench/hbt_glft.py for its timed region: backtest object
build + loop + close, data in memory), and the repetitions are interleaved with mmbot's
full-strategy runs (mmbot, hftbacktest, mmbot, hftbacktest, ...). Ratios are speed ratios
(> 1: mmbot faster): ``hbt median s / mmbot median s`` for the same recorded period, for
mmbot's build+loop region (comparable to hftbacktest's) and its loop-only region.

The machine's load average (1, 5, 15 min) at start and end is in the output.

Measured 2026-12-05 on the 6-minute USD-M file (2 cores, load 3.9-5.9, ``--runs 5 --cold-runs 3
--vs-hftbacktest /tmp/hbt_venv/bin/python``): replay only 219 M events/s (one call), 20.3 M
(100 ms steps); full strategy loop 0.287 s (1.63 M events/s), build + loop 0.320 s, streamed
build + loop 0.504 s, metrics 0.022 s; GLFT plain loop 0.140 s (3.3 M events/s); cold CLI
3.62 s wall (no HTML report); hftbacktest GLFT port 0.341 s median (1.44 M rows/s; 0.23 s when
run alone), ratios 1.07 (build + loop) and 1.19 (loop only). The issue's 5.7 M events/s for
hftbacktest was not reproduced with this port.

Measured 2026-12-05 06:45 UTC, same file, ``--runs 3 --cold-runs 5``, machine heavily loaded
(load 6.5 -> 9.2 on 2 cores, 8 sessions): cold CLI with forecasts cached 13.0 s wall but
2.34 s CPU (user + system; torch and pandas not imported), ``--no-forecast-cache`` 14.8 s
wall, forecast miss (torch import + batch forward) 38.4 s wall; fresh numba cache: first run
55.2 s wall, second 11.8 s. Earlier the same day at load ~5 with a free core: 2.2 s wall
cached. Wall times here mostly measure the other load; compare the CPU figure.
Re-measured 07:10 UTC at load 0.75 -> 2.35: cold CLI cached 2.95 s wall (median of 5), 1.93 s
CPU; ``--no-forecast-cache`` 3.14 s; forecast miss 7.37 s; fresh numba cache 11.2 s first run,
1.87 s second; warm loop 0.192 s (2.43 M events/s), with precomputed forecasts 0.176 s (2.66 M).

Measured 2026-12-05 ~09:40 UTC (load 1.75 -> 1.87), ``--runs 5 --cold-runs 2 --vs-hftbacktest
/tmp/hbt_venv/bin/python``: compiled loop 0.0386 s (12.1 M events/s), build + loop 0.0634 s,
streamed build + loop 0.107 s; engine on the same precomputed forecasts 0.108 s loop, 0.128 s
build + loop; hftbacktest GLFT port 0.1645 s; ratios 2.60 (compiled build + loop), 4.26
(compiled loop only), 1.53 (compiled streamed build + loop); cold CLI (compiled, forecasts
cached) 1.49 s wall; fresh numba cache first run 12.2 s.

Usage: python bench/backtest_throughput.py [--data RAW_CAPTURE.gz] [--runs 5] [--cold-runs 3]
       [--no-cold] [--vs-hftbacktest [PYTHON]]
The raw capture is imported once into bench/out/ (not committed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT = ROOT.parent / "shared" / "data" / "binance" / "usdm" / "btcusdt_20240808.gz"
med = statistics.median


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _hbt_worker(python: str, raw: Path) -> tuple[subprocess.Popen | None, str]:
    """(worker, note): a bench/hbt_glft.py serve process, or None and why not."""
    probe = subprocess.run([python, "-c", "import hftbacktest; print(hftbacktest.__version__)"], capture_output=True, text=True)
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
        return None, f"not available: `import hftbacktest` failed in {python} ({why}); pip install hftbacktest==2.4.4 in a separate venv and pass its python"
    npz = ROOT / "bench" / "out" / f"hbt_{raw.name.replace('.gz', '')}.npz"
    if not npz.exists():
        npz.parent.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([python, str(ROOT / "bench" / "hbt_glft.py"), "convert", str(raw), str(npz)], capture_output=True, text=True)
        if r.returncode != 0:
            return None, f"hftbacktest conversion failed: {r.stderr.strip().splitlines()[-1:]}"
    w = subprocess.Popen([python, "-W", "ignore", str(ROOT / "bench" / "hbt_glft.py"), "serve", str(npz)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    return w, f"hftbacktest {probe.stdout.strip()} in {python}"


def _hbt_run(w: subprocess.Popen) -> dict:
    w.stdin.write("run\n")
    w.stdin.flush()
    line = w.stdout.readline()
    if not line:
        raise RuntimeError("hftbacktest worker exited")
    return json.loads(line)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cold-runs", type=int, default=3)
    ap.add_argument("--no-cold", action="store_true", help="skip the fresh-process (cold) measurements")
    ap.add_argument("--vs-hftbacktest", nargs="?", const=sys.executable, default=None, metavar="PYTHON")
    args = ap.parse_args()
    if not args.data.exists():
        sys.exit(f"capture {args.data} not found (the benchmark needs ../shared/data)")
    load_start = _load()
    from bot.importers.binance import import_binance

    rec = ROOT / "bench" / "out" / (args.data.name.replace(".gz", "").replace(".dat", "") + "_" + args.data.parent.name)
    if not (rec / "meta.json").exists():
        t = time.perf_counter()
        import_binance([args.data], rec)
        print(f"imported {args.data} in {time.perf_counter() - t:.2f} s", file=sys.stderr)

    import numpy as np

    from bot.config import load_config, with_overrides
    from bot.persistence.store import open_store
    from paper_trading.backtest import load_recording, run_backtest
    from paper_trading.venue import Venue, VenueParams

    events, meta = load_recording(rec)
    n = len(events)
    tick, lot = float(meta["tick_size"]), float(meta.get("lot_size") or 1e-8)
    one, stepped, build = [], [], []
    t_end = int(events["local_ts"][-1])
    grid = np.arange(int(events["local_ts"][0]), t_end + 100_000_000, 100_000_000).tolist()
    for r in range(args.runs + 1):
        t = time.perf_counter()
        v = Venue(events, tick, lot, VenueParams())
        build.append(time.perf_counter() - t)
        t = time.perf_counter()
        v.advance_to(t_end)
        one.append(time.perf_counter() - t)
        v = Venue(events, tick, lot, VenueParams())
        t = time.perf_counter()
        for x in grid:
            v.advance_to(x)
        stepped.append(time.perf_counter() - t)
    one, stepped, build = one[1:], stepped[1:], build[1:]  # the first includes numba's cache load

    cfg = load_config(ROOT / "config" / "backtest.yaml")
    plain_cfg = with_overrides(cfg, **{"forecaster.model": "none", "strategy.pricing.calibrate_intensity": False})
    hbt, hbt_note = (None, "not requested (--vs-hftbacktest [PYTHON])")
    if args.vs_hftbacktest:
        hbt, hbt_note = _hbt_worker(args.vs_hftbacktest, args.data)
    from paper_trading.backtest import precomputed_forecaster

    table = precomputed_forecaster(None, cfg, events_meta=(events, meta), use_cache=False).table
    full, plain, streamed, pre, comp, comp_st, hbt_runs = [], [], [], [], [], [], []
    summary = comp_summary = summary_pre = None
    with tempfile.TemporaryDirectory() as d:
        # interleaved: mmbot full, plain, full streamed, precomputed, compiled, compiled streamed, hftbacktest
        for r in range(args.runs + 1):
            for c, out, em, loop in ((cfg, full, (events, meta), "engine"), (plain_cfg, plain, (events, meta), "engine"),
                                     (cfg, streamed, None, "engine"), (cfg, pre, (events, meta), "engine"),
                                     (cfg, comp, (events, meta), "compiled"), (cfg, comp_st, None, "compiled")):
                store = open_store(str(Path(d) / f"bt{r}_{id(out)}.db"))
                kw = {"forecaster": table.forecaster()} if out is pre or out is comp or out is comp_st else {}
                s = run_backtest(rec, c, store, events_meta=em, loop=loop, **kw)
                store.close()
                out.append(s["timings_s"])
                if out is full:
                    summary = s
                if out is comp:
                    comp_summary = s
                if out is pre:
                    summary_pre = s
            if hbt is not None:
                hbt_runs.append(_hbt_run(hbt))
        # cold: fresh processes of the CLI, with a fresh forecast cache
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   MMBOT_CACHE_DIR=str(Path(d) / "mmbot_cache"))

        def cli(tag: str, *extra: str, **env_extra: str):
            ru = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "bot.cli", "backtest", "--data", str(rec), "--db", str(Path(d) / f"{tag}.db"),
                                "--json", "--no-progress", *extra], cwd=ROOT, env={**env, **env_extra}, capture_output=True, text=True)
            wall = time.perf_counter() - t
            ru2 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if p.returncode not in (0, 1):
                sys.exit(f"cold run failed ({p.returncode}): {p.stderr.strip()[-400:]}")
            js = json.loads(p.stdout.strip().splitlines()[-1])
            cpu = ru2.ru_utime - ru.ru_utime + ru2.ru_stime - ru.ru_stime
            return wall, js.get("timings_s", {}), str(js.get("report") or "").endswith("report.html"), cpu

        nan = (float("nan"), {}, False, float("nan"))
        miss, cold, cold_step, numba_first, numba_second = nan, [nan], [nan], nan, nan
        if not args.no_cold:
            miss = cli("prime")  # computes and caches the forecasts
            cold, cold_step = [], []
            for r in range(args.cold_runs):  # interleaved: cached forecasts, --no-forecast-cache
                cold.append(cli(f"cold{r}"))
                cold_step.append(cli(f"step{r}", "--no-forecast-cache"))
            numba_dir = str(Path(d) / "numba_fresh")
            numba_first = cli("nb1", NUMBA_CACHE_DIR=numba_dir)
            numba_second = cli("nb2", NUMBA_CACHE_DIR=numba_dir)
    if hbt is not None:
        hbt.stdin.write("quit\n")
        hbt.stdin.flush()
        hbt.wait(timeout=60)
    full, plain, streamed, pre, comp, comp_st = full[1:], plain[1:], streamed[1:], pre[1:], comp[1:], comp_st[1:]

    def phase(runs, *keys):
        return med([sum(t[k] for k in keys) for t in runs])

    loop_s, build_loop_s = phase(full, "loop"), phase(full, "build", "loop")
    out = {
        "bench": "backtest_throughput",
        "data": str(args.data.relative_to(ROOT.parent)) if args.data.is_relative_to(ROOT.parent) else str(args.data),
        "events": n, "runs": args.runs, "cold_runs": args.cold_runs,
        "replay_only_one_call_events_per_s": round(n / med(one)),
        "replay_only_100ms_steps_events_per_s": round(n / med(stepped)),
        "replay_only_100ms_steps_s": round(med(stepped), 4),
        "venue_build_s": round(med(build), 4),
        "full_strategy_loop_events_per_s": round(n / loop_s),
        "full_strategy_loop_s": round(loop_s, 4),
        "full_strategy_build_loop_s": round(build_loop_s, 4),
        "full_strategy_metrics_s": round(phase(full, "metrics"), 4),
        "full_strategy_streamed_build_loop_s": round(phase(streamed, "build", "loop"), 4),
        "full_strategy_streamed_loop_s": round(phase(streamed, "loop"), 4),
        "glft_plain_loop_events_per_s": round(n / phase(plain, "loop")),
        "glft_plain_loop_s": round(phase(plain, "loop"), 4),
        "full_strategy_precomputed_loop_s": round(phase(pre, "loop"), 4),
        "full_strategy_precomputed_loop_events_per_s": round(n / phase(pre, "loop")),
        "full_strategy_precomputed_build_loop_s": round(phase(pre, "build", "loop"), 4),
        "compiled_loop_s": round(phase(comp, "loop"), 4),
        "compiled_loop_events_per_s": round(n / phase(comp, "loop")),
        "compiled_build_loop_s": round(phase(comp, "build", "loop"), 4),
        "compiled_metrics_s": round(phase(comp, "metrics"), 4),
        "compiled_streamed_loop_s": round(phase(comp_st, "loop"), 4),
        "compiled_streamed_build_loop_s": round(phase(comp_st, "build", "loop"), 4),
        "compiled_same_as_engine": {k: comp_summary[k] for k in ("fills", "orders_placed", "pnl")} == {
            k: summary_pre[k] for k in ("fills", "orders_placed", "pnl")},
        "cold_cli_forecast_miss_wall_s": round(miss[0], 3),
        "cold_cli_wall_s": round(med([c[0] for c in cold]), 3),
        "cold_cli_cpu_s": round(med([c[3] for c in cold]), 3),
        "cold_cli_no_forecast_cache_wall_s": round(med([c[0] for c in cold_step]), 3),
        "numba_first_run_wall_s": round(numba_first[0], 3), "numba_second_run_wall_s": round(numba_second[0], 3),
        "cold_cli_phases_s": {k: round(med([c[1].get(k, 0.0) for c in cold]), 4) for k in ("load", "build", "loop", "metrics", "report")},
        "cold_cli_wrote_html_report": any(c[2] for c in cold),
        "decisions": summary["events"], "fills": summary["fills"],
        "hftbacktest": hbt_note,
    }
    if hbt_runs:
        warm = [h["elapsed_s"] for h in hbt_runs[1:]]
        h = med(warm)
        out.update({
            "hbt_rows": hbt_runs[0]["rows"], "hbt_steps": hbt_runs[0]["steps"],
            "hbt_median_s": round(h, 4), "hbt_build_median_s": round(med([x["build_s"] for x in hbt_runs[1:]]), 4), "hbt_cold_s": round(hbt_runs[0]["elapsed_s"], 3),
            "hbt_rows_per_s": round(hbt_runs[0]["rows"] / h),
            "ratio_vs_hbt_build_loop": round(h / build_loop_s, 3),
            "ratio_vs_hbt_loop_only": round(h / loop_s, 3),
            "ratio_vs_hbt_glft_plain_loop": round(h / phase(plain, "loop"), 3),
            "ratio_vs_hbt_compiled_build_loop": round(h / phase(comp, "build", "loop"), 3),
            "ratio_vs_hbt_compiled_loop_only": round(h / phase(comp, "loop"), 3),
            "ratio_vs_hbt_compiled_streamed_build_loop": round(h / phase(comp_st, "build", "loop"), 3),
        })
    out["load_avg_start"], out["load_avg_end"] = load_start, _load()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
