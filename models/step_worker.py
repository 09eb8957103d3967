"""A worker thread that runs the forecaster's grid steps off the quoting path.

The ``torchscript_async`` backend (:class:`models.forecaster.AsyncLstmForecaster`): at a grid
time the engine thread only snapshots what the features need (the top book levels, the trades
received since the previous grid row, the tick observer's sum) and hands that *job* here with
:meth:`StepWorker.submit`; this thread runs ``handler(job)`` -- the whole synchronous grid step:
feature row, baselines, the TorchScript model step, the guard, the forecast -- and appends the
handler's result to a results deque, which the engine thread reads with :meth:`StepWorker.poll`
without waiting.

Ordering: jobs are run strictly in the order submitted, one at a time, on one thread, so the
feature state and the LSTM state (h, c) see every grid row and every trade in time order,
none skipped. The worker knows nothing about what a job means; resets (a gap in the feed, the
bound below) travel as flags inside the jobs, in order, so a reset happens exactly between the
rows it separates.

Bound: :meth:`submit` refuses (returns False) when ``max_queue`` jobs are waiting; the caller
decides what that means (it takes the waiting jobs back with :meth:`drop_waiting`, keeps their
trades and restarts the state: see :class:`models.forecaster.AsyncLstmForecaster`).

Shutdown: :meth:`close` drops the waiting jobs, asks the thread to stop and waits for it at
most ``timeout_s`` (a job in flight is not interrupted; the thread is a daemon and ends after
that job). It never hangs on a busy or blocked worker.

GIL: the grid step is Python (features, guard) plus a TorchScript call, all holding the GIL,
so an event that arrives while a job runs can wait for it (tens of us; longer if the OS
preempts this thread while it holds the GIL on a loaded machine). The worker releases the GIL
between jobs (``time.sleep(0)``). Live, the engine thread is idle between events (waiting on
the socket without the GIL), which is when the worker runs.

Threads: nothing here calls ``torch.set_num_threads`` (that setting is process-wide in torch).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Any, Callable

log = logging.getLogger("mmbot.forecaster")


class StepWorker:
    """Runs ``handler(job)`` for each submitted job, in order, on its own thread.

    Results (the handler's return values other than None) are appended to :attr:`results`;
    :meth:`poll` hands the newest to the caller. The hand-over is a ``queue.SimpleQueue``
    (its ``put`` never blocks and takes no lock the worker holds while running Python code)
    and a deque of results; the caller's side never takes the condition variable, which only
    the worker and :meth:`wait_idle` use."""

    def __init__(self, handler: Callable[[Any], Any], max_queue: int = 600, name: str = "mmbot-forecaster") -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.handler = handler
        self.max_queue = int(max_queue)
        self.name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()  # jobs, or None (stop)
        self.results: deque = deque()  # appended by the worker thread, popped by the caller
        self._cv = threading.Condition()  # wait_idle only
        self._stop = False
        self.error: BaseException | None = None  # the exception that ended the thread, if any
        self.submitted = 0  # jobs put (caller's thread)
        self.dropped = 0  # jobs taken back by drop_waiting/close (caller's thread)
        self.finished = 0  # jobs the worker ran (worker thread)
        self.steps_done = 0  # jobs run without an exception (worker thread)
        self._thread: threading.Thread | None = None

    # -- caller side (the engine thread) -------------------------------------------------------
    @property
    def queued(self) -> int:
        """Jobs submitted and not yet finished or dropped (one in flight included)."""
        return self.submitted - self.dropped - self.finished

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, job: Any) -> bool:
        """Queue one job (the caller must not change it afterwards); False (nothing queued)
        when ``max_queue`` jobs are waiting, or the worker failed or was closed. Never blocks."""
        if self._stop or self.error is not None or self._jobs.qsize() >= self.max_queue:
            return False
        self.submitted += 1
        self._jobs.put(job)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return True

    def drop_waiting(self) -> list:
        """Take back the jobs not yet started, in submission order (a job in flight stays)."""
        out = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return out
            if job is not None:
                self.dropped += 1
                out.append(job)

    def poll(self) -> Any | None:
        """The newest result, or None if there is none since the last poll. Does not wait.
        Older results are discarded (they were superseded)."""
        newest = None
        res = self.results
        while res:
            newest = res.popleft()
        return newest

    def _idle(self) -> bool:
        return self.finished + self.dropped >= self.submitted or self._stop or self.error is not None

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every submitted job has run (or the worker failed or stopped); True if
        so before ``timeout_s``. For tests and benchmarks that need a deterministic drive;
        the quoting path never calls it."""
        with self._cv:
            return self._cv.wait_for(self._idle, timeout_s)

    def close(self, timeout_s: float = 1.0) -> bool:
        """Drop waiting jobs, stop the thread; wait for it at most ``timeout_s`` seconds.
        True if the thread has ended (or never started). Idempotent."""
        self._stop = True
        self.drop_waiting()
        self._jobs.put(None)  # wakes the worker if it waits for a job
        with self._cv:
            self._cv.notify_all()
        t = self._thread
        if t is None:
            return True
        t.join(timeout_s)
        if t.is_alive():
            log.warning("forecaster worker %s still in a grid step after %.1f s; left to end on its own (daemon thread)",
                        self.name, timeout_s)
            return False
        return True

    def join(self, timeout_s: float) -> bool:
        """Wait for the thread to end (after :meth:`close`); True if it has."""
        t = self._thread
        if t is None:
            return True
        t.join(timeout_s)
        return not t.is_alive()

    # -- the worker thread ----------------------------------------------------------------------
    def _run(self) -> None:
        handler = self.handler
        cv = self._cv
        jobs = self._jobs
        while not self._stop:
            job = jobs.get()  # blocks without the GIL
            if job is None or self._stop:
                break
            try:
                r = handler(job)
            except BaseException as e:  # noqa: BLE001 - reported to the forecaster, which falls back
                log.error("forecaster worker %s: grid step failed: %s: %s; forecasts fall back to the strategy's "
                          "own estimator", self.name, type(e).__name__, e, exc_info=e)
                self.error = e
                self.finished += 1
                break
            if r is not None:
                self.results.append(r)
            self.steps_done += 1
            self.finished += 1
            time.sleep(0)  # release the GIL between jobs: a backlog must not keep the quoting thread waiting
            if jobs.qsize() == 0:  # idle: tell wait_idle (the quoting path never takes this lock)
                with cv:
                    cv.notify_all()
        with cv:
            cv.notify_all()
