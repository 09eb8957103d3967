"""The live engine: the paper engine's loop with live trading's extra duties.

Same market loop, strategy, order manager and database as paper (the run's mode is
``live``). Added here:

* before the loop: :meth:`Reconciler.startup` (our open orders cancelled, the database's
  working orders given their true final state, missed fills recorded, balance checked);
  the run's inventory starts at the exchange balance;
* order entry never waits: the adapter answers place/cancel at once (in-flight states) and
  reports outcomes through its queues, which the loop drains every event;
* risk: quotes trimmed to the notional and open-order caps, placements held back while the
  order-rate window is full, quotes pulled while rate-limited or banned, a side dropped
  while its funds are insufficient, the kill switch (loss / drawdown / daily loss);
* a watchdog task: no book update for ``stale_after_s`` pulls every quote (until data
  returns); it also applies fills and order updates while the feed is quiet;
* periodic reconciliation as a background task (never stalls the loop);
* an authentication/permission error stops the run at once (status ``failed``); the kill
  switch stops it with status ``killed``; both record the reason in the run's summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from decimal import Decimal

from bot.engine import Engine
from bot.errors import ExchangeError
from bot.exchanges.base import OrderAck
from bot.inventory import Inventory
from bot.live.reconcile import Reconciler, StartupReport, record_base_fee
from bot.live.risk import KillSwitch, OrderRate, RiskLimits, limit_quotes
from bot.orders import Order, OrderState, Side
from strategies.base import Quotes

log = logging.getLogger(__name__)

_PULLABLE = (OrderState.OPEN, OrderState.PARTIALLY_FILLED, OrderState.PENDING_NEW, OrderState.UNKNOWN, OrderState.NEW)


@dataclass
class LiveInventory(Inventory):
    """Inventory whose base follows the exchange balance when a fee is charged in the base
    currency (Binance charges a buyer in base units): the fee's base units leave ``base``
    and, as the fill's quote-valued fee was taken from ``cash``, go back there (PnL is the
    same either way). The fee row is written with the fill (same commit)."""

    exchange: object = None
    conn: object = None
    target: Decimal | None = None  # base units the strategy treats as flat (None: 0)

    @property
    def q(self) -> float:
        """The strategy's inventory: base units away from the target (spot accounts hold a
        balance; the strategy skews around ``target``, by default the balance at start)."""
        return float(self.base - (self.target or 0))

    def apply(self, fill) -> None:
        super().apply(fill)
        fees = getattr(self.exchange, "base_fees", None)
        bf = fees.pop(fill.trade_id, None) if fees else None
        if bf:
            self.base -= bf
            self.cash += bf * fill.price
            if self.conn is not None:
                record_base_fee(self.conn, fill.exchange, fill.trade_id, bf)


class LiveEngine(Engine):
    def __init__(self, *args, reconciler: Reconciler, limits: RiskLimits, reconcile_interval_s: float = 30.0,
                 target_inventory: Decimal | None = None, **kwargs) -> None:
        kwargs["mode"] = "live"
        super().__init__(*args, **kwargs)
        self.reconciler = reconciler
        self.limits = limits
        self.kill = KillSwitch(limits)
        self.rate = OrderRate(limits.max_orders_per_window, limits.rate_window_s)
        self.reconcile_interval_s = reconcile_interval_s
        self.target_inventory = target_inventory
        self.fatal_reason: str | None = None
        self.kill_reason: str | None = None
        self.startup_report: StartupReport | None = None
        self.pulled = False  # quotes pulled for stale data
        self.held_back = 0  # placements held back by the order-rate limit
        self._last_event = time.monotonic()
        self._next_reconcile = time.monotonic() + reconcile_interval_s
        self._recon_task: asyncio.Task | None = None
        self._watchdog: asyncio.Task | None = None
        self._first = True
        self.exchange.on_fatal = self._on_fatal  # type: ignore[attr-defined]

    def _on_fatal(self, msg: str) -> None:
        self.fatal_reason = self.fatal_reason or msg
        self.stop(msg)

    # -- run ---------------------------------------------------------------------------------
    async def run(self) -> dict:
        ex = self.exchange
        try:
            await ex.connect(self.reconciler.symbol)  # type: ignore[attr-defined]
            rep = await self.reconciler.startup()
        except BaseException:
            await ex.close()
            raise
        self.startup_report = rep
        log.info("reconciled with %s: %d orders closed, %d missed fills, %d unknown orders cancelled; balance %s %s",
                 ex.name, len(rep.closed), rep.missed_fills, len(rep.cancelled_unknown), rep.base, rep.quote)
        target = rep.base if self.target_inventory is None else self.target_inventory
        self.inventory = LiveInventory(base=rep.base, cash=rep.quote, exchange=ex, conn=self.store.conn, target=target)
        summary = await super().run()
        if self.fatal_reason:
            raise ExchangeError(self.fatal_reason)
        return summary

    async def step(self, ev) -> None:
        self._last_event = time.monotonic()
        if self._first:
            self._first = False
            self._adopt()
            self._watchdog = asyncio.ensure_future(self._watch())
        if self.fatal_reason:
            raise ExchangeError(self.fatal_reason)
        self._check_reconcile()
        if self.pulled:
            self.pulled = False
            self._orders_changed = True
        await super().step(ev)
        reason = self.kill.check(self.trading_pnl(), ev.ts_ns)
        if reason and not self.kill_reason:
            self.kill_reason = reason
            log.error("%s", reason)
            self.stop(reason)

    def trading_pnl(self) -> float:
        """The run's PnL less the price move of the balance it started with (quote currency):
        what the bot's trading made or lost. The kill switch watches this, so a market move
        against coins the account simply holds does not stop the bot (the recorded PnL, as
        in paper, includes it)."""
        inv, mid = self.inventory, self.state.mid
        if self.mid0 is None or mid != mid:  # no mid yet
            return 0.0
        return self.state.pnl - float(inv.initial_base) * (mid - self.mid0)

    def _adopt(self) -> None:
        """Orders with our prefix found open at start, under ``unknown_orders: adopt``."""
        rep = self.startup_report
        if rep is None or not rep.adopted:
            return
        for o in rep.adopted:
            order = Order(self.market.symbol, Side(o["side"]), Decimal(str(o["price"])), Decimal(str(o["amount"])),
                          client_id=o["clientOrderId"], created_ns=time.time_ns(), updated_ns=time.time_ns())
            self.om.submitted(order)  # type: ignore[union-attr]
            self.om.on_ack(OrderAck(order.client_id, OrderState.OPEN, time.time_ns(), str(o["id"])))  # type: ignore[union-attr]
            self.exchange._orders[order.client_id] = order  # type: ignore[attr-defined]
            self.exchange._state[order.client_id] = OrderState.OPEN  # type: ignore[attr-defined]
            self.exchange.known_order(o["id"], order.client_id)  # type: ignore[attr-defined]

    def _check_reconcile(self) -> None:
        t = self._recon_task
        if t is not None and t.done():
            self._recon_task = None
            exc = t.exception() if not t.cancelled() else None
            if exc is not None:
                self.exchange.counters["reconcile_errors"] += 1  # type: ignore[attr-defined]
                log.warning("reconciliation failed: %s", exc)
            elif t.result():
                self.kill_reason = t.result()
                log.error("%s", self.kill_reason)
                self.stop(self.kill_reason)
        if self._recon_task is None and time.monotonic() >= self._next_reconcile and self.om is not None:
            self._next_reconcile = time.monotonic() + self.reconcile_interval_s
            self._recon_task = asyncio.ensure_future(self.reconciler.periodic(self.om, self.inventory))

    # -- quoting under risk limits ------------------------------------------------------------
    def _pull_reason(self) -> str | None:
        ex = self.exchange
        if self.kill_reason or self.fatal_reason:
            return "stopping"
        if getattr(ex, "banned", False):
            return "rate limited"
        return None

    async def _reconcile(self, quotes: Quotes, now_ns: int) -> None:
        ex = self.exchange
        if self._pull_reason() is not None:
            quotes = Quotes(mid=quotes.mid)
        else:
            quotes = limit_quotes(quotes, self.limits)
            blocked = getattr(ex, "side_blocked", {})
            if blocked:
                quotes = Quotes(bids=[] if Side.BUY in blocked else quotes.bids,
                                asks=[] if Side.SELL in blocked else quotes.asks, mid=quotes.mid)
        om = self.om
        cancels, places = om.plan(quotes, now_ns)  # type: ignore[union-attr]
        mono = time.monotonic()
        for o in cancels:
            o.cancel_requested = True
            om.on_ack(await ex.cancel(o, now_ns))  # type: ignore[union-attr]
            self.state.canceled += 1
        self.rate.note(mono, len(cancels))
        allowed = self.rate.room(mono)
        if self.limits.max_open_orders is not None:
            allowed = min(allowed, self.limits.max_open_orders - len(om.working))  # type: ignore[union-attr]
        if len(places) > allowed:
            self.held_back += len(places) - max(0, allowed)
            places = places[: max(0, allowed)]
            self._orders_changed = True  # plan again on the next update
        for o in places:
            om.submitted(o)  # type: ignore[union-attr]
            ack = await ex.place(o, now_ns)
            om.on_ack(ack)  # type: ignore[union-attr]
            if ack.state is OrderState.REJECTED:
                self.state.rejected += 1
            else:
                self.state.placed += 1
        self.rate.note(mono, len(places))

    # -- the watchdog -----------------------------------------------------------------------
    async def _watch(self) -> None:
        """While the feed is quiet: apply fills and updates; after ``stale_after_s`` without a
        book update pull every quote (cancel) until data returns."""
        stale = self.limits.stale_after_s
        while not self._stop.is_set():
            await asyncio.sleep(0.5)
            quiet = time.monotonic() - self._last_event
            if quiet < 0.5 or self.om is None:
                continue
            self._drain_fills()
            if self.fatal_reason:
                self.stop(self.fatal_reason)
            if stale is not None and quiet >= stale and not self.pulled:
                n = await self.pull_quotes("stale market data")
                self.pulled = True
                if n:
                    log.warning("no book update for %.0f s: %d quotes pulled", quiet, n)
            self.store.commit()

    async def pull_quotes(self, reason: str) -> int:
        """Cancel every working order of ours (that is not already being cancelled)."""
        om = self.om
        n = 0
        now = time.time_ns()
        for o in list(om.working.values()):  # type: ignore[union-attr]
            if o.cancel_requested or o.state not in _PULLABLE:
                continue
            o.cancel_requested = True
            om.on_ack(await self.exchange.cancel(o, now))  # type: ignore[union-attr]
            self.state.canceled += 1
            n += 1
        return n

    # -- shutdown ---------------------------------------------------------------------------
    async def _shutdown(self, status: str, started: bool) -> dict:
        for t in (self._watchdog, self._recon_task):
            if t is not None:
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t
        if self.fatal_reason:
            status = "failed"
            self.stop_reason = self.fatal_reason
        elif self.kill_reason:
            status = "killed"
            self.stop_reason = self.kill_reason
        return await super()._shutdown(status, started)

    def status_rows(self) -> list[tuple[str, str]]:
        """Extra rows of the live status panel."""
        ex = self.exchange
        c = getattr(ex, "counters", {})
        s = self.summary()
        rows = [("order errors / unknown outcomes", f"{s['order_errors']} / {c.get('unknown_outcomes', 0)}"),
                ("rate limited / held back by rate", f"{s['rate_limited']} / {self.held_back}")]
        state = []
        if getattr(ex, "banned", False):
            state.append("BANNED: quotes pulled")
        for side, why in getattr(ex, "side_blocked", {}).items():
            state.append(f"{side.value}s off: {why}")
        if self.pulled:
            state.append("stale data: quotes pulled")
        if self.kill_reason:
            state.append(self.kill_reason)
        rows.append(("live state", "; ".join(state) or "quoting"))
        return rows

    def summary(self) -> dict:
        s = super().summary()
        counters = getattr(self.exchange, "counters", {})
        s["order_errors"] = int(sum(counters.get(k, 0) for k in ("order_errors", "post_only_rejects", "insufficient_funds",
                                                                    "duplicate_client_id", "unknown_outcomes")))
        s["rate_limited"] = int(counters.get("rate_limited", 0))
        s["held_back_by_rate"] = self.held_back
        if counters.get("unconverted_fees"):
            s["unconverted_fees"] = int(counters["unconverted_fees"])  # fills whose fee has no quote price
        if self.kill_reason:
            s["kill_reason"] = self.kill_reason
        return s
