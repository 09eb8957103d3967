"""Tick-level backtests and replays over a recording, through the same engine and strategy
object as paper and live trading.

``build_replay_engine`` wires: recording -> :class:`~paper_trading.venue.Venue` (book,
queue, latency, partial fills) -> :class:`ReplaySource` / :class:`ReplayExchange` ->
:class:`~bot.engine.Engine` with the configured strategy. ``run_backtest`` runs it as fast
as possible, records orders, fills and PnL snapshots in the database like a paper run, and
writes the summary and an HTML report.

Book states do not depend on our orders (no market impact), so everything the kernel needs
is precomputed once (price -> level index, contiguous columns; when streamed, per chunk); the
per-event loop is the numba kernel, and Python runs once per decision interval -- or, on the
compiled loop (:mod:`paper_trading.compiled_backtest`, ``run_backtest(loop=...)``, the default
when the run is supported), not per decision at all: venue, strategy kernels, order diff and
bookkeeping run in one numba call per streamed batch, and the record is written in bulk
(docs/compiled_loop.md).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from decimal import Decimal
from pathlib import Path

from bot.app import FROM_CONFIG
from bot.config import Config, build_forecaster
from bot.engine import Engine
from bot.errors import DataError
from bot.inventory import Inventory
from bot.market import MarketInfo
from bot.market_data.trade_side import infer_trade_sides
from bot.recording.schema import prices_off_tick
from bot.persistence.store import Store
from paper_trading.fees import MakerTakerFees
from paper_trading.replay import ReplayExchange, ReplaySource
from paper_trading.venue import Venue, VenueParams
from strategies.market_maker import build_strategy

log = logging.getLogger(__name__)

# ``forecaster=PRECOMPUTED``: the configured forecaster's forecasts for this very replay (its
# data, decision grid and start), precomputed with the batch forward and cached on disk
# (:func:`precomputed_forecaster`); what ``mmbot backtest`` uses unless --no-forecast-cache
PRECOMPUTED = object()

_QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "USD", "EUR", "BTC", "ETH", "BNB")


def unified_symbol(sym: str) -> tuple[str, str, str]:
    """'BTCUSDT' or 'BTC/USDT' or 'BTCUSD_PERP' -> ('BTC/USDT', 'BTC', 'USDT')."""
    s = sym.upper().split(":")[0]
    if "/" in s:
        b, q = s.split("/", 1)
        return f"{b}/{q}", b, q
    s = s.split("_")[0]
    for q in _QUOTES:
        if s.endswith(q) and len(s) > len(q):
            return f"{s[:-len(q)]}/{q}", s[: -len(q)], q
    return s, s, ""


def check_recording(path: str | Path):
    """The :class:`~bot.recording.io.Recording` at ``path``, checked without reading its events
    (a streamed replay reads them chunk by chunk); DataError with the path when unusable."""
    from bot.recording.io import open_recording

    p = Path(path)
    if not p.exists():
        raise DataError(f"recording {p} does not exist (import raw data first: mmbot import ...)")
    if p.is_file():
        raise DataError(f"{p} is a file: --data / --replay take a recording directory written by 'mmbot import' or 'mmbot record'")
    rec = open_recording(p)
    if len(rec) == 0:
        raise DataError(f"recording {p} holds no events")
    return rec


def load_recording(path: str | Path):
    """(events, meta) of a recording directory, all events in memory; DataError with the path when unusable."""
    rec = check_recording(path)
    return rec.events(), rec.meta


def market_from_meta(meta: dict, cfg: Config) -> MarketInfo:
    tick, lot = meta.get("tick_size"), meta.get("lot_size")
    if not tick:
        raise DataError("recording meta.json has no tick_size")
    symbol, base, quote = unified_symbol(str(meta.get("symbol", "?")))
    return MarketInfo(symbol, base, quote or "QUOTE", Decimal(repr(float(tick))), Decimal(repr(float(lot or 1e-8))),
                      maker_fee=cfg.paper.maker_fee, taker_fee=cfg.paper.taker_fee)


def recorded_mids(events, tick: float):
    """(local_ts ns, mid quote per base) after each event of ``events`` (NaN where the book is
    one-sided or crossed): the recorded history a strategy's sigma estimator is warmed up on."""
    import numpy as np

    from bot.recording.book_replay import replay_top

    top = replay_top(events, tick)
    mid = 0.5 * (top["bid_px"] + top["ask_px"])
    mid[top["crossed"]] = np.nan
    return events["local_ts"], mid


def replay_venue(data: str | Path, cfg: Config, events_meta=None, *, warn: bool = True):
    """(venue, market, meta, trades whose side was inferred) of a replay of the recording at
    ``data``: streamed chunk by chunk (:class:`~paper_trading.stream_venue.StreamingVenue`)
    when ``events_meta`` is None, else over the (events, meta) in memory; a recording with
    trades lacking an aggressor side is read whole to infer them. Logs a warning when prices
    are finer than the recording's tick (``warn``)."""
    r = cfg.replay
    params = VenueParams(queue_model=r.queue_model, queue_power=r.queue_power, entry_latency_ns=int(r.entry_latency_ms * 1e6),
                         latency_mode=r.latency_mode, latency_multiplier=r.latency_multiplier)
    fp = None
    if events_meta is None:  # stream the recording chunk by chunk (paper_trading.stream_venue)
        from paper_trading.stream_venue import FirstPass, StreamingVenue

        rec = check_recording(data)
        meta = rec.meta
        market = market_from_meta(meta, cfg)
        fp = FirstPass(rec, float(market.tick))
        if fp.unsided_trades:
            # inferring aggressor sides needs the book at every trade: this recording is read whole
            log.info("%s trades without an aggressor side: the recording is loaded in memory to infer them", fp.unsided_trades)
            events_meta = (rec.events(), meta)
            fp = None
    else:
        meta = events_meta[1]
        market = market_from_meta(meta, cfg)
    if fp is not None:
        venue = StreamingVenue(rec, float(market.tick), float(market.lot), params, first_pass=fp)
        n_inferred, (off, total, example) = 0, (fp.off, fp.total, fp.example)
    else:
        # trades without an aggressor side (Bitstamp) get one from the book at the trade, so they
        # advance our queue and fill us like any other trade
        events, n_inferred = infer_trade_sides(events_meta[0], float(market.tick))
        off, total, example = prices_off_tick(events, float(market.tick))
        venue = Venue(events, float(market.tick), float(market.lot), params)
    if off and warn:
        log.warning("%s of %s prices of the recording are finer than its tick %s (e.g. %s): the replay merges them "
                    "into tick levels; re-import it with the right tick", off, total, f"{market.tick.normalize():f}", example)
    return venue, market, meta, n_inferred


def replay_decisions(data: str | Path, cfg: Config, events_meta=None, start_ns: int | None = None):
    """A driver of the decisions of a backtest's replay, for :func:`models.batch_forecast.compute_table`:
    called with ``on_decision``, it replays the recording (as :func:`build_replay_engine` does,
    same decision grid) and calls ``on_decision(ts_ns, book, trades)`` at every decision."""
    r = cfg.replay

    def drive(on_decision) -> None:
        venue, market, _, _ = replay_venue(data, cfg, events_meta, warn=False)
        source = ReplaySource(venue, market, interval_s=r.interval_s, speed=0.0, start_ns=start_ns, warmup_s=r.warmup_s,
                              with_trades=True)

        async def run() -> None:
            await source.start()
            while (ev := await source.next()) is not None:
                on_decision(ev.ts_ns, ev.book, ev.trades)

        asyncio.run(run())

    return drive


def precomputed_forecaster(data: str | Path | None, cfg: Config, *, events_meta=None, start_ns: int | None = None,
                           use_cache: bool = True):
    """The configured forecaster's forecasts at every decision of the replay of ``data`` (or of
    ``events_meta`` = (events, meta) in memory) from ``start_ns``, computed with the TorchScript
    batch forward (:mod:`models.batch_forecast`) and cached on disk (:mod:`models.forecast_cache`;
    ``use_cache=False``: neither read nor written), as a
    :class:`~models.batch_forecast.TableForecaster` for the engine. None for
    ``forecaster.model: none``; ``FROM_CONFIG`` (the engine steps the forecaster itself) when
    the forecasts are not cached and torch is not installed. A missing model file raises
    DataError naming it. With a cache hit, torch is not imported."""
    if cfg.forecaster.model.lower() == "none":
        return None
    from models import forecast_cache
    from models.batch_forecast import compute_table
    from models.forecaster import GuardConfig, resolve_model_path

    path = resolve_model_path(cfg.forecaster.model)
    if not path.is_file():
        raise DataError(f"{path}: model file not found")
    f = cfg.forecaster
    guard = GuardConfig(enabled=f.guard, window=f.guard_window, min_obs=f.guard_min_obs, enter=f.guard_enter,
                        exit=f.guard_exit, drift=f.guard_drift)
    digest = forecast_cache.recording_digest(data) if events_meta is None else forecast_cache.events_digest(*events_meta)
    key = forecast_cache.cache_key(digest, path, cfg, start_ns)
    try:
        table, hit = forecast_cache.cached(key, lambda: compute_table(replay_decisions(data, cfg, events_meta, start_ns),
                                                                      path, guard), use_cache)
    except ImportError as e:  # no torch: the numba backend steps the forecaster in the engine
        log.info("forecasts not precomputed (%s): the forecaster runs step by step in the backtest", e)
        return FROM_CONFIG
    log.info("forecasts %s: %d decisions (key %s)", "from the cache" if hit else "computed", len(table), key[:12])
    fc = table.forecaster()
    fc.grid = _grid(cfg, start_ns)
    return fc


def _grid(cfg: Config, start_ns: int | None) -> tuple:
    return (cfg.replay.interval_s, cfg.replay.warmup_s, start_ns)


def backtest_forecaster(cfg: Config, *, use_cache: bool = True):
    """What ``mmbot backtest`` hands :func:`run_backtest`: ``PRECOMPUTED`` (forecasts of the
    replay, batch forward, on-disk cache) or, with ``use_cache=False``, the forecaster itself
    (stepped in the engine); None without a forecaster. Checks the model file first (DataError
    naming it), so that a bad one is reported before the database is touched."""
    if not use_cache:
        return build_forecaster(cfg)
    if cfg.forecaster.model.lower() == "none":
        return None
    from models.forecaster import resolve_model_path

    path = resolve_model_path(cfg.forecaster.model)
    if not path.is_file():
        raise DataError(f"{path}: model file not found")
    return PRECOMPUTED


def build_replay_engine(data: str | Path, cfg: Config, store: Store, *, mode: str, speed: float, on_tick=None,
                        on_progress=None, events_meta=None, forecaster=FROM_CONFIG,
                        start_ns: int | None = None) -> tuple[Engine, ReplaySource]:
    """Engine and source of a replay of the recording at ``data``. ``events_meta`` = (events,
    meta) replays those events from memory; None (the default) streams the recording chunk by
    chunk (:class:`~paper_trading.stream_venue.StreamingVenue`, same results), except that a
    recording with trades lacking an aggressor side is read whole to infer them.
    ``start_ns``: begin at this recorded local time (ns) instead of the recording's start
    (the book is still built from the start; ``replay.warmup_s`` follows it). ``mmbot tune``
    backtests its folds this way. ``forecaster``: ``FROM_CONFIG`` (the configured forecaster,
    stepped in the engine), ``PRECOMPUTED`` (its forecasts for this replay, see
    :func:`precomputed_forecaster`), None, or a forecaster object; precomputed forecasts for
    another decision grid raise ValueError."""
    r = cfg.replay
    if forecaster is PRECOMPUTED:
        forecaster = precomputed_forecaster(data, cfg, events_meta=events_meta, start_ns=start_ns)
    if hasattr(forecaster, "fresh"):  # precomputed forecasts shared by runs: a reader of its own per run
        forecaster = forecaster.fresh()
    grid = getattr(forecaster, "grid", None)
    if grid is not None and grid != _grid(cfg, start_ns):
        raise ValueError(f"forecasts precomputed for the decision grid (interval_s, warmup_s, start_ns) {grid}, "
                         f"this replay's is {_grid(cfg, start_ns)}")
    venue, market, meta, n_inferred = replay_venue(data, cfg, events_meta)
    if forecaster is FROM_CONFIG:
        forecaster = build_forecaster(cfg)
    # precomputed forecasts (models.batch_forecast) do not need the public trades
    with_trades = forecaster is not None and getattr(forecaster, "needs_trades", True)
    source = ReplaySource(venue, market, interval_s=r.interval_s, speed=speed, start_ns=start_ns, warmup_s=r.warmup_s,
                          on_progress=on_progress,
                          with_trades=with_trades or cfg.strategy.pricing.calibrate_intensity)
    source.trades_side_inferred = n_inferred
    exchange = ReplayExchange(source, MakerTakerFees(cfg.paper.maker_fee, cfg.paper.taker_fee))
    c = cfg.strategy.controls
    snapshot = cfg.model_dump(mode="json")
    # the market is the recording's, and a replay runs over all of it: store that, not the config's sim defaults
    snapshot.update(exchange=meta.get("exchange") or "recording", symbol=market.symbol,
                    duration_s=float(venue.t_last - venue.t_first) / 1e9 if venue.n else None)
    snapshot["data"] = {"path": str(data), "exchange": meta.get("exchange"), "symbol": meta.get("symbol"),
                        "market": meta.get("market"), "events": venue.n}
    def strategy_factory(mk: MarketInfo):
        # called after source.start(): the run spans source.t .. source.end_ns of recorded time,
        # and the recording before source.t (the warm-up) is history the strategy may learn from
        strategy = build_strategy(cfg.strategy, mk, session_s=max(source.end_ns - source.t, 0) / 1e9)
        if source.venue.i > 0:
            strategy.warm_up(*recorded_mids(source.venue.prefix(source.venue.i), float(market.tick)))
        return strategy

    engine = Engine(
        source, exchange, strategy_factory, store, mode=mode, config_snapshot=snapshot,
        inventory=Inventory(base=Decimal(repr(cfg.paper.initial_base)), cash=Decimal(repr(cfg.paper.initial_quote))),
        tolerance_ticks=c.refresh_tolerance_ticks, max_order_age_s=c.max_order_age_s, post_only=c.post_only,
        pnl_interval_s=cfg.pnl_snapshot_interval_s, on_tick=on_tick, commit_interval_s=1.0 if speed == 0 else 0.0,
        forecaster=forecaster,
    )
    return engine, source


LOOPS = ("auto", "compiled", "engine")


def run_backtest(data: str | Path, cfg: Config, store: Store, *, progress: bool = False, report_dir: str | Path | None = None,
                 events_meta=None, forecaster=FROM_CONFIG, observer=None, start_ns: int | None = None,
                 loop: str = "auto", on_progress=None) -> dict:
    """Run a backtest; returns the engine summary plus metrics and the report path.
    ``events_meta``: see :func:`build_replay_engine` (None: the recording is streamed).
    ``start_ns``: begin at this recorded local time, ns (``mmbot backtest --start``; a window's
    end is applied by cutting ``events_meta``, see :mod:`paper_trading.window`).
    ``observer``: the engine's observer (bot.observability: metrics, JSON logs), or None.
    ``loop``: ``auto`` runs the compiled loop (:mod:`paper_trading.compiled_backtest`) when the
    run is supported and the engine otherwise; ``engine`` forces the engine; ``compiled``
    refuses (ConfigError) a run the compiled loop does not support. ``summary["loop"]`` says
    which ran: ``compiled`` or ``engine: <reason>``. ``on_progress(rows replayed)``: called as
    the replay goes (per decision on the engine, per batch or per 65,536 decisions compiled)."""
    from bot.errors import ConfigError

    if loop not in LOOPS:
        raise ConfigError(f"loop {loop!r}: must be one of {', '.join(LOOPS)}")
    t0 = time.perf_counter()
    n = len(check_recording(data)) if events_meta is None else len(events_meta[0])  # None: streamed
    t_loaded = time.perf_counter()
    bar = None
    cb = None
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("backtest"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} events"), TimeRemainingColumn())
        task = bar.add_task("bt", total=n)
        cb = lambda i: bar.update(task, completed=i)  # noqa: E731
    if on_progress is not None:
        user_cb, bar_cb = on_progress, cb
        cb = (lambda i: (bar_cb(i), user_cb(i))) if bar_cb is not None else user_cb  # noqa: E731
    engine, source = build_replay_engine(data, cfg, store, mode="backtest", speed=0.0, on_progress=cb, events_meta=events_meta,
                                         forecaster=forecaster, start_ns=start_ns)
    engine.observer = observer
    # the loop allocates many short-lived objects; keep the cyclic GC from re-scanning the
    # long-lived ones (modules, config, arrays) at every collection
    t_built = time.perf_counter()
    from paper_trading.compiled_backtest import run_compiled, unsupported

    why = "forced (loop: engine)" if loop == "engine" else unsupported(engine, cfg)
    if why is not None and loop == "compiled":
        raise ConfigError(f"loop compiled: this run is not supported by the compiled loop: {why}")

    def run() -> dict:
        if why is None:
            return run_compiled(engine, cfg, on_progress=cb)
        return asyncio.run(engine.run())

    gc.freeze()
    try:
        if bar is not None:
            with bar:
                summary = run()
        else:
            summary = run()
    finally:
        gc.unfreeze()
    summary["loop"] = "compiled" if why is None else f"engine: {why}"
    t_loop = time.perf_counter()
    elapsed = t_loop - t0
    summary["events_replayed"] = int(source.venue.i)
    summary["trades_side_inferred"] = source.trades_side_inferred
    summary["elapsed_s"] = round(elapsed, 3)
    summary["events_per_s"] = round(source.venue.i / elapsed) if elapsed > 0 else None
    store.commit()
    try:
        from paper_trading.metrics import compute_metrics

        summary["metrics"] = compute_metrics(str(store.engine.url), summary["run_id"])
    except ImportError:  # pragma: no cover
        pass
    t_metrics = time.perf_counter()
    if report_dir is not None:
        try:
            from paper_trading.report_html import write_report

            summary["report"] = str(write_report(str(store.engine.url), summary["run_id"], Path(report_dir)))
        except ImportError:  # pragma: no cover
            pass
    t_end = time.perf_counter()
    # wall seconds per phase (the phases partition run_backtest's wall time): load = reading the
    # recording (0 when events_meta was given); build = forecaster (when not given), venue, engine;
    # loop = the run itself (venue, strategy, forecaster, orders, database writes and commits);
    # metrics = compute_metrics; report = the HTML report (0 when report_dir is None)
    summary["timings_s"] = {"load": round(t_loaded - t0, 4), "build": round(t_built - t_loaded, 4),
                            "loop": round(t_loop - t_built, 4), "metrics": round(t_metrics - t_loop, 4),
                            "report": round(t_end - t_metrics, 4)}
    return summary
