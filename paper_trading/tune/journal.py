"""Optuna's journal file storage, as ``mmbot tune`` workers of one machine share it.

Optuna's :class:`~optuna.storages.journal.JournalFileBackend` appends every storage write
(a suggested parameter, an intermediate value, a user attribute, a state change: about 14
per trial of a 6-parameter, 3-fold study) under a lock file and fsyncs each one. Two
things made that the cost of a second worker:

* the default lock (a symlink) is polled: a worker that finds it taken sleeps 1, 2, 4 ...
  ms, up to 1 s, so on a loaded machine (the holder descheduled inside its critical
  section) a waiter oversleeps by far more than the lock was held;
* every append waits for the disk (fsync, milliseconds on a busy disk) while holding the
  lock, so the other worker waits for it too.

:class:`FlockLock` is a blocking ``flock(2)`` on ``PATH.flock``: a waiter sleeps in the
kernel and wakes when the holder releases (or dies: the kernel drops a dead process's lock,
so no stale-lock grace period is needed). :class:`TrialJournalBackend` fsyncs only the
writes that change what a study holds for good: study creation and attributes, trial
creation and trial state changes (a claim, a result); a trial's parameters, intermediate
values and attributes are written (the other processes read them at once) and made
durable by its next state change, which they precede in the file. A machine crash (not a
process crash: written data is in the page cache) can therefore lose only what a running
trial wrote, and a running trial is lost in a crash anyway.

All processes sharing a journal must use the same lock: use ``mmbot tune`` of one version
(or :func:`journal_storage`) for every worker of a study. ``flock`` on NFS is emulated by
POSIX record locks (Linux 2.6.12 and later), which serialise processes of different
machines as well.
"""

from __future__ import annotations

import fcntl
import json
import os

from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import BaseJournalFileLock
from optuna.storages.journal._file import get_lock_file
from optuna.storages.journal._storage import JournalOperation

# trial writes that need no fsync of their own: the trial's next state change makes them durable
_LAZY = {int(JournalOperation.SET_TRIAL_PARAM), int(JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE),
         int(JournalOperation.SET_TRIAL_USER_ATTR), int(JournalOperation.SET_TRIAL_SYSTEM_ATTR)}


class FlockLock(BaseJournalFileLock):
    """Exclusive ``flock(2)`` on ``<journal>.flock``, blocking in the kernel (no polling)."""

    def __init__(self, journal_path: str) -> None:
        self.path = journal_path + ".flock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            raise RuntimeError("FlockLock.release without acquire")
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


class TrialJournalBackend(JournalFileBackend):
    """A journal file backend with :class:`FlockLock` that fsyncs only durable writes (see
    the module docstring); reading is Optuna's."""

    def __init__(self, file_path: str) -> None:
        super().__init__(file_path, lock_obj=FlockLock(file_path))
        self.path = file_path
        self.fsyncs = 0  # fsync calls made (tests and the throughput bench read it)

    def append_logs(self, logs: list[dict]) -> None:
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode("utf-8")
        with get_lock_file(self._lock):
            with open(self.path, "ab") as f:
                f.write(data)
                f.flush()
                if any(log.get("op_code") not in _LAZY for log in logs):
                    os.fsync(f.fileno())
                    self.fsyncs += 1


def journal_storage(path: str):
    """An Optuna JournalStorage on the journal file at ``path`` (created if missing)."""
    import optuna

    return optuna.storages.JournalStorage(TrialJournalBackend(path))
