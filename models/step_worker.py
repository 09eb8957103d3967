"""A worker thread that runs the forecaster's LSTM grid steps off the quoting path.

The ``torchscript_async`` backend of :class:`models.forecaster.LstmForecaster`: the engine
thread computes each grid row's feature vector (cheap) and hands it here with
:meth:`StepWorker.submit`; this thread runs the TorchScript step
(:class:`models.inference.StatefulPredictor`, backend ``torchscript``) and appends the output to a results deque, which the engine thread reads
with :meth:`StepWorker.poll` without waiting.

Ordering: jobs are run strictly in the order submitted, one at a time, on one thread, so the
LSTM state (h, c) sees every grid row in time order, none skipped. A job carries a
*generation*; :meth:`StepWorker.reset` drops the queued jobs and starts a new generation, and
the thread resets (h, c) to zero before the first job of a new generation. Results carry the
generation of their job, so a caller can ignore the output of a job that was in flight at a
reset.

Bound: :meth:`submit` refuses (returns False) when ``max_queue`` jobs are waiting; the caller
decides what that means (the forecaster resets and warms up again; see its docstring).

Shutdown: :meth:`close` drops the waiting jobs, asks the thread to stop and waits for it at
most ``timeout_s`` (a model call in flight is not interrupted; the thread is a daemon and
ends after that call). It never hangs on a busy or blocked worker.

GIL: a TorchScript call from Python holds the GIL for most of its duration (measured with torch
2.13: a thread looping over ``forward`` leaves another Python thread gaps of up to the 5 ms
switch interval), so the worker releases it between steps (``time.sleep(0)``) and, on the
quoting thread, an event that arrives while a step runs can wait for that one step (tens of
us). Live, the engine thread is idle between events (waiting on the socket without the GIL),
which is when the worker runs.

Threads: nothing here calls ``torch.set_num_threads`` (that setting is process-wide in torch);
the step runs with whatever intra-op thread count the process has. For a model of this size
(hidden 8 to 64) torch does not split the ops across threads anyway.

Timestamps in jobs and results are the grid times of the inputs, ns since the epoch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque

import numpy as np

log = logging.getLogger("mmbot.forecaster")


class StepWorker:
    """Runs ``predictor.step(x)`` for each submitted row, in order, on its own thread.

    ``predictor`` is owned by this worker (its (h, c) state is touched by the worker thread
    only). Results are tuples ``(generation, t_ns, rows, drift_bp, logvar_bp2)``; ``rows``
    is whatever the caller passed (the forecaster passes the feature row count).

    The hand-over is a ``queue.SimpleQueue`` (its ``put`` never blocks and takes no lock the
    worker holds while running Python code) and a deque of results; the caller's side never
    takes the condition variable, which only the worker and :meth:`wait_idle` use."""

    def __init__(self, predictor, max_queue: int = 600, name: str = "mmbot-forecaster") -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.predictor = predictor
        self.max_queue = int(max_queue)
        self.name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()  # (generation, t_ns, x float64[F] copy, rows) or None (stop)
        self.results: deque = deque()  # appended by the worker thread, popped by the caller
        self._cv = threading.Condition()  # wait_idle only
        self._stop = False
        self.generation = 0
        self.error: BaseException | None = None  # the exception that ended the thread, if any
        self.submitted = 0  # jobs put (caller's thread)
        self.dropped = 0  # jobs taken back by reset/close (caller's thread)
        self.finished = 0  # jobs the worker took: run, or skipped as of an old generation (worker thread)
        self.steps_done = 0  # model calls made (worker thread)
        self._thread: threading.Thread | None = None

    # -- caller side (the engine thread) -------------------------------------------------------
    @property
    def queued(self) -> int:
        """Jobs submitted and not yet finished or dropped (one in flight included)."""
        return self.submitted - self.dropped - self.finished

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, t_ns: int, x: np.ndarray, rows: int) -> bool:
        """Queue one grid row (``x`` is copied); False (nothing queued) when ``max_queue``
        jobs are waiting, or the worker failed or was closed. Never blocks."""
        if self._stop or self.error is not None or self._jobs.qsize() >= self.max_queue:
            return False
        self.submitted += 1
        self._jobs.put((self.generation, int(t_ns), np.array(x, dtype=np.float64), rows))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return True

    def _drop_waiting(self) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self.dropped += 1

    def reset(self) -> None:
        """Drop the waiting jobs; the next job starts from a zero state (new generation)."""
        self.generation += 1
        self._drop_waiting()
        self.results.clear()

    def poll(self) -> tuple | None:
        """The newest result of the current generation, or None if there is none since the
        last poll. Does not wait. Older results are discarded (they were superseded)."""
        newest = None
        res = self.results
        gen = self.generation
        while res:
            r = res.popleft()
            if r[0] == gen:
                newest = r
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
        self._drop_waiting()
        self._jobs.put(None)  # wakes the worker if it waits for a job
        with self._cv:
            self._cv.notify_all()
        t = self._thread
        if t is None:
            return True
        t.join(timeout_s)
        if t.is_alive():
            log.warning("forecaster worker %s still in a model call after %.1f s; left to end on its own (daemon thread)",
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
        gen = None
        pred = self.predictor
        cv = self._cv
        jobs = self._jobs
        while not self._stop:
            job = jobs.get()  # blocks without the GIL
            if job is None or self._stop:
                break
            g, t_ns, x, rows = job
            if g == self.generation:
                if g != gen:
                    pred.reset()
                    gen = g
                try:
                    mu, logv = pred.step(x)
                except BaseException as e:  # noqa: BLE001 - reported to the forecaster, which falls back
                    log.error("forecaster worker %s: model step failed: %s: %s; forecasts fall back to the baseline",
                              self.name, type(e).__name__, e, exc_info=e)
                    self.error = e
                    break
                self.results.append((g, t_ns, rows, mu, logv))
                self.steps_done += 1
            self.finished += 1
            time.sleep(0)  # release the GIL between steps: a backlog must not keep the quoting thread waiting
            if self._jobs.qsize() == 0:  # idle: tell wait_idle (the quoting path never takes this lock)
                with cv:
                    cv.notify_all()
        with cv:
            cv.notify_all()
