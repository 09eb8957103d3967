"""``reproduce.sh``, written next to ``best.yaml``: the ``mmbot backtest`` commands that
reproduce the best trial's in-sample figure, one per fold segment, each with the figures it
must print, and how the objective is aggregated from them.

A trial backtests every in-sample fold segment (a fold is one segment per recording it
covers) from the segment's start to its end: ``mmbot backtest --config best.yaml --data REC
--start START_NS --end END_NS`` replays exactly that (same window cut, same warm-up; see
:mod:`paper_trading.window`). The worker stored each segment's figures with the trial (user
attribute ``segments``, :func:`paper_trading.tune.runner.segment_row`); the script states
them and checks each command's ``--json`` summary against them (PnL and traded notional in
quote currency, fills), then prints the in-sample PnL total.

Times in the commands are int ns since the epoch (recorded local time), which is exact; the
comments give them as ISO-8601 UTC too. Recording paths are those stored in the study (the
machine that created it).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from paper_trading.window import format_ns

# how the in-sample figure of a study objective follows from the segment backtests (units as
# in objectives.UNITS); folds pooled, as paper_trading.tune.objectives.evaluate does
AGGREGATION = {
    "pnl": "sum of the segments' pnl",
    "risk_adjusted_pnl": "sum of the segments' pnl - risk_penalty * sum of their q2_integral (the integral of inventory^2 dt "
                         "over the run's PnL snapshots)",
    "sharpe": "Sharpe of the per-minute PnL changes of all segments pooled (mean / std * sqrt(525600)); "
              "the per-segment Sharpe figures do not average to it",
    "pnl_per_volume": "1e4 * sum of the segments' pnl / sum of their volume_quote (basis points)",
    "inventory_risk": "sqrt(sum of the segments' q2_integral / sum of their duration_s)",
}

_CHECK = r"""
import json, math, sys
name, exp_pnl, exp_vol, exp_fills, total = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
s = json.loads(sys.stdin.read().strip().splitlines()[-1])
pnl, vol, fills = float(s["pnl"]), float(s["volume_quote"]), int(s["fills"])
ok = (math.isclose(pnl, exp_pnl, rel_tol=1e-9, abs_tol=1e-9) and math.isclose(vol, exp_vol, rel_tol=1e-9, abs_tol=1e-9)
      and fills == exp_fills)
print("%s: pnl %r (expected %r), volume_quote %r (expected %r), fills %d (expected %d): %s"
      % (name, pnl, exp_pnl, vol, exp_vol, fills, exp_fills, "OK" if ok else "MISMATCH"))
open(total, "a").write(repr(pnl) + "\n")
sys.exit(0 if ok else 1)
"""


def segment_commands(settings: dict, trial, config: str = "best.yaml") -> list[dict]:
    """One row per segment the trial backtested: fold, recording path, window (ns), the
    figures stored with the trial, and the command (argv after ``mmbot``)."""
    paths = {(r["start_ns"], r["end_ns"]): r["recording"] for r in settings.get("plan", [])}
    out = []
    for row in trial.user_attrs.get("segments") or []:
        rec = paths.get((row["start_ns"], row["end_ns"]))
        if rec is None:  # a plan and a trial that do not match: a bug, not data
            raise RuntimeError(f"trial {trial.number}: segment {row['start_ns']}..{row['end_ns']} is not in the study's plan")
        argv = ["backtest", "--config", config, "--data", rec, "--start", str(row["start_ns"]), "--end", str(row["end_ns"])]
        out.append({**row, "recording": rec, "argv": argv})
    return out


def write_reproduce(settings: dict, trial, objectives: list[str], path: Path) -> Path | None:
    """Write ``path`` (reproduce.sh, executable) for ``trial``; None when the trial has no
    per-segment figures (a study made before they were stored)."""
    rows = segment_commands(settings, trial)
    if not rows:
        return None
    vals = dict(zip(objectives, trial.values))
    lines = ["#!/bin/sh",
             f"# Reproduce trial {trial.number} of study {settings.get('study')!r} (written by `mmbot tune`) with `mmbot backtest`:",
             f"# one backtest per in-sample fold segment, {len(rows)} in all, with best.yaml (the trial's parameters).",
             "# Each must print the pnl and volume_quote (quote currency) and fills given above it, up to float round-off;",
             "# this script checks them and prints the in-sample pnl total. How the trial's in-sample figure follows:"]
    for n in objectives:
        agg = AGGREGATION[n].replace("risk_penalty", f"risk_penalty ({settings.get('risk_penalty')})")
        lines.append(f"#   {n} = {agg} = {vals[n]!r}")
    total_pnl = sum(r["pnl"] for r in rows)
    if "pnl" not in objectives:
        lines.append(f"#   (sum of the segments' pnl = {total_pnl!r})")
    lines += [
              "# Recording paths are those of the machine that created the study. MMBOT and PYTHON choose the programs,",
              "# e.g. MMBOT='python -m bot.cli'. The runs are recorded in reproduce.db next to this script.",
              "set -e", 'cd "$(dirname "$0")"', 'MMBOT=${MMBOT:-mmbot}', 'PYTHON=${PYTHON:-python3}',
              "TOTAL=$(mktemp)", f"CHECK={shlex.quote(_CHECK)}"]
    for r in rows:
        name = f"fold {r['fold']}" + (f" segment {r['rec']}" if sum(1 for x in rows if x["fold"] == r["fold"]) > 1 else "")
        lines.append(f"# {name}: {format_ns(r['start_ns'])} .. {format_ns(r['end_ns'])}: pnl {r['pnl']!r}, volume_quote "
                     f"{r['volume_quote']!r}, fills {r['fills']}, q2_integral {r['q2_integral']!r}, duration_s {r['duration_s']!r}")
        cmd = " ".join(shlex.quote(a) for a in r["argv"])
        lines.append(f"$MMBOT {cmd} --db reproduce.db --no-progress --json | "
                     f"\"$PYTHON\" -c \"$CHECK\" {shlex.quote(name)} {r['pnl']!r} {r['volume_quote']!r} {r['fills']} \"$TOTAL\"")
    lines += ['"$PYTHON" -c "import sys; print(\'in-sample pnl (sum of the segments):\', '
              'repr(sum(float(x) for x in open(sys.argv[1]))))" "$TOTAL"', 'rm -f "$TOTAL"', ""]
    path.write_text("\n".join(lines))
    path.chmod(0o755)
    return path


def commands_from_script(path: Path) -> list[list[str]]:
    """The ``mmbot`` argvs of a reproduce.sh (what the tests run), in order."""
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("$MMBOT "):
            out.append(shlex.split(line.split(" | ", 1)[0])[1:])
    return out
