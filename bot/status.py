"""The live status panel (rich) and the final summary table."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from rich.console import Console
from rich.live import Live
from rich.table import Table

from bot.engine import Engine


def _fmt_levels(levels) -> str:
    return ", ".join(f"{lv.size}@{lv.price}" for lv in levels) or "-"


def status_table(engine: Engine) -> Table:
    st, inv = engine.state, engine.inventory
    q = st.quotes
    t = Table(title=f"mmbot {engine.mode} - {engine.market.symbol if engine.market else ''}", show_header=False, min_width=60)
    t.add_column(style="bold cyan")
    t.add_column()
    ts = datetime.fromtimestamp(st.ts_ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if st.ts_ns else "-"
    t.add_row("market time (UTC)", ts)
    t.add_row("mid", f"{st.mid:.6g}")
    if q is not None:
        t.add_row("bids", _fmt_levels(q.bids))
        t.add_row("asks", _fmt_levels(q.asks))
        t.add_row("reservation / sigma", f"{q.reservation:.6g} / {q.sigma:.4g}" + (f"  ({q.note})" if q.note else ""))
    if st.forecast_source:
        age = "" if st.forecast_age_ns is None else f"  (inputs {st.forecast_age_ns / 1e9:.3f} s old)"
        t.add_row("forecast", st.forecast_source + age)
    fc = getattr(engine, "forecaster", None)
    if hasattr(fc, "adapt_line"):  # forecaster.adapt on: the model running, swaps, jobs
        t.add_row("forecaster model", fc.adapt_line())
    t.add_row("inventory (base)", f"{inv.base}")
    t.add_row("cash (quote)", f"{inv.cash:.4f}")
    t.add_row("PnL (quote)", f"{st.pnl:.4f}")
    t.add_row("fills / volume (quote)", f"{inv.n_fills} / {float(inv.volume):.2f}")
    t.add_row("orders placed / canceled / rejected", f"{st.placed} / {st.canceled} / {st.rejected}")
    t.add_row("events", f"{st.events}")
    for k, v in getattr(engine, "status_rows", lambda: [])():  # live: error and rate-limit counters
        t.add_row(k, v)
    return t


def markets_table(engines: list[Engine], title: str = "") -> Table:
    """One row per market of a multi-market run: mid, best quotes, inventory (base units),
    PnL (the market's quote currency), fills, orders, events and state."""
    t = Table(title=title or f"mmbot paper - {len(engines)} markets", min_width=60)
    for col in ("market", "mid", "bid", "ask", "inventory", "PnL", "fills", "orders p/c/r", "events", "state"):
        t.add_column(col, justify="left" if col in ("market", "state") else "right", overflow="fold")
    for e in engines:
        st, inv, m = e.state, e.inventory, e.market
        name = f"{(e.config_snapshot or {}).get('exchange', '')} {m.symbol if m else (e.config_snapshot or {}).get('symbol', '')}"
        q = st.quotes
        bid = f"{q.bids[0].size}@{q.bids[0].price}" if q is not None and q.bids else "-"
        ask = f"{q.asks[0].size}@{q.asks[0].price}" if q is not None and q.asks else "-"
        if e.quotes_pulled:
            state = f"pulled: {e.quotes_pulled}"
        elif e.stop_reason:
            state = f"stopped: {e.stop_reason}"
        elif m is None:
            state = "starting"
        else:
            state = "quoting" if (q is not None and (q.bids or q.asks)) else "not quoting" + (f" ({q.note})" if q is not None and q.note else "")
        t.add_row(name.strip(), f"{st.mid:.6g}", bid, ask, f"{inv.base}", f"{st.pnl:.4f} {m.quote if m else ''}".strip(),
                  f"{inv.n_fills}", f"{st.placed}/{st.canceled}/{st.rejected}", f"{st.events}", state)
    return t


class MultiPanel:
    """The live panel of a multi-market run (a row per market), refreshed at most
    ``refresh_per_s`` times a second from any market's on_tick. Set ``engines`` before use."""

    def __init__(self, console: Console, refresh_per_s: float = 4.0) -> None:
        self.console = console
        self.min_dt = 1.0 / refresh_per_s
        self._last = 0.0
        self.live: Live | None = None
        self.engines: list[Engine] = []

    def __enter__(self) -> "MultiPanel":
        self.live = Live(console=self.console, auto_refresh=False, transient=False)
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.update(markets_table(self.engines), refresh=True)
            self.live.__exit__(*exc)

    def __call__(self, engine: Engine) -> None:
        now = time.monotonic()
        if now - self._last >= self.min_dt and self.live is not None:
            self._last = now
            self.live.update(markets_table(self.engines), refresh=True)


class LivePanel:
    """Refreshes the panel at most ``refresh_per_s`` times a second from the engine's on_tick hook."""

    def __init__(self, console: Console, refresh_per_s: float = 4.0) -> None:
        self.console = console
        self.min_dt = 1.0 / refresh_per_s
        self._last = 0.0
        self.live: Live | None = None
        self._engine: Engine | None = None

    def __enter__(self) -> "LivePanel":
        self.live = Live(console=self.console, auto_refresh=False, transient=False)
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            if self._engine is not None:  # the final state, not the last throttled frame
                self.live.update(status_table(self._engine), refresh=True)
            self.live.__exit__(*exc)

    def __call__(self, engine: Engine) -> None:
        self._engine = engine
        now = time.monotonic()
        if now - self._last >= self.min_dt and self.live is not None:
            self._last = now
            self.live.update(status_table(engine), refresh=True)


def summary_table(summary: dict, title: str = "Run summary") -> Table:
    t = Table(title=title, show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    for k, v in summary.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b:.4g}" if isinstance(b, float) else f"{a}={b}" for a, b in v.items())
        t.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v))
    return t


def run_with_panel(engine, panel) -> dict:
    """Run ``engine`` to its end (``asyncio.run``), inside the live status ``panel`` when there
    is one (None: no panel); returns the run's summary."""
    import asyncio

    if panel is None:
        return asyncio.run(engine.run())
    with panel:
        return asyncio.run(engine.run())
