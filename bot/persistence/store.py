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

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

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
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        Base.metadata.create_all(engine)
        self.session = Session(engine, expire_on_commit=False)
        self.run_id: int | None = None
        self._order_rows: dict[str, OrderRow] = {}
        self._dirty = False

    # -- runs ----------------------------------------------------------------------------
    def start_run(self, mode: str, exchange: str, symbol: str, config: dict, started_ns: int | None = None) -> int:
        run = Run(mode=mode, exchange=exchange, symbol=symbol, config_json=json.dumps(config, default=str, sort_keys=True),
                  started_ns=started_ns or time.time_ns(), status="running")
        self.session.add(run)
        self.session.commit()
        self.run_id = run.id
        return run.id

    def end_run(self, status: str, summary: dict, ended_ns: int | None = None) -> None:
        run = self.session.get(Run, self.run_id)
        run.status = status
        run.ended_ns = ended_ns or time.time_ns()
        run.summary_json = json.dumps(summary, default=str, sort_keys=True)
        self.commit()

    # -- orders and fills ----------------------------------------------------------------
    def record_order(self, o: Order) -> None:
        """Upsert the order's current state and append its transition to order_events."""
        row = self._order_rows.get(o.client_id)
        ts = o.updated_ns
        if row is None:
            row = OrderRow(run_id=self.run_id, client_id=o.client_id, exchange_id=o.exchange_id, symbol=o.symbol,
                           side=o.side.value, price=o.price, size=o.size, filled=o.filled, state=o.state.value,
                           post_only=o.post_only, level=o.level, created_ns=o.created_ns, updated_ns=ts, reason=o.reason)
            self.session.add(row)
            self._order_rows[o.client_id] = row
        else:
            row.state, row.filled, row.updated_ns, row.reason = o.state.value, o.filled, ts, o.reason
            row.exchange_id = o.exchange_id
            if o.state.terminal:
                del self._order_rows[o.client_id]  # no further updates expected
        self.session.add(OrderEvent(run_id=self.run_id, client_id=o.client_id, ts_ns=ts, state=o.state.value,
                                    filled=o.filled, reason=o.reason))
        self._dirty = True

    def record_fill(self, f: Fill) -> bool:
        """Store a fill once; False if (exchange, trade_id) is already recorded."""
        exists = self.session.scalar(
            select(FillRow.id).where(FillRow.exchange == f.exchange, FillRow.trade_id == f.trade_id)
        )
        if exists is not None:
            return False
        self.session.add(FillRow(run_id=self.run_id, exchange=f.exchange, trade_id=f.trade_id, client_id=f.client_id,
                                 symbol=f.symbol, side=f.side.value, price=f.price, size=f.size, fee=f.fee,
                                 liquidity=f.liquidity, ts_ns=f.ts_ns, mid=f.mid))
        self.session.flush()
        self._dirty = True
        return True

    def record_pnl(self, ts_ns: int, mid: float, inv, pnl: float) -> None:
        self.session.add(PnlSnapshot(run_id=self.run_id, ts_ns=ts_ns, mid=mid, inventory=inv.base, cash=inv.cash,
                                     mtm=inv.mark_to_market(mid), pnl=pnl, fees_paid=inv.fees_paid,
                                     spread_capture=inv.spread_capture))
        self._dirty = True

    def commit(self) -> None:
        if self._dirty or self.session.new or self.session.dirty:
            self.session.commit()
            self._dirty = False

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self.session.close()
            self.engine.dispose()


def open_store(url: str) -> Store:
    return Store(make_engine(url))
