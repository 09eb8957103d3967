"""Helpers for tests/test_adapt_*.py: a simulated market with volatility regimes that the
book shows (a busy market quotes a wider spread), a tiny model trained on it, and a replay
driver that scores forecasts against what happened."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bot.orderbook import OrderBook
from models.features import FeatureConfig, OnlineFeatures, feature_names, schema

CFG = FeatureConfig(sample_s=1.0, n_levels=3, rv_windows=(5, 20))
H = 5  # horizon, grid rows (5 s)
T0 = 1_700_000_000 * 10**9


class RegimeMarket:
    """A 10-level book around a mid of ``m`` ticks (tick 0.01 on a mid of 100: 1 tick = 1 bp).
    Each grid step the regime (calm / busy) switches with probability ``p_switch``; the mid
    moves by ``jump`` ticks up or down with probability 0.3 (calm) or 0.9 (busy), and the
    half spread is 1 tick (calm) or 3 ticks (busy). ``jump`` is the volatility scale: 4
    instead of 1 is volatility x4 (returns x4)."""

    def __init__(self, seed: int = 0, p_switch: float = 0.1) -> None:
        self.rng = np.random.default_rng(seed)
        self.tick = 0.01
        self.m = 10_000
        self.busy = False
        self.p_switch = p_switch
        self.book = OrderBook("SYN/USD")
        self._set()

    def _set(self) -> None:
        r = self.rng
        hs = 3 if self.busy else 1
        bids = [((self.m - hs - j) * self.tick, float(r.uniform(0.5, 3.0))) for j in range(10)]
        asks = [((self.m + hs + j) * self.tick, float(r.uniform(0.5, 3.0))) for j in range(10)]
        self.book.apply_snapshot(bids, asks)

    def step(self, jump: int = 1) -> None:
        r = self.rng
        if r.random() < self.p_switch:
            self.busy = not self.busy
        if r.random() < (0.9 if self.busy else 0.3):
            self.m += jump * (1 if r.random() < 0.5 else -1)
        self._set()


def train_tiny_model(out: Path, rows: int = 3000, seed: int = 0, epochs: int = 6) -> Path:
    """Train a hidden-8 LSTM on ``rows`` grid rows of the calm-volatility market (jump 1) and
    save it as a model file (horizon H rows of 1 s)."""
    from models.adapt.retrainer import horizon_targets
    from models.export import save_model
    from models.train import TrainConfig, fit

    mkt = RegimeMarket(seed=seed + 1000)
    feats = OnlineFeatures(CFG)
    X = []
    for k in range(rows):
        mkt.step(1)
        X.append(feats.step(mkt.book, T0 + k * 10**9))
    X = np.array(X)
    drift, var = horizon_targets(X[:, 0], H)
    floor = 0.01 * float(np.nanmean(var))
    n = len(X)
    idx = np.arange(n)
    cut = int(0.8 * n)
    tr = (idx >= 20) & (idx < cut - H) & np.isfinite(var)
    va = (idx >= cut) & np.isfinite(var)
    cfg = TrainConfig(hidden=8, layers=1, dropout=0.0, lookback=32, batch=8, lr=5e-3, max_epochs=epochs, patience=epochs,
                      min_epochs=epochs, seed=seed, threads=1)
    res = fit(X, drift, var, tr, va, cut, cfg, floor)
    meta = {"features": schema(CFG), "normalization": res.normalizer.to_dict(), "horizon": f"{H}s", "horizon_s": float(H),
            "horizon_steps": H, "sample_s": CFG.sample_s, "warmup_steps": 20, "arch": res.net.arch(),
            "var_floor_bp2": floor, "baseline": {"lambda_per_row": 0.94, "init_r2_bp2": 1.0},
            "scales": {"drift_scale": res.scales.drift_scale, "var_scale": res.scales.var_scale}, "name": "tiny",
            "data": {"source": "simulated", "exchange": "sim", "symbol": "SYN/USD", "rows": n}}
    assert len(feature_names(CFG)) == X.shape[1]
    return save_model(res.step_module(), meta, out)


def qlike(v: float, h: float) -> float:
    x = v / h
    return x - math.log(x) - 1.0



def regime_recording(out: Path, rows: int, seed: int = 3) -> Path:
    """Write ``rows`` seconds of :class:`RegimeMarket` (jump 1: its calm volatility) as an
    mmbot recording (``bot.recording.schema`` rows): each second, 0.5 s before the grid time,
    one message that removes the levels that left the book and sets the others (a CLEAR and
    SNAPSHOT rows first)."""
    from bot.recording.schema import CLEAR, DEPTH, EVENT_DTYPE, SNAPSHOT
    from models_helpers import write_recording

    mkt = RegimeMarket(seed=seed)
    out_rows: list = []
    prev: dict = {}
    for k in range(rows):
        mkt.step(1)
        t = T0 + k * 10**9 - 500_000_000
        cur = {(1, round(p, 8)): q for p, q in mkt.book.bids.levels(10)}
        cur.update({(-1, round(p, 8)): q for p, q in mkt.book.asks.levels(10)})
        if k == 0:
            out_rows += [(CLEAR, 1, t, 0.0, 0.0), (CLEAR, -1, t, 0.0, 0.0)]
            out_rows += [(SNAPSHOT, s, t, p, q) for (s, p), q in cur.items()]
        else:
            out_rows += [(DEPTH, s, t, p, 0.0) for (s, p) in prev if (s, p) not in cur]
            out_rows += [(DEPTH, s, t, p, q) for (s, p), q in cur.items()]
        prev = cur
    ev = np.zeros(len(out_rows), EVENT_DTYPE)
    for i, f in enumerate(("kind", "side", "local_ts", "px", "qty")):
        ev[f] = [r[i] for r in out_rows]
    ev["exch_ts"] = ev["local_ts"]
    ev["first_id"] = ev["last_id"] = -1
    return write_recording(ev, {"exchange": "sim", "symbol": "SYN/USD", "market": "spot", "tick_size": 0.01,
                                "lot_size": 1e-8}, out)
