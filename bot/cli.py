"""The ``mmbot`` command line.

Every user error (bad config, unknown exchange or symbol, unreachable network, bad data)
ends as one line on stderr and exit code 2; no traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from bot.errors import MmbotError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="mmbot: an automated market maker (paper, live, backtest).")
simulate_app = typer.Typer(no_args_is_help=True, help="Stylised market simulations.")
app.add_typer(simulate_app, name="simulate")
import_app = typer.Typer(no_args_is_help=True, help="Import raw market data into mmbot's recording format.")
app.add_typer(import_app, name="import")


def _print_stats(stats, json_out: bool, title: str) -> None:
    d = stats.as_dict() if hasattr(stats, "as_dict") else dict(vars(stats))
    if json_out:
        print(json.dumps(d, default=str))
        return
    from bot.status import summary_table

    shown = {k: v for k, v in d.items() if not isinstance(v, (list, dict)) or k in ("rows_by_kind",)}
    _console().print(summary_table({k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in shown.items()}, title))


def _existing(paths: list[Path]) -> list[Path]:
    for p in paths:
        if not p.exists():
            raise MmbotError(f"input file {p} does not exist")
    return paths


@import_app.command("binance")
def import_binance_cmd(
    files: list[Path] = typer.Argument(..., help="capture files of ONE market, in time order (e.g. btcusdt_20240808.gz btcusdt_20240809.gz)"),
    out: Path = typer.Option(..., "--out", help="recording directory to write"),
    lenient: bool = typer.Option(False, "--lenient", help="count and skip corrupt lines instead of stopping"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Binance raw websocket captures (combined-stream depth diffs, trades, bookTicker, REST snapshot)."""
    from bot.importers.binance import import_binance

    _print_stats(import_binance(_existing(files), out, lenient=lenient), json_out, f"Imported into {out}")


@import_app.command("bitstamp")
def import_bitstamp_cmd(
    file: Path = typer.Argument(..., help="Bitstamp 2015 log, e.g. 2015-05-01.log.bz2"),
    out: Path = typer.Option(..., "--out", help="recording directory to write"),
    lenient: bool = typer.Option(False, "--lenient", help="count and skip corrupt lines instead of stopping"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Bitstamp 2015 order events and top-20 snapshots."""
    from bot.importers.bitstamp import import_bitstamp

    _print_stats(import_bitstamp(_existing([file])[0], out, lenient=lenient), json_out, f"Imported into {out}")


@import_app.command("hyperliquid")
def import_hyperliquid_cmd(
    files: list[Path] = typer.Argument(..., help="Hyperliquid l2Book/trades capture files of one coin, in time order"),
    out: Path = typer.Option(..., "--out", help="recording directory to write"),
    lenient: bool = typer.Option(False, "--lenient", help="count and skip corrupt lines instead of stopping"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Hyperliquid websocket captures (l2Book snapshots diffed into level updates, trades)."""
    from bot.importers.hyperliquid import import_hyperliquid

    _print_stats(import_hyperliquid(_existing(files), out, lenient=lenient), json_out, f"Imported into {out}")


@import_app.command("lobster")
def import_lobster_cmd(
    file: Path = typer.Argument(..., help="LOBSTER sample zip (message + orderbook files)"),
    out: Path = typer.Option(..., "--out", help="recording directory to write"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """LOBSTER message and order-book files (NASDAQ samples)."""
    from bot.importers.lobster import import_lobster

    _print_stats(import_lobster(_existing([file])[0], out), json_out, f"Imported into {out}")

DEFAULT_CONFIG = Path("config/paper.yaml")
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
) -> None:
    """Paper-trade: simulated fills on the simulated market (default), on live public data, or on a replayed recording."""
    from bot.app import build_paper_engine
    from bot.config import build_forecaster, load_config, with_overrides
    from bot.persistence.store import open_store
    from bot.status import LivePanel, summary_table

    if config is None and DEFAULT_CONFIG.exists():
        config = DEFAULT_CONFIG
    cfg = load_config(config)
    cfg = with_overrides(cfg, **{"exchange": exchange, "symbol": symbol, "duration_s": duration,
                                 "database.url": db, "sim.speed": speed, "sim.seed": seed, "ui.live": live})
    if cfg.exchange != "sim" and symbol is None and cfg.symbol == "SIM/USD":
        raise MmbotError(f"--symbol is required with --exchange {cfg.exchange} (e.g. --symbol BTC/USDT)")
    console = _console()
    use_live = cfg.ui.live and console.is_terminal and not json_out
    events_meta = None
    if replay is not None:
        from paper_trading.backtest import load_recording

        events_meta = load_recording(replay)  # a bad recording fails before the database is touched
    forecaster = build_forecaster(cfg)  # ... and so does a bad model file
    store = open_store(cfg.database.url)
    try:
        panel = LivePanel(console, cfg.ui.refresh_per_s) if use_live else None
        if replay is not None:
            from paper_trading.backtest import build_replay_engine

            speed_ = replay_speed if replay_speed is not None else cfg.replay.speed
            engine, _ = build_replay_engine(replay, cfg, store, mode="paper", speed=speed_, on_tick=panel, events_meta=events_meta,
                                            forecaster=forecaster)
        else:
            engine = build_paper_engine(cfg, store, on_tick=panel, forecaster=forecaster)
        if panel is not None:
            with panel:
                summary = asyncio.run(engine.run())
        else:
            summary = asyncio.run(engine.run())
    finally:
        store.close()
    summary["database"] = cfg.database.url
    if json_out:
        print(json.dumps(summary, default=str))
    else:
        console.print(summary_table(summary, "Paper run summary"))
        console.print(f"Report: mmbot report --db {cfg.database.url.removeprefix('sqlite:///')} --run {summary['run_id']}")


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
    paths: int = typer.Option(1000, min=1, help="number of simulated paths"),
    seed: int = typer.Option(7, help="random seed"),
    strategy: str = typer.Option("inventory", help="inventory | symmetric"),
    json_out: bool = typer.Option(False, "--json", help="one JSON object"),
) -> None:
    """Avellaneda-Stoikov (2008) Section 3.3 simulation: s0=100, T=1, sigma=2, dt=0.005, k=1.5, A=140."""
    from paper_trading.as2008 import simulate

    if strategy not in ("inventory", "symmetric"):
        raise MmbotError(f"--strategy must be 'inventory' or 'symmetric', got {strategy!r}")
    if gamma <= 0:
        raise MmbotError(f"--gamma must be positive, got {gamma}")
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

    app.command("record", help="Record live L2 depth and trades (ccxt websockets; REST polling otherwise) into a recording.")(record_command)
    app.command("train", help="Train the LSTM forecaster with walk-forward validation against baselines; writes a model and a report.")(train)


_register_commands()


@app.command()
def backtest(
    data: Path = typer.Option(..., "--data", help="recording directory (from mmbot import or mmbot record)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: config/backtest.yaml if present)"),
    db: Optional[str] = typer.Option(None, help="database file or SQLAlchemy URL"),
    out: Optional[Path] = typer.Option(None, "--out", help="report directory (default: replay.report_dir)"),
    variants: Optional[str] = typer.Option(None, "--compare", help="comma-separated variants on the same data: lstm (configured model + forecaster), glft, avellaneda_stoikov, symmetric (no forecaster)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar"),
    json_out: bool = typer.Option(False, "--json", help="print the summary as one JSON object"),
) -> None:
    """Tick-level backtest of the configured strategy over a recording (same strategy as paper and live)."""
    from bot.config import build_forecaster, load_config, with_overrides
    from bot.persistence.store import open_store
    from bot.status import summary_table
    from paper_trading.backtest import load_recording, run_backtest

    if config is None and DEFAULT_BACKTEST_CONFIG.exists():
        config = DEFAULT_BACKTEST_CONFIG
    cfg = with_overrides(load_config(config), **{"database.url": db})
    events_meta = load_recording(data)  # validate before touching the database
    forecaster = build_forecaster(cfg)
    report_dir = out or Path(cfg.replay.report_dir)
    console = _console()
    if variants:
        _compare(data, cfg, [v.strip() for v in variants.split(",") if v.strip()], report_dir, json_out, console, events_meta)
        return
    store = open_store(cfg.database.url)
    try:
        summary = run_backtest(data, cfg, store, progress=progress and console.is_terminal and not json_out, report_dir=report_dir,
                               events_meta=events_meta, forecaster=forecaster)
    finally:
        store.close()
    if json_out:
        print(json.dumps(summary, default=str))
        return
    metrics = summary.pop("metrics", {})
    console.print(summary_table(summary, "Backtest summary"))
    if metrics:
        console.print(summary_table({k: v for k, v in metrics.items() if k not in ("run_id",)}, "Metrics"))


def _compare(data, cfg, names, report_dir, json_out, console, events_meta) -> None:
    """One backtest per variant on the same recording and database; a table side by side."""
    from bot.config import with_overrides
    from bot.persistence.store import open_store
    from paper_trading.backtest import run_backtest

    rows = {}
    for name in names:
        if name == "lstm":  # the configured pricing model, skewed by the forecaster
            over = {"forecaster.model": cfg.forecaster.model if cfg.forecaster.model != "none" else "default"}
        elif name in ("glft", "avellaneda_stoikov", "symmetric"):
            over = {"strategy.pricing.model": name, "forecaster.model": "none"}
        else:
            raise MmbotError(f"--compare: unknown variant {name!r} (lstm, glft, avellaneda_stoikov, symmetric)")
        vcfg = with_overrides(cfg, **over)
        store = open_store(vcfg.database.url)
        try:
            s = run_backtest(data, vcfg, store, report_dir=Path(report_dir) / name, events_meta=events_meta)
        finally:
            store.close()
        m = s.get("metrics", {})
        rows[name] = {"run_id": s["run_id"], "pnl": s["pnl"], "spread_capture": m.get("spread_capture"),
                      "inventory_pnl": m.get("inventory_pnl"), "fees": m.get("fees"), "fills": s["fills"],
                      "max_abs_inventory": s["max_abs_inventory"], "sharpe": m.get("sharpe"),
                      "share_quoted_both": m.get("share_quoted_both"),
                      "forecast": (s.get("forecaster") or {}).get("source", "-"), "report": s.get("report")}
    if json_out:
        print(json.dumps(rows, default=str))
        return
    from rich.table import Table

    t = Table(title=f"Variants on {data}")
    t.add_column("")
    for name in rows:
        t.add_column(name, justify="right")
    for k in next(iter(rows.values())):
        t.add_row(k, *(f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for r in rows.values()))
    console.print(t)


@app.command()
def report(
    db: str = typer.Option(..., "--db", help="database file or SQLAlchemy URL"),
    run: Optional[int] = typer.Option(None, "--run", help="run id (default: the latest)"),
    html: Optional[Path] = typer.Option(None, "--html", help="also write report.html and PNG plots into this directory"),
    json_out: bool = typer.Option(False, "--json", help="one JSON object"),
) -> None:
    """Results of a run, computed from the database alone."""
    from bot.persistence.report import build_report
    from bot.status import summary_table
    from paper_trading.metrics import compute_metrics

    r = build_report(db, run)
    m = compute_metrics(db, r.run_id)
    if html is not None:
        from paper_trading.report_html import write_report

        m["report"] = str(write_report(db, r.run_id, html))
    if json_out:
        print(json.dumps(m, default=str))
        return
    _console().print(summary_table(m, f"Run {r.run_id} ({r.mode}, {r.exchange} {r.symbol}, {r.status})"))


def main() -> None:
    try:
        app(standalone_mode=False)
    except MmbotError as e:
        print(f"mmbot: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("mmbot: interrupted", file=sys.stderr)
        sys.exit(130)
    except (typer.Exit, SystemExit) as e:  # noqa: B014
        code = getattr(e, "exit_code", None) or getattr(e, "code", 0) or 0
        sys.exit(code)
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            print("mmbot: aborted", file=sys.stderr)
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
