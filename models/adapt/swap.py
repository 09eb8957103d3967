"""The adaptive forecaster: an :class:`models.forecaster.LstmForecaster` that records what it
sees, watches for regime shifts, has a background process fine-tune it, and hot-swaps an
accepted model in between decisions.

Per :meth:`AdaptiveForecaster.update` (the engine's forecaster call, once per decision):

1. :meth:`poll` first: when the retrainer's future is done, its result is taken; an accepted
   candidate is swapped in (below). Live this never waits: a future not done is left alone.
2. The wrapped forecaster's ``update`` runs as usual. Its predictor is wrapped by
   :class:`_Recording`, which, on every grid step, keeps the raw input row (a ring of
   ``max_rows`` rows) and feeds the shift detector: once a forecast's horizon of H rows has
   passed, its QLIKE minus the EWMA baseline's (the guard's recursion and decay), and each
   row's log squared return.
3. Scheduling: a job is submitted when none is under way, at least ``min_new_samples`` rows
   were recorded since the data of the last job, and either ``schedule_s`` seconds of event
   time have passed since the last job (0 = no schedule) or the detector raised an alarm
   (then the job fine-tunes on the rows from the estimated change point on, and waits until
   ``min_new_samples`` rows of the new regime exist). Submitting costs one copy of the recent
   rows in the quoting thread; the executor's feeder thread pickles them to the worker
   process, which writes them to the job's ``rows.npz`` as the record of what it trained on.

The swap (between two decisions, in the quoting thread): a new predictor over the
candidate's weights (numba: the packed weights sent back by the worker, no torch in the
quoting process; TorchScript: the saved file is loaded), then its LSTM state is re-warmed
by running it over the last ``rewarm_rows`` recorded input rows (the very rows the old
model saw, oldest first, from a zero state) -- so (h, c) are what the new model would hold
had it been running all along, and the next grid step continues from there. The guard is
reset (its window held the old model's losses; the new model has just beaten the baselines
on held-out rows). Each swap is registered as a new version in the model registry (parent:
the model it replaces; data span and holdout scores) on a background thread (file copies and
index writes are kept off the quoting thread; :meth:`wait_registered`, and :meth:`close`
waits), then logged as one JSON line (logger ``mmbot.adapt``); it is shown in :meth:`status`
under ``adapt`` at once.

Test hook: :attr:`AdaptiveForecaster.block_on_retrain_s` (None live) makes :meth:`poll` wait
up to that many seconds for a job under way, so a replay at speed 0 is deterministic.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import threading
from collections import deque
from concurrent.futures import Future, TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from models.adapt.detector import Alarm, DetectorConfig, ShiftDetector, qlike_terms
from models.adapt.retrainer import FineTune, RetrainJob, RetrainResult, Retrainer
from models.forecaster import LstmForecaster, MisspecificationGuard

log = logging.getLogger("mmbot.adapt")


@dataclass
class AdaptSettings:
    """Runtime settings (from ``forecaster.adapt`` of the config). Rows = the forecaster's
    grid steps; seconds of event time."""

    schedule_s: float = 3600.0
    min_new_samples: int = 600
    max_rows: int = 20000
    rewarm_rows: int = 300
    registry: str = "runs/models"
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    tune: FineTune = field(default_factory=FineTune)


class RowRing:
    """The last ``cap`` input rows (float64 [F]) with their event times (ns), in a
    preallocated ring: O(F) per row, one copy for a snapshot."""

    def __init__(self, cap: int) -> None:
        self.cap = int(cap)
        self.X: np.ndarray | None = None  # allocated at the first row (F known then)
        self.ts = np.zeros(self.cap, np.int64)
        self.n = 0  # rows held
        self.head = 0  # next slot

    def append(self, x: np.ndarray, t_ns: int) -> None:
        if self.X is None:
            self.X = np.zeros((self.cap, len(x)), np.float64)
        self.X[self.head] = x
        self.ts[self.head] = t_ns
        self.head = (self.head + 1) % self.cap
        self.n = min(self.n + 1, self.cap)

    def clear(self) -> None:
        self.n = 0
        self.head = 0

    def __len__(self) -> int:
        return self.n

    def last(self, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the last ``k`` rows (all held when None), oldest first: (X [k, F], ts_ns [k])."""
        k = self.n if k is None else min(int(k), self.n)
        if self.X is None or k == 0:
            return np.zeros((0, 0 if self.X is None else self.X.shape[1])), np.zeros(0, np.int64)
        idx = (self.head - k + np.arange(k)) % self.cap
        return self.X[idx], self.ts[idx]


class _Recording:
    """Wraps the forecaster's predictor: records each input row and feeds the detector."""

    def __init__(self, inner, owner: "AdaptiveForecaster") -> None:
        self.inner = inner
        self.owner = owner

    def step(self, x):
        out = self.inner.step(x)
        self.owner._observe(x, out)
        return out

    def batch(self, X):
        return self.inner.batch(X)

    def reset(self) -> None:
        self.inner.reset()
        self.owner._on_reset()

    def __getattr__(self, name):  # W, layout, h, c, backend ... of the wrapped predictor
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class AdaptiveForecaster:
    """The engine's forecaster with adaptation (see the module docstring)."""

    block_on_retrain_s: float | None = None  # test hook only: wait for a job under way in poll()

    def __init__(self, fc: LstmForecaster, settings: AdaptSettings, work_dir: str | Path | None = None) -> None:
        self.fc = fc
        self.s = settings
        self.H = fc.H
        self.floor = fc.floor
        self.lam = fc.lam
        self.name = fc.name
        self.model_path = fc.path
        self.version: str | None = self._registry_version(fc.path)
        self._own_dir = work_dir is None
        self.work_dir = Path(tempfile.mkdtemp(prefix="mmbot-adapt-") if work_dir is None else work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.retrainer = Retrainer()
        self.detector = ShiftDetector(settings.detector)
        self.future: Future | None = None
        self.job: RetrainJob | None = None
        self.jobs = 0
        self.accepted = 0
        self.rejected = 0
        self.failed = 0
        self.swaps: list[dict] = []
        self.last_result: dict | None = None
        self.pending_alarm: Alarm | None = None
        self._reg_thread: threading.Thread | None = None  # the last swap's registration
        self.alarm_log: list[Alarm] = []  # every alarm over the wrapper's life (the detector restarts at a swap)
        self._job_row = 0  # row count at the end of the last job's data
        self._job_ns: int | None = None  # event time of the last job (or of the first update)
        self.rows_seen = 0  # input rows recorded over the life of this wrapper
        self.ring = RowRing(settings.max_rows)
        self._t_ns = 0
        self.adaptable = fc.meta["arch"].get("kind", "plain") == "plain"
        if not self.adaptable:
            log.warning("forecaster %s: adaptation is off: a %s model is not fine-tuned (plain models only)",
                        fc.name, fc.meta["arch"].get("kind"))
        self._reset_scoring()
        fc.predictor = _Recording(fc.predictor, self)

    # -- recording and detection (called from the forecaster's grid step) ----------------
    def _reset_scoring(self) -> None:
        self.ewma = self.fc.base_init
        self.pend: deque = deque()  # (var_model, var_base) of the last H rows, bp^2
        self.r2: deque = deque(maxlen=self.H)  # squared returns of the last H rows, bp^2

    def _on_reset(self) -> None:
        """The forecaster reset its state (a feed gap): the rows before it are not a series."""
        self.ring.clear()
        self._reset_scoring()
        self._job_row = self.rows_seen

    def _observe(self, x, out) -> None:
        x = np.asarray(x, dtype=np.float64)
        self.ring.append(x, self._t_ns)
        self.rows_seen += 1
        H = self.H
        r = float(x[0])
        r2 = r * r
        self.ewma = self.lam * self.ewma + (1.0 - self.lam) * r2
        var_b = H * self.ewma + self.floor
        var_m = math.exp(out[1])
        self.r2.append(r2)
        loss_diff = None
        if len(self.pend) >= H:
            vm, vb = self.pend.popleft()
            v = sum(self.r2) + self.floor
            if v > 0.0:
                loss_diff = qlike_terms(v, vm) - qlike_terms(v, vb)
        self.pend.append((var_m, var_b))
        lr2 = math.log(r2 + max(self.floor / H, 1e-12))
        alarm = self.detector.add(self.rows_seen, loss_diff, lr2) if self.adaptable else None
        if alarm is not None:
            log.warning("forecaster %s: shift detected (%s, %s) at row %d, change estimated at row %d",
                        self.name, alarm.signal, alarm.direction, alarm.row, alarm.change_row)
            if self.pending_alarm is None:  # the first alarm of a shift sets the change point
                self.pending_alarm = alarm
            self.alarm_log.append(alarm)

    # -- the Forecaster interface ------------------------------------------------------------
    def update(self, book, now_ns: int, trades: Sequence = ()):
        self.poll(now_ns)
        self._t_ns = now_ns  # event time stamped on the rows this update records
        f = self.fc.update(book, now_ns, trades)
        if self._job_ns is None:
            self._job_ns = now_ns
        if self.adaptable and self.future is None:
            self._maybe_submit(now_ns)
        return f

    def __getattr__(self, name):  # rows, warmed_up, forecast, guard, meta ... of the wrapped forecaster
        if name == "fc":
            raise AttributeError(name)
        return getattr(self.fc, name)

    # -- scheduling ------------------------------------------------------------------------
    def _maybe_submit(self, now_ns: int) -> None:
        s = self.s
        n = len(self.ring)
        new = self.rows_seen - self._job_row
        a = self.pending_alarm
        if a is not None:
            since_change = self.rows_seen - a.change_row
            if since_change >= s.min_new_samples and new >= s.min_new_samples:
                self._submit(now_ns, f"shift:{a.signal}:{a.direction}", max(0, n - since_change))
            return
        if s.schedule_s > 0 and new >= s.min_new_samples and now_ns - (self._job_ns or now_ns) >= s.schedule_s * 1e9:
            self._submit(now_ns, "schedule", 0)

    def _submit(self, now_ns: int, trigger: str, train_from: int) -> None:
        self.jobs += 1
        d = self.work_dir / f"job{self.jobs:04d}"  # made by the worker
        X, ts = self.ring.last()  # one copy; pickled to the worker by the executor's feeder thread
        self.job = RetrainJob(self.model_path, str(d / "rows.npz"), str(d), trigger, train_from, self.s.tune,
                              gate=self._gate_for_test, X=X, ts_ns=ts)
        self._job_row = self.rows_seen
        try:
            self.future = self.retrainer.submit(self.job)
        except Exception as e:  # noqa: BLE001 - no retraining must not mean no trading
            self.failed += 1
            self.future = None
            self._job_ns = now_ns
            self.pending_alarm = None
            log.error("forecaster %s: retrain job %d could not be started: %s: %s", self.name, self.jobs,
                      type(e).__name__, e)
            return
        self._job_ns = now_ns
        self.pending_alarm = None
        log.info("forecaster %s: retrain job %d submitted (%s, %d rows, fine-tuning from row %d)",
                 self.name, self.jobs, trigger, len(X), train_from)

    _gate_for_test: str | None = None  # test hook: the worker waits for this file before it starts

    # -- results and the swap ------------------------------------------------------------------
    def poll(self, now_ns: int | None = None) -> RetrainResult | None:
        """Take a finished job's result (between decisions); swap an accepted model in."""
        fut = self.future
        if fut is None:
            return None
        if not fut.done():
            if self.block_on_retrain_s is None:
                return None
            try:  # test hook only
                fut.result(timeout=self.block_on_retrain_s)
            except FutureTimeout:
                return None
            except Exception:  # noqa: BLE001 - reported below
                pass
        self.future = None
        try:
            res: RetrainResult = fut.result()
        except Exception as e:  # noqa: BLE001 - a failed job must not stop trading
            self.failed += 1
            self.last_result = {"accepted": False, "reason": f"failed: {type(e).__name__}: {e}"}
            log.error("forecaster %s: retrain job %d failed: %s: %s", self.name, self.jobs, type(e).__name__, e)
            return None
        self.last_result = res.summary()
        if not res.accepted:
            self.rejected += 1
            log.info("forecaster %s: retrain job %d rejected: %s", self.name, self.jobs, res.reason)
            return res
        self.accepted += 1
        self._swap(res, now_ns)
        return res

    def _swap(self, res: RetrainResult, now_ns: int | None) -> None:
        from models.inference import StatefulPredictor

        fc = self.fc
        meta = res.meta or {}
        clip = float(meta.get("normalization", {}).get("clip", 10.0))
        if fc.predictor.backend == "numba":
            pred = StatefulPredictor(None, meta["arch"], clip, "numba", packed=res.packed)
        else:
            from models.export import load_model

            module, _ = load_model(res.model_path)
            pred = StatefulPredictor(module, meta["arch"], clip, "torchscript")
        k = min(self.s.rewarm_rows, len(self.ring))
        if k:
            pred.batch(self.ring.last(k)[0])  # carries (h, c) over the recent inputs
        fc.predictor.inner = pred
        fc.guard = MisspecificationGuard(fc.guard_cfg, fc.floor)
        self._reset_scoring_keep_rows()
        parent = self.version or self.model_path
        self.model_path, self.version = str(res.model_path), None  # the job's file until it is registered
        rec = {"event": "forecaster_swap", "forecaster": self.name, "version": None, "parent": parent,
               "path": str(res.model_path), "trigger": res.trigger, "event_ns": now_ns, "rewarm_rows": k,
               "holdout_qlike": res.scores, "rows": res.rows, "span_ns": res.span_ns, "retrain_s": round(res.seconds, 3)}
        self.swaps.append(rec)
        # the registry's file copies and index writes (tens of ms on a loaded disk) run on a
        # thread, in swap order; the JSON line is logged once the version is known
        prev = self._reg_thread
        t = threading.Thread(target=self._register, args=(res, parent, rec, prev), name="mmbot-adapt-register",
                             daemon=True)
        self._reg_thread = t
        t.start()

    def _reset_scoring_keep_rows(self) -> None:
        """After a swap the pending forecasts are the old model's: score the new one afresh."""
        self._reset_scoring()
        self.detector = ShiftDetector(self.s.detector)

    def _register(self, res: RetrainResult, parent: str, rec: dict, prev: threading.Thread | None) -> None:
        """Registry entry and log line of a swap (on a thread, after the previous swap's)."""
        from models.registry import Registry

        if prev is not None:
            prev.join()
            parent = rec["parent"] = self.swaps[self.swaps.index(rec) - 1].get("version") or parent
        try:
            version, path = Registry(self.s.registry).add_adapted(
                res.model_path, res.meta or {}, parent=parent,
                adapt={"trigger": res.trigger, "holdout_qlike": res.scores, "rows": res.rows, "span_ns": res.span_ns})
        except Exception as e:  # noqa: BLE001 - the swap stands; the record says what failed
            rec["registry_error"] = f"{type(e).__name__}: {e}"
            log.error("forecaster %s: registering the swapped-in model failed: %s", self.name, rec["registry_error"])
        else:
            rec["version"], rec["path"] = version, str(path)
            if self.model_path == str(res.model_path):  # still the running model: name it by its version
                self.model_path, self.version = str(path), version
        log.warning("forecaster swap %s", json.dumps(rec, sort_keys=True))

    def wait_registered(self, timeout_s: float | None = None) -> bool:
        """Wait for the swaps' registry entries; True when all are written."""
        t = self._reg_thread
        if t is not None:
            t.join(timeout_s)
            return not t.is_alive()
        return True

    def _registry_version(self, path: str) -> str | None:
        p = Path(path)
        return p.parent.name if p.name == "model.pt" and p.parent.name.startswith("v") else None

    # -- status and shutdown -------------------------------------------------------------------
    def status(self) -> dict:
        st = self.fc.status()
        st["adapt"] = {"model": self.version or self.model_path, "retraining": self.future is not None,
                       "jobs": self.jobs, "swaps": len(self.swaps), "rejected": self.rejected, "failed": self.failed,
                       "alarms": len(self.alarm_log), "rows": len(self.ring),
                       "last_swap": self.swaps[-1] if self.swaps else None, "last_result": self.last_result}
        return st

    def adapt_line(self) -> str:
        """One line for the status panel: the model running, swaps, jobs, a job under way."""
        model = self.version or Path(self.model_path).name
        busy = ", retraining" if self.future is not None else ""
        return f"{model} ({len(self.swaps)} swaps, {self.jobs} retrain jobs, {self.rejected} rejected{busy})"

    def guard_summary(self) -> str:
        return self.fc.guard_summary() + f"; adaptation: {len(self.swaps)} swaps of {self.jobs} retrain jobs"

    def close(self) -> None:
        """Stop the retrainer (a job under way is abandoned) and remove the work folder if ours."""
        self.retrainer.close(wait=False)
        self.future = None
        if not self.wait_registered(60.0):
            log.error("forecaster %s: a swap's registry entry was still being written at shutdown", self.name)
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)


def settings_from_config(a) -> AdaptSettings:
    """:class:`AdaptSettings` from the config's ``forecaster.adapt`` (bot.config.AdaptConfig)."""
    from models.adapt.detector import PHConfig

    d = a.detector
    ph = lambda t: PHConfig(t.enabled, t.delta, t.threshold, t.min_obs, t.direction)  # noqa: E731
    t = a.tune
    return AdaptSettings(schedule_s=a.schedule_s, min_new_samples=a.min_new_samples, max_rows=a.max_rows,
                         rewarm_rows=a.rewarm_rows, registry=a.registry,
                         detector=DetectorConfig(ph(d.loss), ph(d.vol), d.cooldown_rows),
                         tune=FineTune(epochs=t.epochs, lr=t.lr, lookback=t.lookback, batch=t.batch, val_frac=t.val_frac,
                                       min_gain=t.min_gain, min_active=t.min_active, baselines=tuple(t.baselines), seed=t.seed))


def wrap_from_config(fc: LstmForecaster, a) -> AdaptiveForecaster:
    """The configured forecaster with adaptation (``forecaster.adapt.enabled``)."""
    return AdaptiveForecaster(fc, settings_from_config(a))
