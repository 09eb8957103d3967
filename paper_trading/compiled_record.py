"""The compiled loop's logs (:mod:`paper_trading.compiled_loop`) -> the run's record.

The loop logs, in arrays: orders placed (side, ticks, lots, level, time, venue order id),
order state changes (order, time, state, lots added to its filled size, reason code), fills
(order, time, price ticks, lots, maker/taker, mid) and PnL snapshot times (time, mid, fills
before it). :class:`Recorder` turns them into exactly the rows the engine path writes --
through the same :class:`~bot.persistence.store.Store` methods (``record_order``,
``record_fill``, ``record_pnl``), so the tables, columns, Decimal texts, client and trade ids
are the engine's -- and :meth:`Store.commit` writes them with SQLAlchemy Core executemany
(one transaction per flush). Inventory, cash, fees and spread capture are accumulated by
:class:`bot.inventory.Inventory` from the same Fill objects in the same order. Python runs
here once per order event, fill and snapshot, never once per decision.

Units: prices quote per base (Decimal ``ticks * tick``), sizes base units (Decimal
``lots * lot``), fees quote currency, times int ns of recorded local time.
"""

from __future__ import annotations

import itertools
import uuid

from bot.inventory import Inventory
from bot.market import MarketInfo
from bot.orders import ClientIdFactory, Fill, Order, OrderState, Side
from bot.persistence.store import Store
from paper_trading.compiled_loop import REASONS, STATE_NAMES, S_NEW
from paper_trading.fees import MakerTakerFees

_STATES = [OrderState(n) for n in STATE_NAMES]
_SIDES = {1: Side.BUY, -1: Side.SELL}


class Recorder:
    """Writes the loop's logs as the run's rows (see the module docstring); keeps the
    inventory (:attr:`inventory`) and the last PnL (:attr:`pnl`) as the engine does."""

    def __init__(self, store: Store, market: MarketInfo, fees: MakerTakerFees, inventory: Inventory, mid0: float,
                 post_only: bool) -> None:
        self.store, self.market, self.fees, self.inventory = store, market, fees, inventory
        self.mid0 = mid0
        self.post_only = post_only
        self.ids = ClientIdFactory(store.installation_id, store.run_id)  # type: ignore[arg-type]
        self._trade_prefix = uuid.uuid4().hex[:12]  # as ReplayExchange: a random per-run prefix
        self._trades = itertools.count(1)
        self.orders: dict[int, Order] = {}  # order index -> working order
        self.cids: dict[int, str] = {}  # order index -> client id (working orders, and those of the current flush)
        self.n_orders = 0  # orders seen in earlier flushes
        self.n_fills = 0  # fills applied to the inventory
        self.pnl = 0.0

    def snapshot(self, ts_ns: int, mid: float) -> None:
        """A PnL snapshot at ``ts_ns`` at ``mid`` with the fills applied so far (Engine._snapshot)."""
        inv = self.inventory
        self.pnl = inv.pnl(mid, self.mid0 or mid)
        self.store.record_pnl(ts_ns, mid, inv, self.pnl)

    def flush(self, a: dict, n_ol: int, n_ev: int, n_fl: int, n_sn: int) -> None:
        """Record the first ``n_*`` entries of the logs in ``a`` (arrays by name) and commit."""
        m, store = self.market, self.store
        px, sz = m.ticks_to_price, m.lots_to_size
        ol = [a[k][:n_ol].tolist() for k in ("ol_side", "ol_ticks", "ol_lots", "ol_level", "ol_created", "ol_oid")]
        first = self.n_orders
        done: list[int] = []
        for gidx, ts, st, piece, reason in zip(*(a[k][:n_ev].tolist() for k in ("ev_order", "ev_ts", "ev_state", "ev_piece",
                                                                             "ev_reason"))):
            if st == S_NEW:
                j = gidx - first
                o = Order(m.symbol, _SIDES[ol[0][j]], px(ol[1][j]), sz(ol[2][j]), client_id=self.ids(),
                          post_only=self.post_only, level=ol[3][j], created_ns=ol[4][j], updated_ns=ts)
                store.record_order(o)  # OrderManager.submitted
                o.exchange_id = str(ol[5][j]) if ol[5][j] else None  # the venue's id comes with the placement's ack
                self.orders[gidx] = o
                self.cids[gidx] = o.client_id
                continue
            o = self.orders[gidx]
            o.state = _STATES[st]
            o.updated_ns = ts
            if reason:
                o.reason = REASONS[reason]
            if piece:
                o.filled += sz(piece)
            store.record_order(o)
            if o.state.terminal:
                del self.orders[gidx]
                done.append(gidx)
        self.n_orders = first + n_ol
        fills = list(zip(*(a[k][:n_fl].tolist() for k in ("fl_order", "fl_ts", "fl_ticks", "fl_lots", "fl_liq", "fl_mid",
                                                           "fl_side"))))
        f = 0
        inv = self.inventory
        for ts, mid, nf in zip(*(a[k][:n_sn].tolist() for k in ("sn_ts", "sn_mid", "sn_nfills"))):
            while self.n_fills < nf:
                self._fill(fills[f])
                f += 1
            self.snapshot(ts, mid)
        while f < len(fills):
            self._fill(fills[f])
            f += 1
        for gidx in done:
            self.cids.pop(gidx, None)
        store.commit()

    def _fill(self, row) -> None:
        gidx, ts, ticks, lots, liq, mid, side = row
        m = self.market
        price, size = m.ticks_to_price(ticks), m.lots_to_size(lots)
        liquidity = "maker" if liq == 0 else "taker"
        fill = Fill("paper", f"{self._trade_prefix}-{next(self._trades)}", self.cids.get(gidx, ""), m.symbol, _SIDES[side],
                    price, size, self.fees.fee(price, size, liquidity), liquidity, ts, mid)
        if self.store.record_fill(fill):
            self.inventory.apply(fill)
        self.n_fills += 1

    def close_orders(self, ts_ns: int, reason: str = "shutdown") -> None:
        """The shutdown's cancel-all (Engine._shutdown): every working order becomes
        ``canceled`` with ``reason`` at ``ts_ns``, in placement order."""
        for gidx in sorted(self.orders):
            o = self.orders[gidx]
            o.state, o.updated_ns, o.reason = OrderState.CANCELED, ts_ns, reason
            self.store.record_order(o)
        self.orders.clear()
