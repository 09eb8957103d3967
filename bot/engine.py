"""The engine: one asyncio loop that drives a strategy in paper, live and replay alike.

Per market event::

    source.next() -> exchange.on_market(event)   (a simulated venue matches here)
                  -> fills drained: order states, inventory, database
                  -> forecaster.update(book)      (optional)
                  -> strategy.on_update(book, q, t, forecast) -> desired quotes
                  -> order manager diff -> cancels, then placements
                  -> PnL snapshot every ``pnl_interval_s`` of market time
                  -> database commit
                  -> forecaster.after_decision()  (if it has one: the async backends hand the
                     grid rows snapshotted in ``update`` to their worker thread here, after
                     the decision and the orders, not inside tick to quote)

The clock is the event's timestamp (simulated time in simulation and replay, exchange
time live), so a strategy sees the same time base in every mode.

Observability: ``Engine.observer`` (None by default; see bot/observability) is told of the run's
start and end, each event (after ``on_tick``), each fill and each rejected order. The engine
stamps each event's tick-to-quote time (``EngineState.tick_to_quote_ns``: from entering
:meth:`step` to the strategy's quotes, ``time.perf_counter_ns``) whether or not one is set.

Signals: SIGINT/SIGTERM stop the loop after the current event. A feed that never waits
(``--speed 0``, backtests) would never let the event loop run the signal handler, so the
loop yields to it every ``YIELD_EVERY_EVENTS`` events or ``YIELD_EVERY_S`` of wall time.

Shutdown (end of feed, SIGINT/SIGTERM, or an error): cancel all open orders, drain the last
fills, close orders the venue did not confirm, write a final PnL snapshot, mark the run
completed / interrupted / failed with its summary, commit, close the source and the
exchange. Every one of these steps runs in its own guard: an exception of any type in one
step is logged and noted in the run's ``stop_reason`` and the others still run, so the run
always ends with its status (a shutdown failure turns ``completed`` into ``failed``). The
original error of the run is what :meth:`Engine.run` raises, with the shutdown failures as
notes; without one, the first shutdown failure is raised after the run was closed.
Closing the source and the exchange comes after the record is written: a failure there is
logged and noted in the returned summary only. So does closing the forecaster (``close()``,
if it has one: the ``torchscript_async`` backend's worker thread; it never waits long for a
grid step in flight), whose failure is logged only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import time
from dataclasses import dataclass
from typing import Callable

from bot.errors import MmbotError
from bot.exchanges.base import Exchange
from bot.inventory import Inventory
from bot.market import MarketInfo
from bot.market_data.base import MarketEvent, MarketSource
from bot.order_manager import OrderManager
from bot.orders import ClientIdFactory, OrderState
from bot.persistence.store import Store
from models.forecast import Forecaster
from strategies.base import Quotes, Strategy

log = logging.getLogger("mmbot.engine")

# a feed that never waits gets a yield to the event loop after this many events or this much
# wall time, whichever comes first (a yield costs a few microseconds)
YIELD_EVERY_EVENTS = 16
YIELD_EVERY_S = 0.02


@dataclass
class EngineState:
    """What the status panel shows; updated every event."""

    ts_ns: int = 0
    mid: float = float("nan")
    quotes: Quotes | None = None
    forecast_source: str = ""
    events: int = 0
    placed: int = 0
    canceled: int = 0
    rejected: int = 0
    pnl: float = 0.0
    tick_to_quote_ns: int = 0  # last event: from its arrival (step entered) to the strategy's quotes, ns (perf_counter)
    # last event: its time minus the grid time of the inputs of the forecaster's newest model
    # output (Forecast.inputs_ns), ns of event time; None before the first output
    forecast_age_ns: int | None = None


class Engine:
    def __init__(
        self,
        source: MarketSource,
        exchange: Exchange,
        strategy_factory: Callable[[MarketInfo], Strategy],
        store: Store,
        *,
        mode: str = "paper",
        config_snapshot: dict | None = None,
        forecaster: Forecaster | None = None,
        inventory: Inventory | None = None,
        tolerance_ticks: int = 0,
        max_order_age_s: float | None = None,
        post_only: bool = True,
        pnl_interval_s: float = 1.0,
        on_tick: Callable[["Engine"], None] | None = None,
        handle_signals: bool = True,
        commit_interval_s: float = 0.0,
    ) -> None:
        self.source, self.exchange, self.store = source, exchange, store
        self.strategy_factory = strategy_factory
        self.mode = mode
        self.config_snapshot = config_snapshot or {}
        self.forecaster = forecaster
        self.inventory = inventory or Inventory()
        self.om_args = dict(tolerance_ticks=tolerance_ticks, max_age_s=max_order_age_s, post_only=post_only)
        self.pnl_interval_ns = int(pnl_interval_s * 1e9)
        self.on_tick = on_tick
        self.handle_signals = handle_signals
        self.commit_interval_s = commit_interval_s  # 0 = commit after every event (paper, live)
        self._last_commit = 0.0
        self.state = EngineState()
        self._orders_changed = True
        self._age_limited = max_order_age_s is not None
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._waiting = False
        self.stop_reason = ""
        self.strategy: Strategy | None = None
        self.om: OrderManager | None = None
        self.market: MarketInfo | None = None
        self.mid0: float | None = None
        self._next_pnl_ns = 0
        self._next_yield = 0.0
        self.shutdown_errors: list[tuple[str, BaseException]] = []
        # bot.observability.Observer (metrics, JSON logs), set by the CLI: told of the run's
        # start and end, each event (after on_tick), each fill and each rejected order
        self.observer = None
        # several markets in one process (bot/multi.py): the runs share ``session_id``; the
        # account's risk may trim the strategy's quotes (``quote_filter(engine, quotes) ->
        # quotes``, the same object when it keeps them all); ``last_event_wall`` is the
        # time.monotonic() of the last market event processed (feed staleness)
        self.session_id: str | None = None
        self.quote_filter: Callable[["Engine", Quotes], Quotes] | None = None
        self.last_event_wall = time.monotonic()
        self.quotes_pulled = ""  # why this market's quotes are pulled ("" = they are not)
        self.stop_status = ""  # the status stop() asked for ("" = as the run ends)

    def stop(self, reason: str = "stopped", status: str | None = None) -> None:
        """Ask the loop to finish after the current event; a wait for market data (which may
        be long on a polled feed) is interrupted at once. ``status``: the run's status when
        it ends this way (e.g. ``killed`` by the account's kill switch; default: completed)."""
        self.stop_reason = self.stop_reason or reason
        if status is not None and not self.stop_status:
            self.stop_status = status
        self._stop.set()
        if self._waiting and self._task is not None:
            self._task.cancel()

    def _uncancel(self) -> None:
        if self._task is not None:
            while self._task.cancelling():
                self._task.uncancel()

    # -- main loop -------------------------------------------------------------------------
    async def run(self) -> dict:
        loop = asyncio.get_running_loop()
        installed = []
        if self.handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, self.stop, signal.Signals(sig).name)
                    installed.append(sig)
        status = "completed"
        error: BaseException | None = None
        started = False
        summary: dict = {}
        try:
            self.market = await self.source.start()
            await self.exchange.start(self.market)
            self.strategy = self.strategy_factory(self.market)
            session = {"session_id": self.session_id} if self.session_id is not None else {}  # store-likes (tune) have none
            self.store.start_run(self.mode, self.exchange_name(), self.market.symbol, self.config_snapshot, **session)
            started = True
            ids = ClientIdFactory(self.store.installation_id, self.store.run_id)  # type: ignore[arg-type]
            self.om = OrderManager(self.market, on_change=self.store.record_order, new_client_id=ids,  # type: ignore[arg-type]
                                   **self.om_args)
            book = self.source.book
            t0 = book.ts_ns or time.time_ns()
            if hasattr(self.strategy, "begin"):
                self.strategy.begin(t0)  # type: ignore[attr-defined]
            self.mid0 = book.mid()
            self._snapshot(t0, force=True)
            self.store.commit()
            if self.observer is not None:
                self.observer.run_started(self)
            self._task = asyncio.current_task()
            self._next_yield = time.monotonic() + YIELD_EVERY_S
            since_yield = 0
            while not self._stop.is_set():
                self._waiting = True
                try:
                    ev = await self.source.next()
                except asyncio.CancelledError:
                    if not self._stop.is_set():
                        raise
                    self._uncancel()
                    break
                finally:
                    self._waiting = False
                if ev is None:
                    self.stop_reason = self.stop_reason or "end of market data"
                    break
                await self.step(ev)
                since_yield += 1
                if since_yield >= YIELD_EVERY_EVENTS or time.monotonic() >= self._next_yield:
                    await asyncio.sleep(0)  # let the loop run signal handlers and other tasks
                    since_yield = 0
                    self._next_yield = time.monotonic() + YIELD_EVERY_S
            if self.stop_reason in ("SIGINT", "SIGTERM"):
                status = "interrupted"
            elif self.stop_status:
                status = self.stop_status
        except (asyncio.CancelledError, KeyboardInterrupt):
            status = "interrupted"
            self.stop_reason = self.stop_reason or "interrupted"
        except BaseException as e:  # noqa: BLE001 - recorded, then re-raised
            status, error = "failed", e
            self.stop_reason = f"error: {type(e).__name__}: {e}" if not isinstance(e, MmbotError) else f"error: {e}"
        finally:
            for sig in installed:
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
            summary = await self._shutdown(status, started)
            fc_close = getattr(self.forecaster, "close", None)  # a forecaster's worker thread (never waits long)
            if fc_close is not None:
                try:
                    fc_close()
                except Exception as e:  # noqa: BLE001 - the run is already recorded: log, do not fail it
                    log.warning("shutdown: closing the forecaster failed: %s: %s", type(e).__name__, e)
            if self.observer is not None and started:
                self.observer.run_ended(self, summary)
            for what, close in (("closing the market source", self.source.close), ("closing the exchange", self.exchange.close)):
                try:
                    await close()
                except Exception as e:  # noqa: BLE001 - the run is already recorded: log, do not fail it
                    log.warning("shutdown: %s failed: %s: %s", what, type(e).__name__, e)
                    summary["stop_reason"] = f"{summary.get('stop_reason', '')}; {what} failed: {type(e).__name__}: {e}"
            if hasattr(self.forecaster, "close"):  # an adaptive forecaster's retrainer process (models/adapt)
                try:
                    self.forecaster.close()
                except Exception as e:  # noqa: BLE001 - the run is recorded: log only
                    log.warning("shutdown: closing the forecaster failed: %s: %s", type(e).__name__, e)
        self.raise_failures(error)
        return summary

    def raise_failures(self, error: BaseException | None) -> None:
        """After the run is recorded: raise the run's error with every shutdown failure as a
        note, or else the first shutdown failure (the engine's and the compiled loop's end)."""
        if error is not None:
            for what, e in self.shutdown_errors:
                error.add_note(f"during shutdown, {what} failed too: {type(e).__name__}: {e}")
            raise error
        if self.shutdown_errors:
            raise self.shutdown_errors[0][1]

    def exchange_name(self) -> str:
        return getattr(self.exchange, "name", "exchange")

    async def step(self, ev: MarketEvent) -> None:
        """Process one market event (public so that tests and backtests can drive it)."""
        t_in = time.perf_counter_ns()
        self.last_event_wall = time.monotonic()
        self.quotes_pulled = ""  # data again: quote as usual
        st = self.state
        st.events += 1
        st.ts_ns = ev.ts_ns
        await self.exchange.on_market(ev)
        self._drain_fills()
        book = ev.book
        mid = book.mid()
        if mid is not None:
            st.mid = mid
            if self.mid0 is None:
                self.mid0 = mid
        if ev.trades:
            self.strategy.on_trades(ev.trades, ev.ts_ns)  # type: ignore[union-attr]
        forecast = self.forecaster.update(book, ev.ts_ns, ev.trades) if self.forecaster is not None else None
        if forecast is not None:
            st.forecast_source = forecast.source
        quotes = self.strategy.on_update(book, self.inventory.q, ev.ts_ns, forecast)  # type: ignore[union-attr]
        if self.quote_filter is not None:
            quotes = self.quote_filter(self, quotes)
        st.tick_to_quote_ns = time.perf_counter_ns() - t_in
        if forecast is not None:
            st.forecast_age_ns = None if forecast.inputs_ns is None else ev.ts_ns - forecast.inputs_ns
        # the same Quotes object means the same desired orders: with no order activity since
        # the last reconcile (and no age limit) there is nothing to change
        if quotes is not st.quotes or self._orders_changed or self._age_limited:
            st.quotes = quotes
            self._orders_changed = False
            await self._reconcile(quotes, ev.ts_ns)
        self._drain_fills()
        self._snapshot(ev.ts_ns)
        if self.commit_interval_s <= 0.0:
            self.store.commit()
        else:  # backtests: commit in batches of wall time; the end of the run always commits
            now = time.monotonic()
            if now - self._last_commit >= self.commit_interval_s:
                self.store.commit()
                self._last_commit = now
        if self.on_tick is not None:
            self.on_tick(self)
        if self.observer is not None:
            self.observer.tick(self)
        if forecast is not None:  # the forecaster's hand-over to its worker thread, after the decision
            after = getattr(self.forecaster, "after_decision", None)
            if after is not None:
                after()

    async def pull_quotes(self, reason: str) -> None:
        """Cancel this market's working orders now (its feed went stale); the next market
        event quotes again. Safe while :meth:`run` waits for data (one event loop)."""
        if self.om is None or self.market is None:
            return
        self.quotes_pulled = reason
        log.warning("%s: quotes pulled: %s", self.market.symbol, reason)
        now = self.state.ts_ns or time.time_ns()
        for ack in await self.exchange.cancel_all(self.market.symbol, now):
            self.om.on_ack(ack)
            self.state.canceled += 1
        self._orders_changed = True
        self.store.commit()

    async def _reconcile(self, quotes: Quotes, now_ns: int) -> None:
        om = self.om
        cancels, places = om.plan(quotes, now_ns)  # type: ignore[union-attr]
        for o in cancels:
            o.cancel_requested = True
            om.on_ack(await self.exchange.cancel(o, now_ns))  # type: ignore[union-attr]
            self.state.canceled += 1
        for o in places:
            om.submitted(o)  # type: ignore[union-attr]
            ack = await self.exchange.place(o, now_ns)
            om.on_ack(ack)  # type: ignore[union-attr]
            if ack.state is OrderState.REJECTED:
                self.state.rejected += 1
                if self.observer is not None:
                    self.observer.order_error(self, ack)
            else:
                self.state.placed += 1

    def _drain_fills(self) -> None:
        """Apply fills, then late order-state updates (see :class:`Exchange`)."""
        q = self.exchange.fills
        while not q.empty():
            fill = q.get_nowait()
            if not self.store.record_fill(fill):
                continue  # already recorded: a replayed fill must not move inventory twice
            self.om.on_fill(fill)  # type: ignore[union-attr]
            self.inventory.apply(fill)
            self._orders_changed = True
            if self.observer is not None:
                self.observer.fill(self, fill)
        u = self.exchange.order_updates
        while not u.empty():
            ack = u.get_nowait()
            self.om.on_ack(ack)  # type: ignore[union-attr]
            self._orders_changed = True
            if ack.state is OrderState.REJECTED:
                self.state.rejected += 1
                if self.observer is not None:
                    self.observer.order_error(self, ack)

    def _snapshot(self, ts_ns: int, force: bool = False) -> None:
        """Update the PnL shown; write a snapshot every ``pnl_interval_s`` (or when forced)."""
        mid = self.state.mid if not math.isnan(self.state.mid) else self.source.book.mid()
        if mid is None or math.isnan(mid):
            return
        self.state.pnl = self.inventory.pnl(mid, self.mid0 or mid)
        if force or ts_ns >= self._next_pnl_ns:
            self._next_pnl_ns = ts_ns + self.pnl_interval_ns
            self.store.record_pnl(ts_ns, mid, self.inventory, self.state.pnl)

    def _shutdown_failed(self, what: str, e: BaseException) -> None:
        self.shutdown_errors.append((what, e))
        self.stop_reason += f"; {what} failed: {type(e).__name__}: {e}"
        log.error("shutdown: %s failed: %s: %s", what, type(e).__name__, e, exc_info=e)

    async def _shutdown(self, status: str, started: bool) -> dict:
        """Close the run; each step in its own guard (see the module docstring)."""
        summary: dict = {"run_id": self.store.run_id}
        if not started:
            return summary
        now = self.state.ts_ns or time.time_ns()
        om, market = self.om, self.market
        cancel_all_ok = False
        if market is not None and om is not None:
            try:
                for ack in await self.exchange.cancel_all(market.symbol, now):
                    om.on_ack(ack)
                cancel_all_ok = True
            except BaseException as e:  # noqa: BLE001
                self._shutdown_failed("cancel-all", e)
            try:
                self._drain_fills()
            except BaseException as e:  # noqa: BLE001
                self._shutdown_failed("draining the last fills", e)
            try:
                # orders the venue never confirmed are ours to close; on a simulated venue
                # (whose orders end with this process) so is every order a failed cancel-all left
                simulated = self.exchange_name() == "paper"
                for o in list(om.working.values()):
                    if o.state is OrderState.NEW or (simulated and not cancel_all_ok):
                        o.transition(OrderState.CANCELED, now, "shutdown")
                        om.working.pop(o.client_id, None)
                        self.store.record_order(o)
            except BaseException as e:  # noqa: BLE001
                self._shutdown_failed("closing unconfirmed orders", e)
        try:
            self._snapshot(now, force=True)
        except BaseException as e:  # noqa: BLE001
            self._shutdown_failed("the final PnL snapshot", e)
        return self.end_run(status)

    def end_run(self, status: str) -> dict:
        """The run's summary with its final status ("failed" when a shutdown step failed) and
        stop reason, written as the run's end; the last step of every shutdown (the engine's
        and the compiled backtest loop's), each part in its own guard."""
        summary: dict = {"run_id": self.store.run_id}
        try:
            summary = self.summary()
        except BaseException as e:  # noqa: BLE001
            self._shutdown_failed("the summary", e)
        if self.shutdown_errors and status == "completed":
            status = "failed"
        summary["status"] = status
        summary["stop_reason"] = self.stop_reason
        try:
            self.store.end_run(status, summary)  # may add the final commit's failure
        except BaseException as e:  # noqa: BLE001
            self._shutdown_failed("writing the run's end", e)
        return summary

    def summary(self) -> dict:
        inv, st = self.inventory, self.state
        mid = st.mid
        return {
            "run_id": self.store.run_id,
            "events": st.events,
            "orders_placed": st.placed,
            "orders_canceled": st.canceled,
            "orders_rejected": st.rejected,
            "fills": inv.n_fills,
            "volume_quote": float(inv.volume),
            "final_mid": mid,
            "inventory": float(inv.base),
            "max_abs_inventory": float(inv.max_abs_base),
            "pnl": st.pnl,
            "spread_capture": inv.spread_capture,
            "fees": float(inv.fees_paid),
            **({"forecaster": self.forecaster.status()} if hasattr(self.forecaster, "status") else {}),
            **({"strategy": self.strategy.status()} if hasattr(self.strategy, "status") else {}),
        }

