"""Account-level risk across the markets of one process (config ``account:``).

Each market's :class:`~bot.engine.Engine` keeps its own inventory and orders; this module
looks at all of them together:

* **total notional** (``max_total_notional``, quote currency): the working orders (price x
  remaining size, quote per base x base units) plus the positions (|inventory| x mid) of
  every market quoted in one currency. When a market's desired quotes would take its
  currency's total beyond the cap, only the side that reduces its position is kept (none
  when it is flat).
* **total loss kill switch** (``max_total_loss``, quote currency): when the summed PnL of
  the markets quoted in one currency falls below minus the limit, every market is stopped
  (each run ends ``killed``, its ``stop_reason`` says why; the engines cancel their orders
  at shutdown; ``mmbot paper`` exits 3, as ``mmbot live`` after its kill switch).
* **per-asset inventory** (``max_asset_inventory``, units of the asset): the inventories of
  the markets whose *base* asset is the same (BTC/USDT and BTC/USDC both hold BTC) are
  summed; a side that would take the sum beyond +-cap if it filled whole -- together with
  every other such market's working orders on that side -- is not quoted, so no sequence of
  fills can pass the cap. The quote currency's balance is not capped here.

Amounts in different quote currencies are never added: each currency's markets are summed
and limited on their own. PnL values are the engines' floats (quote currency); order and
inventory amounts are exact Decimals.
"""

from __future__ import annotations

import dataclasses
import logging
from decimal import Decimal

from bot.config import AccountRiskConfig
from bot.engine import Engine
from bot.orders import Side
from strategies.base import Quotes

log = logging.getLogger("mmbot.portfolio")


def _d(x: float) -> Decimal:
    return Decimal(repr(x))


def open_notional(engine: Engine) -> Decimal:
    """Working orders of one market: sum of price x remaining size, quote currency."""
    om = engine.om
    if om is None:
        return Decimal(0)
    return sum((o.price * o.remaining for o in om.working.values()), Decimal(0))


def position_notional(engine: Engine) -> Decimal:
    """|inventory| x mid of one market, quote currency (0 before its first mid)."""
    mid = engine.state.mid
    if mid != mid:  # NaN: no mid yet
        return Decimal(0)
    return abs(engine.inventory.base) * _d(mid)


class AccountRisk:
    """The account's limits over ``engines`` (one per market). Install with :meth:`attach`:
    it sets each engine's ``quote_filter`` and wraps its ``on_tick`` with the kill-switch
    check. ``killed`` is the kill switch's reason once it fired ("" before)."""

    def __init__(self, cfg: AccountRiskConfig, engines: list[Engine]) -> None:
        self.cfg = cfg
        self.engines = engines
        self.killed = ""
        self.asset_caps = {k.upper(): _d(v) for k, v in cfg.max_asset_inventory.items()}

    # -- wiring --------------------------------------------------------------------------
    def attach(self) -> None:
        for e in self.engines:
            e.quote_filter = self.filter
            inner = e.on_tick

            def on_tick(engine: Engine, _inner=inner) -> None:
                if _inner is not None:
                    _inner(engine)
                self.check(engine)

            e.on_tick = on_tick

    # -- aggregates ----------------------------------------------------------------------
    def _started(self) -> list[Engine]:
        return [e for e in self.engines if e.market is not None]

    def total_notional(self, quote: str, exclude: Engine | None = None) -> Decimal:
        """Working orders plus positions of the markets quoted in ``quote``, quote currency."""
        return sum((open_notional(e) + position_notional(e) for e in self._started()
                    if e.market.quote == quote and e is not exclude), Decimal(0))

    def asset_working(self, asset: str, side: Side, exclude: Engine | None = None) -> Decimal:
        """Remaining size of the working ``side`` orders of the markets whose base asset is
        ``asset`` (except ``exclude``), asset units."""
        return sum((o.remaining for e in self._started() if e is not exclude and e.om is not None
                    and e.market.base.upper() == asset.upper() for o in e.om.working.values() if o.side is side), Decimal(0))

    def asset_inventory(self, asset: str) -> Decimal:
        """Summed inventory of the markets whose base asset is ``asset``, asset units."""
        return sum((e.inventory.base for e in self._started() if e.market.base.upper() == asset.upper()), Decimal(0))

    def total_pnl(self) -> dict[str, float]:
        """Summed PnL per quote currency (quote currency units)."""
        out: dict[str, float] = {}
        for e in self._started():
            out[e.market.quote] = out.get(e.market.quote, 0.0) + e.state.pnl
        return out

    # -- the engine's hooks --------------------------------------------------------------
    def filter(self, engine: Engine, quotes: Quotes) -> Quotes:
        """``quotes`` with the sides the account's limits forbid removed (the same object
        when none is)."""
        if self.killed:
            return dataclasses.replace(quotes, bids=[], asks=[], note=f"account: {self.killed}")
        m = engine.market
        bids, asks = quotes.bids, quotes.asks
        notes = []
        cap = self.cfg.max_total_notional
        if cap is not None and (bids or asks):
            desired = sum((lv.price * lv.size for lv in (*bids, *asks)), Decimal(0))
            total = self.total_notional(m.quote, exclude=engine) + position_notional(engine) + desired
            if total > _d(cap):
                q = engine.inventory.base
                bids = bids if q < 0 else []
                asks = asks if q > 0 else []
                notes.append(f"total notional {total:.2f} {m.quote} > cap {cap:g}")
        acap = self.asset_caps.get(m.base.upper())
        if acap is not None:
            held = self.asset_inventory(m.base)
            if bids and held + self.asset_working(m.base, Side.BUY, engine) + sum((lv.size for lv in bids), Decimal(0)) > acap:
                bids = []
                notes.append(f"{m.base} inventory {held} (with working bids) at cap {acap}")
            if asks and held - self.asset_working(m.base, Side.SELL, engine) - sum((lv.size for lv in asks), Decimal(0)) < -acap:
                asks = []
                notes.append(f"{m.base} inventory {held} (with working asks) at cap -{acap}")
        if bids is quotes.bids and asks is quotes.asks:
            return quotes
        note = "; ".join(notes)
        return dataclasses.replace(quotes, bids=bids, asks=asks, note=f"{quotes.note}; account: {note}" if quotes.note else f"account: {note}")

    def check(self, engine: Engine | None = None) -> str:
        """Fire the kill switch when a currency's summed PnL is below -max_total_loss: every
        engine is stopped with the reason. Returns the reason ("" when it did not fire)."""
        limit = self.cfg.max_total_loss
        if limit is None or self.killed:
            return self.killed
        for cur, pnl in self.total_pnl().items():
            if pnl < -limit:
                self.killed = f"account kill switch: total loss {-pnl:.4f} {cur} over {len(self._started())} markets exceeds max_total_loss {limit:g} {cur}"
                log.error("%s; stopping every market", self.killed)
                for e in self.engines:
                    e.stop(self.killed, status="killed")
                break
        return self.killed
