"""Writing the record of a run.

Every order transition and every fill is added to the session as it happens; the engine
calls :meth:`Store.commit` at the end of every loop iteration that wrote something, so a
crash loses nothing that the engine had acted on before its last iteration. Fills are
idempotent: (exchange, trade_id) is unique, and :meth:`Store.record_fill` returns False for
a fill already stored (e.g. replayed after a reconnect).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from sqlalchemy import bindparam, create_engine, event, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from bot.errors import ConfigError
from bot.orders import Fill, Order
from bot.persistence.schema import Base, FillRow, OrderEvent, OrderRow, PnlSnapshot, Run


def make_engine(url: str) -> Engine:
    """SQLAlchemy engine; for a SQLite file the folder is created and WAL mode switched on."""
    if "://" not in url:  # a bare path
        url = f"sqlite:///{url}"
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        eng = create_engine(url)
    except (SQLAlchemyError, ImportError, ValueError) as e:
        raise ConfigError(f"database url {url!r} is not usable: {e}") from None
    if eng.dialect.name == "sqlite":

        @event.listens_for(eng, "connect")
        def _pragmas(dbapi_conn, _rec):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    return eng


class Store:
    """Buffers rows and writes them in bulk (SQLAlchemy Core executemany) at :meth:`commit`.

    The engine commits at the end of every event that wrote something (live and paper), so
    the database never lags the engine's own state by more than one event; a backtest may
    commit less often (``commit_every``) for speed, and always commits at the end.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        Base.metadata.create_all(engine)
        self.conn = engine.connect()
        self.run_id: int | None = None
        self._known_orders: set[str] = set()  # client ids with a row in `orders`
        self._new_orders: dict[str, dict] = {}
        self._order_updates: dict[str, dict] = {}
        self._events: list[dict] = []
        self._fills: list[dict] = []
        self._pnl: list[dict] = []
        self._fill_keys: set[tuple[str, str]] = set()
        # a fill already in the database is never inserted twice (belt and braces: the
        # unique constraint on (exchange, trade_id) plus ON CONFLICT DO NOTHING)
        dialect = engine.dialect.name
        if dialect in ("sqlite", "postgresql"):
            mod = __import__(f"sqlalchemy.dialects.{dialect}", fromlist=["insert"])
            self._fill_insert = mod.insert(FillRow).on_conflict_do_nothing(index_elements=["exchange", "trade_id"])
        else:
            self._fill_insert = insert(FillRow)

    # -- runs ----------------------------------------------------------------------------
    def start_run(self, mode: str, exchange: str, symbol: str, config: dict, started_ns: int | None = None) -> int:
        res = self.conn.execute(insert(Run).values(
            mode=mode, exchange=exchange, symbol=symbol, config_json=json.dumps(config, default=str, sort_keys=True),
            started_ns=started_ns or time.time_ns(), status="running"))
        self.conn.commit()
        self.run_id = int(res.inserted_primary_key[0])
        return self.run_id

    def end_run(self, status: str, summary: dict, ended_ns: int | None = None) -> None:
        self.commit()
        self.conn.execute(update(Run).where(Run.id == self.run_id).values(
            status=status, ended_ns=ended_ns or time.time_ns(), summary_json=json.dumps(summary, default=str, sort_keys=True)))
        self.conn.commit()

    # -- orders and fills ----------------------------------------------------------------
    def record_order(self, o: Order) -> None:
        """Upsert the order's current state and append its transition to order_events."""
        cid = o.client_id
        ts = o.updated_ns
        state = o.state.value
        if cid in self._known_orders or cid in self._new_orders:
            row = self._new_orders.get(cid)
            if row is not None:  # not written yet: just update the pending insert
                row.update(state=state, filled=str(o.filled), updated_ns=ts, reason=o.reason, exchange_id=o.exchange_id)
            else:
                self._order_updates[cid] = dict(b_run=self.run_id, b_cid=cid, state=state, filled=str(o.filled),
                                                updated_ns=ts, reason=o.reason, exchange_id=o.exchange_id)
        else:
            self._new_orders[cid] = dict(
                run_id=self.run_id, client_id=cid, exchange_id=o.exchange_id, symbol=o.symbol, side=o.side.value,
                price=str(o.price), size=str(o.size), filled=str(o.filled), state=state, post_only=o.post_only,
                level=o.level, created_ns=o.created_ns, updated_ns=ts, reason=o.reason)
        self._events.append(dict(run_id=self.run_id, client_id=cid, ts_ns=ts, state=state, filled=str(o.filled), reason=o.reason))

    def record_fill(self, f: Fill) -> bool:
        """Store a fill once; False if (exchange, trade_id) is already recorded.

        Fills of simulated venues (exchange ``"paper"``) carry a random per-run trade-id
        prefix, so only this run can have recorded them: they are checked in memory. Fills
        of real venues are also checked against the database (a restart may replay them)."""
        key = (f.exchange, f.trade_id)
        if key in self._fill_keys:
            return False
        self._fill_keys.add(key)
        if f.exchange != "paper":
            exists = self.conn.execute(
                select(FillRow.id).where(FillRow.exchange == f.exchange, FillRow.trade_id == f.trade_id)
            ).first()
            if exists is not None:
                return False
        self._fills.append(dict(run_id=self.run_id, exchange=f.exchange, trade_id=f.trade_id, client_id=f.client_id,
                                symbol=f.symbol, side=f.side.value, price=str(f.price), size=str(f.size), fee=str(f.fee),
                                liquidity=f.liquidity, ts_ns=f.ts_ns, mid=f.mid))
        return True

    def record_pnl(self, ts_ns: int, mid: float, inv, pnl: float) -> None:
        self._pnl.append(dict(run_id=self.run_id, ts_ns=ts_ns, mid=mid, inventory=str(inv.base), cash=str(inv.cash),
                              mtm=inv.mark_to_market(mid), pnl=pnl, fees_paid=str(inv.fees_paid),
                              spread_capture=inv.spread_capture))

    @property
    def pending(self) -> bool:
        return bool(self._new_orders or self._order_updates or self._events or self._fills or self._pnl)

    def commit(self) -> None:
        """Write everything buffered in one transaction."""
        if not self.pending:
            return
        c = self.conn
        try:
            if self._new_orders:
                c.execute(insert(OrderRow), list(self._new_orders.values()))
                self._known_orders.update(self._new_orders)
            if self._order_updates:
                t = OrderRow.__table__
                c.execute(
                    update(t).where(t.c.run_id == bindparam("b_run"), t.c.client_id == bindparam("b_cid")),
                    list(self._order_updates.values()),
                )
            if self._events:
                c.execute(insert(OrderEvent), self._events)
            if self._fills:
                c.execute(self._fill_insert, self._fills)
            if self._pnl:
                c.execute(insert(PnlSnapshot), self._pnl)
            c.commit()
        except BaseException:
            c.rollback()
            raise
        self._new_orders, self._order_updates, self._events, self._fills, self._pnl = {}, {}, [], [], []

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self.conn.close()
            self.engine.dispose()


def open_store(url: str) -> Store:
    return Store(make_engine(url))
