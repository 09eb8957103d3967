"""``mmbot record``: record live L2 data (order book + trades) into an mmbot recording.

:func:`record_command` is a plain function with typer-annotated parameters; the CLI module
registers it (``app.command("record")(record_command)``). It runs
:func:`bot.market_data.recorder.record` with a rich status line and prints a summary.
Ctrl-C stops the recording cleanly (open chunk written, ``meta.json`` complete); a second
Ctrl-C raises KeyboardInterrupt at once (closing is then best effort).
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

MAX_MINUTES = 366 * 24 * 60.0  # a year, minutes: longer is a typo (rotate parts instead)


def _fmt_px(x: Any) -> str:
    return "-" if x is None else f"{x:,.8g}"


def _status_text(exchange: str, symbol: str, s: dict) -> str:
    part = f" part {s.get('parts', 1)}" if s.get("parts", 1) > 1 else ""
    return (
        f"recording {exchange} {symbol} [{s.get('mode')}]{part}: {s.get('elapsed_s', 0):.0f}s, "
        f"{s.get('rows', 0):,} rows, {s.get('book_updates', 0):,} book updates, {s.get('trades', 0):,} trades, "
        f"{s.get('resyncs', 0)} resyncs, bid {_fmt_px(s.get('best_bid'))} / ask {_fmt_px(s.get('best_ask'))}"
    )


def summary_table(stats: dict) -> Table:
    """The end-of-recording summary as a rich table."""
    t = Table(title=f"recorded {stats.get('exchange')} {stats.get('symbol')}", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value")
    rows = [
        ("source", "websocket (ccxt.pro)" if stats.get("mode") == "ws" else "REST polling (ccxt)"),
        ("depth", stats.get("depth")),
        ("duration", f"{stats.get('elapsed_s', 0):.1f} s ({stats.get('stopped_by')})"),
        ("rows", f"{stats.get('rows', 0):,}"),
        ("book updates", f"{stats.get('book_updates', 0):,}"),
        ("trades", f"{stats.get('trades', 0):,}"),
        ("snapshots / resyncs", f"{stats.get('snapshots', 0)} / {stats.get('resyncs', 0)}"),
        ("reconnects / errors", f"{stats.get('reconnects', 0)} / {stats.get('errors', 0)}"),
        ("best bid / ask", f"{_fmt_px(stats.get('best_bid'))} / {_fmt_px(stats.get('best_ask'))}"),
    ]
    if stats.get("trade_gaps"):
        rows.append(("possible trade gaps", stats["trade_gaps"]))
    paths = stats.get("paths") or []
    rows.append(("recording" if len(paths) == 1 else f"recordings ({len(paths)})", "\n".join(paths)))
    for k, v in rows:
        t.add_row(k, str(v))
    return t


def record_command(
    exchange: str = typer.Option(..., "--exchange", "-e", help="ccxt exchange id, e.g. binance"),
    symbol: str = typer.Option(..., "--symbol", "-s", help="ccxt unified symbol, e.g. BTC/USDT"),
    minutes: Optional[float] = typer.Option(None, "--minutes", "-m", help="recording length in minutes (default: until Ctrl-C)"),
    out: Path = typer.Option(..., "--out", "-o", help="recording directory (must not hold a recording yet)"),
    api_url: Optional[str] = typer.Option(None, "--api-url", help="send REST calls to this http(s)://host:port instead (tests, proxies)"),
    ws_url: Optional[str] = typer.Option(None, "--ws-url", help="send websocket connections to this ws(s)://host:port (default: from --api-url)"),
    depth: Optional[int] = typer.Option(None, "--depth", help="levels per side (websocket default 1000, REST default 100)"),
    rotate_minutes: Optional[float] = typer.Option(None, "--rotate-minutes", help="start a new part (OUT/part-NNNN) every this many minutes"),
    rest: bool = typer.Option(False, "--rest", help="poll REST instead of using websockets"),
) -> None:
    """Record the live order book and trades of one market (websocket where ccxt.pro supports it, else REST polling)."""
    from bot.errors import ConfigError
    from bot.market_data.recorder import record

    for opt, v in (("--minutes", minutes), ("--rotate-minutes", rotate_minutes)):
        if v is not None and not (math.isfinite(v) and 0 < v <= MAX_MINUTES):
            raise ConfigError(f"{opt} must be a positive number of minutes, at most {MAX_MINUTES:.0f}, got {v} "
                              "(leave --minutes out to record until Ctrl-C)")
    if depth is not None and not 1 <= depth <= 10_000:
        raise ConfigError(f"--depth must be between 1 and 10000 levels, got {depth}")
    console = Console()
    err_console = Console(stderr=True)

    async def run(status: Any) -> dict:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed = False

        def on_sigint() -> None:
            if not stop.is_set():
                err_console.print("[yellow]stopping: closing the recording (Ctrl-C again to abort)[/]")
                stop.set()
                try:  # a second Ctrl-C gets Python's default handler: KeyboardInterrupt
                    loop.remove_signal_handler(signal.SIGINT)
                except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover
                    pass

        try:
            loop.add_signal_handler(signal.SIGINT, on_sigint)
            installed = True
        except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover - not main thread / Windows
            pass

        def on_status(s: dict) -> None:
            if status is not None:
                status.update(_status_text(exchange, symbol, s))

        try:
            return await record(
                exchange, symbol, out, minutes=minutes, api_url=api_url, ws_url=ws_url, depth=depth,
                rotate_minutes=rotate_minutes, use_ws=False if rest else None, on_status=on_status,
                status_interval_s=0.5, stop_event=stop,
            )
        finally:
            if installed:
                try:
                    loop.remove_signal_handler(signal.SIGINT)
                except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover
                    pass

    t0 = time.monotonic()
    if console.is_terminal:
        with console.status(f"connecting to {exchange} ...") as status:
            stats = asyncio.run(run(status))
    else:
        stats = asyncio.run(run(None))
    stats.setdefault("elapsed_s", time.monotonic() - t0)
    console.print(summary_table(stats))


__all__ = ["record_command", "summary_table"]
