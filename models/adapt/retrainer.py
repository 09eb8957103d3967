"""The background retrainer: fine-tunes the current model on recent rows in a separate
process and keeps the result only when it beats the current model and the baselines on the
newest rows, which it did not train on.

Hand-over. The forecaster wrapper (:mod:`models.adapt.swap`) submits a :class:`RetrainJob`
with the recent feature rows (the exact raw inputs the model was stepped with, ``X`` float64
[n, F], and the event times of the updates that made them, ``ts_ns`` int64 [n], ns since the
epoch) to a :class:`Retrainer` (a ``ProcessPoolExecutor`` with one
worker, ``spawn`` start method: the quoting process's threads are never forked). The
worker (:func:`run_retrain`) writes the rows to the job's ``.npz`` file (the record of what
it trained on; a job may instead name such a file) and returns a :class:`RetrainResult`; the quoting loop only polls
the future between decisions.

Targets are rebuilt from the rows themselves: column 0 is the grid row's mid log return in
bp, so the drift target of row i is the sum of the returns of rows i+1..i+H (bp) and the
variance target the sum of their squares (bp^2), exactly what the online guard scores.

Split of the ``n`` rows (oldest first)::

    [0, stream_start)          not used (older rows)
    [stream_start, train_from) burn-in for the recurrent state only (no loss)
    [train_from, val_start-H)  fine-tuning targets (their horizons end before the holdout)
    [val_start, n-H)           holdout: the newest rows with a complete horizon, never trained on

On the holdout the candidate, the current model (both run from a zero state over all ``n``
rows, as the online forecaster would) and the baselines (EWMA with the model's decay, as in
the guard; GARCH(1,1) and HAR-RV fitted on the fine-tuning rows) are scored by mean QLIKE
(realised variance plus the model's floor, bp^2). The candidate is accepted only when its
QLIKE is below the current model's and every baseline's by the relative margin
``min_gain``, and only when the holdout is not quiet (at least ``min_active`` of its rows saw
a mid move within their horizon: on a holdout without moves the lowest forecast wins,
whatever it knows); it is then saved (TorchScript with metadata, like ``mmbot train``) in the job's
folder and its packed numba weights are returned for a swap without torch.

Only plain models are fine-tuned (the correction architecture needs its baseline inputs
re-fitted; not supported yet, as in ``mmbot train --init-from``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class FineTune:
    """Fine-tuning hyperparameters (see :class:`models.train.TrainConfig`): a few epochs from
    the current weights, truncated BPTT of ``lookback`` rows, ``batch`` streams."""

    epochs: int = 20
    lr: float = 5e-3
    lookback: int = 16
    batch: int = 4
    weight_decay: float = 1e-4
    dropout: float = 0.0
    val_frac: float = 0.25  # share of the rows from train_from on held out for validation (newest)
    min_gain: float = 0.0  # relative QLIKE margin the candidate must win by
    min_active: int = 20  # holdout rows whose horizon saw a mid move (a quiet holdout favours any low forecast)
    baselines: tuple[str, ...] = ("ewma", "garch", "har")
    seed: int = 0
    threads: int = 1  # torch threads of the worker process


@dataclass
class RetrainJob:
    """One fine-tuning request: the rows (``X`` float64 [n, F] raw inputs, ``ts_ns`` int64 [n]
    event times) either in the job itself or in the ``.npz`` file ``data_path``. ``train_from``: first row whose target enters the loss (a
    detected change point; 0 = all rows); ``gate``: test hook, a file the worker waits for
    before it starts (None live)."""

    model_path: str
    data_path: str
    out_dir: str
    trigger: str
    train_from: int = 0
    tune: FineTune = field(default_factory=FineTune)
    gate: str | None = None
    gate_timeout_s: float = 600.0
    X: np.ndarray | None = None  # the rows themselves (then written to data_path by the worker)
    ts_ns: np.ndarray | None = None


@dataclass
class RetrainResult:
    """What came back: accepted?, QLIKE on the holdout per model, the spans (ns), where the
    candidate was saved and its packed weights (numba layout) when accepted."""

    accepted: bool
    reason: str
    trigger: str
    scores: dict
    rows: dict
    span_ns: dict
    seconds: float
    model_path: str | None = None
    meta: dict | None = None
    packed: tuple | None = None

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("packed")
        d.pop("meta")
        return d


def horizon_targets(ret_bp: np.ndarray, H: int) -> tuple[np.ndarray, np.ndarray]:
    """(drift bp, variance bp^2) over the next H rows of every row; NaN where the horizon
    leaves the data."""
    r = np.asarray(ret_bp, dtype=np.float64)
    n = len(r)
    drift = np.full(n, np.nan)
    var = np.full(n, np.nan)
    if n > H:
        c1 = np.concatenate([[0.0], np.cumsum(r)])
        c2 = np.concatenate([[0.0], np.cumsum(r * r)])
        i = np.arange(n - H)
        drift[: n - H] = c1[i + H + 1] - c1[i + 1]
        var[: n - H] = np.maximum(c2[i + H + 1] - c2[i + 1], 0.0)
    return drift, var


def _qlike(v: np.ndarray, h: np.ndarray) -> float:
    x = v / h
    return float(np.mean(x - np.log(x) - 1.0))


def _wait_gate(path: str, timeout_s: float) -> None:
    t_end = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > t_end:
            raise TimeoutError(f"gate file {path} did not appear within {timeout_s:g} s")
        time.sleep(0.01)


def run_retrain(job: RetrainJob) -> RetrainResult:
    """The worker (runs in the retrainer's process): fine-tune, validate, save if accepted."""
    t0 = time.perf_counter()
    import torch

    from models.baselines import Garch, Har, ewma_var
    from models.cli import _unfold_net
    from models.export import iso, load_model, save_model
    from models.lstm import pack_params
    from models.train import FitResult, TrainConfig, fit

    tune = job.tune
    torch.set_num_threads(max(1, tune.threads))
    module, meta = load_model(job.model_path)
    if job.gate:  # test hook: hold the job (after the imports, before the work) until the file exists
        _wait_gate(job.gate, job.gate_timeout_s)
    if meta["arch"].get("kind", "plain") != "plain":
        return RetrainResult(False, f"{meta['arch'].get('kind')} models are not fine-tuned (plain only)", job.trigger,
                             {}, {}, {}, time.perf_counter() - t0)
    if job.X is not None:  # handed over through the queue: keep them as the job's record
        X = np.asarray(job.X, dtype=np.float64)
        ts = np.asarray(job.ts_ns, dtype=np.int64)
        Path(job.data_path).parent.mkdir(parents=True, exist_ok=True)
        np.savez(job.data_path, X=X, ts_ns=ts)
    else:
        with np.load(job.data_path) as d:
            X = np.asarray(d["X"], dtype=np.float64)
            ts = np.asarray(d["ts_ns"], dtype=np.int64)
    n = len(X)
    H = int(meta["horizon_steps"])
    floor = float(meta.get("var_floor_bp2", 0.0))
    drift, var = horizon_targets(X[:, 0], H)
    train_from = min(max(0, int(job.train_from)), n)
    n_val = max(int(round(tune.val_frac * (n - train_from))), 2 * H)
    val_start = max(n - n_val, train_from)
    stream_start = max(0, train_from - tune.lookback)
    idx = np.arange(n)
    train_rows = (idx >= train_from) & (idx < val_start - H) & np.isfinite(var)
    hold = (idx >= val_start) & np.isfinite(var)
    rows = {"n": n, "train_from": train_from, "val_start": val_start, "train": int(train_rows.sum()),
            "holdout": int(hold.sum()), "horizon": H}
    span = {"train_start_ns": int(ts[train_from]) if n else None, "train_end_ns": int(ts[max(val_start - 1, 0)]) if n else None,
            "holdout_start_ns": int(ts[val_start]) if val_start < n else None, "holdout_end_ns": int(ts[-1]) if n else None}
    active = int((hold & (np.nan_to_num(var) > 0.0)).sum())
    rows["holdout_active"] = active
    if active < tune.min_active:
        return RetrainResult(False, f"holdout too quiet: {active} rows with a mid move in their horizon "
                             f"(< min_active {tune.min_active})", job.trigger, {}, rows, span, time.perf_counter() - t0)
    if train_rows.sum() < 2 * tune.lookback or hold.sum() < H:
        return RetrainResult(False, f"too few rows (train {int(train_rows.sum())}, holdout {int(hold.sum())})", job.trigger,
                             {}, rows, span, time.perf_counter() - t0)
    net0, norm, sc = _unfold_net(module, meta)
    a = meta["arch"]
    cfg = TrainConfig(hidden=int(a["hidden"]), layers=int(a["layers"]), dropout=tune.dropout, lookback=tune.lookback,
                      batch=tune.batch, lr=tune.lr, weight_decay=tune.weight_decay, max_epochs=tune.epochs,
                      patience=tune.epochs, min_epochs=tune.epochs, skip=bool(a.get("skip", False)), seed=tune.seed,
                      threads=tune.threads)
    res = fit(X, drift, var, train_rows, np.zeros(n, bool), val_start, cfg, floor, stream_start=stream_start,
              init=(net0, norm, sc))
    _, v_cand = res.predict(X)
    _, v_cur = FitResult(net0, norm, sc, cfg).predict(X)
    v = var[hold] + floor
    scores = {"candidate": _qlike(v, v_cand[hold]), "current": _qlike(v, v_cur[hold])}
    r = X[:, 0]
    base = meta.get("baseline", {})
    lam = float(base.get("lambda_per_row", 0.94))
    for b in tune.baselines:
        if b == "ewma":
            h = ewma_var(r * r, lam, H, float(base.get("init_r2_bp2", 1.0))) + floor
        elif b == "garch":
            try:
                h = Garch.fit(r[stream_start:val_start]).var(r, H) + floor
            except RuntimeError:
                continue
        elif b == "har":
            h = Har.fit(r * r, np.nan_to_num(var), train_rows, H).var(r * r, floor) + floor
        else:
            raise ValueError(f"unknown baseline {b!r} (ewma, garch, har)")
        scores[b] = _qlike(v, h[hold])
    best_other = min(s for k, s in scores.items() if k != "candidate")
    beaten = [k for k, s in scores.items() if k != "candidate" and scores["candidate"] >= s * (1.0 - tune.min_gain)]
    if beaten:
        return RetrainResult(False, f"candidate QLIKE {scores['candidate']:.4f} does not beat {', '.join(beaten)} "
                             f"(best other {best_other:.4f})", job.trigger, scores, rows, span, time.perf_counter() - t0)
    step = res.step_module()
    new_meta = dict(meta)
    for k in ("created", "versions"):
        new_meta.pop(k, None)
    old_data = meta.get("data", {}) or {}
    new_meta["data"] = {"source": "adapt", "exchange": old_data.get("exchange"), "symbol": old_data.get("symbol"),
                        "start": iso(span["train_start_ns"]), "end": iso(span["holdout_end_ns"]), "rows": n, **span}
    new_meta["train"] = {"fine_tune": asdict(tune), "parent": job.model_path, "trigger": job.trigger,
                         "epochs": len(res.history)}
    new_meta["metrics"] = {"adapt": {"holdout_qlike": scores, "rows": rows},
                           "summary_short": "adapt holdout QLIKE " + " ".join(f"{k} {s:.4f}" for k, s in scores.items())}
    new_meta["scales"] = {"drift_scale": sc.drift_scale, "var_scale": sc.var_scale}
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = save_model(step, new_meta, out / "candidate.pt")
    packed = pack_params(list(step.params()), int(a["layers"]))
    from models.export import load_model as _load

    _, saved_meta = _load(path)
    return RetrainResult(True, f"candidate QLIKE {scores['candidate']:.4f} < current {scores['current']:.4f} and "
                         f"baselines (best other {best_other:.4f})", job.trigger, scores, rows, span,
                         time.perf_counter() - t0, str(path), saved_meta, packed)


class Retrainer:
    """One worker process for fine-tuning jobs (spawned on first use)."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, job: RetrainJob) -> Future:
        """Queue ``job``; a pool whose worker died (BrokenProcessPool) is replaced first."""
        from concurrent.futures.process import BrokenProcessPool

        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
        try:
            return self._pool.submit(run_retrain, job)
        except BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
            return self._pool.submit(run_retrain, job)

    def close(self, wait: bool = False) -> None:
        """Stop the worker; a job under way is abandoned unless ``wait`` (its process is
        terminated, so the end of a run does not wait for a fine-tuning nobody will use)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        procs = list(getattr(pool, "_processes", {}).values()) if not wait else []
        pool.shutdown(wait=wait, cancel_futures=True)
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=30)
