"""Several markets in one process: one :class:`~bot.engine.Engine` task per market in one
asyncio loop (config ``markets:``, see :func:`bot.config.market_specs`).

What the markets share: the event loop, the database (one SQLAlchemy engine; one
:class:`~bot.persistence.store.Store` -- one run row -- per market, the rows grouped by a
session id), the forecaster's model (loaded once per model file and backend; each market
gets its own forecaster state, see :class:`ForecasterPool`), the account's risk
(:class:`bot.portfolio.AccountRisk`), the metrics endpoint and the JSON log (an observer per
market), and SIGINT/SIGTERM (stop every market).

Markets on one exchange share one ccxt client and one REST request budget
(:mod:`bot.market_data.shared`). Paper runs a market on the simulated market, live public
data or a recording (``data:``); live (``credentials`` given, see bot/live/multi.py) runs
the markets of one exchange account, sharing one trading client too.

What they do not share: a market's feed. An exception in one market's source ends that
market's run (``failed``; its shutdown cancels its orders) and the others go on; a feed
silent for ``account.stale_after_s`` wall seconds has its market's quotes pulled until data
comes again (:meth:`~bot.engine.Engine.pull_quotes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from dataclasses import dataclass, field

from bot.config import AccountRiskConfig, Config, MarketSpec, build_forecaster
from bot.engine import Engine
from bot.errors import MmbotError
from bot.persistence.store import Store
from bot.portfolio import AccountRisk

log = logging.getLogger("mmbot.multi")


def new_session_id() -> str:
    """A new session id: 16 hex digits (random)."""
    return uuid.uuid4().hex[:16]


class ForecasterPool:
    """Forecasters for several markets: each model file is loaded once per backend; every
    market gets a forecaster of its own (its own features, recurrent state and guard) that,
    on the numba backend, shares the loaded weights (read only)."""

    def __init__(self) -> None:
        self._loaded: dict[tuple, object] = {}
        self.loads = 0  # model files actually loaded (for tests and logs)

    def get(self, cfg: Config, live_feed: bool = False):
        f = cfg.forecaster
        if f.model.lower() == "none":
            return None
        from bot.config import forecaster_backend
        from models.forecaster import GuardConfig, LstmForecaster, resolve_model_path

        backend = forecaster_backend(cfg, live_feed)
        key = (str(resolve_model_path(f.model)), backend)
        first = self._loaded.get(key)
        if first is None or backend != "numba":
            fc = build_forecaster(cfg, live_feed)
            self.loads += 1
            self._loaded.setdefault(key, fc)
            return fc
        guard = GuardConfig(enabled=f.guard, window=f.guard_window, min_obs=f.guard_min_obs, enter=f.guard_enter,
                            exit=f.guard_exit, drift=f.guard_drift)
        p = first.predictor  # type: ignore[attr-defined]
        return LstmForecaster(None, first.meta, first.path, backend="numba", guard=guard,  # type: ignore[attr-defined]
                              packed=(p.W, p.layout))


@dataclass
class MarketRun:
    """One market of a multi-market run and how it ended."""

    spec: MarketSpec
    engine: Engine
    store: Store
    summary: dict = field(default_factory=dict)
    error: BaseException | None = None


def build_market_runs(specs: list[MarketSpec], open_store, session_id: str, *, on_tick=None,
                      pool: ForecasterPool | None = None, credentials=None) -> list[MarketRun]:
    """An engine per market (paper on its configured source, or a replay of its ``data``;
    live when ``credentials`` are given), each with its own Store from ``open_store()`` and
    the session id. The caller closes the stores ``open_store`` gave (also when this raises)."""
    from bot.app import build_paper_engine

    from bot.market_data.shared import SharedClients

    pool = pool or ForecasterPool()
    rates: dict[str, float] = {}
    for spec in specs:  # one REST budget per exchange: the smallest of its markets'
        ex, r = spec.cfg.exchange.strip().lower(), spec.cfg.market_data.rate_limit_per_s
        rates[ex] = min(rates.get(ex, r), r)
    clients = SharedClients(rates)
    runs: list[MarketRun] = []
    for spec in specs:
        cfg = spec.cfg
        store = open_store()
        fc = pool.get(cfg, live_feed=credentials is not None or (spec.data is None and cfg.exchange != "sim"))
        if credentials is not None:
            from bot.live.app import build_live_engine

            engine = build_live_engine(cfg, store, credentials, on_tick=on_tick, handle_signals=False, forecaster=fc,
                                       clients=clients)
        elif spec.data is not None:
            from paper_trading.backtest import build_replay_engine

            engine, _ = build_replay_engine(spec.data, cfg, store, mode="paper", speed=cfg.replay.speed,
                                            on_tick=on_tick, forecaster=fc)
        else:
            engine = build_paper_engine(cfg, store, on_tick=on_tick, handle_signals=False, forecaster=fc, clients=clients)
        engine.handle_signals = False  # one handler for the process: it stops every market
        engine.session_id = session_id
        runs.append(MarketRun(spec, engine, store))
    return runs


async def _watch_feeds(runs: list[MarketRun], tasks: list[asyncio.Task], stale_after_s: float) -> None:
    """Pull the quotes of a market whose feed has been silent for ``stale_after_s`` wall seconds."""
    period = min(stale_after_s / 4, 1.0)
    while True:
        await asyncio.sleep(period)
        now = time.monotonic()
        for r, t in zip(runs, tasks):
            e = r.engine
            if t.done() or e.om is None or e.quotes_pulled or not e.om.working or e.mode == "live":
                continue  # a live engine has its own stale-data guard (live.risk.stale_after_s)
            silent = now - e.last_event_wall
            if silent > stale_after_s:
                try:
                    await e.pull_quotes(f"no market data for {silent:.1f} s (account.stale_after_s {stale_after_s:g})")
                except Exception as ex:  # noqa: BLE001 - the market's own shutdown cancels again
                    log.error("%s: pulling quotes failed: %s: %s", r.spec.name, type(ex).__name__, ex)


async def run_markets(runs: list[MarketRun], account: AccountRiskConfig, handle_signals: bool = True) -> AccountRisk:
    """Run every market's engine until each ends; fills each run's ``summary`` / ``error``.
    Returns the account risk object (its ``killed`` says whether the kill switch fired)."""
    engines = [r.engine for r in runs]
    risk = AccountRisk(account, engines)
    risk.attach()
    loop = asyncio.get_running_loop()
    installed = []
    if handle_signals:
        def stop_all(name: str) -> None:
            for e in engines:
                e.stop(name)

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop_all, signal.Signals(sig).name)
                installed.append(sig)
    tasks = [asyncio.create_task(e.run(), name=f"market {r.spec.name}") for r, e in zip(runs, engines)]
    watch = (asyncio.create_task(_watch_feeds(runs, tasks, account.stale_after_s), name="feed watchdog")
             if account.stale_after_s is not None else None)
    try:
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        for sig in installed:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    for r, res in zip(runs, results):
        if isinstance(res, BaseException):
            r.error = res
            r.summary = {"run_id": r.store.run_id, "status": "failed", "stop_reason": r.engine.stop_reason or f"{type(res).__name__}: {res}"}
            log.error("market %s failed: %s", r.spec.name, r.summary["stop_reason"])
        else:
            r.summary = res
    return risk


def failure_line(run: MarketRun) -> str:
    """One line for a market whose run failed."""
    e = run.error
    why = str(e) if isinstance(e, MmbotError) else f"{type(e).__name__}: {e}"
    return f"market {run.spec.name} (markets[{run.spec.index}]) failed: {why}"
