"""Reconciliation: the database's view of our orders, fills and inventory made equal to the
exchange's, at start (before quoting) and periodically while running.

Invariants (docs/live.md lists them with their tests):

I1. Every fill the exchange reports for one of our orders is recorded exactly once
    (``fills`` is unique on (exchange, trade id); look-ups start after the last recorded
    trade, and a replayed trade is skipped).
I2. No order the database calls working (new, pending_new, open, partially_filled,
    pending_cancel, unknown) is left so after reconciliation unless the exchange has it
    open; every other such order gets its true final state (filled, canceled, rejected =
    never reached the exchange).
I3. No open order with our client-id prefix is at the exchange that the database does not
    know or calls closed: at start every open order of ours is cancelled (orders of a
    crashed run included: the new run does not manage them) unless ``unknown_orders:
    adopt``; while running, unknown or closed-in-the-DB ones are cancelled (or adopted).
I4. Orders without our prefix are never touched.
I5. Inventory: the exchange balance of the base currency equals the balance at the last
    checkpoint plus the signed sizes of every fill recorded since; at start a difference
    beyond ``tolerance`` refuses to trade, and while running a difference between the
    run's inventory and the balance that persists over two checks stops the run, with a
    message saying by how much.
I7. The same for derivatives (swap / future markets) against the exchange's POSITION
    (ccxt ``fetch_positions``, net contracts) instead of a spot balance: the inventory is
    the position; the checkpoint stores it in ``base``.

Units: sizes base units (Decimal), times ns since the epoch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable

import ccxt
from sqlalchemy import func, insert, select, update

from bot.errors import MmbotError
from bot.exchanges.live import CcxtLiveExchange, _state_of
from bot.live.secrets import redact
from bot.orders import OrderState, Side
from bot.persistence.schema import BalanceCheckpoint, BaseFee, FillRow, OrderEvent, OrderRow, Run
from bot.persistence.store import Store

log = logging.getLogger(__name__)

WORKING = [s.value for s in OrderState if not s.terminal]


class ReconcileError(MmbotError):
    """The exchange and the database disagree in a way the bot must not trade through."""


def record_base_fee(conn, exchange: str, trade_id: str, fee: Decimal) -> None:
    """Add a base-currency fee row on ``conn`` (committed with the fill it belongs to)."""
    if conn.execute(select(BaseFee.id).where(BaseFee.exchange == exchange, BaseFee.trade_id == trade_id)).first() is None:
        conn.execute(insert(BaseFee).values(exchange=exchange, trade_id=trade_id, base_fee=str(fee)))


@dataclass
class StartupReport:
    base: Decimal = Decimal(0)  # exchange balance, base units
    quote: Decimal = Decimal(0)  # exchange balance, quote currency
    closed: dict[str, str] = field(default_factory=dict)  # client id -> final state written
    missed_fills: int = 0
    cancelled_unknown: list[str] = field(default_factory=list)
    adopted: list[dict] = field(default_factory=list)  # ccxt orders to adopt
    expected_base: Decimal | None = None  # from the last checkpoint + fills, base units


class Reconciler:
    def __init__(self, store: Store, exchange: CcxtLiveExchange, symbol: str, *,
                 is_ours: Callable[[str], bool], unknown_orders: str = "cancel",
                 tolerance: Decimal = Decimal("0.00000001"), balance_check: bool = True,
                 order_size: Decimal | None = None) -> None:
        self.store, self.ex, self.symbol = store, exchange, symbol
        self.is_ours = is_ours
        self.unknown_orders = unknown_orders
        self.tolerance = tolerance
        self.balance_check = balance_check
        self.order_size = order_size  # base units: a blocked side comes back when one order is affordable
        self.mismatches = 0

    # -- database helpers -----------------------------------------------------------------
    def _db_orders(self, working_only: bool) -> list:
        q = (select(OrderRow.run_id, OrderRow.client_id, OrderRow.exchange_id, OrderRow.state, OrderRow.side,
                    OrderRow.size, OrderRow.filled)
             .join(Run, Run.id == OrderRow.run_id)
             .where(Run.mode == "live", Run.exchange == self.ex.name, OrderRow.symbol == self.symbol))
        if working_only:
            q = q.where(OrderRow.state.in_(WORKING))
        return list(self.store.conn.execute(q))

    def _last_fill(self) -> tuple[str | None, int | None]:
        row = self.store.conn.execute(
            select(FillRow.trade_id, FillRow.ts_ns).where(FillRow.exchange == self.ex.name, FillRow.symbol == self.symbol)
            .order_by(FillRow.ts_ns.desc(), FillRow.id.desc()).limit(1)).first()
        return (row[0], row[1] // 1_000_000) if row else (None, None)

    def _close_in_db(self, run_id: int, cid: str, state: OrderState, filled: Decimal | None, reason: str) -> None:
        now = time.time_ns()
        vals = dict(state=state.value, updated_ns=now, reason=reason[:200])
        if filled is not None:
            vals["filled"] = str(filled)
        c = self.store.conn
        c.execute(update(OrderRow).where(OrderRow.run_id == run_id, OrderRow.client_id == cid).values(**vals))
        cur = c.execute(select(OrderRow.filled).where(OrderRow.run_id == run_id, OrderRow.client_id == cid)).scalar()
        c.execute(insert(OrderEvent).values(run_id=run_id, client_id=cid, ts_ns=now, state=state.value,
                                            filled=str(cur if cur is not None else Decimal(0)), reason=reason[:200]))

    def _record_fill(self, run_id: int, fill) -> bool:
        c = self.store.conn
        if c.execute(select(FillRow.id).where(FillRow.exchange == fill.exchange, FillRow.trade_id == fill.trade_id)).first():
            return False
        c.execute(insert(FillRow).values(run_id=run_id, exchange=fill.exchange, trade_id=fill.trade_id,
                                         client_id=fill.client_id, symbol=fill.symbol, side=fill.side.value,
                                         price=str(fill.price), size=str(fill.size), fee=str(fill.fee),
                                         liquidity=fill.liquidity, ts_ns=fill.ts_ns, mid=fill.mid,
                                         fee_cost=fill.fee_cost, fee_currency=fill.fee_currency, fee_rate=fill.fee_rate))
        bf = self.ex.base_fees.pop(fill.trade_id, None)
        if bf:
            record_base_fee(c, fill.exchange, fill.trade_id, bf)
        return True

    def fills_sum(self, after_fill_id: int = 0) -> Decimal:
        """Signed size of the recorded fills of this market after a fills row id, base units."""
        rows = self.store.conn.execute(
            select(FillRow.side, FillRow.size, BaseFee.base_fee)
            .outerjoin(BaseFee, (BaseFee.exchange == FillRow.exchange) & (BaseFee.trade_id == FillRow.trade_id))
            .where(FillRow.exchange == self.ex.name, FillRow.symbol == self.symbol, FillRow.id > after_fill_id))
        return sum((Decimal(s) * (1 if side == Side.BUY.value else -1) - Decimal(bf or 0) for side, s, bf in rows),
                   Decimal(0))

    def checkpoint(self, base: Decimal, quote: Decimal) -> None:
        c = self.store.conn
        max_id = c.execute(select(func.max(FillRow.id))).scalar() or 0
        c.execute(insert(BalanceCheckpoint).values(exchange=self.ex.name, symbol=self.symbol, ts_ns=time.time_ns(),
                                                   base=str(base), quote=str(quote), max_fill_id=max_id))
        c.commit()

    def _last_checkpoint(self):
        return self.store.conn.execute(
            select(BalanceCheckpoint.base, BalanceCheckpoint.max_fill_id).where(BalanceCheckpoint.exchange == self.ex.name, BalanceCheckpoint.symbol == self.symbol)
            .order_by(BalanceCheckpoint.id.desc()).limit(1)).first()

    # -- at start -----------------------------------------------------------------------------
    async def startup(self) -> StartupReport:
        """Before the first quote: cancel our open orders (adopt unknown ones by config),
        give every working order in the database its true final state, record missed fills
        with the run that owns the order, then check the balance against the fills."""
        rep = StartupReport()
        ex = self.ex
        m = ex.market
        try:
            db_orders = self._db_orders(working_only=False)
            owner = {r.client_id: r.run_id for r in db_orders}
            for r in db_orders:
                if r.exchange_id:
                    ex.known_order(r.exchange_id, r.client_id)
            # I3/I4: our open orders at the exchange
            for o in await ex._call(lambda: ex.ex.fetch_open_orders(self.symbol)):
                cid = o.get("clientOrderId") or ""
                if not cid or not (self.is_ours(cid) or cid in owner):
                    continue  # I4: not ours, never touched
                if cid not in owner and self.unknown_orders == "adopt":
                    rep.adopted.append(o)
                    continue
                try:
                    await ex._call(lambda: ex.ex.cancel_order(None, self.symbol, {"clientOrderId": cid}))
                except ccxt.OrderNotFound:
                    pass  # traded out meanwhile: its final state is read below
                if cid not in owner:
                    rep.cancelled_unknown.append(cid)
                    log.warning("%s: open order %s has our prefix but is not in the database: cancelled", ex.name, cid)
            # I2: every working order of the database gets its true state
            for r in self._db_orders(working_only=True):
                o = await ex._fetch_by_cid(r.client_id)
                if o is None:
                    self._close_in_db(r.run_id, r.client_id, OrderState.REJECTED, None,
                                      "reconcile: not at the exchange (never placed)")
                    rep.closed[r.client_id] = OrderState.REJECTED.value
                    continue
                if o.get("id"):
                    ex.known_order(o["id"], r.client_id)
                st, _filled = _state_of(o)
                if not st.terminal:  # adopted orders excepted, nothing of ours is open now
                    continue
                self._close_in_db(r.run_id, r.client_id, st, None, "reconcile: " + (o.get("status") or ""))
                rep.closed[r.client_id] = st.value
            # I1: missed fills, recorded with the run that owns the order
            ex.last_trade_id, ex.last_trade_ms = self._last_fill()
            latest_run = self.store.conn.execute(select(func.max(Run.id)).where(Run.mode == "live")).scalar()
            for t in await ex.fetch_trades_since():
                ex._seen_trades.add(str(t.get("id")))
                ex._advance_cursor(t)
                cid = await ex.client_id_of_trade(t)
                if cid is None:
                    continue
                run_id = owner.get(cid, latest_run)
                if run_id is None:
                    log.warning("%s: trade %s of order %s predates every run in this database: not recorded",
                                ex.name, t.get("id"), cid)
                    continue
                if self._record_fill(run_id, await ex.make_fill(t, cid)):
                    rep.missed_fills += 1
            # orders' filled size = the sum of their recorded fills
            for r in self._db_orders(working_only=False):
                tot = self.store.conn.execute(select(FillRow.size).where(FillRow.exchange == ex.name,
                                                                         FillRow.client_id == r.client_id)).scalars().all()
                s = sum((Decimal(x) for x in tot), Decimal(0))
                if s != Decimal(r.filled or 0):
                    self.store.conn.execute(update(OrderRow).where(OrderRow.run_id == r.run_id, OrderRow.client_id == r.client_id)
                                            .values(filled=str(s)))
            self.store.conn.commit()
            # I5: balance against fills (I7: the position, on a derivatives market)
            bal = await ex.balances()
            position = await ex.position() if ex.derivative else None
        except ccxt.BaseError as e:
            self.store.conn.rollback()
            if ex.fatal:
                raise ReconcileError(ex.fatal) from None
            raise ReconcileError(f"reconciliation with {ex.name} failed: {redact(str(e))[:200]}") from None
        rep.base, rep.quote = bal.get(m.base, Decimal(0)), bal.get(m.quote, Decimal(0))
        what = "balance"
        if position is not None:
            rep.base, what = position, "position"
        cp = self._last_checkpoint()
        if cp is not None and self.balance_check:
            rep.expected_base = Decimal(cp.base) + self.fills_sum(cp.max_fill_id)
            diff = rep.base - rep.expected_base
            if abs(diff) > self.tolerance:
                raise ReconcileError(
                    f"inventory mismatch on {ex.name} {self.symbol}: the recorded fills say {m.base} "
                    f"{rep.expected_base} but the exchange {what} is {rep.base} (off by {diff:+} {m.base}, "
                    f"tolerance {self.tolerance}); not trading. "
                    + ("Deposits/withdrawals or trades by something else cause this" if position is None else
                       "Liquidations, manual trades or another bot on the account cause this")
                    + ": check the account, then start with live.balance_check: false once")
        self.checkpoint(rep.base, rep.quote)
        return rep

    # -- while running ------------------------------------------------------------------------
    async def periodic(self, om, inventory) -> str | None:
        """One pass while running; state changes go through the adapter's queues (the engine
        applies them). Returns a stop reason on a persistent inventory mismatch (I5)."""
        ex = self.ex
        busy = {cid for cid, t in ex._chain.items() if not t.done()}
        opens = await ex._call(lambda: ex.ex.fetch_open_orders(self.symbol))
        open_ids = {o.get("clientOrderId") for o in opens}
        for o in opens:
            cid = o.get("clientOrderId") or ""
            if not cid or not self.is_ours(cid) or cid in busy:
                continue
            known = om.orders.get(cid)
            if known is not None and not known.state.terminal:
                continue
            if known is None and self.unknown_orders == "adopt":
                continue  # left to the engine to adopt
            # I3: ours, open at the exchange, unknown or closed in our books
            try:
                await ex._call(lambda: ex.ex.cancel_order(None, self.symbol, {"clientOrderId": cid}))
                log.warning("%s: open order %s was %s in our books: cancelled", ex.name, cid,
                            "closed" if known else "unknown")
            except ccxt.OrderNotFound:
                pass
            if known is not None:
                final = await ex._fetch_by_cid(cid)
                if final is not None:
                    st, filled = _state_of(final)
                    known.state, known.reason = st, "reconcile: was open at the exchange"
                    known.updated_ns = time.time_ns()
                    om.on_change(known)
        # I2: working in our books, gone at the exchange
        for cid, o in list(om.working.items()):
            if cid in busy or cid in open_ids or o.state in (OrderState.NEW, OrderState.PENDING_NEW):
                continue
            await ex._resolve(cid)
        # I1: missed fills (the queue dedupes by trade id; the store by (exchange, trade id))
        await ex.poll_fills_once()
        if not self.balance_check and not ex.side_blocked:
            return None
        bal = await ex.refresh_balances(self.order_size)  # also re-enables a side once funds allow
        if not self.balance_check:
            return None
        m = ex.market
        pending = sum((f.size * f.side.sign - ex.base_fees.get(f.trade_id, Decimal(0))
                       for f in list(ex.fills._queue)), Decimal(0))  # type: ignore[attr-defined]
        have, what = (await ex.position(), "position") if ex.derivative else (bal.get(m.base, Decimal(0)), "balance")
        diff = have - (inventory.base + pending)
        if abs(diff) > self.tolerance:
            self.mismatches += 1
            if self.mismatches >= 2:
                return (f"inventory mismatch on {ex.name} {self.symbol}: fills say {m.base} {inventory.base + pending} "
                        f"but the exchange {what} is {have} (off by {diff:+} {m.base})")
        else:
            self.mismatches = 0
        # no checkpoint here: fills may be queued or buffered but not yet committed; the
        # checkpoint is written at start, when nothing of ours is open and every fill is recorded
        return None
