"""``mmbot tune``: tune strategy parameters with Optuna on walk-forward backtests.

Order of work: every input is checked (config, search space against the config, objectives,
sampler, data, folds, storage) before any trial runs; then the study is created with its
trial budget or joined; ``--jobs`` worker processes pull trials from it; then the best
trials (or the Pareto set) are re-run on the held-out segment, and ``best.yaml``,
``trials.csv``, ``report.html`` and ``summary.json`` are written to ``--out``.

Ctrl-C (SIGINT) or SIGTERM: every worker finishes its running trial and stops; the outputs
are written from the finished trials; the same command resumes the study.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from bot.errors import ConfigError
from bot.persistence.dbpath import redact

DEFAULT_BACKTEST_CONFIG = Path("config/backtest.yaml")


def _split(values: list[str]) -> list[str]:
    return [x.strip() for v in values for x in v.split(",") if x.strip()]


def _recordings(data: list[Path]):
    from bot.recording.io import open_recording
    from paper_trading.backtest import load_recording
    from paper_trading.tune.folds import Recording

    recs = []
    for d in data:
        if not d.exists() or d.is_file():
            load_recording(d)  # the backtest's own one-line error
        meta = open_recording(d).meta
        first, last = meta.get("first_local_ts"), meta.get("last_local_ts")
        if first is None or last is None:
            ev, _ = load_recording(d)
            first, last = int(ev["local_ts"][0]), int(ev["local_ts"][-1])
        recs.append(Recording(str(d.resolve()), int(first), int(last)))
    return recs


def tune(
    data: list[Path] = typer.Option([], "--data", help="recording directory (repeat for several recordings of one market)"),
    space: Optional[Path] = typer.Option(None, "--space", help="search space YAML (see config/tune.yaml)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="base config (default: config/backtest.yaml if present)"),
    trials: int = typer.Option(50, "--trials", min=1, help="finished trials the study holds (its budget, shared by all workers)"),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="stop pulling new trials after this many seconds"),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="worker processes on this machine"),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage (default: journal file OUT/study.journal); postgresql://... to share a study between machines; journal:PATH"),
    study_name: str = typer.Option("mmbot-tune", "--study", help="study name: processes with the same --study and --storage cooperate"),
    objective: list[str] = typer.Option(["pnl"], "--objective", help="pnl | risk_adjusted_pnl | sharpe | pnl_per_volume | inventory_risk; two (comma-separated or repeated) for a Pareto front"),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="tpe | random | cmaes | grid | nsga2 (default: tpe, nsga2 for two objectives)"),
    pruner: str = typer.Option("median", "--pruner", help="median | hyperband | none (one objective only)"),
    seed: int = typer.Option(0, "--seed", help="seed of the samplers (worker w: seed + w) and of each trial"),
    out: Path = typer.Option(Path("runs/tune"), "--out", help="output directory"),
    folds: int = typer.Option(3, "--folds", help="walk-forward folds of the in-sample data"),
    holdout: float = typer.Option(0.2, "--holdout", help="final fraction of the data held out from every trial"),
    top: int = typer.Option(3, "--top", min=1, help="best trials re-run on the held-out segment (one objective)"),
    risk_penalty: float = typer.Option(1000.0, "--risk-penalty", help="phi of risk_adjusted_pnl, quote/(base^2 s)"),
    min_sharpe_minutes: int = typer.Option(10, "--min-sharpe-minutes", help="sharpe: fewest one-minute PnL changes"),
    grid_points: int = typer.Option(5, "--grid-points", min=1, help="grid sampler: values per numeric parameter"),
    min_workers: int = typer.Option(1, "--min-workers", min=1, help="wait (at most 10 min) until this many worker processes, on any machine, joined the study before taking trials"),
    heartbeat_grace: int = typer.Option(40, "--heartbeat-grace", min=2, help="PostgreSQL: fail (and re-queue) a running trial after this many seconds without its worker's heartbeat"),
    keep_best_db: bool = typer.Option(False, "--keep-best-db", help="re-run the best trial's folds with the full order log into OUT/best.db"),
    report_only: bool = typer.Option(False, "--report", help="only rebuild the outputs from --storage/--study"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar (on a terminal)"),
    json_out: bool = typer.Option(False, "--json", help="print summary.json to stdout"),
) -> None:
    """Tune strategy parameters with Optuna on walk-forward backtests of recordings."""
    import optuna

    from paper_trading.tune import objectives as obj
    from paper_trading.tune import study as st

    from paper_trading.tune.study import quiet_optuna

    quiet_optuna()
    url = st.storage_url(storage, out)
    if report_only:
        if storage is None and not (out / "study.journal").exists():
            raise ConfigError(f"--report: no study at {out / 'study.journal'}; give --storage and --study")
        stor = st.make_storage(url)
        study = st.load_settings(stor, study_name)
        settings = study.user_attrs[st.SETTINGS_ATTR]
        _outputs(study, settings, out, settings["objectives"], None, json_out)
        return

    objectives = obj.check_names(_split(objective))
    sampler = sampler or ("nsga2" if len(objectives) > 1 else "tpe")
    if pruner not in st.PRUNERS:
        raise ConfigError(f"--pruner: unknown pruner {pruner!r} (one of {', '.join(st.PRUNERS)})")
    if not data:
        raise ConfigError("--data: give at least one recording directory (mmbot import ... --out DIR)")
    if space is None:
        raise ConfigError("--space: give a search space file (see config/tune.yaml)")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--timeout must be positive, got {timeout}")
    from bot.config import load_config
    from paper_trading.tune.folds import make_plan
    from paper_trading.tune.runner import Settings
    from paper_trading.tune.space import load_space

    if config is None and DEFAULT_BACKTEST_CONFIG.exists():
        config = DEFAULT_BACKTEST_CONFIG
    base = load_config(config)
    from bot.config import build_forecaster

    build_forecaster(base)  # a bad model file fails here, before any trial
    sp = load_space(space, base)
    st.check_sampler(sampler, len(objectives), sp)
    recs = _recordings(data)
    min_fold = base.replay.warmup_s + 10 * base.replay.interval_s
    plan = make_plan(recs, folds, holdout, min_fold)
    if "sharpe" in objectives:
        avail = sum(int(max(0.0, s.duration_s - base.replay.warmup_s) // 60) for f in plan.folds for s in f)
        if avail < max(min_sharpe_minutes, 2):
            raise ConfigError(f"--objective sharpe needs at least {min_sharpe_minutes} one-minute PnL changes (--min-sharpe-minutes); "
                              f"the folds give about {avail}: use longer recordings, fewer folds, or another objective")
    if sampler == "grid":
        n_grid = math.prod(len(v) for v in sp.grid(grid_points).values())
        if trials > n_grid:
            print(f"mmbot tune: the grid has {n_grid} points: --trials {trials} lowered to {n_grid}", file=sys.stderr)
            trials = n_grid
    base_json = base.model_dump(mode="json")
    # the same study on another machine may read the same recordings from another path
    plan_id = [{k: v for k, v in row.items() if k != "recording"} for row in plan.describe()]
    fp_src = json.dumps({"objectives": objectives, "space": [repr(p) for p in sp.params], "plan": plan_id,
                         "config": base_json, "risk_penalty": risk_penalty, "min_sharpe_minutes": min_sharpe_minutes},
                        sort_keys=True, default=str)
    settings = {"study": study_name, "objectives": objectives, "sampler": sampler, "pruner": pruner, "seed": seed,
                "budget": trials, "space": {p.path: repr(p) for p in sp.params}, "plan": plan.describe(),
                "cutoff_ns": plan.cutoff_ns, "base_config": base_json, "risk_penalty": risk_penalty,
                "min_sharpe_minutes": min_sharpe_minutes, "fingerprint": hashlib.sha256(fp_src.encode()).hexdigest()}
    if jobs > 1 and url.startswith("sqlite"):
        raise ConfigError("--storage sqlite: SQLite has no row locks, so several workers could run the same trial; "
                          "for --jobs above 1 use the default journal file (or journal:PATH) or PostgreSQL")
    stor = st.make_storage(url, heartbeat_grace)
    directions = [obj.DIRECTIONS[o] for o in objectives]
    study, created = st.open_study(stor, study_name, directions, trials, settings)
    out.mkdir(parents=True, exist_ok=True)
    s0 = Settings(url, study_name, plan, base_json, sp, objectives, sampler, pruner if len(objectives) == 1 else "none",
                  seed, timeout, risk_penalty, min_sharpe_minutes, grid_points, min_workers=min_workers,
                  grace_s=heartbeat_grace)
    t0 = time.perf_counter()
    stats, interrupted, crashed = _run_workers(s0, jobs, study, progress and sys.stdout.isatty() and not json_out, objectives)
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=study_name, storage=stor)
    if plan.holdout:
        _evaluate_holdout(study, settings, objectives, top, plan)
    extra = {"jobs": jobs, "wall_s": round(wall, 3), "interrupted": interrupted, "workers": stats, "storage": redact(url)}
    if crashed:
        extra["crashed_workers"] = crashed
    summary = _outputs(study, settings, out, objectives, extra, json_out)
    if keep_best_db and summary.get("best") is not None:
        summary["best_db"] = str(_keep_best(study, settings, objectives, plan, out))
    if interrupted:
        print(f"mmbot tune: interrupted: {summary['finished']} of {trials} trials finished; the same command resumes the study",
              file=sys.stderr)
        sys.exit(130)
    if crashed:
        raise ConfigError(f"{len(crashed)} worker process(es) failed (exit codes {crashed}); finished trials are kept")


def _run_workers(s0, jobs: int, study, show: bool, objectives: list[str]):
    """Run ``jobs`` workers (this process when 1, else child processes) until the budget is
    used; returns (per-worker stats, interrupted, failed exit codes)."""
    import dataclasses

    from paper_trading.tune.runner import StopFlag, process_main, work

    bar = _Progress(study, objectives, show)
    if jobs == 1:
        stop = StopFlag()
        old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        stop.install()
        try:
            with bar:
                res = work(s0, stop, on_trial=lambda n: bar.update())
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)
        return [res], stop.set, []
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=process_main, args=(dataclasses.replace(s0, worker_index=w), q), daemon=False) for w in range(jobs)]
    stop = StopFlag()
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    stop.install()
    forwarded = False
    dead: set[int] = set()
    stats = []

    def requeue_crashed() -> None:
        # a worker that died: its running trial fails and a fresh one is queued at once, for
        # the workers still running (RDB storages also do this by heartbeat)
        from paper_trading.tune.study import requeue_dead

        new = {p.pid for p in procs if p.exitcode not in (None, 0) and p.pid not in dead}
        if new:
            dead.update(new)
            requeue_dead(study, {f"{socket.gethostname()}:{pid}" for pid in new})

    try:
        for p in procs:
            p.start()
        with bar:
            while any(p.is_alive() for p in procs):
                if stop.set and not forwarded:
                    for p in procs:
                        if p.is_alive() and p.pid:
                            os.kill(p.pid, signal.SIGINT)
                    forwarded = True
                for p in procs:
                    p.join(timeout=0.5 / jobs)
                while not q.empty():
                    stats.append(q.get())
                requeue_crashed()
                bar.update()
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    while not q.empty():
        stats.append(q.get())
    requeue_crashed()
    crashed = [p.exitcode for p in procs if p.exitcode != 0]
    return stats, stop.set, crashed


class _Progress:
    """A rich progress bar over the study's finished trials, with the best value so far."""

    def __init__(self, study, objectives: list[str], show: bool) -> None:
        self.study, self.objectives, self.show = study, objectives, show
        self.budget = study.user_attrs.get("mmbot_tune", {}).get("budget", 0)
        self._last = 0.0

    def __enter__(self):
        if self.show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("tune"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[best]}"),
                                TimeElapsedColumn())
            self.task = self.bar.add_task("tune", total=self.budget, best="")
            self.bar.__enter__()
            self.update(force=True)
        return self

    def update(self, force: bool = False) -> None:
        if not self.show or (not force and time.monotonic() - self._last < 1.0):
            return
        self._last = time.monotonic()
        from optuna.trial import TrialState

        ts = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
        done = [t for t in ts if t.state == TrialState.COMPLETE]
        best = ""
        if done and len(self.objectives) == 1:
            best = f"best {self.objectives[0]} {self.study.best_value:.4g}"
        elif done:
            best = f"Pareto set {len(self.study.best_trials)}"
        self.bar.update(self.task, completed=len(ts), best=best)

    def __exit__(self, *exc) -> None:
        if self.show:
            self.update(force=True)
            self.bar.__exit__(*exc)


def _evaluate_holdout(study, settings: dict, objectives: list[str], top: int, plan) -> None:
    """Re-run the best trials (or the Pareto set) on the held-out segment of ``plan`` (this
    machine's paths); stored in the study."""
    from paper_trading.tune.report import HOLDOUT_ATTR, selected_trials
    from paper_trading.tune.runner import Worker, replay_holdout

    sel = selected_trials(study, objectives, top)
    if not sel:
        return
    w = Worker(plan, holdout=True)
    rows = []
    for t in sel:
        ho = replay_holdout(plan, settings["base_config"], t.params, objectives, risk_penalty=settings["risk_penalty"],
                            min_sharpe_minutes=settings["min_sharpe_minutes"], worker=w)
        rows.append({"trial": t.number, "params": t.params, "in_sample": t.user_attrs.get("summary", {}), "held_out": ho})
    study.set_user_attr(HOLDOUT_ATTR, {"rows": rows, "cutoff_ns": plan.cutoff_ns})


def _plan_of(settings: dict):
    """The Plan again, from the settings stored in the study."""
    from paper_trading.tune.folds import Plan, Recording, Segment

    rows = settings["plan"]
    paths: list[str] = []
    for r in rows:
        if r["recording"] not in paths:
            paths.append(r["recording"])
    recs = []
    for p in paths:
        mine = [r for r in rows if r["recording"] == p]
        recs.append(Recording(p, min(r["start_ns"] for r in mine), max(r["end_ns"] for r in mine)))
    folds: dict[str, list] = {}
    held = []
    for r in rows:
        seg = Segment(paths.index(r["recording"]), r["start_ns"], r["end_ns"])
        if r["part"] == "held-out":
            held.append(seg)
        else:
            folds.setdefault(r["part"], []).append(seg)
    return Plan(tuple(recs), tuple(tuple(v) for v in folds.values()), tuple(held), settings["cutoff_ns"])


def _outputs(study, settings: dict, out: Path, objectives: list[str], extra: dict | None, json_out: bool) -> dict:
    from optuna.trial import TrialState

    from paper_trading.tune import report as rep

    out.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    by_state: dict[str, int] = {}
    for t in trials:
        by_state[t.state.name.lower()] = by_state.get(t.state.name.lower(), 0) + 1
    summary: dict = {"study": study.study_name, "objectives": objectives, "trials": by_state,
                     "finished": sum(1 for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)),
                     "trials_csv": str(rep.write_trials_csv(study, objectives, out / "trials.csv"))}
    best = rep.best_trial(study, objectives)
    if best is not None:
        summary["best"] = {"trial": best.number, "values": dict(zip(objectives, best.values)), "params": best.params}
        summary["best_yaml"] = str(rep.write_best_yaml(settings, best, objectives, out / "best.yaml"))
        from paper_trading.tune.reproduce import write_reproduce

        script = write_reproduce(settings, best, objectives, out / "reproduce.sh")
        summary["reproduce"] = str(script) if script is not None else None
    else:
        summary["best"] = None
    ho = study.user_attrs.get(rep.HOLDOUT_ATTR, {})
    summary["holdout"] = ho.get("rows", [])
    summary["report"] = str(rep.write_report(study, objectives, out))
    if extra:
        summary.update(extra)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    if json_out:
        print(json.dumps(summary, default=str))
    else:
        print(f"study {study.study_name}: {', '.join(f'{k} {v}' for k, v in sorted(by_state.items()))}")
        if best is not None:
            print(f"best trial {best.number}: {', '.join(f'{n} {v:.6g}' for n, v in zip(objectives, best.values))} "
                  f"params {json.dumps(best.params)}")
            print(f"config: {summary['best_yaml']}")
            if summary.get("reproduce"):
                print(f"reproduce in mmbot backtest: {summary['reproduce']}")
        if summary["holdout"]:
            print("in-sample / held-out:")
            print(rep.holdout_table(summary["holdout"], objectives), end="")
        print(f"report: {summary['report']}")
    return summary


def _keep_best(study, settings: dict, objectives: list[str], plan, out: Path) -> Path:
    """--keep-best-db: the best trial's in-sample folds again, each a run in OUT/best.db."""
    from bot.persistence.store import open_store
    from paper_trading.tune.report import best_config, best_trial
    from paper_trading.tune.runner import Worker

    best = best_trial(study, objectives)
    cfg = best_config(settings, best.params)
    db = out / "best.db"
    w = Worker(plan)
    for f in plan.folds:
        for seg in f:
            store = open_store(str(db))
            try:
                w.run_segment(cfg, seg, db_store=store)
            finally:
                store.close()
    return db
