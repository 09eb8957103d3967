"""``mmbot live``: trade on a real exchange (or its testnet, or a local stand-in).

Real money needs an explicit yes: ``--yes`` or ``live.confirm: true`` in the config;
without it the command explains what it would do and exits with code 2. ``--sandbox``
(ccxt sandbox mode: the exchange's testnet) needs no confirmation. Exit codes: 0 run
ended (duration), 130 / 143 stopped by SIGINT (Ctrl-C) / SIGTERM (as ``mmbot paper``),
2 user or exchange error (one line), 3 the kill switch stopped the run.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from bot.errors import ConfigError, MmbotError

DEFAULT_LIVE_CONFIG = Path("config/live.yaml")
KILLED_EXIT = 3


def run_live_command(config: Path | None, exchange: str | None, symbol: str | None, duration: float | None,
                     db: str | None, sandbox: bool, yes: bool, key_file: Path | None, live_panel: bool | None,
                     json_out: bool) -> None:
    from bot.config import load_config, with_overrides
    from bot.live.app import build_live_engine
    from bot.live.secrets import RedactingFormatter, install_log_redaction, load_credentials
    from bot.persistence.store import open_store
    from bot.status import LivePanel, run_with_panel
    from rich.console import Console

    if config is None and DEFAULT_LIVE_CONFIG.exists():
        config = DEFAULT_LIVE_CONFIG
    cfg = load_config(config)
    if cfg.markets and (exchange is not None or symbol is not None):
        raise ConfigError("--exchange/--symbol: the config lists several markets (markets:); set each market's exchange "
                          "and symbol in its entry instead")
    cfg = with_overrides(cfg, **{"exchange": exchange, "symbol": symbol, "duration_s": duration, "database.url": db,
                                 "ui.live": live_panel, "live.sandbox": True if sandbox else None,
                                 "live.key_file": str(key_file) if key_file else None})
    specs = None
    if cfg.markets:  # several markets of one account in this process (bot/live/multi.py)
        from bot.live.multi import live_specs

        specs = live_specs(cfg, str(config))
        cfg = with_overrides(cfg, exchange=specs[0].cfg.exchange, symbol=specs[0].cfg.symbol)  # the checks below: the first
    if cfg.exchange == "sim":
        raise ConfigError("mmbot live needs a real exchange: give --exchange (e.g. binance) or set exchange in the config")
    import ccxt

    from bot.exchanges.ccxt_client import _close_matches
    if cfg.exchange.strip().lower() not in ccxt.exchanges:  # before the database is touched
        close = ", ".join(_close_matches(cfg.exchange, list(ccxt.exchanges))) or "none close; see ccxt.exchanges"
        raise ConfigError(f"unknown exchange {cfg.exchange!r} (ccxt knows: {close})")
    if cfg.symbol == "SIM/USD":
        raise ConfigError(f"--symbol is required with --exchange {cfg.exchange} (e.g. --symbol BTC/USDT)")
    if not (yes or cfg.live.confirm or cfg.live.sandbox):
        if specs is not None:
            print(f"mmbot live places real orders with real money on {cfg.exchange} "
                  f"({', '.join(s.cfg.symbol for s in specs)}). Try --sandbox first; to trade for real, add --yes or set "
                  f"live.confirm: true. See docs/live.md.", file=sys.stderr)
            raise SystemExit(2)
        print(f"mmbot live places real orders with real money on {cfg.exchange} {cfg.symbol} "
              f"(order size {cfg.strategy.controls.order_size} {cfg.symbol.split('/')[0]}, "
              f"{cfg.strategy.controls.levels} level(s) a side). Try --sandbox (the exchange's testnet) first; "
              f"to trade for real, add --yes or set live.confirm: true. See docs/live.md.", file=sys.stderr)
        raise SystemExit(2)
    install_log_redaction()
    creds = load_credentials(cfg.live.key_file)  # registered for redaction before anything logs
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    console = Console()
    use_panel = cfg.ui.live and console.is_terminal and not json_out
    if specs is not None:
        from bot.cli import _paper_markets

        return _paper_markets(cfg, str(config), json_out, console, use_panel, credentials=creds)
    from bot.observability.runtime import Observability

    obs = None
    store = open_store(cfg.database.url)
    try:
        obs = Observability(cfg)  # metrics.port / logging.json_file of the config, as in paper
        panel = LivePanel(console, cfg.ui.refresh_per_s) if use_panel else None
        engine = build_live_engine(cfg, store, creds, on_tick=panel)
        engine.observer = obs.observer
        summary = run_with_panel(engine, panel)
        obs.linger()
    except MmbotError:
        raise
    finally:
        store.close()
        if obs is not None:
            obs.close()
    from bot.cli import print_run_summary

    code = print_run_summary(summary, cfg.database.url, json_out, console, "Live run summary")
    if summary.get("status") == "killed":
        print(f"mmbot: {summary.get('stop_reason')}", file=sys.stderr)
        raise SystemExit(KILLED_EXIT)
    if code:
        raise SystemExit(code)
