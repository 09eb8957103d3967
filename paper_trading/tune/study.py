"""Optuna storage, samplers, pruners, and the study's trial budget.

Storage (``--storage``):

* unset: Optuna's journal file storage, ``OUT/study.journal``; all ``--jobs`` processes of
  one machine share it (appends under a blocking file lock; claiming a queued trial is
  atomic; see :mod:`paper_trading.tune.journal` for the lock and which writes are fsynced);
* ``postgresql://user:pass@host:port/db`` (or ``postgresql+psycopg://...``): one study
  shared by any number of processes on any number of machines (psycopg 3 driver; Optuna's
  RDB storage, which claims trials with row locks);
* ``journal:PATH``: a journal file elsewhere (e.g. on a shared file system);
* ``sqlite:///PATH``: fine for one worker process; SQLite has no row locks, so two processes
  may claim the same queued trial: use the journal file for ``--jobs`` above 1.

With RDB storage (PostgreSQL) the workers record a heartbeat every ``grace / 4`` seconds
(``--heartbeat-grace``, default ``GRACE_S``); a trial whose worker died is marked failed after
``grace`` seconds without a heartbeat by a worker that looks (``optuna.storages.fail_stale_trials``,
before every claim, and while waiting: a worker that finds the queue empty while other
trials still run waits for them, at most twice the grace period, so that it can take over a
dead worker's trial) and
re-queued once with the same parameters (Optuna's retry callback), so the study still ends
with its full number of finished trials. The journal file has no
heartbeats: when one of the ``--jobs`` worker processes dies, ``mmbot tune`` itself marks
that process's running trial failed and re-queues it.

The trial budget is Optuna's own trial queue: the process that creates the study enqueues
``--trials`` WAITING trials (no fixed parameters: the sampler picks them when a worker
claims one) and records the study's settings in a user attribute; every worker, on any
machine, claims queued trials until none is left. So the study holds exactly ``--trials``
finished trials however many workers share it, and an interrupted study resumes where it
stopped with the same command.
"""

from __future__ import annotations

import time
from pathlib import Path

from bot.errors import ConfigError
from bot.persistence.dbpath import redact

SAMPLERS = ("tpe", "random", "cmaes", "grid", "nsga2")
PRUNERS = ("median", "hyperband", "none")
GRACE_S = 40
SETTINGS_ATTR = "mmbot_tune"


def storage_url(storage: str | None, out: Path) -> str:
    if storage:
        if storage.startswith("postgresql://"):
            return "postgresql+psycopg://" + storage[len("postgresql://"):]
        return storage
    out.mkdir(parents=True, exist_ok=True)
    return f"journal:{(out / 'study.journal').resolve()}"


def quiet_optuna() -> None:
    """Optuna's INFO log and its experimental-feature warnings (heartbeats) off."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def make_storage(url: str, grace_s: int = GRACE_S):
    """An Optuna storage for ``url``; ConfigError with the reason when it cannot be opened.
    ``grace_s``: RDB storages fail a running trial after this many seconds without heartbeat."""
    import optuna

    quiet_optuna()

    if url.startswith("journal:"):
        from paper_trading.tune.journal import journal_storage

        path = url[len("journal:"):]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return journal_storage(path)
    if "://" not in url:
        raise ConfigError(f"--storage {url!r}: expected a database URL (sqlite:///..., postgresql://...) or journal:PATH")
    kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    cb_kw = ({"heartbeat_stale_trial_callback": retry(max_retry=1)} if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback")
             else {"failed_trial_callback": retry(max_retry=1)})
    # processes that start together race to create Optuna's tables (a unique-key error in
    # PostgreSQL's catalog for the loser): the tables exist on the next attempt
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=dict(kwargs), heartbeat_interval=max(1, grace_s // 4),
                                              grace_period=grace_s, **cb_kw)
        except Exception as e:  # noqa: BLE001 - driver and connection errors of any kind
            last = e
            if "duplicate key" not in str(e) and "already exists" not in str(e):
                break
            time.sleep(0.2 * (attempt + 1))
    msg = str(last).strip().splitlines()[0] if str(last).strip() else type(last).__name__
    raise ConfigError(f"--storage {redact(url)}: cannot open the study storage: {msg}") from None




def make_sampler(name: str, seed: int, space, n_objectives: int, grid_points: int = 5):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(grid_points), seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ConfigError(f"--sampler: unknown sampler {name!r} (one of {', '.join(SAMPLERS)})")


def check_sampler(name: str, n_objectives: int, space) -> None:
    if name not in SAMPLERS:
        raise ConfigError(f"--sampler: unknown sampler {name!r} (one of {', '.join(SAMPLERS)})")
    if name == "cmaes" and n_objectives > 1:
        raise ConfigError("--sampler cmaes optimises one objective; use nsga2 (or tpe) for two")
    if name == "cmaes" and all(p.kind == "choice" for p in space.params):
        raise ConfigError("--sampler cmaes needs at least one numeric parameter in the space")


def make_pruner(name: str):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner: unknown pruner {name!r} (one of {', '.join(PRUNERS)})")


def open_study(storage, name: str, directions: list[str], budget: int, settings: dict, wait_s: float = 120.0):
    """Create the study with its trial budget, or join it. Returns (study, created).

    Joining checks that the study was created with the same objectives, space and folds
    (``settings["fingerprint"]``): ConfigError otherwise, naming the study."""
    import optuna

    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=False)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        created = False
    if created:
        for _ in range(budget):
            study.enqueue_trial({})
        study.set_user_attr(SETTINGS_ATTR, settings)
        return study, True
    deadline = time.monotonic() + wait_s
    while SETTINGS_ATTR not in study.user_attrs:  # its creator is still enqueueing
        if time.monotonic() > deadline:
            raise ConfigError(f"study {name!r} exists but was not created by mmbot tune (no {SETTINGS_ATTR} attribute)")
        time.sleep(0.5)
    have = study.user_attrs[SETTINGS_ATTR]
    if have.get("fingerprint") != settings.get("fingerprint"):
        raise ConfigError(f"study {name!r} was created with other settings (objectives, space, data or folds): "
                          "use another --study name, or the same options")
    return study, False


def requeue_dead(study, dead: set[str], claim_ceiling_s: float = 60.0) -> int:
    """Mark RUNNING trials claimed by the dead workers (``host:pid``) failed and queue a
    fresh trial for each; returns how many.

    A worker claims a trial (WAITING -> RUNNING) and then writes ``claimed_by``: two writes.
    One killed between them leaves a RUNNING trial with no owner. A live worker writes its
    ``claimed_by`` right after its claim, so a RUNNING trial that still has none after
    ``claim_ceiling_s`` (a generous ceiling: microseconds on an idle machine) belongs to a
    dead worker and is re-queued too (its ``requeued`` attribute says so)."""
    from optuna.trial import TrialState

    def running():
        return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))

    def fail(t, why: str) -> None:
        study._storage.set_trial_user_attr(t._trial_id, "requeued", why)
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        study.enqueue_trial({})

    n = 0
    for t in running():
        if t.user_attrs.get("claimed_by") in dead:
            fail(t, f"worker {t.user_attrs['claimed_by']} died while running it")
            n += 1
    unowned = {t._trial_id for t in running() if "claimed_by" not in t.user_attrs}
    deadline = time.monotonic() + claim_ceiling_s
    while unowned and time.monotonic() < deadline:
        time.sleep(0.05)  # polling a condition (an owner appears), not waiting a fixed time
        unowned &= {t._trial_id for t in running() if "claimed_by" not in t.user_attrs}
    for t in running():
        if t._trial_id in unowned:
            fail(t, f"claimed by a worker that died before writing its name (dead: {', '.join(sorted(dead))})")
            n += 1
    return n


def load_settings(storage, name: str) -> dict:
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise ConfigError(f"--study {name!r}: no such study in the storage") from None
    if SETTINGS_ATTR not in study.user_attrs:
        raise ConfigError(f"study {name!r} was not created by mmbot tune")
    return study
