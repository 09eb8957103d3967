"""``run_backtest`` on the compiled loop: when it applies, and the driver around the kernel.

:func:`unsupported` says why a built replay engine cannot run on the compiled loop (None
when it can). Supported: the built-in strategy (:class:`strategies.market_maker.MarketMaker`,
any pricing model, horizon and controls of ``strategy:``), no forecaster or forecasts
precomputed for the replay (:class:`models.batch_forecast.TableForecaster`), the replay venue
with either queue model and either latency mode, maker/taker fees, a starting inventory on
the lot grid, no observer (metrics endpoint, JSON logs). Anything else -- a forecaster
stepped in the loop (``--no-forecast-cache``, no torch for the batch forward), an observer,
another strategy -- runs on the engine.

:func:`run_compiled` does what :meth:`bot.engine.Engine.run` does for a replay (start of the
source, the strategy's warm-up and sizing, the run's row, the initial and final PnL
snapshots, the shutdown's cancel-all, the summary, the run's end), with the decisions in
:func:`paper_trading.compiled_loop.run_loop` (one call per streamed batch of the recording,
or per ``steps_per_call`` decisions) and the record written per flush of the logs by
:class:`paper_trading.compiled_record.Recorder`. If anything raises, what is done is written,
working orders are closed, and the run is marked ``failed`` (``interrupted`` on Ctrl-C)
before the error propagates.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from fractions import Fraction

import numpy as np

from bot.engine import Engine
from bot.errors import MmbotError
from paper_trading import compiled_loop as CL
from paper_trading.compiled_record import Recorder
from strategies import kernels as K
from strategies.market_maker import MarketMaker

log = logging.getLogger(__name__)
log_strategy = logging.getLogger("mmbot.strategy")

LOG_ROWS = 16_384  # entries per log between flushes (grown when one decision needs more)
STEPS_PER_CALL = 1 << 16  # decisions per kernel call at most (progress, Ctrl-C)


def unsupported(engine: Engine, cfg) -> str | None:
    """Why ``engine`` (from :func:`paper_trading.backtest.build_replay_engine`) cannot run on
    the compiled loop, or None when it can."""
    from models.batch_forecast import TableForecaster

    fc = engine.forecaster
    if fc is not None and not isinstance(fc, TableForecaster):
        return f"forecaster {type(fc).__name__} runs step by step (forecasts not precomputed)"
    if engine.observer is not None:
        return "an observer (metrics endpoint or JSON logs) watches each event"
    if engine.on_tick is not None or engine.quote_filter is not None:
        return "a per-event hook (on_tick / quote_filter)"
    lot = Fraction(str(engine.source.market.lot))
    base = Fraction(repr(cfg.paper.initial_base))
    if (base / lot).denominator != 1:
        return f"paper.initial_base {cfg.paper.initial_base} is not a whole number of lots"
    return None


def _params(cfg, engine: Engine, strategy: MarketMaker, source, venue, lot: Fraction) -> tuple[np.ndarray, np.ndarray]:
    p, c = strategy.p, strategy.c
    ip = np.zeros(CL.N_IP, np.int64)
    fp = np.zeros(CL.N_FP, np.float64)
    ip[CL.P_INTERVAL] = source.interval_ns
    ip[CL.P_END] = source.end_ns
    ip[CL.P_NTOTAL] = venue.n
    ip[CL.P_PNL_INTERVAL] = engine.pnl_interval_ns
    ip[CL.P_TOL] = int(c.refresh_tolerance_ticks)
    ip[CL.P_MAX_AGE] = -1 if engine.om_args["max_age_s"] is None else int(engine.om_args["max_age_s"] * 1e9)
    ip[CL.P_LATENCY] = venue.params.entry_latency_ns
    ip[CL.P_LAT_RECORDED] = venue.params.latency_mode == "recorded"
    ip[CL.P_POST_ONLY] = bool(engine.om_args["post_only"])
    if p.model == "glft":
        ip[CL.P_HMODE] = CL.H_NONE
    elif p.horizon != "finite":
        ip[CL.P_HMODE] = CL.H_ROLLING
    else:
        ip[CL.P_HMODE] = CL.H_FINITE
        ip[CL.P_HEND] = strategy.end_ns
    ip[CL.P_CALIBRATE] = strategy.intensity is not None
    ip[CL.P_MIN_TRADES] = int(p.intensity_min_trades)
    ip[CL.P_REFRESH] = int(p.intensity_refresh_s * 1e9)
    est = strategy.intensity
    if est is not None:
        ip[CL.P_WIN] = est._win_ns
        ip[CL.P_TOP] = est.n_depths - 1
        fp[CL.F_DEPTH_STEP] = est.depth_step
    vol = strategy.vol
    ip[CL.P_SAMPLE] = vol.sample_ns
    ip[CL.P_MIN_SAMPLES] = vol.min_samples
    ip[CL.P_HAS_INIT_SIGMA] = vol.initial_sigma is not None
    fp[CL.F_INIT_SIGMA] = 0.0 if vol.initial_sigma is None else float(vol.initial_sigma)
    ip[CL.P_USE_FC_SIGMA] = bool(p.use_forecast_sigma)
    ip[CL.P_INIT_LOTS] = int(Fraction(repr(cfg.paper.initial_base)) / lot)
    ip[CL.P_LOT_NUM] = lot.numerator
    ip[CL.P_LOT_DEN] = lot.denominator
    ip[CL.P_MAX_STEPS] = STEPS_PER_CALL
    fp[CL.F_LAT_MULT] = venue.params.latency_multiplier
    fp[CL.F_HALFLIFE] = float(vol.halflife_s)
    fp[CL.F_FIXED_SIGMA] = math.nan if p.sigma is None else float(p.sigma)
    fp[CL.F_DRIFT_W] = float(p.drift_weight)
    fp[CL.F_TAU] = float(p.tau_s)
    return ip, fp


class _Loop:
    """The kernel's arrays and one call of it over the venue's current window."""

    def __init__(self, cfg, engine: Engine, strategy: MarketMaker, source, venue, forecaster) -> None:
        self.venue = venue
        self.streamed = hasattr(venue, "_extend")
        lot = Fraction(str(source.market.lot))
        self.ip, self.fp = _params(cfg, engine, strategy, source, venue, lot)
        ist = self.ist = np.zeros(CL.N_IST, np.int64)
        fst = self.fst = np.zeros(CL.N_FST, np.float64)
        ist[CL.I_T] = source.t
        ist[CL.I_LI] = venue.i - venue.base
        ist[CL.I_NEXT_OID] = 1
        ist[CL.I_ORDERS_CHANGED] = 1
        ist[CL.I_ST_QID] = -1
        ist[CL.I_HORIZON_ENDED] = -1 if strategy.horizon_ended_ns is None else strategy.horizon_ended_ns
        fst[CL.F_A], fst[CL.F_K] = float(strategy.A), float(strategy.k)
        fst[CL.F_PREV_MID] = math.nan if strategy._mid is None else strategy._mid
        ist[CL.I_HAS_PREV_MID] = strategy._mid is not None
        fst[CL.F_ST_MID] = math.nan
        vol = strategy.vol
        ist[CL.I_VOL_HAS_LAST] = vol._last_t is not None
        ist[CL.I_VOL_LAST_T] = vol._last_t or 0
        fst[CL.F_VOL_MID], fst[CL.F_VOL_ACC], fst[CL.F_VOL_NORM] = vol._last_mid, vol._acc, vol._norm
        ist[CL.I_VOL_N] = vol.n
        est = strategy.intensity
        if est is not None:
            self.est_ts, self.est_b, self.est_counts = est._ts_buf.copy(), est._b_buf.copy(), est._counts
            ist[CL.I_EST_HEAD], ist[CL.I_EST_TAIL] = est._head, est._tail
            ist[CL.I_EST_HAS_NOW] = est._now_ns is not None
            ist[CL.I_EST_NOW] = est._now_ns or 0
            ist[CL.I_EST_HAS_FIRST] = est._first_ns is not None
            ist[CL.I_EST_FIRST] = est._first_ns or 0
        else:
            self.est_ts, self.est_b, self.est_counts = np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, np.int64)
        ist[CL.I_NEXT_FIT] = strategy._next_fit_ns
        n_tr = max(4096, len(self.est_ts))
        self.tr_ts, self.tr_px, self.tr_side = np.zeros(n_tr, np.int64), np.zeros(n_tr), np.zeros(n_tr, np.int64)
        if forecaster is not None:
            t = forecaster.table
            self.fc_ts = np.ascontiguousarray(t.ts_ns, dtype=np.int64)
            ok = np.asarray(t.source) >= 0
            self.fc_sigma = np.where(ok & np.asarray(t.has_sigma, bool), np.asarray(t.sigma, np.float64), math.nan)
            self.fc_drift = np.where(ok & np.asarray(t.has_drift, bool), np.asarray(t.drift, np.float64), math.nan)
        else:
            self.fc_ts, self.fc_sigma, self.fc_drift = np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
        levels = max(strategy.c.levels, 1)
        self.cfg = np.zeros(len(K.CFG_FIELDS))
        self.out = np.zeros((4, levels), np.int64)
        self.last_out = np.zeros((4, levels), np.int64)
        M = len(venue.o_status)
        P = 4 * len(venue.rep_kind)
        self.pd = [np.zeros(P, np.int8), np.zeros(P, np.int64), np.zeros(P, np.int64), np.zeros(P), np.zeros(P, np.int64),
                   np.zeros(P), np.zeros(P), np.zeros(P, np.int8), np.zeros(P, np.int64)]
        W = M + 2 * levels + 8
        self.w = [np.zeros(W, np.int64) for _ in range(12)]
        L = LOG_ROWS
        self.logs = {
            "ol_side": np.zeros(L, np.int64), "ol_ticks": np.zeros(L, np.int64), "ol_lots": np.zeros(L, np.int64),
            "ol_level": np.zeros(L, np.int64), "ol_created": np.zeros(L, np.int64), "ol_oid": np.zeros(L, np.int64),
            "ev_order": np.zeros(L, np.int64), "ev_ts": np.zeros(L, np.int64), "ev_state": np.zeros(L, np.int64),
            "ev_piece": np.zeros(L, np.int64), "ev_reason": np.zeros(L, np.int64),
            "fl_order": np.zeros(L, np.int64), "fl_ts": np.zeros(L, np.int64), "fl_ticks": np.zeros(L, np.int64),
            "fl_lots": np.zeros(L, np.int64), "fl_liq": np.zeros(L, np.int64), "fl_mid": np.zeros(L),
            "fl_side": np.zeros(L, np.int64), "sn_ts": np.zeros(L, np.int64), "sn_mid": np.zeros(L),
            "sn_nfills": np.zeros(L, np.int64),
        }
        if not self.streamed:
            self.px = np.ascontiguousarray(venue._px_col(), dtype=np.float64)

    def call(self) -> int:
        v, lg = self.venue, self.logs
        if self.streamed:
            cols = (v.kind, v.side, v.local_ts, v.exch_ts, v.level, v.qty, v._px, v._avail, v._final, v.base)
        else:
            cols = (v.kind, v.side, v.local_ts, v.exch_ts, v.level, v.qty, self.px, v.n, True, 0)
        return CL.run_loop(*cols, *v._state, self.ip, self.fp, self.cfg, self.ist, self.fst, *self.pd, *self.w,
                           self.out, self.last_out, self.est_ts, self.est_b, self.est_counts, self.tr_ts, self.tr_px,
                           self.tr_side, self.fc_ts, self.fc_sigma, self.fc_drift,
                           *(lg[k] for k in ("ol_side", "ol_ticks", "ol_lots", "ol_level", "ol_created", "ol_oid",
                                             "ev_order", "ev_ts", "ev_state", "ev_piece", "ev_reason",
                                             "fl_order", "fl_ts", "fl_ticks", "fl_lots", "fl_liq", "fl_mid", "fl_side",
                                             "sn_ts", "sn_mid", "sn_nfills")))

    def sync_venue(self) -> None:
        """The venue's row index (and best prices) from the kernel's position."""
        v = self.venue
        v.i = v.base + int(self.ist[CL.I_LI])
        v._update_best_px()

    def next_window(self) -> None:
        """A streamed venue's next batch (the kernel stopped at the window's end)."""
        v = self.venue
        li = int(self.ist[CL.I_LI])
        drop = max(0, li - 1)  # keep the last applied row (recorded latency)
        v.i = v.base + li
        v._extend(drop)
        self.ist[CL.I_LI] = li - drop

    def grow(self) -> None:
        """Room for more trades in the A/k window (IntensityEstimator._reserve)."""
        ist = self.ist
        head, tail = int(ist[CL.I_EST_HEAD]), int(ist[CL.I_EST_TAIL])
        live = tail - head
        cap = 2 * max(int(ist[CL.I_GROW_NEED]), len(self.est_ts))
        ts, b = np.zeros(cap, np.int64), np.zeros(cap, np.int64)
        ts[:live] = self.est_ts[head:tail]
        b[:live] = self.est_b[head:tail]
        self.est_ts, self.est_b = ts, b
        ist[CL.I_EST_HEAD], ist[CL.I_EST_TAIL] = 0, live
        self.tr_ts, self.tr_px, self.tr_side = np.zeros(cap, np.int64), np.zeros(cap), np.zeros(cap, np.int64)

    def logs_empty(self) -> bool:
        ist = self.ist
        return not (ist[CL.I_NOL] or ist[CL.I_NEV] or ist[CL.I_NFL] or ist[CL.I_NSN])

    def grow_logs(self) -> None:
        """Twice the room in every (empty) log: one decision may log more than they hold."""
        self.logs = {k: np.zeros(2 * len(v), v.dtype) for k, v in self.logs.items()}

    def flush(self, rec: Recorder) -> None:
        ist = self.ist
        rec.flush(self.logs, int(ist[CL.I_NOL]), int(ist[CL.I_NEV]), int(ist[CL.I_NFL]), int(ist[CL.I_NSN]))
        ist[CL.I_NOL] = ist[CL.I_NEV] = ist[CL.I_NFL] = ist[CL.I_NSN] = 0

    def write_back(self, strategy: MarketMaker) -> None:
        """The strategy's state from the kernel's (for its status and any later use)."""
        ist, fst = self.ist, self.fst
        strategy.A, strategy.k = float(fst[CL.F_A]), float(fst[CL.F_K])
        strategy.decisions = int(ist[CL.I_DECISIONS])
        strategy.decisions_warming_up = int(ist[CL.I_WARMING])
        if ist[CL.I_HORIZON_ENDED] >= 0:
            if strategy.horizon_ended_ns is None:  # as MarketMaker._tau logs it
                log_strategy.warning("finite horizon reached (the run's %.0f s are over): tau = 0, quotes carry no "
                                     "inventory skew", strategy.session_s or 0.0)
            strategy.horizon_ended_ns = int(ist[CL.I_HORIZON_ENDED])
        if ist[CL.I_HAS_PREV_MID]:
            strategy._mid = float(fst[CL.F_PREV_MID])
        vol = strategy.vol
        if ist[CL.I_VOL_HAS_LAST]:
            vol._last_t, vol._last_mid = int(ist[CL.I_VOL_LAST_T]), float(fst[CL.F_VOL_MID])
        vol._acc, vol._norm, vol.n = float(fst[CL.F_VOL_ACC]), float(fst[CL.F_VOL_NORM]), int(ist[CL.I_VOL_N])
        est = strategy.intensity
        if est is not None:
            est._ts_buf, est._b_buf, est._counts = self.est_ts, self.est_b, self.est_counts
            est._head, est._tail = int(ist[CL.I_EST_HEAD]), int(ist[CL.I_EST_TAIL])
            est._now_ns = int(ist[CL.I_EST_NOW]) if ist[CL.I_EST_HAS_NOW] else None
            est._first_ns = int(ist[CL.I_EST_FIRST]) if ist[CL.I_EST_HAS_FIRST] else None
        strategy._next_fit_ns = int(ist[CL.I_NEXT_FIT])


def run_compiled(engine: Engine, cfg, on_progress=None) -> dict:
    """Run the replay built into ``engine`` on the compiled loop; returns the engine's summary
    (same keys). The run is recorded in ``engine.store`` as the engine would record it."""
    source, store = engine.source, engine.store
    venue = source.venue
    status, error, started = "completed", None, False
    rec: Recorder | None = None
    loop: _Loop | None = None
    strategy: MarketMaker | None = None
    try:
        market = asyncio.run(source.start())
        engine.market = market
        asyncio.run(engine.exchange.start(market))
        strategy = engine.strategy_factory(market)
        if not isinstance(strategy, MarketMaker):
            raise TypeError(f"the compiled loop runs the built-in MarketMaker, not {type(strategy).__name__}")
        engine.strategy = strategy
        store.start_run(engine.mode, engine.exchange_name(), market.symbol, engine.config_snapshot)
        started = True
        book = source.book
        t0 = book.ts_ns or time.time_ns()
        strategy.begin(t0)
        engine.mid0 = book.mid()
        rec = Recorder(store, market, engine.exchange.fees, engine.inventory, engine.mid0, bool(engine.om_args["post_only"]))
        rec.snapshot(t0, engine.mid0)  # Engine.run: the forced first snapshot
        store.commit()
        loop = _Loop(cfg, engine, strategy, source, venue, engine.forecaster)
        loop.ist[CL.I_NEXT_PNL] = t0 + engine.pnl_interval_ns
        while True:
            code = loop.call()
            if code == CL.DONE:
                break
            if code == CL.NEED_DATA:
                loop.next_window()
                if on_progress is not None:
                    on_progress(venue.i)
            elif code == CL.FLUSH:  # the logs are full: write them (or, empty, make them larger)
                if loop.logs_empty():
                    loop.grow_logs()
                else:
                    loop.flush(rec)
            elif code == CL.GROW:
                loop.grow()
            elif code == CL.NEED_START:
                fst = loop.fst
                strategy.A, strategy.k = float(fst[CL.F_A]), float(fst[CL.F_K])
                sigma = float(fst[CL.F_SIGMA])
                strategy._start(float(fst[CL.F_S]), int(loop.ist[CL.I_T]), None if math.isnan(sigma) else sigma)
                loop.cfg = strategy._cfg
                loop.ist[CL.I_SIZED] = 1
            elif code == CL.YIELD:
                loop.sync_venue()
                if on_progress is not None:
                    on_progress(venue.i)
            else:
                raise RuntimeError(f"compiled loop: {CL.ERRORS.get(int(loop.ist[CL.I_ERR]), 'error')}")
        engine.stop_reason = "end of market data"
    except (KeyboardInterrupt, asyncio.CancelledError):
        status = "interrupted"
        engine.stop_reason = engine.stop_reason or "interrupted"
    except BaseException as e:  # noqa: BLE001 - recorded, then re-raised
        status, error = "failed", e
        engine.stop_reason = f"error: {type(e).__name__}: {e}" if not isinstance(e, MmbotError) else f"error: {e}"
    summary: dict = {"run_id": store.run_id}
    if started:
        summary = _shutdown(engine, loop, rec, strategy, status)
    if loop is not None:
        loop.sync_venue()
        if on_progress is not None:
            on_progress(venue.i)
    engine.raise_failures(error)
    return summary


def _forecaster_caught_up(fc, t_last: int) -> None:
    """A precomputed forecaster as if the engine had read it up to the decision at ``t_last``
    (ns): its guard switches and log lines of the decisions reached (TableForecaster.read_through)."""
    if fc is None or not hasattr(fc, "table"):
        return
    t = fc.table
    fc.read_through(int(np.searchsorted(t.ts_ns, t_last, side="right")) - 1 if t_last else -1)


def _shutdown(engine: Engine, loop: _Loop | None, rec: Recorder | None, strategy, status: str) -> dict:
    """Engine._shutdown for the compiled loop: write the logs, cancel the working orders at the
    last decision time, the final snapshot, the summary, the run's end."""
    st = engine.state
    if loop is not None:
        ist = loop.ist
        st.events, st.placed = int(ist[CL.I_STEPS]), int(ist[CL.I_PLACED])
        st.canceled, st.rejected = int(ist[CL.I_CANCELED]), int(ist[CL.I_REJECTED])
        st.ts_ns = int(ist[CL.I_T]) if ist[CL.I_STEPS] else 0
        mid = float(loop.fst[CL.F_ST_MID])
        st.mid = mid
        if strategy is not None:
            loop.write_back(strategy)
        _forecaster_caught_up(engine.forecaster, st.ts_ns)
    now = st.ts_ns or time.time_ns()
    for what, step in (("writing the loop's record", lambda: loop.flush(rec) if loop is not None else None),
                       ("cancel-all", lambda: rec.close_orders(now) if rec is not None else None)):
        try:
            step()
        except BaseException as e:  # noqa: BLE001
            engine._shutdown_failed(what, e)
    if loop is not None:
        engine.exchange.venue.o_status[:] = 0
    try:
        mid = st.mid if not math.isnan(st.mid) else engine.source.book.mid()
        if rec is not None and mid is not None and not math.isnan(mid):
            rec.snapshot(now, mid)
            st.pnl = rec.pnl
    except BaseException as e:  # noqa: BLE001
        engine._shutdown_failed("the final PnL snapshot", e)
    return engine.end_run(status)
