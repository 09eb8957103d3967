"""Writing the record of a run.

Every order transition and every fill is added to the session as it happens; the engine
calls :meth:`Store.commit` at the end of every loop iteration that wrote something, so a
crash loses nothing that the engine had acted on before its last iteration. Fills are
idempotent: (exchange, trade_id) is unique, and :meth:`Store.record_fill` returns False for
a fill already stored (e.g. replayed after a reconnect).

The end of a run is always written: :meth:`Store.end_run` salvages what it can of a batch
the database refused (group by group, then row by row, counting what was lost) and writes
the run's status in a transaction of its own.

Dead runs: every run records the process that runs it (``run_processes``: host, pid, the
pid's start time, a heartbeat). :meth:`Store.start_run` first marks the ``running`` runs
whose process is gone as ``crashed`` (ended at their last heartbeat, with the time of their
last recorded event) and closes their paper orders; a live process's run is left alone.
Decimals are written as plain digits (:func:`bot.market.plain`).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from collections import OrderedDict
from pathlib import Path

from sqlalchemy import bindparam, create_engine, event, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from bot.errors import ConfigError
from bot.market import plain
from bot.orders import Fill, Order, OrderState, random_prefix
from bot.persistence import liveness, migrate
from bot.persistence.dbpath import engine_url, redact
from bot.persistence.schema import FillRow, Meta, OrderEvent, OrderRow, PnlSnapshot, Run, RunProcess

log = logging.getLogger("mmbot.store")

HEARTBEAT_S = 5.0  # wall seconds between heartbeats (written with a commit)
STALE_AFTER_S = 3600.0  # a run of another host is dead when its heartbeat is this old
WORKING_STATES = tuple(s.value for s in OrderState if not s.terminal)  # incl. live in-flight states
REASON_CHARS = 200  # orders.reason / order_events.reason are VARCHAR(200): PostgreSQL enforces it
_TERMINAL_STATES = frozenset(s.value for s in OrderState if s.terminal)
# terminal orders whose client id the store remembers (2x the order manager's keep_terminal)
KEEP_TERMINAL_ORDERS = 20_000


def _fit(text: str, n: int) -> str:
    """``text`` cut to ``n`` characters (an ellipsis marks the cut); SQLite would store more,
    PostgreSQL refuses the whole batch."""
    return text if len(text) <= n else text[: n - 1] + "…"


def json_safe(x):
    """``x`` with NaN and infinities replaced by None (JSON has no such numbers; stored JSON
    must stay parseable)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def _dumps(x) -> str:
    return json.dumps(json_safe(x), default=str, sort_keys=True)


def make_engine(url: str) -> Engine:
    """SQLAlchemy engine for a path or URL (:func:`bot.persistence.dbpath.engine_url`); for a
    SQLite file the folder is created and WAL mode switched on. PostgreSQL
    (``postgresql+psycopg://``) needs nothing of the kind: its connections are checked
    before use (a server restart during a long run costs one reconnect, not the run)."""
    url = engine_url(url)
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        # several processes may share one database (a run, a report, the next start): wait
        # for a writer's lock instead of failing at once
        eng = (create_engine(url, connect_args={"timeout": 30}) if url.startswith("sqlite")
               else create_engine(url, pool_pre_ping=True))
    except (SQLAlchemyError, ImportError, ValueError) as e:
        raise ConfigError(f"database url {redact(url)!r} is not usable: {e}") from None
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

    def __init__(self, engine: Engine, label: str | None = None) -> None:
        """``label``: the database as the user named it, for messages (default: the URL
        without its password). A new database gets the schema; one written before Alembic
        is adopted; one older or newer than the code is refused (ConfigError, see
        :mod:`bot.persistence.migrate`)."""
        self.engine = engine
        migrate.prepare(engine, label or engine.url.render_as_string(hide_password=True))
        self.conn = engine.connect()
        self.run_id: int | None = None
        # client ids with a row in `orders`: every working order, and only the last
        # KEEP_TERMINAL_ORDERS terminal ones (a long run places tens of thousands of orders an
        # hour; the order manager forgets terminal orders sooner, so it never reports them again)
        self._known_orders: set[str] = set()
        self._known_terminal: OrderedDict[str, None] = OrderedDict()
        self._new_orders: dict[str, dict] = {}
        self._order_updates: dict[str, dict] = {}
        self._events: list[dict] = []
        self._fills: list[dict] = []
        self._pnl: list[dict] = []
        self._fill_keys: set[tuple[str, str]] = set()
        self._installation: str | None = None
        self._next_beat = math.inf
        # a fill already in the database is never inserted twice (belt and braces: the
        # unique constraint on (exchange, trade_id) plus ON CONFLICT DO NOTHING)
        dialect = engine.dialect.name
        if dialect in ("sqlite", "postgresql"):
            mod = __import__(f"sqlalchemy.dialects.{dialect}", fromlist=["insert"])
            self._fill_insert = mod.insert(FillRow).on_conflict_do_nothing(index_elements=["exchange", "trade_id"])
        else:
            self._fill_insert = insert(FillRow)

    # -- the database itself -------------------------------------------------------------
    @property
    def installation_id(self) -> str:
        """Random base-62 prefix of this database's client order ids, made on first use."""
        if self._installation is None:
            row = self.conn.execute(select(Meta.value).where(Meta.key == "installation_id")).first()
            if row is None:
                cand = random_prefix()
                try:
                    self.conn.execute(insert(Meta).values(key="installation_id", value=cand))
                    self.conn.commit()
                except IntegrityError:  # another process made it first
                    self.conn.rollback()
                row = self.conn.execute(select(Meta.value).where(Meta.key == "installation_id")).first()
            self._installation = str(row[0])
        return self._installation

    # -- runs ----------------------------------------------------------------------------
    def start_run(self, mode: str, exchange: str, symbol: str, config: dict, started_ns: int | None = None,
                  session_id: str | None = None) -> int:
        """Insert a ``running`` run owned by this process; first mark dead runs as crashed
        (best effort: a failed recovery is logged and retried by the next start).
        ``session_id`` groups the runs of one multi-market process (None: a one-market run)."""
        try:
            self.recover_crashed_runs()
        except SQLAlchemyError as e:  # e.g. another process recovering at the same moment
            self.conn.rollback()
            log.warning("could not check for crashed runs (%s); the next start will", " ".join(str(e).split())[:200])
        now = time.time_ns()
        db = config.get("database") if isinstance(config, dict) else None
        if isinstance(db, dict) and isinstance(db.get("url"), str):  # the database's own password stays out of it
            config = {**config, "database": {**db, "url": redact(db["url"])}}
        res = self.conn.execute(insert(Run).values(
            mode=mode, exchange=exchange, symbol=symbol, config_json=_dumps(config),
            started_ns=started_ns or now, status="running", session_id=session_id))
        self.run_id = int(res.inserted_primary_key[0])
        pid = os.getpid()
        self.conn.execute(insert(RunProcess).values(run_id=self.run_id, host=liveness.hostname(), pid=pid,
                                                    proc_start=liveness.process_start(pid), heartbeat_ns=now))
        self.conn.commit()
        self._next_beat = time.monotonic() + HEARTBEAT_S
        return self.run_id

    def recover_crashed_runs(self, stale_after_s: float = STALE_AFTER_S) -> list[int]:
        """Mark ``running`` runs whose process is gone as ``crashed``; returns their ids.

        A crashed run ends at its last heartbeat (wall clock); its summary says so and gives
        ``last_event_ns``, the event-clock time of the last order event, fill or snapshot it
        recorded. Its paper orders still working are closed (``canceled``, reason ``run
        crashed``: a simulated venue's orders die with its process); orders of a real venue
        are left as recorded, since they may still rest on the exchange. Runs without a
        process record (databases of older versions) cannot be judged and are left alone.
        """
        c = self.conn
        now = time.time_ns()
        rows = c.execute(select(Run.id, Run.exchange, Run.started_ns, RunProcess.host, RunProcess.pid,
                                RunProcess.proc_start, RunProcess.heartbeat_ns)
                         .join(RunProcess, RunProcess.run_id == Run.id).where(Run.status == "running")).all()
        crashed = []
        for r in rows:
            if liveness.process_alive(r.host, r.pid, r.proc_start, r.heartbeat_ns, now, stale_after_s):
                continue
            last_event = max((c.execute(select(func.max(t.ts_ns)).where(t.run_id == r.id)).scalar() or 0)
                             for t in (OrderEvent, FillRow, PnlSnapshot)) or None
            reason = (f"crashed: process {r.pid} on {r.host} ended without closing the run "
                      f"(found by a later start at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(now / 1e9))} UTC)")
            summary = {"status": "crashed", "stop_reason": reason, "last_event_ns": last_event,
                       "last_heartbeat_ns": r.heartbeat_ns, "orders_closed_at_recovery": 0}
            # claim the run first: of two starts racing, only one closes its orders
            claimed = c.execute(update(Run).where(Run.id == r.id, Run.status == "running").values(
                status="crashed", ended_ns=max(r.heartbeat_ns, r.started_ns), summary_json=_dumps(summary))).rowcount
            if claimed != 1:
                c.rollback()
                continue
            closed = 0
            if r.exchange == "paper":
                working = c.execute(select(OrderRow.client_id, OrderRow.filled, OrderRow.updated_ns).where(
                    OrderRow.run_id == r.id, OrderRow.state.in_(WORKING_STATES))).all()
                for o in working:
                    ts = max(last_event or 0, o.updated_ns)
                    c.execute(update(OrderRow).where(OrderRow.run_id == r.id, OrderRow.client_id == o.client_id)
                              .values(state="canceled", reason="run crashed", updated_ns=ts))
                    c.execute(insert(OrderEvent).values(run_id=r.id, client_id=o.client_id, ts_ns=ts, state="canceled",
                                                        filled=plain(o.filled), reason="run crashed"))
                closed = len(working)
                summary["orders_closed_at_recovery"] = closed
            else:
                summary["stop_reason"] += f"; its orders on {r.exchange} are left as recorded (they may still rest there)"
            c.execute(update(Run).where(Run.id == r.id).values(summary_json=_dumps(summary)))
            c.commit()
            crashed.append(r.id)
            log.warning("run %d died (process %d on %s gone): marked crashed; %d paper orders closed",
                        r.id, r.pid, r.host, closed)
        return crashed

    def end_run(self, status: str, summary: dict, ended_ns: int | None = None) -> str:
        """Write what is buffered, then the run's status and summary, whatever happens;
        returns the status written.

        When the database refuses the buffered rows, what it accepts is still written (see
        :meth:`salvage`); ``summary`` (updated in place) then carries ``commit_error`` and
        ``rows_lost``, a ``completed`` run becomes ``failed``, and the status and summary
        are written in a transaction of their own. Raises only when the status itself
        cannot be written."""
        try:
            self.commit()
        except Exception as e:  # noqa: BLE001 - recorded in the summary; the status must be written
            lost = self.salvage()
            summary["commit_error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            summary["rows_lost"] = lost
            if status == "completed":
                status = "failed"
            summary["status"] = status
            summary["stop_reason"] = f"{summary.get('stop_reason') or ''}; final commit failed: {summary['commit_error']}".lstrip("; ")
            log.error("final commit failed (%s); %d rows could not be written", summary["commit_error"], lost)
        self.conn.execute(update(Run).where(Run.id == self.run_id).values(
            status=status, ended_ns=ended_ns or time.time_ns(), summary_json=_dumps(summary)))
        self.conn.execute(update(RunProcess).where(RunProcess.run_id == self.run_id).values(heartbeat_ns=time.time_ns()))
        self.conn.commit()
        return status

    # -- orders and fills ----------------------------------------------------------------
    def record_order(self, o: Order) -> None:
        """Upsert the order's current state and append its transition to order_events."""
        cid = o.client_id
        ts = o.updated_ns
        state = o.state.value
        reason = _fit(o.reason, REASON_CHARS)
        if cid in self._known_orders or cid in self._new_orders or cid in self._known_terminal:
            row = self._new_orders.get(cid)
            if row is not None:  # not written yet: just update the pending insert
                row.update(state=state, filled=plain(o.filled), updated_ns=ts, reason=reason, exchange_id=o.exchange_id)
            else:
                self._order_updates[cid] = dict(b_run=self.run_id, b_cid=cid, state=state, filled=plain(o.filled),
                                                updated_ns=ts, reason=reason, exchange_id=o.exchange_id)
        else:
            self._new_orders[cid] = dict(
                run_id=self.run_id, client_id=cid, exchange_id=o.exchange_id, symbol=o.symbol, side=o.side.value,
                price=plain(o.price), size=plain(o.size), filled=plain(o.filled), state=state, post_only=o.post_only,
                level=o.level, created_ns=o.created_ns, updated_ns=ts, reason=reason)
        self._events.append(dict(run_id=self.run_id, client_id=cid, ts_ns=ts, state=state, filled=plain(o.filled), reason=reason))

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
                                symbol=f.symbol, side=f.side.value, price=plain(f.price), size=plain(f.size), fee=plain(f.fee),
                                liquidity=f.liquidity, ts_ns=f.ts_ns, mid=f.mid, fee_cost=f.fee_cost,
                                fee_currency=f.fee_currency, fee_rate=f.fee_rate))
        return True

    def record_pnl(self, ts_ns: int, mid: float, inv, pnl: float) -> None:
        self._pnl.append(dict(run_id=self.run_id, ts_ns=ts_ns, mid=mid, inventory=plain(inv.base), cash=plain(inv.cash),
                              mtm=inv.mark_to_market(mid), pnl=pnl, fees_paid=plain(inv.fees_paid),
                              spread_capture=inv.spread_capture))

    @property
    def pending(self) -> bool:
        return bool(self._new_orders or self._order_updates or self._events or self._fills or self._pnl)

    def _statements(self) -> list[tuple[str, object, list]]:
        """The buffered writes in order: (buffer name, statement, rows)."""
        t = OrderRow.__table__
        return [
            ("_new_orders", insert(OrderRow), list(self._new_orders.values())),
            ("_order_updates", update(t).where(t.c.run_id == bindparam("b_run"), t.c.client_id == bindparam("b_cid")),
             list(self._order_updates.values())),
            ("_events", insert(OrderEvent), self._events),
            ("_fills", self._fill_insert, self._fills),
            ("_pnl", insert(PnlSnapshot), self._pnl),
        ]

    def _clear(self) -> None:
        self._known_orders.update(self._new_orders)
        for cid, row in itertools.chain(self._new_orders.items(), self._order_updates.items()):
            if row["state"] in _TERMINAL_STATES:
                self._known_orders.discard(cid)
                self._known_terminal[cid] = None
        while len(self._known_terminal) > KEEP_TERMINAL_ORDERS:
            self._known_terminal.popitem(last=False)
        self._new_orders, self._order_updates, self._events, self._fills, self._pnl = {}, {}, [], [], []

    def _beat(self) -> None:
        """Refresh this run's heartbeat (inside the caller's transaction) when it is due."""
        now = time.monotonic()
        if self.run_id is not None and now >= self._next_beat:
            self._next_beat = now + HEARTBEAT_S
            self.conn.execute(update(RunProcess).where(RunProcess.run_id == self.run_id).values(heartbeat_ns=time.time_ns()))

    def commit(self) -> None:
        """Write everything buffered in one transaction (plus the heartbeat when due). On
        failure the transaction is rolled back and the buffers are kept (see :meth:`salvage`)."""
        if not self.pending:
            if self.run_id is not None and time.monotonic() >= self._next_beat:
                self._beat()
                self.conn.commit()
            return
        c = self.conn
        try:
            for _, stmt, rows in self._statements():
                if rows:
                    c.execute(stmt, rows)
            self._beat()
            c.commit()
        except BaseException:
            c.rollback()
            raise
        self._clear()

    def salvage(self) -> int:
        """Write what the database accepts of the buffers: each group in a transaction of
        its own, and a refused group row by row. Returns the number of rows dropped."""
        c = self.conn
        lost = 0
        for _, stmt, rows in self._statements():
            if not rows:
                continue
            try:
                c.execute(stmt, rows)
                c.commit()
                continue
            except Exception:  # noqa: BLE001 - try row by row below
                c.rollback()
            for row in rows:
                try:
                    c.execute(stmt, [row])
                    c.commit()
                except Exception:  # noqa: BLE001 - this row is lost; counted
                    c.rollback()
                    lost += 1
        self._clear()
        return lost

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self.conn.close()
            self.engine.dispose()


def process_gone(conn, run_id: int, stale_after_s: float = STALE_AFTER_S) -> str | None:
    """Read-only: why run ``run_id`` (status ``running``) is dead, or None when its process
    may be alive or cannot be judged (no process record). ``conn`` is a SQLAlchemy
    connection or session."""
    try:
        r = conn.execute(select(RunProcess.host, RunProcess.pid, RunProcess.proc_start, RunProcess.heartbeat_ns)
                         .where(RunProcess.run_id == run_id)).first()
    except SQLAlchemyError:  # a database of an older version: no process records
        return None
    if r is None or liveness.process_alive(r.host, r.pid, r.proc_start, r.heartbeat_ns, time.time_ns(), stale_after_s):
        return None
    return (f"crashed: process {r.pid} on {r.host} ended without closing the run "
            "(the next start on this database records it)")


def open_store(url: str) -> Store:
    eng = make_engine(url)
    try:
        return Store(eng, redact(url))
    except BaseException:
        eng.dispose()
        raise
