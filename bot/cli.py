"""The ``mmbot`` command line.

Every user error (bad config, unknown exchange or symbol, unreachable network, bad data)
ends as one line on stderr and exit code 2; no traceback.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from bot.errors import DataError, MmbotError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="mmbot: an automated market maker (paper, live, backtest).")
simulate_app = typer.Typer(no_args_is_help=True, help="Stylised market simulations.")
app.add_typer(simulate_app, name="simulate")
import_app = typer.Typer(no_args_is_help=True, help="Import raw market data into mmbot's recording format.")
app.add_typer(import_app, name="import")
from bot.persistence.db_cli import db_app  # noqa: E402 - `mmbot db upgrade`

app.add_typer(db_app, name="db")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mmbot")
    except PackageNotFoundError:  # run from a source tree that was not pip-installed
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        print(f"mmbot {_version()}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version, help="print mmbot's version and exit"),
) -> None:
    """mmbot: an automated market maker (paper, live, backtest)."""


def _print_stats(stats, json_out: bool, title: str) -> None:
    d = stats.as_dict() if hasattr(stats, "as_dict") else dict(vars(stats))
    if json_out:
        print(json.dumps(d, default=str))
        return
    from bot.status import summary_table

    shown = {k: v for k, v in d.items() if not isinstance(v, (list, dict)) or k in ("rows_by_kind",)}
    _console().print(summary_table({k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in shown.items()}, title))


def _with_options(cfg, options: dict):
    """``with_overrides`` for command-line options ``{"--seed": ("sim.seed", value)}``; an
    invalid value is reported under the option's name (and the config field it sets)."""
    from bot.config import with_overrides
    from bot.errors import ConfigError

    try:
        return with_overrides(cfg, **{dotted: v for dotted, v in options.values()})
    except ConfigError as e:
        msg = str(e)
        for opt, (dotted, v) in options.items():
            if v is not None and (f" {dotted}: " in msg):
                msg = msg.replace("invalid config (command-line options): ", "").replace(f"{dotted}: ", f"{opt} ({dotted}): ", 1)
                raise ConfigError(f"invalid option {msg}") from None
        raise


def _open_store(db: str):
    """open_store with the path checked first; every failure to open is one line naming ``db``."""
    from sqlalchemy.exc import SQLAlchemyError

    from bot.persistence.dbpath import check_database, open_error
    from bot.persistence.store import open_store

    check_database(db, create=True)
    try:
        return open_store(db)
    except SQLAlchemyError as e:
        raise open_error(db, e) from None
    except OSError as e:
        raise MmbotError(f"database {db}: cannot be created ({e.strerror or e})") from None


def _out_dir(path: Path, option: str) -> Path:
    """An output directory given by ``option``: refuse a path that is a file."""
    if path.exists() and not path.is_dir():
        raise MmbotError(f"{option} {path}: is a file; give a directory")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise MmbotError(f"{option} {path}: {parent} is a file, not a folder")
            break
    return path


def _existing(paths: list[Path]) -> list[Path]:
    for p in paths:
        if not p.exists():
            raise MmbotError(f"input file {p} does not exist")
    return paths


FORCE_HELP = "replace a recording already in --out (default: refuse)"


def _import(kind: str, inputs: list[Path], out: Path, force: bool, run) -> object:
    """Run ``run(overwrite)`` for ``mmbot import KIND``: refuse an --out that is a file or
    already holds a recording (unless --force), and fail when the input yields no events
    (an empty file, or a capture of another format): then nothing is left in --out."""
    from bot.recording.io import META_FILE

    _existing(inputs)
    _out_dir(out, "--out")
    had_recording = (out / META_FILE).exists()
    if had_recording and not force:
        raise MmbotError(f"--out {out}: already holds a recording; choose a new directory or pass --force to replace it")
    created = not out.exists()
    before = set(out.iterdir()) if out.exists() else set()
    stats = run(force)
    if getattr(stats, "events", None) == 0:
        for f in (set(out.iterdir()) - before) if out.exists() else ():
            if f.is_file():
                f.unlink()
        if created and out.exists() and not any(out.iterdir()):
            out.rmdir()
        d = stats.as_dict() if hasattr(stats, "as_dict") else dict(vars(stats))
        read = d.get("lines", d.get("messages"))
        seen = f"{read:,} lines read" if isinstance(read, int) else "nothing read"
        if isinstance(d.get("ignored_messages"), int) and d["ignored_messages"]:
            seen += f", {d['ignored_messages']:,} of them not {kind} market messages"
        names = ", ".join(str(p) for p in inputs)
        what = "is empty" if read == 0 else f"holds no {kind} market events ({seen}); is it a {kind} capture?"
        raise DataError(f"{names}: {what}" + ("; the old recording in --out was replaced" if had_recording else ""))
    return stats


@import_app.command("binance")
def import_binance_cmd(
    files: list[Path] = typer.Argument(..., help="capture files of ONE market, in time order (e.g. btcusdt_20240808.gz btcusdt_20240809.gz)"),
    out: Path = typer.Option(..., "--out", help="recording directory to write"),
    lenient: bool = typer.Option(False, "--lenient", help="count and skip corrupt lines instead of stopping"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Binance raw websocket captures (combined-stream depth diffs, trades, bookTicker, REST snapshot)."""
    from bot.importers.binance import import_binance

    stats = _import("Binance", files, out, force, lambda ow: import_binance(files, out, lenient=lenient, overwrite=ow))
    _print_stats(stats, json_out, f"Imported into {out}")


@import_app.command("bitstamp")
def import_bitstamp_cmd(
    file: Path = typer.Argument(..., help="Bitstamp 2015 log, e.g. 2015-05-01.log.bz2"),
    out: Path = typer.Option(..., "--out", help="recording directory to write"),
    lenient: bool = typer.Option(False, "--lenient", help="count and skip corrupt lines instead of stopping"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    tick: Optional[str] = typer.Option(None, "--tick", help="price tick, USD (default: inferred from the prices)"),
    lot: Optional[str] = typer.Option(None, "--lot", help="size step, BTC (default: inferred from the amounts)"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Bitstamp 2015 order events and top-20 snapshots."""
    from bot.importers.bitstamp import import_bitstamp

    stats = _import("Bitstamp", [file], out, force,
                    lambda ow: import_bitstamp(file, out, lenient=lenient, overwrite=ow, tick_size=tick, lot_size=lot))
    for w in getattr(stats, "warnings", ()):
        print(f"mmbot: warning: {w}", file=sys.stderr)
    _print_stats(stats, json_out, f"Imported into {out}")


@import_app.command("hyperliquid")
def import_hyperliquid_cmd(
    files: list[Path] = typer.Argument(..., help="Hyperliquid l2Book/trades capture files of one coin, in time order"),
    out: Path = typer.Option(..., "--out", help="recording directory to write"),
    lenient: bool = typer.Option(False, "--lenient", help="count and skip corrupt lines instead of stopping"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Hyperliquid websocket captures (l2Book snapshots diffed into level updates, trades)."""
    from bot.importers.hyperliquid import import_hyperliquid

    stats = _import("Hyperliquid", files, out, force, lambda ow: import_hyperliquid(files, out, lenient=lenient, overwrite=ow))
    _print_stats(stats, json_out, f"Imported into {out}")


@import_app.command("lobster")
def import_lobster_cmd(
    file: Path = typer.Argument(..., help="LOBSTER sample zip (message + orderbook files)"),
    out: Path = typer.Option(..., "--out", help="recording directory to write"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """LOBSTER message and order-book files (NASDAQ samples)."""
    from bot.importers.lobster import import_lobster

    stats = _import("LOBSTER", [file], out, force, lambda ow: import_lobster(file, out, overwrite=ow))
    _print_stats(stats, json_out, f"Imported into {out}")

DEFAULT_CONFIG = Path("config/paper.yaml")
METRICS_PORT_HELP = "serve Prometheus metrics on this port (0 = any free port; the URL is printed on stderr)"
METRICS_LINGER_HELP = "keep the metrics endpoint up this many seconds after the run (SIGTERM ends it)"
LOG_JSON_HELP = "write JSON-line event logs (fills, order errors, guard switches, run start/end) to this rotating file"


def _observability_options(metrics_port, metrics_linger, log_json) -> dict:
    """The command-line options of the metrics endpoint and the JSON log, for _with_options."""
    return {"--metrics-port": ("metrics.port", metrics_port), "--metrics-linger": ("metrics.linger_s", metrics_linger),
            "--log-json": ("logging.json_file", log_json)}
DEFAULT_BACKTEST_CONFIG = Path("config/backtest.yaml")


def _console() -> Console:
    return Console()


@app.command()
def paper(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: config/paper.yaml if present, else built-in defaults)"),
    exchange: Optional[str] = typer.Option(None, help="'sim' or a ccxt exchange id for live public data (no keys)"),
    symbol: Optional[str] = typer.Option(None, help="ccxt unified symbol, e.g. BTC/USDT"),
    duration: Optional[float] = typer.Option(None, help="run length, seconds (simulated seconds on 'sim')"),
    db: Optional[str] = typer.Option(None, help="database file or SQLAlchemy URL"),
    speed: Optional[float] = typer.Option(None, help="sim only: simulated seconds per wall second (0 = as fast as possible)"),
    seed: Optional[int] = typer.Option(None, help="sim only: random seed"),
    live: Optional[bool] = typer.Option(None, "--live/--no-live", help="show the live status panel"),
    replay: Optional[Path] = typer.Option(None, "--replay", help="replay a recording directory (mmbot import / mmbot record) instead"),
    replay_speed: Optional[float] = typer.Option(None, "--replay-speed", help="with --replay: recorded seconds per wall second (0 = as fast as possible)"),
    json_out: bool = typer.Option(False, "--json", help="print the final summary as one JSON object"),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", help=METRICS_PORT_HELP),
    metrics_linger: Optional[float] = typer.Option(None, "--metrics-linger", help=METRICS_LINGER_HELP),
    log_json: Optional[str] = typer.Option(None, "--log-json", help=LOG_JSON_HELP),
) -> None:
    """Paper-trade: simulated fills on the simulated market (default), on live public data, or on a replayed recording."""
    from bot.app import build_paper_engine
    from bot.config import build_forecaster, load_config
    from bot.status import LivePanel, run_with_panel

    if config is None and DEFAULT_CONFIG.exists():
        config = DEFAULT_CONFIG
    cfg = load_config(config)
    cfg = _with_options(cfg, {"--exchange": ("exchange", exchange), "--symbol": ("symbol", symbol),
                              "--duration": ("duration_s", duration), "--db": ("database.url", db),
                              "--speed": ("sim.speed", speed), "--seed": ("sim.seed", seed), "--live": ("ui.live", live),
                              "--replay-speed": ("replay.speed", replay_speed), **_observability_options(metrics_port, metrics_linger, log_json)})
    console = _console()
    use_live = cfg.ui.live and console.is_terminal and not json_out
    if cfg.markets:
        for opt, v in (("--exchange", exchange), ("--symbol", symbol), ("--replay", replay)):
            if v is not None:
                raise MmbotError(f"{opt}: the config lists several markets (markets:); set each market's exchange, symbol "
                                 f"and recording (data) in its entry instead")
        _paper_markets(cfg, str(config) if config is not None else "(options)", json_out, console, use_live)
        return
    if cfg.exchange != "sim" and symbol is None and cfg.symbol == "SIM/USD":
        raise MmbotError(f"--symbol is required with --exchange {cfg.exchange} (e.g. --symbol BTC/USDT)")
    events_meta = None
    if replay is not None:
        from paper_trading.backtest import check_recording

        check_recording(replay)  # a bad recording fails before the database is touched (then streamed)
    forecaster = build_forecaster(cfg, live_feed=replay is None and cfg.exchange != "sim")  # ... and so does a bad model file
    from bot.observability.runtime import Observability

    obs = None
    store = _open_store(cfg.database.url)
    try:
        obs = Observability(cfg)
        panel = LivePanel(console, cfg.ui.refresh_per_s) if use_live else None
        if replay is not None:
            from paper_trading.backtest import build_replay_engine

            engine, _ = build_replay_engine(replay, cfg, store, mode="paper", speed=cfg.replay.speed, on_tick=panel, events_meta=events_meta,
                                            forecaster=forecaster)
        else:
            engine = build_paper_engine(cfg, store, on_tick=panel, forecaster=forecaster)
        engine.observer = obs.observer
        summary = run_with_panel(engine, panel)
        obs.linger()
    finally:
        store.close()
        if obs is not None:
            obs.close()
    code = print_run_summary(summary, cfg.database.url, json_out, console, "Paper run summary")
    if code:
        raise typer.Exit(code)


def _paper_markets(cfg, where: str, json_out: bool, console: Console, use_live: bool, credentials=None) -> None:
    """`mmbot paper` (or, with ``credentials``, `mmbot live`) on a config with ``markets:``:
    every market in one process (bot/multi.py)."""
    from bot.config import market_specs
    from bot.multi import ForecasterPool, build_market_runs, failure_line, new_session_id, run_markets
    from bot.observability.runtime import Observability
    from bot.persistence.dbpath import redact
    from bot.persistence.store import Store
    from bot.status import MultiPanel

    specs = market_specs(cfg, where)
    live_data = [s for s in specs if s.data is None and s.cfg.exchange != "sim"]
    if live_data:  # a typo fails before any market starts
        import ccxt

        from bot.errors import ConfigError
        from bot.exchanges.ccxt_client import _close_matches

        for s in live_data:
            if s.cfg.exchange.strip().lower() not in ccxt.exchanges:
                close = ", ".join(_close_matches(s.cfg.exchange, list(ccxt.exchanges))) or "none close; see ccxt.exchanges"
                raise ConfigError(f"invalid config {where}: markets[{s.index}] ({s.name}): exchange: unknown exchange "
                                  f"{s.cfg.exchange!r} (ccxt knows: {close})")
    if any(s.data is not None for s in specs):
        from bot.errors import ConfigError
        from paper_trading.backtest import check_recording, unified_symbol

        for s in specs:
            if s.data is not None:
                try:
                    rec = check_recording(s.data)  # a bad recording fails before the database is touched
                except MmbotError as e:
                    raise type(e)(f"markets[{s.index}] ({s.name}): data: {e}") from None
                rx, rs = rec.meta.get("exchange"), unified_symbol(str(rec.meta.get("symbol", "?")))[0]
                if (rx and rx != s.cfg.exchange) or rs != s.cfg.symbol:  # the record and the metrics name the market
                    raise ConfigError(f"invalid config {where}: markets[{s.index}] ({s.name}): data: {s.data} is a recording of "
                                      f"{rx or '?'} {rs}; set the entry's exchange: {rx or '?'} and symbol: {rs}")
    pool = ForecasterPool()
    for s in specs:  # a bad model file fails before the database is touched too (each model loads once)
        pool.get(s.cfg)
    session = new_session_id()
    first = _open_store(cfg.database.url)  # checks the path / URL; the other markets' stores share its engine
    stores, unused = [first], [first]

    def open_store():
        if unused:
            return unused.pop()
        st = Store(first.engine, redact(cfg.database.url))
        stores.append(st)
        return st

    obs = None
    runs = []
    try:
        obs = Observability(cfg)
        panel = MultiPanel(console, cfg.ui.refresh_per_s) if use_live else None
        runs = build_market_runs(specs, open_store, session, on_tick=panel, pool=pool, credentials=credentials)
        for i, r in enumerate(runs):
            r.engine.observer = obs.observer if i == 0 else obs.new_observer()
        if panel is not None:
            panel.engines = [r.engine for r in runs]
            with panel:
                risk = asyncio.run(run_markets(runs, cfg.account))
        else:
            risk = asyncio.run(run_markets(runs, cfg.account))
        obs.linger()
    finally:
        for st in reversed(stores):
            st.close()
        if obs is not None:
            obs.close()
    db = redact(cfg.database.url)
    rows = []
    for r in runs:
        s = r.summary
        rows.append({"market": r.spec.name, "run_id": s.get("run_id"), "status": s.get("status"), "events": s.get("events"),
                     "fills": s.get("fills"), "pnl": s.get("pnl"), "inventory": s.get("inventory"),
                     "stop_reason": s.get("stop_reason")})
    if json_out:
        print(json.dumps({"session_id": session, "database": db, "account_kill_switch": risk.killed or None,
                          "markets": [{**r.summary, "market": r.spec.name} for r in runs]}, default=str))
    else:
        from rich.table import Table

        from rich import box

        mode = "Live" if credentials is not None else "Paper"
        t = Table(title=f"{mode} session {session}: {len(runs)} markets (PnL in each market's quote currency)",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        for k in rows[0]:
            t.add_column(k.replace("_", " "), overflow="fold")  # never cut a number
        for row in rows:
            t.add_row(*("-" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v) for v in row.values()))
        console.print(t)
        console.print(f"Report: mmbot report --db {db.removeprefix('sqlite:///')} --session {session}", soft_wrap=True)
    failed = [r for r in runs if r.error is not None]
    for r in failed:
        print(f"mmbot: error: {failure_line(r)}", file=sys.stderr)
    if failed:
        raise typer.Exit(2 if all(isinstance(r.error, MmbotError) for r in failed) else 1)
    killed = [r for r in runs if r.summary.get("status") == "killed"]  # the account's or a live market's own
    if risk.killed or killed:
        for reason in dict.fromkeys([risk.killed] if risk.killed else [str(r.summary.get("stop_reason")) for r in killed]):
            print(f"mmbot: {reason}", file=sys.stderr)
        raise typer.Exit(3)  # as mmbot live after its kill switch
    code = max((_exit_code(r.summary) for r in runs), default=0)
    if code:
        raise typer.Exit(code)


@app.command()
def live(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: config/live.yaml if present)"),
    exchange: Optional[str] = typer.Option(None, help="ccxt exchange id, e.g. binance"),
    symbol: Optional[str] = typer.Option(None, help="ccxt unified symbol, e.g. BTC/USDT"),
    duration: Optional[float] = typer.Option(None, help="run length, wall seconds"),
    db: Optional[str] = typer.Option(None, help="database file or SQLAlchemy URL"),
    sandbox: bool = typer.Option(False, "--sandbox", help="the exchange's testnet (ccxt sandbox mode)"),
    yes: bool = typer.Option(False, "--yes", help="confirm trading real money"),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help="key file (mode 0600) instead of MMBOT_API_KEY/MMBOT_API_SECRET"),
    live_panel: Optional[bool] = typer.Option(None, "--live/--no-live", help="show the live status panel"),
    json_out: bool = typer.Option(False, "--json", help="print the final summary as one JSON object"),
) -> None:
    """Trade live: real orders through ccxt, reconciled with the exchange, under risk limits (see docs/live.md)."""
    from bot.live.cli import run_live_command

    run_live_command(config, exchange, symbol, duration, db, sandbox, yes, key_file, live_panel, json_out)


@simulate_app.command("as2008")
def simulate_as2008(
    gamma: float = typer.Option(0.1, help="risk aversion (paper: 0.1, 0.01, 1)"),
    paths: int = typer.Option(1000, min=1, max=1_000_000, help="number of simulated paths"),
    seed: int = typer.Option(7, min=0, help="random seed (non-negative)"),
    strategy: str = typer.Option("inventory", help="inventory | symmetric"),
    json_out: bool = typer.Option(False, "--json", help="one JSON object"),
) -> None:
    """Avellaneda-Stoikov (2008) Section 3.3 simulation: s0=100, T=1, sigma=2, dt=0.005, k=1.5, A=140."""
    from paper_trading.as2008 import simulate

    if strategy not in ("inventory", "symmetric"):
        raise MmbotError(f"--strategy must be 'inventory' or 'symmetric', got {strategy!r}")
    if not (math.isfinite(gamma) and 0 < gamma <= 1e6):
        raise MmbotError(f"--gamma must be a positive finite number (at most 1e6), got {gamma}")
    r = simulate(gamma, strategy, paths, seed)
    keys = ("mean_spread", "mean_profit", "std_profit", "mean_final_q", "std_final_q")
    if json_out:
        print(json.dumps({k: getattr(r, k) for k in keys}))
        return
    from rich.table import Table

    t = Table(title=f"AS2008 simulation: gamma={gamma}, strategy={strategy}, {paths} paths, seed {seed}")
    for k in keys:
        t.add_column(k.replace("_", " "), justify="right")
    t.add_row(*(f"{getattr(r, k):.3f}" for k in keys))
    _console().print(t)


def _register_commands() -> None:
    """Commands whose code lives beside what they drive (recorder, models)."""
    from bot.market_data.record_cli import record_command
    from models.cli import train
    from paper_trading.tune.cli import tune

    app.command("record", help="Record live L2 depth and trades (ccxt websockets; REST polling otherwise) into a recording.")(record_command)
    app.command("train", help="Train the LSTM forecaster with walk-forward validation against baselines; writes a model and a report.")(train)
    app.command("tune", help="Tune strategy parameters with Optuna on walk-forward backtests (parallel, distributed); writes best.yaml and a report.")(tune)


_register_commands()


@app.command()
def backtest(
    data: list[Path] = typer.Option(..., "--data", help="recording directory (from mmbot import or mmbot record); with --compare, repeat it for several markets"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: config/backtest.yaml if present)"),
    db: Optional[str] = typer.Option(None, help="database file or SQLAlchemy URL"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the HTML report into this directory (implies --html)"),
    html: bool = typer.Option(False, "--html/--no-html", help="write the HTML report and PNG plots (into --out, default replay.report_dir); off by default: it costs seconds, and `mmbot report --html DIR` writes it later"),
    variants: Optional[str] = typer.Option(None, "--compare", help="comma-separated variants on the same data: lstm (configured model + forecaster), baseline (same strategy, EWMA sigma and zero drift), oracle (same strategy, the realized future: sees it, an upper bound), glft, avellaneda_stoikov, symmetric (no forecaster); adds PnL after fees, adverse selection, inventory risk and the share of the oracle's edge captured"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar"),
    json_out: bool = typer.Option(False, "--json", help="print the summary as one JSON object"),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", help=METRICS_PORT_HELP),
    metrics_linger: Optional[float] = typer.Option(None, "--metrics-linger", help=METRICS_LINGER_HELP),
    log_json: Optional[str] = typer.Option(None, "--log-json", help=LOG_JSON_HELP),
    start: Optional[str] = typer.Option(None, "--start", help="begin at this recorded time, ISO-8601 UTC or ns since the epoch (the book is built from the recording's start, then replay.warmup_s passes before the first decision, as in a mmbot tune fold)"),
    end: Optional[str] = typer.Option(None, "--end", help="stop before this recorded time, ISO-8601 UTC or ns (the recording is read whole into memory for a window)"),
    no_forecast_cache: bool = typer.Option(False, "--no-forecast-cache", help="run the forecaster step by step inside the backtest instead of reading (or computing and writing) its forecasts in the on-disk cache ($MMBOT_CACHE_DIR/forecasts, default ~/.cache/mmbot/forecasts)"),
    loop: str = typer.Option("auto", "--loop", help="auto: the compiled loop when the run is supported (built-in strategy, no forecaster or cached forecasts, no metrics endpoint or JSON logs), else the engine; engine: always the engine (Python, per decision); compiled: refuse a run the compiled loop does not support. The summary's 'loop' says which ran"),
) -> None:
    """Tick-level backtest of the configured strategy over a recording (same strategy as paper and live)."""
    from paper_trading.backtest import LOOPS

    if loop not in LOOPS:
        raise MmbotError(f"--loop {loop!r}: must be one of {', '.join(LOOPS)}")
    from bot.config import load_config
    from bot.status import summary_table
    from paper_trading.backtest import backtest_forecaster, check_recording, run_backtest

    if config is None and DEFAULT_BACKTEST_CONFIG.exists():
        config = DEFAULT_BACKTEST_CONFIG
    cfg = _with_options(load_config(config), {"--db": ("database.url", db), **_observability_options(metrics_port, metrics_linger, log_json)})
    if cfg.markets:  # not silently the top-level market only
        raise MmbotError(f"{config}: markets: mmbot backtest replays one recording (--data); several markets in one "
                         "process: mmbot paper with a recording per market (markets[i].data, replay.speed 0)")
    if variants and (cfg.metrics.port is not None or cfg.logging.json_file):
        raise MmbotError("--compare runs several backtests: metrics (--metrics-port, metrics.port) and JSON logs "
                         "(--log-json, logging.json_file) are for single runs")
    if len(data) > 1 and not variants:
        raise MmbotError(f"--data given {len(data)} times: several recordings need --compare (one backtest runs one recording)")
    for d in data:
        check_recording(d)  # validate before touching the database
    events_meta = None  # the recording is streamed chunk by chunk
    start_ns = None
    if (start is not None or end is not None) and not variants:
        from paper_trading.window import load_window

        events_meta, start_ns = load_window(data[0], start, end, cfg)
    # the forecasts precomputed with the batch forward and cached on disk (no torch import when cached)
    forecaster = backtest_forecaster(cfg, use_cache=not (no_forecast_cache or variants))
    html = html or out is not None
    report_dir = _out_dir(out or Path(cfg.replay.report_dir), "--out" if out else "replay.report_dir") if html else None
    console = _console()
    if variants:
        _compare(data, cfg, [v.strip() for v in variants.split(",") if v.strip()], report_dir, json_out, console,
                 progress=progress, start=start, end=end)
        return
    from bot.observability.runtime import Observability

    obs = None
    store = _open_store(cfg.database.url)
    try:
        obs = Observability(cfg)
        summary = run_backtest(data[0], cfg, store, progress=progress and console.is_terminal and not json_out, report_dir=report_dir,
                               events_meta=events_meta, forecaster=forecaster, observer=obs.observer, start_ns=start_ns,
                               loop=loop)
        obs.linger()
    finally:
        store.close()
        if obs is not None:
            obs.close()
    if report_dir is None:
        from bot.persistence.dbpath import redact

        summary["report"] = (f"not written (pass --html or --out DIR; later: mmbot report --db "
                             f"{redact(cfg.database.url).removeprefix('sqlite:///')} --run {summary['run_id']} --html DIR)")
    if json_out:
        print(json.dumps(summary, default=str))
    else:
        metrics = summary.pop("metrics", {})
        console.print(summary_table(summary, "Backtest summary"))
        if metrics:
            console.print(summary_table({k: v for k, v in _shown_metrics(metrics).items() if k not in ("run_id",)}, "Metrics"))
    code = _exit_code(summary)
    if code:
        raise typer.Exit(code)


def _compare(data, cfg, names, report_dir, json_out, console, progress: bool = True, start=None, end=None) -> None:
    """One backtest per variant on each recording (``data``: a list of recording directories)
    and the same database (:mod:`paper_trading.compare`); per market a table of the variants side
    by side, then a summary table (a row per market and variant, and total rows) with the share
    of the oracle's edge captured. Progress (which variant runs, and its bar on a terminal) goes to stderr."""
    from paper_trading.compare import check_variants, run_compare

    check_variants(names)
    datas = list(data) if isinstance(data, (list, tuple)) else [data]
    err = Console(stderr=True)

    def on_variant(label: str, i: int, n: int, name: str) -> None:
        if progress:
            err.print(f"{label}: variant {i}/{n}: {name} ...")

    result, code = run_compare(datas, cfg, names, _open_store, report_dir=report_dir, on_variant=on_variant,
                               progress=progress and err.is_terminal, exit_code=_exit_code, start=start, end=end)
    if code:
        err.print(f"a variant stopped: {_stopped(result)}; the remaining variants are not run")
    if json_out:
        print(json.dumps(result, default=str))
    else:
        _print_compare(result, console)
    if code:
        raise typer.Exit(code)


_DETAIL_HIDDEN = ("report", "stopped", "duration_s", "adverse_1s_dropped_end", "adverse_10s_dropped_end")
_SUMMARY_COLUMNS = (("pnl", "PnL after fees"), ("fills", "fills"), ("adverse_1s_bp", "adverse 1 s bp"),
                    ("adverse_10s_bp", "adverse 10 s bp"), ("inv_risk", "mean |inv| x mid"))


def _stopped(result: dict) -> str:
    for mk in result["markets"].values():
        for name, row in mk["variants"].items():
            if row.get("stopped"):
                return f"{name}: {row['stopped']}"
    return "?"


def _print_compare(result: dict, console) -> None:
    """The tables of ``--compare`` (see :func:`_compare`)."""
    from rich.table import Table

    for label, mk in result["markets"].items():
        rows = mk["variants"]
        if not rows:
            continue
        t = Table(title=f"Variants on {mk['path']} ({mk.get('exchange') or '?'} {mk.get('market') or ''} {mk.get('symbol') or ''})")
        t.add_column("", overflow="fold")
        for name in rows:
            t.add_column(name, justify="right", overflow="fold")  # never cut a number or a word
        for k in next(iter(rows.values())):
            if k in _DETAIL_HIDDEN:
                continue
            t.add_row(k, *(_cell(k, r) for r in rows.values()))
        console.print(t)
        for name, r in rows.items():
            if r.get("report"):
                console.print(f"report {name}: {r['report']}", soft_wrap=True)
    t = Table(title="Forecast value per market (oracle SEES THE FUTURE: an upper bound; adverse = mid move against "
                    "us after a fill, positive = bad)")
    t.add_column("market", overflow="fold")
    t.add_column("variant", overflow="fold")
    for _, head in _SUMMARY_COLUMNS:
        t.add_column(head, justify="right", overflow="fold")
    t.add_column("share of oracle edge", justify="right", overflow="fold")
    groups = [(label, mk) for label, mk in result["markets"].items()] + [("TOTAL", result["total"])]
    for label, g in groups:
        share = g["oracle_edge_share"]
        for name, r in g["variants"].items():
            t.add_row(label, name, *(_cell(k, r) for k, _ in _SUMMARY_COLUMNS),
                      ("n/a" if share is None else f"{share:.3g}") if name == "lstm" else "")
    console.print(t)
    for label, g in groups:
        console.print(f"share of the oracle's edge captured by lstm, {label}: {g['oracle_edge_note']}", soft_wrap=True)


def _cell(key: str, row: dict) -> str:
    v = row.get(key)
    if key == "sharpe" and v is None:
        return f"n/a ({row.get('sharpe_minutes') or 0} min)"
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def print_run_summary(summary: dict, db_url: str, json_out: bool, console: Console, title: str) -> int:
    """Print a finished run's summary (one JSON line, or a table and the report command) with
    the database URL redacted; returns the run's exit code (see :func:`_exit_code`)."""
    from bot.persistence.dbpath import redact
    from bot.status import summary_table

    summary["database"] = redact(db_url)
    if json_out:
        print(json.dumps(summary, default=str))
    else:
        console.print(summary_table(summary, title))
        console.print(f"Report: mmbot report --db {summary['database'].removeprefix('sqlite:///')} --run {summary['run_id']}")
    return _exit_code(summary)


def _exit_code(summary: dict) -> int:
    """Exit code of a finished run: 130 after SIGINT (Ctrl-C), 143 after SIGTERM, 0 otherwise
    (an engine failure is raised, not returned)."""
    reason = str(summary.get("stop_reason") or "")
    if reason.startswith("SIGTERM"):
        return 143
    if reason.startswith("SIGINT") or summary.get("status") == "interrupted":
        return 130
    return 0


@app.command()
def report(
    db: str = typer.Option(..., "--db", help="database file or SQLAlchemy URL"),
    run: Optional[int] = typer.Option(None, "--run", help="run id (default: the latest)"),
    session: Optional[str] = typer.Option(None, "--session", help="a multi-market session (printed by mmbot paper; 'latest' = the newest): a row per market and totals"),
    html: Optional[Path] = typer.Option(None, "--html", help="also write report.html and PNG plots into this directory"),
    json_out: bool = typer.Option(False, "--json", help="one JSON object"),
) -> None:
    """Results of a run (or of a multi-market session: by market and in total), computed from the database alone."""
    from bot.persistence.report import build_report
    from bot.status import summary_table
    from paper_trading.metrics import compute_metrics

    if session is not None:
        if run is not None or html is not None:
            raise MmbotError("--session: a session's report is a table of its markets; --run and --html are for one run")
        _session_report(db, session, json_out)
        return

    if html is not None:
        _out_dir(html, "--html")
    r = build_report(db, run)
    m = compute_metrics(db, r.run_id)
    if html is not None:
        from paper_trading.report_html import write_report

        m["report"] = str(write_report(db, r.run_id, _out_dir(html, "--html")))
    if json_out:
        print(json.dumps(m, default=str))
        return
    from bot.persistence.report import run_title

    _console().print(summary_table(_shown_metrics(m), f"{run_title(r.run_id, r.mode, r.source, r.symbol)} ({r.status})"))


def _session_report(db: str, session: str, json_out: bool) -> None:
    """`mmbot report --session`: a row per market and a total per quote currency."""
    from rich import box
    from rich.table import Table

    from bot.persistence.report import SUMMED, build_session_report, run_title

    sr = build_session_report(db, session)
    if json_out:
        print(json.dumps(sr.as_dict(), default=str))
        return
    heads = {"orders": "orders", "fills": "fills", "volume_quote": "volume", "total_pnl": "PnL", "spread_capture": "spread",
             "inventory_pnl": "inv. PnL", "fees": "fees"}
    t = Table(title=f"Session {sr.session_id}: {len(sr.runs)} markets (money in each market's quote currency; "
                    f"inventory in base units)", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for c in ("run", "market", "status", *heads.values(), "inventory"):
        text = c in ("run", "market", "status")
        t.add_column(c, justify="left" if text else "right", overflow="fold")  # never cut a number

    def fmt(v) -> str:
        return f"{v:.6g}" if isinstance(v, float) else str(v)

    for r in sr.runs:
        t.add_row(str(r.run_id), r.symbol, r.status, *(fmt(getattr(r, k)) for k in SUMMED), fmt(r.final_inventory))
    for cur, tot in sr.totals.items():
        t.add_row("", f"total {cur}", f"{tot['markets']} markets", *(fmt(tot[k]) for k in SUMMED), "", style="bold")
    console = _console()
    console.print(t)
    if len(sr.totals) > 1:
        console.print(f"quote currencies differ ({', '.join(sr.totals)}): totals are per currency; amounts in different "
                      "currencies are not added", soft_wrap=True)
    for r in sr.runs:
        console.print(f"{run_title(r.run_id, r.mode, r.source, r.symbol)}: {r.stop_reason or r.status}", soft_wrap=True)


def _shown_metrics(m: dict) -> dict:
    """Metrics for a table: the Sharpe ratio with what it is (or why there is none)."""
    shown = dict(m)
    note = shown.pop("sharpe_note", None)
    if note:
        shown["sharpe"] = note if m.get("sharpe") is None else f"{m['sharpe']:.3g} ({note})"
    return shown


def _usage_message(e: Exception) -> str:
    """One line for a typer usage error: the command, the problem, where to look."""
    ctx = getattr(e, "ctx", None)
    where = ctx.command_path if ctx is not None else "mmbot"
    msg = " ".join(e.format_message().split())
    return f"{where}: {msg} (see '{where} --help')"


def run(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code. Errors a user can cause end as one line on stderr
    with exit code 2: usage errors, MmbotError, and OS errors (a path that is a directory,
    a file where a folder is needed, no permission). Ctrl-C gives 130.

    Only typer's public API is used (``typer.TyperException`` is the base of its usage
    errors); ``click`` is not imported: typer 0.29 vendors its own copy and does not install click."""
    try:
        rv = app(args=argv, prog_name="mmbot", standalone_mode=False)
    except MmbotError as e:
        print(f"mmbot: error: {e}", file=sys.stderr)
        return e.exit_code
    except typer.TyperException as e:  # usage errors: unknown option, bad value, missing argument
        if type(e).__name__ == "NoArgsIsHelpError":  # `mmbot` or `mmbot import` alone: the help, then one line
            ctx = getattr(e, "ctx", None)
            if ctx is not None:
                print(ctx.get_help())
            where = ctx.command_path if ctx is not None else "mmbot"
            print(f"mmbot: error: {where}: missing command (see the list above)", file=sys.stderr)
            return 2
        print(f"mmbot: error: {_usage_message(e)}", file=sys.stderr)
        return 2
    except typer.Abort:
        print("mmbot: interrupted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("mmbot: interrupted", file=sys.stderr)
        return 130
    except typer.Exit as e:
        return e.exit_code
    except OSError as e:  # the environment, not mmbot: name the path and the reason
        where = e.filename if e.filename is not None else type(e).__name__
        why = e.strerror or str(e)
        print(f"mmbot: error: {where}: {why}", file=sys.stderr)
        return 2
    if isinstance(rv, int) and not isinstance(rv, bool):  # typer.Exit(code) in non-standalone mode
        return rv
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
