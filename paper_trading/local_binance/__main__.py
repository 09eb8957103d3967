"""Run the local Binance spot exchange standalone.

    python -m paper_trading.local_binance --port 8765 --symbol BTC/USDT [--drive]

Prints the REST and websocket base URLs and the credentials, then serves until Ctrl-C.
``--drive`` starts the background market driver (:mod:`.driver`): a random-walk book
(``--drive-step`` quote units per step) with depth diffs and taker trades reaching up to
``--drive-reach`` quote units beyond the touch, which fill resting orders. Bad arguments -> one line
on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
from decimal import Decimal, InvalidOperation
from typing import NoReturn

from .server import LocalBinance
from .state import MarketSpec


def _fail(msg: str) -> NoReturn:
    print(f"local_binance: {msg}", file=sys.stderr)
    raise SystemExit(2)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints the usage too)
        _fail(message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = _Parser(prog="python -m paper_trading.local_binance",
                                 description="Local exchange speaking Binance spot's REST + websocket API.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765, help="TCP port (0 = any free port); default 8765")
    ap.add_argument("--symbol", action="append", default=None,
                    help="market(s) to list, BASE/QUOTE (repeatable); default BTC/USDT")
    ap.add_argument("--mid", default="50000", help="initial mid price of the book (quote/base); default 50000")
    ap.add_argument("--balance", action="append", default=None, metavar="ASSET=AMOUNT",
                    help="initial free balance (repeatable); default 0.01 of each base, 10000 of each quote")
    ap.add_argument("--api-key", default="test-key")
    ap.add_argument("--secret", default="test-secret")
    ap.add_argument("--drive", action="store_true", help="run the background market driver")
    ap.add_argument("--drive-interval", type=float, default=0.5, help="seconds between driver steps; default 0.5")
    ap.add_argument("--drive-step", default="1", help="largest mid move per driver step, quote units; default 1")
    ap.add_argument("--drive-reach", default="100",
                    help="how far beyond the touch a driver taker order may reach, quote units; default 100")
    return ap.parse_args(argv)


def build(args: argparse.Namespace) -> tuple[LocalBinance, Decimal]:
    """The server described by ``args`` (bad values -> exit 2 with one line)."""
    if not 0 <= args.port <= 65535:
        _fail(f"--port {args.port}: must be 0..65535")
    symbols = args.symbol or ["BTC/USDT"]
    markets = []
    for s in symbols:
        m = re.fullmatch(r"([A-Z0-9]{2,10})/([A-Z0-9]{2,10})", s.strip().upper())
        if not m:
            _fail(f"--symbol {s!r}: expected BASE/QUOTE such as BTC/USDT")
        markets.append(MarketSpec(base=m.group(1), quote=m.group(2)))
    try:
        mid = Decimal(args.mid)
    except InvalidOperation:
        _fail(f"--mid {args.mid!r}: not a number")
    if mid <= 0:
        _fail(f"--mid {args.mid!r}: must be > 0")
    if args.drive_interval <= 0:
        _fail(f"--drive-interval {args.drive_interval}: must be > 0 seconds")
    for name in ("drive_step", "drive_reach"):
        try:
            ok = Decimal(getattr(args, name)) >= 0
        except InvalidOperation:
            ok = False
        if not ok:
            _fail(f"--{name.replace('_', '-')} {getattr(args, name)!r}: expected a number >= 0 (quote units)")
    balances: dict[str, str] = {}
    for m_ in markets:
        balances.setdefault(m_.base, "0.01")
        balances.setdefault(m_.quote, "10000")
    for item in args.balance or []:
        asset, sep, amount = item.partition("=")
        try:
            ok = bool(sep) and Decimal(amount) >= 0
        except InvalidOperation:
            ok = False
        if not ok or not asset:
            _fail(f"--balance {item!r}: expected ASSET=AMOUNT with AMOUNT >= 0")
        balances[asset.upper()] = amount
    ex = LocalBinance(markets, api_key=args.api_key, secret=args.secret, balances=balances,
                      host=args.host, port=args.port)
    for m_ in markets:  # 20 levels of 1 base unit each side, one tick apart around mid
        t = Decimal(m_.tick_size)
        mid = (mid / t).to_integral_value() * t
        ex.set_book([(mid - t * i, "1") for i in range(1, 21)], [(mid + t * i, "1") for i in range(1, 21)], m_.id)
    return ex, mid


async def serve(args: argparse.Namespace) -> None:
    ex, mid = build(args)
    try:
        await ex.start()
    except OSError as e:
        _fail(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}")
    print(f"local Binance spot exchange running (markets: {', '.join(m.symbol for m in ex.state.markets.values())})")
    print(f"  REST base:      {ex.base_url}")
    print(f"  websocket base: {ex.ws_url}   (WebSocket API: {ex.ws_api_url})")
    print(f"  api key / secret: {ex.api_key} / {ex.secret}")
    print(f"  record:         GET {ex.base_url}/_admin/record")
    sys.stdout.flush()
    driver = None
    if args.drive:
        from .driver import MarketDriver

        driver = MarketDriver(ex, interval_s=args.drive_interval, step=args.drive_step, reach=args.drive_reach)
        driver.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    await stop.wait()
    if driver is not None:
        await driver.stop()
    await ex.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:  # pragma: no cover
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
