"""The journal file storage of `mmbot tune` workers (paper_trading.tune.journal): a worker
waiting for the journal lock blocks in the kernel instead of polling with growing sleeps,
and a trial's parameter, intermediate-value and attribute writes are not fsynced one by
one (the trial's state changes are), while every write is visible to other processes."""

import os
import threading
import time
from pathlib import Path

import optuna
import pytest

from paper_trading.tune.study import make_storage


def test_trial_writes_fsync_only_at_state_changes(tmp_path, monkeypatch):
    path = tmp_path / "study.journal"
    storage = make_storage(f"journal:{path}")
    study = optuna.create_study(storage=storage, study_name="s")
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    trial = study.ask()  # creates the trial (RUNNING): fsynced
    assert len(calls) == 1
    x = trial.suggest_float("x", 0.0, 1.0)
    trial.suggest_int("n", 1, 5)
    trial.suggest_categorical("m", ["a", "b"])
    trial.report(1.5, 0)
    trial.report(2.5, 1)
    trial.set_user_attr("summary", {"pnl": 2.5})
    assert len(calls) == 1  # six writes, none fsynced on its own
    study.tell(trial, 2.5 + x)  # the result: fsynced, with everything before it in the file
    assert len(calls) == 2
    # another process's view (a fresh storage reading the file) has every write
    t = optuna.load_study(study_name="s", storage=make_storage(f"journal:{path}")).trials[0]
    assert t.state.name == "COMPLETE" and t.value == 2.5 + x
    assert set(t.params) == {"x", "n", "m"} and t.intermediate_values == {0: 1.5, 1: 2.5}
    assert t.user_attrs == {"summary": {"pnl": 2.5}}


def _blocked_flock_waiters(path: Path) -> int:
    """Blocked flock requests on ``path`` listed in /proc/locks (lines with '->')."""
    ino = os.stat(path).st_ino
    n = 0
    for line in Path("/proc/locks").read_text().splitlines():
        f = line.split()
        if "->" in f and "FLOCK" in f and any(x.endswith(f":{ino}") for x in f):
            n += 1
    return n


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
def test_lock_waiter_blocks_in_kernel_and_wakes_on_release(tmp_path, monkeypatch):
    path = tmp_path / "study.journal"
    holder = make_storage(f"journal:{path}")
    optuna.create_study(storage=holder, study_name="s")
    waiter = make_storage(f"journal:{path}")
    slept = []
    real_sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda s: (slept.append(s), real_sleep(s))[1])
    lock = holder._backend._lock
    lock.acquire()
    done = threading.Event()

    def write():
        optuna.load_study(study_name="s", storage=waiter).set_user_attr("k", 1)
        done.set()

    th = threading.Thread(target=write, daemon=True)
    th.start()
    lock_file = Path(getattr(lock, "path", str(path) + ".lock"))
    # wait (generous ceiling) until the writer is either blocked on the lock in the kernel or
    # polling it with sleeps (what Optuna's default symlink lock does)
    t_end = time.monotonic() + 120
    while not slept and not (lock_file.exists() and _blocked_flock_waiters(lock_file)):
        assert time.monotonic() < t_end, "the writer neither blocked on nor polled the lock"
        real_sleep(0.01)
    assert not done.is_set()  # it cannot write while the lock is held
    lock.release()
    assert done.wait(120)
    th.join()
    assert slept == []  # no polling: the kernel woke the waiter
    assert optuna.load_study(study_name="s", storage=make_storage(f"journal:{path}")).user_attrs == {"k": 1}


def test_requeue_dead_takes_back_a_trial_claimed_by_a_worker_killed_before_it_wrote_its_name(tmp_path):
    """A worker claims a trial (WAITING -> RUNNING) and then writes ``claimed_by``; killed
    between the two writes it leaves a RUNNING trial with no owner. requeue_dead fails it and
    queues a fresh trial (the budget is kept), and leaves a trial whose live owner wrote its
    name alone."""
    from optuna.trial import TrialState

    from paper_trading.tune.runner import pop_waiting_trial
    from paper_trading.tune.study import requeue_dead

    storage = make_storage(f"journal:{tmp_path / 'study.journal'}")
    study = optuna.create_study(storage=storage, study_name="s")
    for _ in range(2):
        study.enqueue_trial({})
    sid = storage.get_study_id_from_name("s")
    orphan = pop_waiting_trial(storage, sid)  # the dead worker's claim, no name written
    live = pop_waiting_trial(storage, sid)
    storage.set_trial_user_attr(live, "claimed_by", "host:1")  # a live worker's trial
    assert requeue_dead(study, {"host:2"}, claim_ceiling_s=0.5) == 1
    trials = {t._trial_id: t for t in study.get_trials(deepcopy=False)}
    assert trials[orphan].state == TrialState.FAIL and "died" in trials[orphan].user_attrs["requeued"]
    assert trials[live].state == TrialState.RUNNING and "requeued" not in trials[live].user_attrs
    assert [t.state for t in trials.values()].count(TrialState.WAITING) == 1  # the replacement
