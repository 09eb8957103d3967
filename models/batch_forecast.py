"""A whole replay's forecasts from the TorchScript module's batch forward, equal to the step path.

The forecaster sees only the market (a replay's book does not depend on our orders), so the
forecast at each strategy decision of a backtest is known before the backtest runs. The step
path (:meth:`models.forecaster.LstmForecaster.update` inside the engine) runs one model step
per grid time crossed; here the same forecaster runs in three passes:

1. **features**: the replay's decisions drive an :class:`~models.forecaster.LstmForecaster`
   whose predictor only records each grid row's input (float32, as the model receives it) and
   where the LSTM state is reset (a gap of ``max_gap_rows`` grid rows resets the forecaster);
2. **batch forward**: the TorchScript module's ``forward_seq`` runs over those rows in chunks
   of ``chunk_rows``, the LSTM state (h, c) carried from chunk to chunk and zeroed at resets;
3. **guard**: the same decisions drive a second forecaster whose predictor plays those
   outputs back in order (checking that each input row is the recorded one), so the EWMA
   baseline, the misspecification guard (its switches and log lines) and each
   :class:`~models.forecast.Forecast` come from the very code of the step path.

The result is a :class:`ForecastTable` (one row per decision: time ns, drift, sigma, horizon,
source) and its :class:`TableForecaster`, which the engine queries in place of the model.

Threads: torch's intra-op thread count is left as the user set it (``threads`` sets it only
for the batch forward and restores it afterwards).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from models.forecast import Forecast

log = logging.getLogger(__name__)

# decisions(on_decision): drives one fresh replay, calling on_decision(ts_ns, book, trades) per decision
Decisions = Callable[[Callable[[int, object, object], None]], None]

HEADS = ("vol", "drift")
FORECASTER_LOG = "mmbot.forecaster"
_NO_WEIGHTS = (np.zeros(0, np.float32), np.zeros(0, np.int64))  # the predictor is replaced: never read


@dataclass
class ForecastTable:
    """Forecasts at a replay's decision times.

    ``ts_ns``: decision times, ns since epoch, increasing; ``drift``: expected mid change over
    the horizon, quote per base (valid where ``has_drift``); ``sigma``: quote per base per
    sqrt(second) (valid where ``has_sigma``); ``horizon_s``: seconds; ``source``: index into
    ``sources`` (-1: the forecaster returned None); ``inputs_ns``: grid time (ns) of the row the
    forecast was computed from (-1: none, :attr:`Forecast.inputs_ns` None); ``status``: the forecaster's
    ``status()`` after the last decision. The guard's switches and the forecaster's log lines,
    each with the index of the decision that made it (``*_row``), so that a run on the table
    shows them when it reaches that decision: ``sw_ts`` (grid time ns), ``sw_head`` (0 vol,
    1 drift), ``sw_fallback`` (now on the baseline), ``sw_ratio`` (loss ratio); ``log_level``
    (logging level), ``log_msg`` (the line, logger ``mmbot.forecaster``)."""

    ts_ns: np.ndarray
    drift: np.ndarray
    has_drift: np.ndarray
    sigma: np.ndarray
    has_sigma: np.ndarray
    horizon_s: np.ndarray
    source: np.ndarray
    sources: list[str]
    inputs_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    status: dict = field(default_factory=dict)
    sw_row: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sw_ts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sw_head: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    sw_fallback: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    sw_ratio: np.ndarray = field(default_factory=lambda: np.zeros(0))
    log_row: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    log_level: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    log_msg: list[str] = field(default_factory=list)

    def switches(self, upto_row: int | None = None) -> list[tuple[int, str, bool, float]]:
        """The guard's switches (event time ns, head, fallback?, loss ratio) made at decisions <= ``upto_row``."""
        n = len(self.sw_row) if upto_row is None else int(np.searchsorted(self.sw_row, upto_row, side="right"))
        return [(int(t), HEADS[int(h)], bool(f), float(r))
                for t, h, f, r in zip(self.sw_ts[:n], self.sw_head[:n], self.sw_fallback[:n], self.sw_ratio[:n])]

    @classmethod
    def from_forecasts(cls, ts: list[int], forecasts: list, status: dict, switches=(), logs=()) -> "ForecastTable":
        """``switches``: (decision index, (t_ns, head, fallback, ratio)); ``logs``: (decision index, level, message)."""
        n = len(ts)
        drift, sigma, hor = np.zeros(n), np.zeros(n), np.zeros(n)
        hd, hs = np.zeros(n, bool), np.zeros(n, bool)
        src = np.full(n, -1, np.int32)
        t_in = np.full(n, -1, np.int64)
        sources: list[str] = []
        index: dict[str, int] = {}
        for i, f in enumerate(forecasts):
            if f is None:
                continue
            if f.drift is not None:
                drift[i], hd[i] = f.drift, True
            if f.sigma is not None:
                sigma[i], hs[i] = f.sigma, True
            hor[i] = f.horizon_s
            if f.inputs_ns is not None:
                t_in[i] = f.inputs_ns
            k = index.get(f.source)
            if k is None:
                k = index[f.source] = len(sources)
                sources.append(f.source)
            src[i] = k
        sw = list(switches)
        lg = list(logs)
        return cls(np.asarray(ts, np.int64), drift, hd, sigma, hs, hor, src, sources, t_in, dict(status),
                   sw_row=np.array([r for r, _ in sw], np.int64), sw_ts=np.array([s[0] for _, s in sw], np.int64),
                   sw_head=np.array([HEADS.index(s[1]) for _, s in sw], np.int8),
                   sw_fallback=np.array([bool(s[2]) for _, s in sw], bool), sw_ratio=np.array([float(s[3]) for _, s in sw]),
                   log_row=np.array([r for r, _, _ in lg], np.int64), log_level=np.array([lv for _, lv, _ in lg], np.int64),
                   log_msg=[m for _, _, m in lg])

    def __len__(self) -> int:
        return len(self.ts_ns)

    def forecasts(self) -> list:
        """The :class:`Forecast` (or None) of each decision, in order."""
        d, hd, s, hs = self.drift.tolist(), self.has_drift.tolist(), self.sigma.tolist(), self.has_sigma.tolist()
        h, src, t_in = self.horizon_s.tolist(), self.source.tolist(), self.inputs_ns.tolist()
        return [None if src[i] < 0 else Forecast(d[i] if hd[i] else None, s[i] if hs[i] else None, h[i], self.sources[src[i]],
                                                 None if t_in[i] < 0 else t_in[i])
                for i in range(len(src))]

    def forecaster(self) -> "TableForecaster":
        return TableForecaster(self)


class TableForecaster:
    """The :class:`~models.forecast.Forecaster` interface over a :class:`ForecastTable`:
    ``update`` returns the forecast of that decision time (None for a time not in the table).
    Decisions normally come in time order (a cursor, O(1)); any other time is looked up.
    As a run reaches each decision, the guard switches made there are appended to
    :attr:`switches` (as :attr:`LstmForecaster.switches <models.forecaster.LstmForecaster>`
    does) and the forecaster's log lines made there are logged (logger ``mmbot.forecaster``)."""

    needs_trades = False  # the public trades were seen when the table was computed

    def __init__(self, table: ForecastTable, grid: tuple | None = None) -> None:
        self.table = table
        self.grid = grid  # the decision grid the table was computed for, checked by the replay (None: unchecked)
        self._ts = table.ts_ns
        self._n = len(table)
        self._i = 0
        # forecasts are made as decisions reach them, from Python lists of one block of rows at a
        # time (numpy scalar access costs microseconds; lists of the whole table would grow with it)
        self._b0 = -(1 << 62)  # no block loaded
        self._block: list = []
        self.switches: list[tuple[int, str, bool, float]] = []
        self._all_switches = table.switches()
        self._sw_row = table.sw_row.tolist()
        self._log_row = table.log_row.tolist()
        self._logged = 0
        self._log = logging.getLogger(FORECASTER_LOG)

    BLOCK = 4096

    def fresh(self) -> "TableForecaster":
        """A reader of the same table from its start (each run reads with its own)."""
        return TableForecaster(self.table, self.grid)

    def _load_block(self, b0: int) -> None:
        t, b1 = self.table, b0 + self.BLOCK
        self._b0 = b0
        self._block = [t.ts_ns[b0:b1].tolist(), t.source[b0:b1].tolist(), t.drift[b0:b1].tolist(),
                       t.has_drift[b0:b1].tolist(), t.sigma[b0:b1].tolist(), t.has_sigma[b0:b1].tolist(),
                       t.horizon_s[b0:b1].tolist(), t.inputs_ns[b0:b1].tolist()]

    def read_through(self, last: int) -> None:
        """As if every row up to ``last`` (-1: none) had been read: the next read is row
        ``last + 1``; the guard switches of those rows are in :attr:`switches` and their log
        lines are logged (the compiled backtest loop reads the table itself, then calls this)."""
        self._i = last + 1
        k = len(self.switches)
        while k < len(self._sw_row) and self._sw_row[k] <= last:
            self.switches.append(self._all_switches[k])
            k += 1
        j = self._logged
        while j < len(self._log_row) and self._log_row[j] <= last:
            self._log.log(int(self.table.log_level[j]), "%s", self.table.log_msg[j])
            j += 1
        self._logged = j

    def update(self, book, now_ns: int, trades=()):
        i = self._i
        j = i - self._b0
        if not (0 <= j < self.BLOCK) or i >= self._n:
            if i < self._n:
                self._load_block(i - i % self.BLOCK)
                j = i - self._b0
        if i >= self._n or self._block[0][j] != now_ns:
            i = int(np.searchsorted(self._ts, now_ns))
            if i >= self._n or self._ts[i] != now_ns:
                return None
            if not (0 <= i - self._b0 < self.BLOCK):
                self._load_block(i - i % self.BLOCK)
            j = i - self._b0
        self.read_through(i)
        _, src, d, hd, sg, hs, hor, t_in = self._block
        r = i - self._b0
        k = src[r]
        if k < 0:
            return None
        return Forecast(d[r] if hd[r] else None, sg[r] if hs[r] else None, hor[r], self.table.sources[k],
                        None if t_in[r] < 0 else t_in[r])

    @property
    def by_ts(self) -> dict:
        """{decision time ns: forecast} (built on each access)."""
        return dict(zip(self.table.ts_ns.tolist(), self.table.forecasts()))

    def status(self) -> dict:
        return dict(self.table.status)


class _RowRecorder:
    """Stands in for the predictor in pass 1: keeps each input row and where the state resets."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []
        self.starts = [0]  # row index where each run of carried LSTM state begins

    def reset(self) -> None:
        if len(self.rows) != self.starts[-1]:
            self.starts.append(len(self.rows))

    def step(self, x) -> tuple[float, float]:
        self.rows.append(np.asarray(x, np.float32).copy())
        return 0.0, 0.0


class _Playback:
    """Stands in for the predictor in pass 3: the batch outputs, in order."""

    def __init__(self, rows: np.ndarray, out: list) -> None:
        self.rows = rows
        self.out = out
        self.i = 0

    def reset(self) -> None:  # the batch forward already zeroed the state at the same rows
        pass

    def step(self, x) -> tuple[float, float]:
        i = self.i
        if i >= len(self.out) or not np.array_equal(np.asarray(x, np.float32), self.rows[i]):
            raise RuntimeError(f"batch forecasts out of step with the replay at grid row {i}")
        self.i = i + 1
        return self.out[i]


def _forecaster(meta: dict, path: Path, guard, predictor):
    from models.forecaster import LstmForecaster

    fc = LstmForecaster(None, meta, path, backend="numba", guard=guard, packed=_NO_WEIGHTS)
    fc.backend = "torchscript"  # what computed the outputs (its batch forward; the status names it), not the placeholder
    fc.predictor = predictor
    fc.reset()
    return fc


def batch_forward(module, rows: np.ndarray, starts: list[int], layers: int, hidden: int, *,
                  chunk_rows: int = 4096, threads: int | None = None) -> np.ndarray:
    """The TorchScript ``module``'s ``forward_seq`` over ``rows`` (T x F, float32 model inputs),
    ``chunk_rows`` at a time with the state (h, c) carried across chunks and zeroed at each
    index of ``starts``. Returns (T, 2) float32: drift bp, log variance bp^2.
    ``threads``: torch intra-op threads for this call only (restored after); None leaves them."""
    import torch

    T = len(rows)
    out = np.empty((T, 2), np.float32)
    bounds = sorted(set(starts) | {0}) + [T]
    prev = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for s, e in zip(bounds[:-1], bounds[1:]):
                h = torch.zeros(layers, hidden)
                c = torch.zeros(layers, hidden)
                for k in range(s, e, chunk_rows):
                    k2 = min(e, k + chunk_rows)
                    Y, h, c = module.forward_seq(torch.from_numpy(rows[k:k2]), h, c)
                    out[k:k2] = Y.numpy()
    finally:
        if threads is not None:
            torch.set_num_threads(prev)
    return out


def compute_table(decisions: Decisions, model_path: str | Path, guard=None, *, chunk_rows: int = 4096,
                  threads: int | None = None) -> ForecastTable:
    """Forecasts at every decision of the replay that ``decisions`` drives (it is called twice,
    each time on a fresh replay), for the model file ``model_path`` with the guard config
    ``guard`` (:class:`models.forecaster.GuardConfig`; None: the default). See the module docstring."""
    from models.export import load_model
    from models.forecaster import GuardConfig

    path = Path(model_path)
    module, meta = load_model(path)
    arch = meta["arch"]
    # pass 1: the model's input rows (no guard: nothing is decided on placeholder outputs)
    rec = _RowRecorder()
    fc = _forecaster(meta, path, GuardConfig(enabled=False), rec)
    flog = logging.getLogger(FORECASTER_LOG)
    drop = lambda record: False  # noqa: E731 - pass 3 makes (and keeps) the same lines
    flog.addFilter(drop)
    try:
        decisions(lambda t, book, trades: fc.update(book, t, trades))
    finally:
        flog.removeFilter(drop)
    rows = np.stack(rec.rows) if rec.rows else np.zeros((0, int(arch["n_features"])), np.float32)
    # pass 2: the batch forward
    Y = batch_forward(module, rows, rec.starts, int(arch["layers"]), int(arch["hidden"]), chunk_rows=chunk_rows,
                      threads=threads)
    # pass 3: the forecaster's own code on those outputs (EWMA baseline, guard, Forecast)
    # its log lines are kept with their decision (not logged now): a run on the table logs them there
    play = _Playback(rows, [tuple(r) for r in Y.astype(np.float64).tolist()])
    fc = _forecaster(meta, path, guard or GuardConfig(), play)
    ts: list[int] = []
    out: list = []
    switches: list = []
    logs: list = []

    def keep(record: logging.LogRecord) -> bool:
        logs.append((len(ts) - 1, record.levelno, record.getMessage()))
        return False

    def on_decision(t, book, trades):
        ts.append(t)
        n = len(fc.switches)
        out.append(fc.update(book, t, trades))
        switches.extend((len(ts) - 1, s) for s in fc.switches[n:])

    flog.addFilter(keep)
    try:
        decisions(on_decision)
    finally:
        flog.removeFilter(keep)
    if play.i != len(rows):
        raise RuntimeError(f"batch forecasts: the replay used {play.i} of {len(rows)} grid rows")
    return ForecastTable.from_forecasts(ts, out, fc.status(), switches, logs)
