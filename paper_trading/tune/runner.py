"""The tuning worker: loads each recording once, then pulls trials from the shared Optuna
study and backtests each trial's folds with the ordinary replay engine and strategy
(:func:`paper_trading.backtest.build_replay_engine`: the code that ``mmbot backtest`` runs).

Speed: a worker holds every recording's events in memory for all its trials; a trial
writes no order log (:class:`SummaryStore` keeps the PnL snapshots in memory and drops
orders and fills) and leaves one summary row in the study (the trial's user attributes:
every objective, fills, traded notional, events replayed, elapsed seconds, the last
recorded timestamp it read).

Forecasts do not depend on strategy parameters: with the forecaster on, each worker
computes a segment's forecasts once and every trial replays them
(:mod:`paper_trading.tune.forecasts`).

Determinism: a backtest has no random element (the replay venue and the strategy are
deterministic given the data and the config); each trial still gets its own seed,
``seed * 1_000_003 + trial number``, stored with the trial, which seeds Python's and
numpy's generators before its backtests.

Workers never see the held-out segment: :class:`Worker` truncates every recording at
:attr:`~paper_trading.tune.folds.Plan.cutoff_ns` unless built with ``holdout=True`` (the
final evaluation, after the study).
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import random
import signal
import socket
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from bot.config import Config, config_from_dict
from bot.errors import ConfigError
from paper_trading.tune import objectives as obj
from paper_trading.tune.folds import Plan, Segment
from paper_trading.tune.space import Space, apply_params


class SummaryStore:
    """A stand-in for :class:`bot.persistence.store.Store` that writes nothing: the engine's
    orders and fills are dropped (fills are still de-duplicated like the real store) and the
    PnL snapshots are kept in memory: ts (ns), inventory (base units), PnL (quote)."""

    installation_id = "tune"  # client-id prefix: a trial's orders never reach a venue

    def __init__(self) -> None:
        self.run_id = 0
        self._fill_keys: set = set()
        self.ts: list[int] = []
        self.q: list[float] = []
        self.pnl: list[float] = []

    def start_run(self, mode, exchange, symbol, config, started_ns=None) -> int:
        return 0

    def end_run(self, status, summary, ended_ns=None) -> None:
        pass

    def record_order(self, o) -> None:
        pass

    def record_fill(self, f) -> bool:
        key = (f.exchange, f.trade_id)
        if key in self._fill_keys:
            return False
        self._fill_keys.add(key)
        return True

    def record_pnl(self, ts_ns: int, mid: float, inv, pnl: float) -> None:
        self.ts.append(ts_ns)
        self.q.append(float(inv.base))
        self.pnl.append(pnl)

    pending = False

    def commit(self) -> None:
        pass

    def close(self) -> None:
        pass


SEGMENTS_ATTR = "segments"  # a trial's per-segment figures (see segment_row)


def trial_seed(seed: int, number: int) -> int:
    return (seed * 1_000_003 + number) % (2**32)


class Worker:
    """Runs backtests of plan segments on recordings loaded once (see the module docstring)."""

    def __init__(self, plan: Plan, *, holdout: bool = False) -> None:
        self.plan = plan
        self.holdout = holdout
        self._events: dict[int, tuple] = {}
        self._forecasts: dict[tuple, object] = {}
        self.events_replayed = 0
        self.backtest_s = 0.0

    def recording(self, rec: int):
        """(events, meta) of recording ``rec``, loaded once; truncated before the held-out
        cut-off unless this worker evaluates the held-out segment."""
        if rec not in self._events:
            from paper_trading.backtest import load_recording

            ev, meta = load_recording(self.plan.recordings[rec].path)
            if not self.holdout:
                limit = self.plan.in_sample_limit(rec)
                if limit is None:
                    raise RuntimeError(f"recording {rec} lies in the held-out segment")  # a bug: no fold uses it
                ev = ev[: int(np.searchsorted(ev["local_ts"], limit, side="left"))]
            self._events[rec] = (ev, meta)
        return self._events[rec]

    def run_segment(self, cfg: Config, seg: Segment, db_store=None) -> obj.FoldResult | None:
        """Backtest ``cfg`` on ``seg``; None when the segment is too short for the warm-up
        and one decision. ``db_store``: a real :class:`~bot.persistence.store.Store` to
        record the full run in (``--keep-best-db``) instead of the summary only."""
        from paper_trading.backtest import build_replay_engine

        if not self.holdout and seg.end_ns > self.plan.cutoff_ns:
            raise RuntimeError("a trial worker was given a segment past the held-out cut-off")  # a bug, never data
        if seg.duration_s <= cfg.replay.warmup_s + cfg.replay.interval_s:
            return None
        from paper_trading.window import events_before

        ev, meta = self.recording(seg.rec)
        events = events_before(ev, seg.end_ns)  # as `mmbot backtest --start --end` cuts a window
        store = SummaryStore()
        t0 = time.perf_counter()
        if db_store is not None:  # record the run, and keep the snapshots for the objectives
            _record = db_store.record_pnl

            def record_pnl(ts_ns, mid, inv, pnl):
                _record(ts_ns, mid, inv, pnl)
                store.record_pnl(ts_ns, mid, inv, pnl)

            db_store.record_pnl = record_pnl
        engine, source = build_replay_engine(self.plan.recordings[seg.rec].path, cfg, db_store or store, mode="backtest", speed=0.0,
                                             events_meta=(events, meta), forecaster=self.forecasts(cfg, seg, events, meta),
                                             start_ns=seg.start_ns)
        engine.handle_signals = False  # Ctrl-C is the worker's: it finishes the running trial
        from paper_trading.compiled_backtest import run_compiled, unsupported

        gc.freeze()
        try:  # the compiled loop when the trial's config allows (same results as the engine's)
            summary = run_compiled(engine, cfg) if unsupported(engine, cfg) is None else asyncio.run(engine.run())
        finally:
            gc.unfreeze()
            if db_store is not None:
                del db_store.record_pnl
                db_store.commit()
        i0 = int(np.searchsorted(events["local_ts"], seg.start_ns, side="left"))
        n = int(source.venue.i)
        self.events_replayed += n - i0
        self.backtest_s += time.perf_counter() - t0
        return obj.FoldResult(
            pnl=float(summary["pnl"]), volume_quote=float(summary["volume_quote"]), fills=int(summary["fills"]),
            snap_ts=np.asarray(store.ts, dtype=np.int64), snap_q=np.asarray(store.q), snap_pnl=np.asarray(store.pnl),
            events=n - i0, first_ts=int(events["local_ts"][i0]) if i0 < len(events) else 0,
            last_ts=int(events["local_ts"][n - 1]) if n else 0)

    def forecasts(self, cfg: Config, seg: Segment, events, meta):
        """The segment's forecasts, computed on first use and shared by every later trial
        with the same decision grid and forecaster config (see :mod:`forecasts`)."""
        from paper_trading.tune.forecasts import cache_key, precompute

        if cfg.forecaster.model.lower() == "none":
            return None
        key = cache_key(cfg, seg)
        if key not in self._forecasts:
            self._forecasts[key] = precompute(events, meta, cfg, seg.start_ns)
        return self._forecasts[key]

    def run_segments(self, cfg: Config, segs) -> list[obj.FoldResult]:
        return [r for r in (self.run_segment(cfg, s) for s in segs) if r is not None]

    def run_fold(self, cfg: Config, k: int, segs) -> tuple[list[obj.FoldResult], list[dict]]:
        """Backtest fold ``k``'s segments: (results, one figure row per segment backtested)
        (see :func:`segment_row`)."""
        res, rows = [], []
        for sg in segs:
            r = self.run_segment(cfg, sg)
            if r is not None:
                res.append(r)
                rows.append(segment_row(k, sg, r))
        return res, rows


def segment_row(k: int, seg: Segment, r: obj.FoldResult) -> dict:
    """What one segment backtest of a trial gave, stored with the trial (user attribute
    ``segments``) so that ``reproduce.sh`` can state what ``mmbot backtest --start --end`` must
    give: fold number, recording index, window [start_ns, end_ns) (ns), PnL and traded
    notional (quote currency), fills, integral of q^2 dt (base^2 s) and snapshot span (s)."""
    return {"fold": k, "rec": seg.rec, "start_ns": seg.start_ns, "end_ns": seg.end_ns, "pnl": r.pnl,
            "volume_quote": r.volume_quote, "fills": r.fills, "q2_integral": r.q2_integral, "duration_s": r.duration_s}


@dataclass
class Settings:
    """What every worker process needs (picklable: it crosses the process boundary)."""

    storage_url: str
    study_name: str
    plan: Plan
    base_config: dict  # Config.model_dump(mode="json") of the tuning config
    space: Space
    objectives: list[str]
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    timeout_s: float | None = None
    risk_penalty: float = 1000.0
    min_sharpe_minutes: int = 10
    grid_points: int = 5
    worker_index: int = 0
    min_workers: int = 1
    grace_s: int = 40
    extra: dict = field(default_factory=dict)


class _Heartbeat:
    """Records the running trial's heartbeat (Optuna's RDB storage) every ``interval`` s, so
    that if this process dies the trial is marked failed by the next worker and retried."""

    def __init__(self, storage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.interval:
            self.storage.record_heartbeat(self.trial_id)
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.storage.record_heartbeat(self.trial_id)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def run_trial(study, trial_id: int, worker: Worker, s: Settings) -> None:
    """Sample, backtest fold by fold (reporting to the pruner), and tell Optuna the result."""
    import optuna
    from optuna.trial import TrialState

    trial = optuna.Trial(study, trial_id)
    trial.set_user_attr("claimed_by", f"{socket.gethostname()}:{os.getpid()}")
    seed = trial_seed(s.seed, trial.number)
    random.seed(seed)
    np.random.seed(seed)
    t0 = time.perf_counter()
    row: dict = {"seed": seed, "worker": f"{socket.gethostname()}:{os.getpid()}"}
    values = s.space.suggest(trial)
    base = config_from_dict(s.base_config, "(tuning config)")
    try:
        cfg = apply_params(base, values)
    except ConfigError as e:
        trial.set_user_attr("error", str(e))
        study.tell(trial, state=TrialState.FAIL)
        return
    single = len(s.objectives) == 1
    results: list[obj.FoldResult] = []
    kw = dict(risk_penalty=s.risk_penalty, min_sharpe_minutes=s.min_sharpe_minutes)
    state = TrialState.COMPLETE
    seg_rows: list[dict] = []
    with _Heartbeat(study._storage, trial_id):
        for k, fold in enumerate(s.plan.folds):
            res, rows = worker.run_fold(cfg, k, fold)
            results += res
            seg_rows += rows
            row["folds_done"] = k + 1
            if single:
                v = obj.evaluate(s.objectives[0], results, **kw)
                if math.isfinite(v):
                    trial.report(v, k)
                    if k < len(s.plan.folds) - 1 and trial.should_prune():
                        state = TrialState.PRUNED
                        break
    row.update(obj.summary(results, **kw))
    row["last_ts"] = max((r.last_ts for r in results), default=0)
    row["elapsed_s"] = round(time.perf_counter() - t0, 4)
    trial.set_user_attr("summary", {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()})
    trial.set_user_attr(SEGMENTS_ATTR, seg_rows)
    if state is TrialState.PRUNED:
        study.tell(trial, state=TrialState.PRUNED)
        return
    vals = [obj.evaluate(n, results, **kw) for n in s.objectives]
    if not all(math.isfinite(v) for v in vals):
        bad = [n for n, v in zip(s.objectives, vals) if not math.isfinite(v)]
        trial.set_user_attr("error", f"objective {', '.join(bad)} undefined on this trial (no fills, or too few samples)")
        study.tell(trial, state=TrialState.FAIL)
        return
    study.tell(trial, vals if not single else vals[0])


def pop_waiting_trial(storage, study_id: int) -> int | None:
    """Claim one WAITING trial of the study (Optuna's own queue; the storage makes the
    WAITING -> RUNNING change atomic, so two workers never claim the same trial). None when
    the queue is empty: the study's trial budget is used up."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                return t._trial_id
        except UpdateFinishedTrialError:
            continue
    return None


class StopFlag:
    """Set by SIGINT/SIGTERM: the worker finishes its running trial, then stops."""

    def __init__(self) -> None:
        self.set = False

    def install(self) -> None:
        def handler(signum, frame):
            self.set = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass


def work(s: Settings, stop: StopFlag | None = None, on_trial=None) -> dict:
    """Pull and run trials until the budget is used, the timeout passes, or ``stop`` is set.
    Returns this worker's counts: trials run, events replayed, seconds in backtests, wall
    and CPU seconds of the trial loop, and the loop's start and end (Unix time, s)."""
    import optuna

    from optuna.trial import TrialState

    from paper_trading.tune.study import make_pruner, make_sampler, make_storage, quiet_optuna

    quiet_optuna()
    stop = stop or StopFlag()
    storage = make_storage(s.storage_url, s.grace_s)
    study = optuna.load_study(study_name=s.study_name, storage=storage,
                              sampler=make_sampler(s.sampler, s.seed + s.worker_index, s.space, len(s.objectives), s.grid_points),
                              pruner=make_pruner(s.pruner))
    storage = study._storage  # Optuna wraps an RDB storage in a cache: claim trials through the same object
    study_id = storage.get_study_id_from_name(s.study_name)
    worker = Worker(s.plan)
    for r in range(len(s.plan.recordings)):  # load once, before the first trial
        if s.plan.in_sample_limit(r) is not None and any(seg.rec == r for f in s.plan.folds for seg in f):
            worker.recording(r)
    _warm_up(worker, s)
    if s.min_workers > 1:
        _wait_for_workers(study, storage, study_id, s.min_workers)
    deadline = time.monotonic() + s.timeout_s if s.timeout_s else math.inf
    n = 0
    idle_since = None
    t0, c0, e0 = time.perf_counter(), time.process_time(), time.time()
    heartbeat = hasattr(storage, "get_heartbeat_interval") and storage.get_heartbeat_interval()
    while not stop.set and time.monotonic() < deadline:
        if heartbeat:
            optuna.storages.fail_stale_trials(study)
        tid = pop_waiting_trial(storage, study_id)
        if tid is None:
            # others still run trials: one may die and its trial come back to the queue (failed
            # as stale by heartbeat on PostgreSQL; re-queued by the `mmbot tune` process that
            # started the dead worker on a journal file, which notices within a second). Stay
            # until no trial runs or one is queued again (at most twice the grace period: a
            # worker killed between claiming a trial and its first heartbeat leaves a trial
            # Optuna never calls stale), so that the budget is finished even when trials take
            # milliseconds and the dead worker's trial comes back after the queue ran dry
            if storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since < 2 * s.grace_s + 5:
                    time.sleep(1.0 if heartbeat else 0.1)
                    continue
            break
        idle_since = None
        if heartbeat:
            storage.record_heartbeat(tid)  # at once: a trial without any heartbeat is never failed as stale
        run_trial(study, tid, worker, s)
        n += 1
        if on_trial is not None:
            on_trial(n)
    return {"trials": n, "events": worker.events_replayed, "backtest_s": worker.backtest_s,
            "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "loop_start": e0, "loop_end": time.time()}


def _warm_up(worker: Worker, s: Settings) -> None:
    """One short backtest of the base config before the first trial (numba's cached
    kernels load, imports finish) and the folds' forecasts, so that trials cost the same
    from the first one on."""
    cfg = config_from_dict(s.base_config, "(tuning config)")
    seg = s.plan.folds[0][0]
    span = int((cfg.replay.warmup_s + 20 * cfg.replay.interval_s) * 1e9)
    worker.run_segment(cfg, Segment(seg.rec, seg.start_ns, min(seg.end_ns, seg.start_ns + span)))
    for fold in s.plan.folds:  # the folds' forecasts (a trial that tunes the decision grid computes its own)
        for sg in fold:
            ev, meta = worker.recording(sg.rec)
            worker.forecasts(cfg, sg, ev[: int(np.searchsorted(ev["local_ts"], sg.end_ns, side="left"))], meta)
    worker.events_replayed, worker.backtest_s = 0, 0.0


def _wait_for_workers(study, storage, study_id: int, n: int, ceiling_s: float = 600.0) -> None:
    """``--min-workers``: register this worker in the study, then wait until ``n`` workers
    registered in the last ``ceiling_s`` seconds (or ``ceiling_s`` passed) before taking
    trials: processes started together then share the trials."""
    me = f"worker:{socket.gethostname()}:{os.getpid()}"
    study.set_user_attr(me, time.time())
    t_end = time.monotonic() + ceiling_s
    while time.monotonic() < t_end:
        now = time.time()
        attrs = storage.get_study_user_attrs(study_id)
        if sum(1 for k, v in attrs.items() if k.startswith("worker:") and now - float(v) < ceiling_s) >= n:
            return
        time.sleep(0.2)


def process_main(s: Settings, out_q=None) -> None:
    """Entry point of a worker process (``--jobs J`` starts J of them)."""
    stop = StopFlag()
    stop.install()
    res = work(s, stop)
    if out_q is not None:
        out_q.put(res)


def replay_holdout(plan: Plan, base_config: dict, params: dict, objectives: list[str], *, risk_penalty: float,
                   min_sharpe_minutes: int, worker: Worker | None = None, part: str = "holdout") -> dict:
    """Objectives of ``params`` on the held-out segment (``part="holdout"``) or the in-sample
    folds (``part="in_sample"``); the summary row of :func:`objectives.summary` plus the
    first timestamp read."""
    w = worker or Worker(plan, holdout=True)
    cfg = apply_params(config_from_dict(base_config, "(tuning config)"), params)
    segs = plan.holdout if part == "holdout" else [s for f in plan.folds for s in f]
    res = w.run_segments(cfg, segs)
    out = obj.summary(res, risk_penalty=risk_penalty, min_sharpe_minutes=min_sharpe_minutes)
    out["first_ts"] = min((r.first_ts for r in res), default=0)
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


__all__ = ["SummaryStore", "Worker", "Settings", "work", "process_main", "run_trial", "replay_holdout", "trial_seed"]
