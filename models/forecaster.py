"""The forecaster the engine runs: grid features -> one LSTM step -> :class:`Forecast`, with a
misspecification guard that falls back to the baselines when the model does worse.

Per call of :meth:`LstmForecaster.update` (every strategy decision, O(1) between grid
times): the trades are queued; for each grid time ``t_k = k * sample_s`` crossed since the
previous call, the feature row is computed from the book (:class:`models.features.
OnlineFeatures`), one LSTM step runs carrying (h, c), the EWMA baseline is updated, the guard
scores the forecast made ``H`` rows earlier against what happened, and a new
:class:`Forecast` is made. Between grid times the latest forecast is returned as it is.

Units of the forecast (see :mod:`models.forecast`): the model predicts the mid log return
mu (bp) and the realised variance V (bp^2) over the horizon; with m the mid at the grid
time, drift = m * expm1(mu / 1e4) (quote per base over ``horizon_s``) and
sigma = m * sqrt(V / 1e8 / horizon_s) (quote per base per sqrt(second)). Until the model has
seen ``warmup_steps`` grid rows the forecast has drift=None and sigma=None (the strategy then
uses its own estimator).

A correction model (``arch.kind == "correction"``) gets the baselines' inputs appended to
each feature row (:class:`models.baseline_inputs.BaselineState`, the same code the training
data went through); its output is already the corrected baseline. A model whose features
include ``tick_rv`` (:class:`models.features.FeatureConfig`) has the book's mid observed on
every ``update`` (:meth:`models.features.OnlineFeatures.observe`), not only at grid times.

Backends (``backend=``): ``numba`` and ``torchscript`` run the grid step inline, in ``update``
(:class:`LstmForecaster`); ``torchscript_async`` runs the *whole* grid step -- feature row,
baseline inputs, EWMA baseline, the TorchScript step, the guard, the forecast -- on a worker
thread (:class:`AsyncLstmForecaster`, :class:`models.step_worker.StepWorker`), so that the
quoting path does not pay for it (the grid step is the p99 of tick to quote: one update in
a hundred, run with cold caches):

* at a grid time the engine thread only snapshots what the features need: the top
  ``n_levels`` levels of each side (:class:`BookSnapshot`, a copy), the public trades received
  since the previous grid row (the batches as received, the containers copied), and with
  ``tick_rv`` the interval's sum of squared mid changes (observed on this thread on every
  update). That job goes to the worker, which runs exactly :meth:`LstmForecaster.update`'s
  grid step on its own :class:`LstmForecaster` (``core``). Jobs run in the order made and carry
  every trade and every grid row, so the worker's rows are those the inline path computes
  from the same events, bit for bit (tested, also while the worker lags); nothing the engine
  thread does after the snapshot reaches a row already handed over.
* the engine thread never waits: it uses the newest forecast the worker has published (each
  forecast exactly as the inline path made it at its own grid row, with that row's mid).
  ``Forecast.inputs_ns`` is that row's grid time, so the forecast's age at a decision is
  ``now_ns - inputs_ns`` (ns; the engine records it). Ages in grid rows at each grid row's
  decision are counted in ``status()["forecast_age_steps"]`` (``"0"``, ``"1"``, ``"2+"``,
  ``"none"`` = no forecast published yet); at a grid row's own decision the age is usually 1
  (the row was just handed over), a few ms later 0.
* a published forecast older than ``max_age_steps`` grid rows is *stale*: the strategy gets
  drift=None, sigma=None (source ``lstm-stale``: its own estimator, no drift) until a newer one
  arrives.
* the guard runs on the worker and scores each row's forecast as the inline path does (what
  the model said at that row, whether or not the strategy got it in time).
* a feed gap (more than ``max_gap_rows`` rows) resets the state as inline; the reset travels
  in order with the next row (rows handed over before it still run; their forecasts are not
  used).
* bound: when ``max_queue`` rows are waiting (the worker is that far behind) the forecaster
  takes them back, keeps their trades and restarts from the current row as after a gap
  (warm-up again, source ``lstm-warmup``); counted in ``status()["worker_overruns"]`` and
  logged. A failed grid step stops the worker; forecasts are then ``lstm-stale`` (logged once).
* :meth:`AsyncLstmForecaster.close` stops the thread (the engine calls it at shutdown); it
  never waits more than ``close_timeout_s`` for a step in flight. A later ``update`` starts a
  new worker whose LSTM state starts from zero (warm-up again).
* ``before_decision``: a test-only hook, called after the rows of an update are handed to the
  worker and before its output is read (e.g. ``lambda: f.worker.wait_idle(60)`` for a
  deterministic drive).

Misspecification guard (:class:`GuardConfig`). Each forecast is scored ``H`` grid rows
later, when its outcome is known: the variance forecast by QLIKE against the EWMA baseline
(RiskMetrics recursion with the decay fitted on the training data, stored in the model's
metadata), the drift by squared error against the zero forecast. Over the last ``window``
scored rows: when the model's mean QLIKE exceeds the baseline's by more than ``enter``
(relative), sigma comes from the EWMA baseline (source ``ewma``) until the model's is
below the baseline's by ``exit``; likewise the drift falls back to 0 (``zero``). Each switch
is kept in :attr:`LstmForecaster.switches` and counted per head (``status()["guard_switches"]``,
so the run summary shows it). Switches are logged (logger ``mmbot.forecaster``) with a rate
limit: at most one line per head per ``GuardConfig.log_interval_s`` seconds of event time;
switches inside that interval are counted, and once it has passed one line reports how many
there were and the state the head is in (:meth:`LstmForecaster.guard_summary` gives the totals).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from bot.market_data.base import TradeArrays
from models.features import BP, OnlineFeatures, _Q
from models.forecast import Forecast
from models.inference import StatefulPredictor

#: the forecaster's backends: the two inline ones of :class:`StatefulPredictor` and the worker thread
BACKENDS = ("numba", "torchscript", "torchscript_async", "numba_async")
INLINE_BACKENDS = ("numba", "torchscript")

log = logging.getLogger("mmbot.forecaster")

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
DEFAULT_MODEL = PRETRAINED_DIR / "default.pt"


@dataclass
class GuardConfig:
    """Misspecification guard. ``window``/``min_obs`` in scored grid rows; ``enter``/``exit``
    relative margins of the model's mean loss over the baseline's (hysteresis);
    ``log_interval_s``: at most one switch line per head per this many seconds of event time."""

    enabled: bool = True
    window: int = 600
    min_obs: int = 120
    enter: float = 0.02
    exit: float = 0.02
    drift: bool = True
    log_interval_s: float = 60.0


class _Rolling:
    """Rolling mean of (model loss, baseline loss) over the last ``n`` observations."""

    __slots__ = ("n", "q", "sm", "sb")

    def __init__(self, n: int) -> None:
        self.n = n
        self.q: deque = deque()
        self.sm = 0.0
        self.sb = 0.0

    def add(self, lm: float, lb: float) -> None:
        self.q.append((lm, lb))
        self.sm += lm
        self.sb += lb
        if len(self.q) > self.n:
            a, b = self.q.popleft()
            self.sm -= a
            self.sb -= b

    def __len__(self) -> int:
        return len(self.q)


def _ratio(r: _Rolling) -> float:
    """Model loss over baseline loss (inf when only the baseline is perfect, 1 when both are)."""
    if r.sb > 0.0:
        return r.sm / r.sb
    return math.inf if r.sm > 0.0 else 1.0


class MisspecificationGuard:
    """Scores forecasts against outcomes and decides model vs baseline, per head."""

    def __init__(self, cfg: GuardConfig, floor: float) -> None:
        self.cfg = cfg
        self.floor = floor
        self.vol = _Rolling(cfg.window)
        self.drift = _Rolling(cfg.window)
        self.vol_fallback = False
        self.drift_fallback = False

    def score(self, v_real: float, y_real: float, var_model: float, var_base: float, mu_model: float) -> None:
        v = v_real + self.floor
        x, xb = v / var_model, v / var_base
        self.vol.add(x - math.log(x) - 1.0, xb - math.log(xb) - 1.0)
        self.drift.add((y_real - mu_model) ** 2, y_real * y_real)

    def _decide(self, r: _Rolling, state: bool) -> bool:
        c = self.cfg
        if not c.enabled or len(r) < c.min_obs:
            return state
        ratio = _ratio(r)
        if not state and ratio > 1.0 + c.enter:
            return True
        if state and ratio < 1.0 - c.exit:
            return False
        return state

    def update(self) -> list[tuple[str, bool, float]]:
        """Apply the rules; returns the switches made: (head, fallback?, loss ratio)."""
        out = []
        nv = self._decide(self.vol, self.vol_fallback)
        if nv != self.vol_fallback:
            self.vol_fallback = nv
            out.append(("vol", nv, _ratio(self.vol)))
        if self.cfg.drift:
            nd = self._decide(self.drift, self.drift_fallback)
            if nd != self.drift_fallback:
                self.drift_fallback = nd
                out.append(("drift", nd, _ratio(self.drift)))
        return out


class LstmForecaster:
    """:class:`models.forecast.Forecaster` running an exported LSTM (see module docstring)."""

    def __init__(self, module, meta: dict, path: str | Path = "", backend: str = "numba",
                 guard: GuardConfig | None = None, max_gap_rows: int | None = None, packed=None) -> None:
        from models.export import check_schema

        if backend not in INLINE_BACKENDS:
            raise ValueError(f"backend must be one of {INLINE_BACKENDS} (torchscript_async: AsyncLstmForecaster), "
                             f"got {backend!r}")
        self.path = str(path)
        self.meta = meta
        self.fcfg = check_schema(meta, self.path or "model")
        self.S = self.fcfg.sample_ns
        self.H = int(meta["horizon_steps"])
        self.horizon_s = float(meta["horizon_s"])
        self.warmup = int(meta["warmup_steps"])
        self.floor = float(meta.get("var_floor_bp2", 0.0))
        base = meta.get("baseline", {})
        self.lam = float(base.get("lambda_per_row", 0.94 ** self.fcfg.sample_s))
        self.base_init = float(base.get("init_r2_bp2", 1.0))
        self.backend = backend
        self.module = module
        self.clip = float(meta["normalization"].get("clip", 10.0))
        self.predictor = StatefulPredictor(module, meta["arch"], self.clip, backend, packed=packed)
        self.age_counts = {"0": 0, "1": 0, "2+": 0, "none": 0}  # at each grid row's decision, over the forecaster's life
        self.feats = OnlineFeatures(self.fcfg)
        self._tick = self.fcfg.tick_rv  # observe the book on every update (models.features: tick_rv)
        self.base_inputs = None  # correction models: the baselines' inputs, computed online
        bi = meta.get("baseline_inputs")
        if meta["arch"].get("kind", "plain") == "correction" and bi:
            from models.baseline_inputs import BaselineSpec, BaselineState

            self.base_inputs = BaselineState(BaselineSpec.from_dict(bi["spec"]))
            self._ofi_col = self.feats.names.index("ofi")
        self.feats.track_window(self.H)
        self.guard_cfg = guard or GuardConfig()
        self.max_gap_rows = max_gap_rows if max_gap_rows is not None else max(10 * self.H, 600)
        self.switches: list[tuple[int, str, bool, float]] = []  # (event time ns, head, fallback?, loss ratio)
        self.switch_counts = {"vol": 0, "drift": 0}  # over the forecaster's life (kept across resets)
        self.lines_logged = 0
        self._log_at: dict[str, int | None] = {"vol": None, "drift": None}  # event time of the last line per head
        self._unlogged: dict[str, list] = {"vol": [], "drift": []}  # switches since that line, not logged
        self.name = str(meta.get("name", "lstm"))
        self.reset()

    # -- state ---------------------------------------------------------------------------
    def reset(self) -> None:
        self.feats.reset()
        if self.base_inputs is not None:
            self.base_inputs.reset()
        self.predictor.reset()
        self.guard = MisspecificationGuard(self.guard_cfg, self.floor)
        self.last_g: int | None = None
        self.ewma = self.base_init
        # per grid row of the last H: [var_model, var_base, mu_model, mid] of the forecast used
        # there (var_model/mu_model None: no model output was used)
        self.pending: deque = deque()
        self.forecast = Forecast(None, None, self.horizon_s, "lstm-warmup")
        self._warm_from = 0  # feature row count before the LSTM state's first row (a restart: AsyncLstmForecaster)
        self.last_model: tuple[float, float] | None = None  # (drift bp, variance bp^2) of the output in use
        self._out: tuple | None = None  # the newest model output: (t_ns of its inputs, rows, drift bp, logvar bp^2)
        self._row: tuple | None = None  # the current grid row: (t_ns, mid, var_base bp^2)

    @property
    def rows(self) -> int:
        return self.feats.rows

    @property
    def warmed_up(self) -> bool:
        return self.feats.rows >= self.warmup

    # -- the Forecaster interface -----------------------------------------------------------
    def update(self, book, now_ns: int, trades: Sequence = ()) -> Forecast | None:
        if trades:
            self.feats.add_trades(trades)
        g = now_ns // self.S
        last = self.last_g
        if last is None:
            last = g - 1
        elif g - last > self.max_gap_rows:
            log.info("forecaster: %d grid rows without an update; state reset (warm-up again)", g - last)
            pend = self.feats.pending
            self.reset()
            self.feats.pending = pend
            last = g - 1
        if self._tick:  # the mid inside the interval (tick_rv features), before the grid steps
            self.feats.observe(book)
        if g <= last:
            return self.forecast
        for j in range(last + 1, g + 1):
            self._grid_step(book, j * self.S)
        self.last_g = g
        return self.forecast

    def _grid_step(self, book, t_ns: int) -> None:
        x = self.feats.step(book, t_ns)
        if x is None:
            return
        mid = self.feats.mid
        if self.base_inputs is not None:
            x = np.concatenate([x, self.base_inputs.step(float(x[0]), float(x[self._ofi_col]), self.feats.tick_units)])
        r = x[0]
        self.ewma = self.lam * self.ewma + (1.0 - self.lam) * r * r
        var_b = self.H * self.ewma + self.floor
        self._row = (t_ns, mid, var_b)
        mu, logv = self.predictor.step(x)
        self._out = (t_ns, self.feats.rows, mu, logv)
        # score the forecast used H rows ago
        pend = self.pending
        if len(pend) >= self.H:
            vm, vb, mm, mid0 = pend.popleft()
            if vm is not None:
                v_real = self.feats.rv_units(self.H) * _Q
                y_real = math.log(mid / mid0) * BP
                self.guard.score(v_real, y_real, vm, vb, mm)
                for head, fb, ratio in self.guard.update():
                    self._switched(t_ns, head, fb, ratio)
        if self._unlogged["vol"] or self._unlogged["drift"]:
            self._flush_switch_logs(t_ns)
        pend.append([None, var_b, None, mid])
        self._use_output()
        self.age_counts["0"] += 1  # inline: the output of this very row

    def _use_output(self) -> None:
        """Build the forecast from this grid row's model output; the row's entry in
        :attr:`pending` (scored ``H`` rows later) gets the model's variance and drift."""
        t_row, mid, var_b = self._row
        out = self._out
        pend = self.pending
        if out is None:
            self.forecast = Forecast(None, None, self.horizon_s, "lstm-warmup")
            return
        t_in, rows, mu, logv = out
        var_m = math.exp(logv)
        self.last_model = (mu, var_m)
        if rows - self._warm_from < self.warmup:
            self.forecast = Forecast(None, None, self.horizon_s, "lstm-warmup", t_in)
            if pend:  # scored during warm-up too
                pend[-1][0], pend[-1][2] = var_m, mu
            return
        if pend:
            pend[-1][0], pend[-1][2] = var_m, mu
        vol_src = "ewma" if self.guard.vol_fallback else "lstm"
        drift_src = "zero" if self.guard.drift_fallback else "lstm"
        var = var_b if self.guard.vol_fallback else var_m
        drift = 0.0 if self.guard.drift_fallback else mid * math.expm1(mu / BP)
        sigma = mid * math.sqrt(var / (BP * BP) / self.horizon_s)
        src = "lstm" if vol_src == drift_src == "lstm" else f"vol:{vol_src},drift:{drift_src}"
        self.forecast = Forecast(drift, sigma, self.horizon_s, src, t_in)

    def _run_job(self, job: tuple) -> tuple | None:
        """One grid row handed over by :class:`AsyncLstmForecaster` (run on its worker thread):
        the same steps, in the same order, as :meth:`update` makes inline. ``job`` is
        ``(generation, t_ns, book snapshot, trade batches, tick sum or None, reset?, restart?)``;
        returns ``(generation, t_ns, forecast)``, or None when no row was produced (no valid
        book yet)."""
        gen, t_ns, snap, batches, tick, reset, restart = job
        if reset:  # a gap in the feed (or the worker's bound): as update() resets, keeping the queued trades
            pend = self.feats.pending
            self.reset()
            self.feats.pending = pend
        elif restart:  # a new LSTM state from this row on (after close); features and guard carry on
            self.predictor.reset()
            self._out = None
            self._warm_from = self.feats.rows
        for b in batches:
            self.feats.add_trades(b)
        if tick is not None:
            self.feats.tick_acc = tick  # observed on the engine thread up to this row's book
        rows0 = self.feats.rows
        self._grid_step(snap, t_ns)
        if self.feats.rows == rows0:
            return None
        return gen, t_ns, self.forecast

    def after_decision(self) -> None:
        """Nothing to hand over (inline backends); see :meth:`AsyncLstmForecaster.after_decision`."""

    def close(self) -> None:
        """Nothing to stop (inline backends); the engine calls it at shutdown."""

    # -- guard switches: counted always, logged with a rate limit ----------------------------
    def _switched(self, t_ns: int, head: str, fallback: bool, ratio: float) -> None:
        self.switches.append((t_ns, head, fallback, ratio))
        self.switch_counts[head] += 1
        last = self._log_at[head]
        if not self._unlogged[head] and (last is None or t_ns - last >= self.guard_cfg.log_interval_s * 1e9):
            self._log_switch(t_ns, head, fallback, ratio, 0)
        else:  # held back; _flush_switch_logs reports it once the interval has passed
            self._unlogged[head].append((fallback, ratio))

    def _flush_switch_logs(self, t_ns: int) -> None:
        """Once a head's interval has passed, one line for the switches it held back."""
        for head, held in self._unlogged.items():
            last = self._log_at[head]
            if held and (last is None or t_ns - last >= self.guard_cfg.log_interval_s * 1e9):
                fb, ratio = held[-1]
                self._log_switch(t_ns, head, fb, ratio, len(held))

    def _log_switch(self, t_ns: int, head: str, fallback: bool, ratio: float, held: int) -> None:
        """Log a switch (``held`` = 0) or, rate-limited, ``held`` switches since the last line."""
        base = "EWMA" if head == "vol" else "zero-drift"
        if held:
            last = self._log_at[head]
            log.warning("forecaster %s: %d more LSTM %s guard switches in the last %.0f s (log rate-limited, %d in all): "
                        "now %s (loss ratio %.3f)", self.name, held, head, (t_ns - last) * 1e-9 if last else 0.0,
                        self.switch_counts[head], f"on the {base} baseline" if fallback else "on the model", ratio)
        elif fallback:
            log.warning("forecaster %s: LSTM %s worse than the %s baseline over the last %d forecasts "
                        "(loss ratio %.3f): falling back to the baseline", self.name, head, base,
                        len(self.guard.vol if head == "vol" else self.guard.drift), ratio)
        else:
            log.warning("forecaster %s: LSTM %s recovered (loss ratio %.3f): using the model again", self.name, head, ratio)
        self._log_at[head] = t_ns
        self._unlogged[head] = []
        self.lines_logged += 1

    def guard_summary(self) -> str:
        """One line for the end of a run: switches per head, how many were logged, the state now."""
        c = self.switch_counts
        g = self.guard
        return (f"forecaster {self.name} guard: {c['vol'] + c['drift']} switches (vol {c['vol']}, drift {c['drift']}), "
                f"{self.lines_logged} log lines (at most one per head per {self.guard_cfg.log_interval_s:g} s); now "
                f"vol from {'the EWMA baseline' if g.vol_fallback else 'the model'}, drift from "
                f"{'zero' if g.drift_fallback else 'the model'}")

    def status(self) -> dict:
        g = self.guard
        return {"rows": self.rows, "warmed_up": self.warmed_up, "source": self.forecast.source,
                "vol_fallback": g.vol_fallback, "drift_fallback": g.drift_fallback,
                "vol_loss_ratio": _ratio(g.vol) if len(g.vol) else None,
                "drift_loss_ratio": _ratio(g.drift) if len(g.drift) else None,
                "guard_switches": dict(self.switch_counts), "guard_log_lines": self.lines_logged,
                "backend": self.backend, "forecast_age_steps": dict(self.age_counts)}


class _LevelsSnapshot:
    """One side of a book snapshot: the read interface ``levels(n)`` that
    :meth:`models.features.OnlineFeatures.step` uses, over levels copied at the grid time."""

    __slots__ = ("lv",)

    def __init__(self, lv: list) -> None:
        self.lv = lv

    def levels(self, n: int) -> list:
        return self.lv[:n]


class BookSnapshot:
    """The top levels of a book at a grid time (lists of (price, size) tuples, best first),
    as :meth:`OrderBook.levels <bot.orderbook.BookSide.levels>` returns them: a copy, so later
    updates of the live book do not reach a row already handed over."""

    __slots__ = ("bids", "asks")

    def __init__(self, bids: list, asks: list) -> None:
        self.bids = _LevelsSnapshot(bids)
        self.asks = _LevelsSnapshot(asks)


class AsyncLstmForecaster:
    """The ``torchscript_async`` backend: the whole grid step on a worker thread (see the
    module docstring). Holds an inline :class:`LstmForecaster` (backend ``inner``:
    ``torchscript``, or ``numba`` for the ``numba_async`` variant), :attr:`core`, which only
    the worker thread runs; attributes not defined here (``feats``, ``guard``, ``pending``,
    ``last_model``, ``switches``, ...) are the core's."""

    def __init__(self, module, meta: dict, path: str | Path = "", guard: GuardConfig | None = None,
                 max_gap_rows: int | None = None, max_age_steps: int = 2, max_queue: int | None = None,
                 close_timeout_s: float = 1.0, inner: str = "torchscript", packed=None) -> None:
        if inner not in INLINE_BACKENDS:
            raise ValueError(f"inner must be one of {INLINE_BACKENDS}, got {inner!r}")
        if module is None and inner == "torchscript":
            raise ValueError("backend torchscript_async needs the TorchScript module")
        self.backend = f"{inner}_async"
        self._args = (module, meta, path, guard, max_gap_rows, inner, packed)
        self.core = self._new_core()
        c = self.core
        self.meta, self.path, self.name, self.fcfg = meta, c.path, c.name, c.fcfg
        self.S, self.H, self.horizon_s, self.module, self.clip = c.S, c.H, c.horizon_s, module, c.clip
        self.max_gap_rows = c.max_gap_rows
        self.max_age_steps = int(max_age_steps)
        self.max_queue = int(max_queue) if max_queue is not None else self.max_gap_rows
        self.close_timeout_s = float(close_timeout_s)
        self.before_decision = None  # test-only hook (see the module docstring)
        self.age_counts = {"0": 0, "1": 0, "2+": 0, "none": 0}  # at each grid row's decision
        self.worker_overruns = 0
        self.worker = None  # the StepWorker (made at the first grid row)
        self._tick_obs = OnlineFeatures(self.fcfg) if self.fcfg.tick_rv else None  # observe() on this thread
        self._trades: list = []  # trade batches received since the last row handed over
        self._gen = 0  # outputs of an older generation (before a reset) are not used
        self._restart = False  # the next row starts a new LSTM state (after close)
        self._reset_next = False  # the next row starts from a zero state (after a gap or an overrun)
        self._outbox: list = []  # rows snapshotted, not yet handed to the worker (see after_decision)
        self._deferred = False  # the caller calls after_decision: hand rows over there, not in update
        self._pub: tuple | None = None  # the newest output of this generation: (t_ns of its inputs, Forecast)
        self.last_g: int | None = None
        self.forecast = Forecast(None, None, self.horizon_s, "lstm-warmup")

    def _new_core(self) -> LstmForecaster:
        module, meta, path, guard, max_gap_rows, inner, packed = self._args
        core = LstmForecaster(module, meta, path, backend=inner, guard=guard, max_gap_rows=max_gap_rows, packed=packed)
        # TorchScript profiles and optimizes a method on its first calls (tens to hundreds of ms,
        # holding the GIL): do it here, at load, not on the worker while the engine quotes
        for _ in range(3):
            core.predictor.step(np.zeros(int(meta["arch"]["n_features"])))
        core.predictor.reset()
        return core

    def __getattr__(self, name: str):
        if name == "core":
            raise AttributeError(name)
        return getattr(self.core, name)

    @property
    def predictor(self):
        return self.core.predictor

    @predictor.setter
    def predictor(self, p) -> None:  # e.g. models.adapt's recording wrapper, tests' gated predictor
        self.core.predictor = p

    @property
    def rows(self) -> int:
        return self.core.feats.rows

    @property
    def warmed_up(self) -> bool:
        return self.core.feats.rows >= self.core.warmup

    def reset(self) -> None:
        """Start again from a zero state at the next grid row (in order: rows already handed
        over still run first; their outputs are not used)."""
        self._gen += 1
        self._pub = None
        self._reset_next = True
        self.forecast = Forecast(None, None, self.horizon_s, "lstm-warmup")
        if self._tick_obs is not None:
            self._tick_obs.reset()

    # -- the Forecaster interface (the engine thread) -----------------------------------------------
    def update(self, book, now_ns: int, trades: Sequence = ()) -> Forecast | None:
        if self._outbox:  # rows of an earlier update not handed over (after_decision not called): first, in order
            self.after_decision()
        if trades:  # kept (the container copied) for the next row handed over: none lost, none early
            self._trades.append(trades if isinstance(trades, TradeArrays) else tuple(trades))
        S = self.S
        g = now_ns // S
        last = self.last_g
        if last is None:
            last = g - 1
        elif g - last > self.max_gap_rows:
            log.info("forecaster: %d grid rows without an update; state reset (warm-up again)", g - last)
            self.reset()
            last = g - 1
        obs = self._tick_obs
        if obs is not None:  # the mid inside the interval (tick_rv), before the grid rows
            obs.observe(book)
        if g <= last:
            w = self.worker
            if w is not None and w.results:
                self._take(g * S)
            return self.forecast
        n = self.fcfg.n_levels
        snap = BookSnapshot(book.bids.levels(n), book.asks.levels(n))
        for j in range(last + 1, g + 1):
            tick = None
            if obs is not None:
                tick, obs.tick_acc = obs.tick_acc, 0
            batches, self._trades = self._trades, []
            self._outbox.append((self._gen, j * S, snap, batches, tick, self._reset_next, self._restart))
            self._reset_next = self._restart = False
        self.last_g = g
        if not self._deferred or self.before_decision is not None:
            self.after_decision(_from_update=True)
        if self.before_decision is not None:
            self.before_decision()
        self._take(g * S)
        pub = self._pub
        if pub is None:
            self.age_counts["none"] += 1
        else:
            age = (g * S - pub[0]) // S
            self.age_counts["0" if age <= 0 else "1" if age == 1 else "2+"] += 1
        return self.forecast

    def after_decision(self, _from_update: bool = False) -> None:
        """Hand the rows snapshotted by the last :meth:`update` to the worker. The engine calls
        it once its decision is made and the orders are sent (:meth:`bot.engine.Engine.step`):
        waking the worker thread can get the waker preempted for a scheduler slice on a loaded
        machine (the woken thread runs first), which must not land inside tick to quote. Once a
        caller has called it, :meth:`update` leaves the hand-over to it (and still hands over,
        first and in order, any rows left from an earlier update); until then, and with the
        ``before_decision`` test hook, :meth:`update` hands the rows over itself."""
        if not _from_update:
            self._deferred = True
        box = self._outbox
        if box:
            self._outbox = []
            for job in box:
                self._submit(job)

    def _submit(self, job: tuple) -> None:
        job = (self._gen,) + job[1:]  # the generation now (an overrun earlier in the same hand-over started a new one)
        w = self.worker
        if w is None:
            from models.step_worker import StepWorker

            w = self.worker = StepWorker(self.core._run_job, max_queue=self.max_queue,
                                         name=f"mmbot-forecaster-{self.name}")
        if w.submit(job):
            return
        if w.error is not None:
            return  # logged by the worker; forecasts are stale from now on
        # the worker is max_queue rows behind: take the rows back (keeping their trades, in order)
        # and restart the state from this row, as after a gap
        self.worker_overruns += 1
        log.warning("forecaster %s: the model worker is %d grid rows behind (bound max_queue); its rows are dropped "
                    "and the state restarts (warm-up of %d rows on the strategy's own estimator)",
                    self.name, w.queued, self.core.warmup)
        dropped = w.drop_waiting()
        self.reset()
        self._reset_next = False  # this row carries the reset
        batches = [b for d in dropped for b in d[3]] + job[3]
        w.submit((self._gen, job[1], job[2], batches, job[4], True, False))

    def _take(self, t_row: int) -> None:
        """Use the worker's newest output (never waits); the forecast at grid time ``t_row``."""
        w = self.worker
        r = w.poll() if w is not None else None
        if r is not None and r[0] == self._gen:
            self._pub = (r[1], r[2])
        pub = self._pub
        if pub is None:
            if self.forecast.source != "lstm-warmup" or self.forecast.inputs_ns is not None:
                self.forecast = Forecast(None, None, self.horizon_s, "lstm-warmup")
            return
        t_in, f = pub
        if (t_row - t_in) // self.S > self.max_age_steps or (w is not None and w.error is not None and t_row != t_in):
            if self.forecast.source != "lstm-stale" or self.forecast.inputs_ns != t_in:
                self.forecast = Forecast(None, None, self.horizon_s, "lstm-stale", t_in)
            return
        self.forecast = f

    def close(self) -> None:
        """Stop the worker thread (if any) without waiting more than ``close_timeout_s`` for a
        grid step in flight. The LSTM state is gone with it: a later ``update`` starts a new
        worker whose LSTM state starts from zero (warm-up again; the guard and the features
        carry on) -- unless the old thread was still in a step, then from a new core (features
        and guard too), since that thread may still touch the old one."""
        w, self.worker = self.worker, None
        if w is None:
            return
        ended = w.close(self.close_timeout_s)
        self._gen += 1
        self._pub = None
        self.forecast = Forecast(None, None, self.horizon_s, "lstm-warmup")
        if ended:
            box = self._outbox
            if box:  # a row snapshotted, not yet handed over: the new state starts there
                box[0] = box[0][:6] + (True,)
            else:
                self._restart = True
        else:
            self.core = self._new_core()
            self.last_g = None

    def status(self) -> dict:
        w = self.worker
        return {**self.core.status(), "source": self.forecast.source, "backend": self.backend,
                "forecast_age_steps": dict(self.age_counts), "worker_overruns": self.worker_overruns,
                "worker_queued": w.queued if w else 0, "worker_failed": bool(w is not None and w.error is not None)}


def resolve_model_path(path_or_default: str | Path) -> Path:
    if str(path_or_default) in ("default", ""):
        return DEFAULT_MODEL
    return Path(path_or_default)


def load_forecaster(path_or_default: str | Path = "default", *, backend: str = "numba",
                    guard: GuardConfig | None = None, **kw) -> "LstmForecaster | AsyncLstmForecaster":
    """Load a model file (or ``"default"``: the shipped pretrained model) as a forecaster.
    ``backend``: one of :data:`BACKENDS`; ``kw``: more :class:`LstmForecaster` arguments
    (``max_age_steps``, ``max_queue``, ``close_timeout_s``, ``max_gap_rows``).

    Raises :class:`~bot.errors.DataError` naming the file when it is missing, corrupt, of
    another format, or its feature schema does not match this code."""
    from models.export import load_model

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    path = resolve_model_path(path_or_default)
    if backend in ("numba", "numba_async") and path.is_file():
        # the packed weights of this very file (keyed by its hash), read without torch
        from models.weights_cache import load_packed

        cached = load_packed(path)
        if cached is not None:
            meta, W, layout = cached
            if backend == "numba_async":
                return AsyncLstmForecaster(None, meta, path, guard=guard, inner="numba", packed=(W, layout), **kw)
            return LstmForecaster(None, meta, path, backend=backend, guard=guard, packed=(W, layout), **kw)
    module, meta = load_model(path)
    if backend in ("torchscript_async", "numba_async"):
        return AsyncLstmForecaster(module, meta, path, guard=guard, inner=backend[:-6], **kw)
    fc = LstmForecaster(module, meta, path, backend=backend, guard=guard, **kw)
    if backend == "numba":
        from models.weights_cache import store_packed

        store_packed(path, meta, fc.predictor.W, fc.predictor.layout)
    return fc
