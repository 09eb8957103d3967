"""Soak benchmark: does a long paper session hold flat memory and a steady event rate?

Runs the real engine as ``mmbot paper`` builds it (config/paper.yaml, the shipped LSTM
forecaster, a real SQLite file in WAL mode, a commit per event on the simulated market and
per second of wall time on a replay at speed 0) for ``--hours`` hours of market time at
speed 0 (as fast as possible), each source in a fresh subprocess:

* ``sim``: the simulated market (``bot.app.build_paper_engine``), ``duration_s = hours*3600``;
* ``replay``: a recording (``mmbot import binance`` output, see ``--recording``) replayed by
  ``paper_trading.backtest.build_replay_engine`` in paper mode and looped end to end: when
  the replay reaches the recording's end, every timestamp of the recording is shifted
  forward by one period (the span from its first snapshot to its last row, plus one decision
  interval) and the replay restarts at that snapshot, so recorded time runs on without a
  gap or a jump back. The venue (book, our orders) carries over from one loop to the next.

Assumption: the strategy's horizon is ``rolling`` (``--horizon``), because the default
``finite`` horizon spans the whole run: over 24 hours its AS spread (gamma*sigma^2*(T-t)) is
tens of quote units wide, no order fills, and the order/fill path would not be exercised.

Every hour of market time the child prints one JSON line: hour, market time (s), events
(engine decisions; for the replay also recorded rows applied), wall time (s), events per
wall second in that hour, RSS (MB: psutil if installed, else /proc/self/status VmRSS), the
Python heap traced by tracemalloc (MB, only with ``--trace``), and the database size
(MB, main file + WAL). At the end: a summary line per source with RSS and events/s of the
first hour vs the last hour (ratios) and, with ``--trace``, the top growth sites between
the end of the first hour and the end of the run.

Usage::

    python bench/soak.py [--hours 24] [--sources sim,replay] [--trace]
        [--recording DIR | --raw ../shared/data/binance/usdm/btcusdt_20240808.gz]

Without ``--recording`` the raw Binance file is imported with ``mmbot import binance`` into
a temporary directory first. Nothing is extrapolated: a run measures the hours it ran.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_RAW = ROOT.parent / "shared" / "data" / "binance" / "usdm" / "btcusdt_20240808.gz"
HOUR_NS = 3600 * 10**9


def rss_mb() -> float:
    """Resident set size of this process, MB (2**20 bytes)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024  # kB
    return float("nan")


def db_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists()) / 2**20


# -- looping the replay ------------------------------------------------------------------------
def make_looping(source, loops: int, end_ns: int | None = None) -> None:
    """Turn a :class:`paper_trading.replay.ReplaySource` into one that plays its recording
    ``loops`` times end to end (see the module docstring). Must be called before the
    engine starts (the strategy's session length is read from ``end_ns`` then)."""
    import numpy as np

    from bot.recording.schema import CLEAR
    from paper_trading.replay import ReplaySource

    v = source.venue
    clears = np.flatnonzero(v.kind == CLEAR)
    i_loop = int(clears[0]) if len(clears) else 0  # restart at the first snapshot: a clean book
    period = int(v.local_ts[-1]) - int(v.local_ts[i_loop]) + source.interval_ns
    source.loop_from, source.loop_period, source.loops_left = i_loop, period, loops - 1
    source.loops_done = 0
    source.end_ns = source.t_last + (loops - 1) * period
    if end_ns is not None:
        source.end_ns = min(source.end_ns, end_ns)

    class LoopingReplaySource(ReplaySource):
        async def next(self):
            if self.venue.i >= self.venue.n and self.loops_left > 0 and self.t < self.end_ns:
                vv = self.venue
                vv.local_ts += self.loop_period  # in place: the numba kernel reads these arrays
                vv.exch_ts += self.loop_period
                vv.i = self.loop_from
                self.t_last += self.loop_period
                self.loops_left -= 1
                self.loops_done += 1
            return await super().next()

    source.__class__ = LoopingReplaySource


# -- the child: one source, one process --------------------------------------------------------
def child(args) -> None:
    import tracemalloc

    import torch

    from bot.config import build_forecaster, load_config, with_overrides
    from bot.persistence.store import open_store

    torch.set_num_threads(1)
    if args.trace:
        tracemalloc.start(args.trace_frames)
    work = Path(args.workdir)
    db = work / f"soak_{args.child}.db"
    cfg = load_config(ROOT / "config" / "paper.yaml")
    over = {"duration_s": args.hours * 3600.0, "sim.speed": 0.0, "replay.speed": 0.0, "database.url": f"sqlite:///{db}",
            "ui.live": False, "strategy.pricing.horizon": args.horizon}
    cfg = with_overrides(cfg, **over)
    forecaster = build_forecaster(cfg)
    store = open_store(cfg.database.url)
    if args.child == "sim":
        from bot.app import build_paper_engine

        engine = build_paper_engine(cfg, store, forecaster=forecaster, handle_signals=False)
        source = engine.source
        rows = lambda: 0  # noqa: E731
    else:
        from paper_trading.backtest import build_replay_engine

        engine, source = build_replay_engine(Path(args.recording), cfg, store, mode="paper", speed=0.0, forecaster=forecaster)
        engine.handle_signals = False
        period_s = (int(source.venue.local_ts[-1]) - int(source.venue.local_ts[0])) / 1e9
        loops = int(args.hours * 3600 // max(period_s, 1e-9)) + 2
        make_looping(source, loops, end_ns=source.start_ns + int(args.hours * HOUR_NS))
        n = source.venue.n
        rows = lambda: source.loops_done * (n - source.loop_from) + source.venue.i  # noqa: E731
    samples: list[dict] = []
    snaps: list = []
    st = {"t0": None, "next": None, "wall0": time.perf_counter(), "cpu0": time.process_time(), "ev": 0, "rows": 0, "wall": 0.0, "cpu": 0.0}

    def sample(eng, final: bool = False) -> None:
        now = time.perf_counter()
        ev, r = eng.state.events, rows()
        wall = now - st["wall0"]
        cpu = time.process_time() - st["cpu0"]
        h = len(samples) + 1
        rec = {"source": args.child, "sample": h, "market_s": round((eng.state.ts_ns - st["t0"]) / 1e9, 1),
               "events": ev, "wall_s": round(wall, 2), "events_per_s": round((ev - st["ev"]) / max(wall - st["wall"], 1e-9), 1),
               "cpu_s": round(cpu, 2), "events_per_cpu_s": round((ev - st["ev"]) / max(cpu - st["cpu"], 1e-9), 1),
               "rss_mb": round(rss_mb(), 1), "db_mb": round(db_mb(db), 2)}
        if args.child == "replay":
            rec["rows"] = r
            rec["rows_per_s"] = round((r - st["rows"]) / max(wall - st["wall"], 1e-9), 1)
        if args.trace:
            rec["traced_mb"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 2)
            if h == 1 or final:
                gc.collect()
                snaps.append(tracemalloc.take_snapshot().filter_traces((tracemalloc.Filter(False, tracemalloc.__file__),)))
        if final and (eng.state.ts_ns - st["t0"]) / 1e9 - (h - 1) * args.sample_s < 0.99 * args.sample_s:
            rec["final"] = True  # a partial last interval: not compared with the first
        samples.append(rec)
        print(json.dumps(rec), flush=True)
        st.update(ev=ev, rows=r, wall=wall, cpu=cpu)

    def on_tick(eng) -> None:
        ts = eng.state.ts_ns
        if st["t0"] is None:
            st["t0"], st["next"] = ts, ts + args.sample_ns
            st["wall0"], st["cpu0"] = time.perf_counter(), time.process_time()
            st["ev"] = eng.state.events
            return
        if ts >= st["next"]:
            st["next"] += args.sample_ns
            sample(eng)

    engine.on_tick = on_tick
    try:
        summary = asyncio.run(engine.run())
    finally:
        store.close()
    if st["t0"] is not None and (not samples or engine.state.ts_ns > st["next"] - args.sample_ns + args.sample_ns // 60):
        sample(engine, final=True)  # a partial last hour (more than a minute of it)
    full = [s for s in samples if not s.get("final")] or samples
    first, last = full[0], full[-1]
    out = {"source": args.child, "summary": True, "samples": len(full), "sample_s": args.sample_s, "events": engine.state.events,
           "fills": summary.get("fills"), "status": summary.get("status"), "stop_reason": summary.get("stop_reason"),
           "rss_first_mb": first["rss_mb"], "rss_last_mb": last["rss_mb"],
           "rss_ratio": round(last["rss_mb"] / first["rss_mb"], 3),
           "events_per_s_first": first["events_per_s"], "events_per_s_last": last["events_per_s"],
           "events_per_s_ratio": round(last["events_per_s"] / max(first["events_per_s"], 1e-9), 3),
           "events_per_cpu_s_first": first["events_per_cpu_s"], "events_per_cpu_s_last": last["events_per_cpu_s"],
           "events_per_cpu_s_ratio": round(last["events_per_cpu_s"] / max(first["events_per_cpu_s"], 1e-9), 3),
           "db_mb": last["db_mb"], "load_avg": os.getloadavg()}
    if len(snaps) >= 2:
        top = snaps[-1].compare_to(snaps[0], "traceback" if args.trace_frames > 1 else "lineno")[: args.trace_top]
        out["growth_sites"] = [{"site": " <- ".join(f"{f.filename.replace(str(ROOT) + '/', '')}:{f.lineno}" for f in s.traceback),
                                "size_diff_kb": round(s.size_diff / 1024, 1), "count_diff": s.count_diff} for s in top]
    print(json.dumps(out), flush=True)


# -- the parent --------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=24.0, help="market hours per source (default 24)")
    ap.add_argument("--sources", default="sim,replay", help="comma-separated: sim, replay")
    ap.add_argument("--recording", default=None, help="recording directory (default: import --raw into a temp dir)")
    ap.add_argument("--raw", default=str(DEFAULT_RAW), help="raw Binance capture imported when --recording is not given")
    ap.add_argument("--horizon", default="rolling", choices=("rolling", "finite"), help="strategy horizon (see the docstring)")
    ap.add_argument("--sample-s", type=float, default=3600.0, help="market seconds between samples (default 3600: hourly)")
    ap.add_argument("--trace", action="store_true", help="tracemalloc: traced heap per hour and top growth sites (slow)")
    ap.add_argument("--trace-frames", type=int, default=1, help="tracemalloc frames per allocation site")
    ap.add_argument("--trace-top", type=int, default=10)
    ap.add_argument("--workdir", default=None, help="where databases (and the imported recording) go; default: a temp dir")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.sample_ns = int(args.sample_s * 1e9)
    if args.hours <= 0 or args.sample_s <= 0:
        print(f"soak: --hours and --sample-s must be positive, got {args.hours} and {args.sample_s}", file=sys.stderr)
        sys.exit(2)
    if args.child:
        child(args)
        return
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    bad = [s for s in sources if s not in ("sim", "replay")]
    if bad or not sources:
        print(f"soak: --sources: unknown source {bad[0] if bad else '(none)'!r} (sim, replay)", file=sys.stderr)
        sys.exit(2)
    tmp = tempfile.TemporaryDirectory(prefix="mmbot_soak_") if args.workdir is None else None
    work = Path(args.workdir or tmp.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if "replay" in sources and args.recording is None:
        raw = Path(args.raw)
        if not raw.exists():
            print(f"soak: raw data {raw} not found (pass --recording DIR or --raw FILE)", file=sys.stderr)
            sys.exit(2)
        args.recording = str(work / "recording")
        subprocess.run([sys.executable, "-m", "bot.cli", "import", "binance", str(raw), "--out", args.recording, "--force", "--json"],
                       cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    code = 0
    for s in sources:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", s, "--hours", str(args.hours), "--horizon", args.horizon,
               "--workdir", str(work), "--sample-s", str(args.sample_s), "--trace-frames", str(args.trace_frames), "--trace-top", str(args.trace_top)]
        if args.recording:
            cmd += ["--recording", str(args.recording)]
        if args.trace:
            cmd.append("--trace")
        code = subprocess.run(cmd, cwd=ROOT, env=env).returncode or code
    if tmp is not None:
        tmp.cleanup()
    sys.exit(code)


if __name__ == "__main__":
    main()
