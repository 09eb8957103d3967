"""Adaptation on a real recording with an injected regime shift; prints one JSON line.

The first ``--lines`` lines of the Bitstamp 2015-05-01 capture (``../shared/data``) are
imported; from the middle grid row on, every price moves 4x as far from the mid at the cut
(:func:`models.adapt.inject.inject_vol_shift`: volatility x4, the book restated at the cut). The replay (1 s grid, every grid time a decision) runs two forecasters built from the
same model (default: the shipped one): without and with adaptation (``min_new_samples``,
``epochs``; schedule off, so jobs start on detected shifts only). As in
tests/test_adapt_shift.py the decision after a submission waits for the job (the test hook),
so the run is reproducible. Reported: QLIKE of each forecaster's emitted variance over the
rows after the shift (realised variance over the horizon + the model's floor, bp^2), the
EWMA baseline's, alarms, jobs and swaps. ``--guard`` keeps the misspecification guard on
(then both may emit the EWMA baseline's variance).

    python bench/adapt_shift.py [--lines 40000] [--guard] [--model default]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
BITSTAMP = ROOT.parent / "shared" / "data" / "bitstamp_2015" / "2015-05-01.log.bz2"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=40_000)
    ap.add_argument("--guard", action="store_true")
    ap.add_argument("--model", default="default")
    ap.add_argument("--min-new-samples", type=int, default=1500)
    ap.add_argument("--epochs", type=int, default=20)
    a = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    from bot.importers.bitstamp import import_bitstamp
    from models.adapt.inject import inject_vol_shift
    from models.adapt.retrainer import FineTune, horizon_targets
    from models.adapt.swap import AdaptiveForecaster, AdaptSettings
    from models.baselines import ewma_var
    from models.calibrate import load_events
    from models.forecaster import GuardConfig, load_forecaster
    from models_helpers import replay_online

    if not BITSTAMP.exists():
        sys.exit(f"{BITSTAMP}: not found (../shared/data is not part of the repository)")
    tmp = Path(tempfile.mkdtemp(prefix="mmbot-adapt-bench-"))
    import_bitstamp(BITSTAMP, tmp / "rec", max_lines=a.lines)
    ev, meta = load_events(tmp / "rec")
    tick, lot = float(meta["tick_size"]), float(meta["lot_size"])
    S = 10**9
    grid = np.arange((int(ev["local_ts"][0]) // S + 60) * S, (int(ev["local_ts"][-1]) // S) * S, S)
    cut_row = len(grid) // 2
    ev2 = inject_vol_shift(ev, int(grid[cut_row]), 4.0, tick)
    guard = None if a.guard else GuardConfig(enabled=False)
    plain = load_forecaster(a.model, guard=guard)
    ad = AdaptiveForecaster(load_forecaster(a.model, guard=guard),
                            AdaptSettings(schedule_s=0.0, min_new_samples=a.min_new_samples, registry=str(tmp / "registry"),
                                          tune=FineTune(epochs=a.epochs)), work_dir=tmp / "work")
    ad.block_on_retrain_s = 600.0
    out: dict = {"plain": [], "adaptive": []}
    mids = []

    def step(book, t, trades):
        for name, fc in (("plain", plain), ("adaptive", ad)):
            fc.update(book, t, trades)
            f = fc.forecast
            out[name].append(np.nan if f.sigma is None else (f.sigma / fc.feats.mid) ** 2 * 1e8 * f.horizon_s)
        mids.append(plain.feats.mid)

    t0 = time.perf_counter()
    replay_online(ev2, tick, lot, grid, step)
    ad.wait_registered(60.0)
    wall = time.perf_counter() - t0
    mids = np.array(mids)
    ret = np.concatenate([[0.0], np.log(mids[1:] / mids[:-1]) * 1e4])
    H = plain.H
    _, var = horizon_targets(ret, H)
    rows = np.arange(cut_row, len(grid) - H)
    v = var[rows] + plain.floor

    def q(h):
        h = np.asarray(h)[rows]
        return float(np.nanmean(v / h - np.log(v / h) - 1.0))

    h_ewma = ewma_var(ret * ret, plain.lam, H, plain.base_init) + plain.floor
    res = {"bench": "adapt_shift", "recording": f"bitstamp 2015-05-01, first {a.lines} lines", "model": a.model,
           "guard": a.guard, "grid_rows": len(grid), "cut_row": cut_row, "horizon_rows": H,
           "post_shift_qlike": {"without_adaptation": q(out["plain"]), "with_adaptation": q(out["adaptive"]),
                                "ewma": q(h_ewma)},
           "alarms": [(al.row, al.change_row) for al in ad.alarm_log], "jobs": ad.jobs,
           "swaps": [{"row": int((s["event_ns"] - grid[0]) // S), "holdout_qlike": s["holdout_qlike"]} for s in ad.swaps],
           "replay_wall_s": round(wall, 1)}
    ad.close()
    print(json.dumps(res))


if __name__ == "__main__":
    main()
