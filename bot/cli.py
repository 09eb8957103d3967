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

DEFAULT_CONFIG = Path("config/paper.yaml")


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
    json_out: bool = typer.Option(False, "--json", help="print the final summary as one JSON object"),
) -> None:
    """Paper-trade: simulated fills on the simulated market (default) or on live public data."""
    from bot.app import build_paper_engine
    from bot.config import load_config, with_overrides
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
    store = open_store(cfg.database.url)
    try:
        panel = LivePanel(console, cfg.ui.refresh_per_s) if use_live else None
        engine = build_paper_engine(cfg, store, on_tick=panel)
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


@app.command()
def report(
    db: str = typer.Option(..., "--db", help="database file or SQLAlchemy URL"),
    run: Optional[int] = typer.Option(None, "--run", help="run id (default: the latest)"),
    json_out: bool = typer.Option(False, "--json", help="one JSON object"),
) -> None:
    """Results of a run, computed from the database alone."""
    from bot.persistence.report import build_report
    from bot.status import summary_table

    r = build_report(db, run)
    if json_out:
        print(json.dumps(r.as_dict()))
        return
    d = r.as_dict()
    _console().print(summary_table(d, f"Run {r.run_id} ({r.mode}, {r.exchange} {r.symbol}, {r.status})"))


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
