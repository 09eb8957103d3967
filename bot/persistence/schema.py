"""Database tables. Money and sizes are stored as exact decimal strings (``DecimalText``,
always plain digits, never ``7.839E+4``); timestamps as integer ns since the epoch; prices
quote per base, sizes base units, cash and fees quote currency.

Alembic manages the schema (``bot/persistence/migrations``): a change here comes with a new
migration (keep changes additive), and ``bot.persistence.migrate.REVISIONS`` names it.

``runs.started_ns`` / ``ended_ns`` and ``run_processes.heartbeat_ns`` are wall-clock times;
order, fill and snapshot times are the event clock (exchange or simulated time)."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class DecimalText(TypeDecorator):
    """Exact Decimal stored as text (SQLite has no decimal type)."""

    impl = String(40)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, Decimal):
            return format(value, "f")  # never exponent form (a normalized 49950 prints 4.995E+4)
        s = str(value)
        return format(Decimal(s), "f") if ("E" in s or "e" in s) else s

    def process_result_value(self, value, dialect):
        return None if value is None else Decimal(value)


#: row id of the growing tables: BIGINT on PostgreSQL (a service writes order events for
#: months), INTEGER on SQLite (the 64-bit rowid; BIGINT would not auto-increment there)
RowId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mode: Mapped[str] = mapped_column(String(16))  # paper | live | backtest
    exchange: Mapped[str] = mapped_column(String(32))
    symbol: Mapped[str] = mapped_column(String(32))
    config_json: Mapped[str] = mapped_column(Text)  # snapshot of the validated config (no secrets)
    started_ns: Mapped[int] = mapped_column(BigInteger)
    ended_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # running | completed | interrupted | failed | crashed (process gone without ending the run)
    status: Mapped[str] = mapped_column(String(16), default="running")
    summary_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    # the runs of one multi-market process (one per market) share it; NULL for a one-market run
    session_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)


class Meta(Base):
    """Facts of the database itself, e.g. ``installation_id`` (the client-order-id prefix)."""

    __tablename__ = "mmbot_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class RunProcess(Base):
    """The process that runs a run: how a later start tells a live run from a dead one.

    ``host`` and ``pid`` name the process; ``proc_start`` is the OS's start time of that pid
    (Linux ``/proc/<pid>/stat`` field 22; empty elsewhere), so a pid reused by another
    process is not mistaken for the run's; ``heartbeat_ns`` (wall clock, ns) is refreshed
    at commits every few seconds while the run is alive.
    """

    __tablename__ = "run_processes"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    proc_start: Mapped[str] = mapped_column(String(32), default="")
    heartbeat_ns: Mapped[int] = mapped_column(BigInteger)


class OrderRow(Base):
    """Current state of each order (one row per order)."""

    __tablename__ = "orders"
    __table_args__ = (UniqueConstraint("run_id", "client_id"),)
    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    client_id: Mapped[str] = mapped_column(String(40))
    exchange_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(4))
    price: Mapped[Decimal] = mapped_column(DecimalText)
    size: Mapped[Decimal] = mapped_column(DecimalText)
    filled: Mapped[Decimal] = mapped_column(DecimalText)
    state: Mapped[str] = mapped_column(String(20))
    post_only: Mapped[bool] = mapped_column(default=True)
    level: Mapped[int] = mapped_column(Integer, default=0)
    created_ns: Mapped[int] = mapped_column(BigInteger)
    updated_ns: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(200), default="")


class OrderEvent(Base):
    """Every state transition of every order, timestamped."""

    __tablename__ = "order_events"
    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    client_id: Mapped[str] = mapped_column(String(40), index=True)
    ts_ns: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(20))
    filled: Mapped[Decimal] = mapped_column(DecimalText)
    reason: Mapped[str] = mapped_column(String(200), default="")


class FillRow(Base):
    __tablename__ = "fills"
    __table_args__ = (UniqueConstraint("exchange", "trade_id", name="uq_fill_exchange_trade"), Index("ix_fills_run_ts", "run_id", "ts_ns"))
    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    exchange: Mapped[str] = mapped_column(String(32))
    trade_id: Mapped[str] = mapped_column(String(64))
    client_id: Mapped[str] = mapped_column(String(40))
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(4))
    price: Mapped[Decimal] = mapped_column(DecimalText)
    size: Mapped[Decimal] = mapped_column(DecimalText)
    fee: Mapped[Decimal] = mapped_column(DecimalText)  # quote currency (converted; see fee_rate)
    liquidity: Mapped[str] = mapped_column(String(5))
    ts_ns: Mapped[int] = mapped_column(BigInteger)
    mid: Mapped[float] = mapped_column(Float)  # mid at fill time, quote per base
    # the fee as the venue charged it (migration 0002; NULL for simulated venues, whose fee
    # is charged in quote): amount in fee_currency units, and the price used to value it in
    # quote (quote per fee_currency unit; 1 for quote, the fill price for base). fee_rate
    # NULL with a fee_currency other than the quote = not converted (fee holds 0 for it;
    # `mmbot report` lists such fees as unconverted)
    fee_cost: Mapped[Decimal | None] = mapped_column(DecimalText, nullable=True)
    fee_currency: Mapped[str | None] = mapped_column(String(16), nullable=True)
    fee_rate: Mapped[Decimal | None] = mapped_column(DecimalText, nullable=True)


class PnlSnapshot(Base):
    __tablename__ = "pnl_snapshots"
    __table_args__ = (Index("ix_pnl_run_ts", "run_id", "ts_ns"),)
    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    ts_ns: Mapped[int] = mapped_column(BigInteger)
    mid: Mapped[float] = mapped_column(Float)
    inventory: Mapped[Decimal] = mapped_column(DecimalText)  # base units
    cash: Mapped[Decimal] = mapped_column(DecimalText)  # quote currency, fees subtracted
    mtm: Mapped[float] = mapped_column(Float)  # cash + inventory * mid
    pnl: Mapped[float] = mapped_column(Float)  # mtm change since the run started
    fees_paid: Mapped[Decimal] = mapped_column(DecimalText)
    spread_capture: Mapped[float] = mapped_column(Float)


# -- live trading (in migration 0001) ------------------------------------------------------
class BalanceCheckpoint(Base):
    """The exchange balance of a market's base and quote currency at a moment when every
    fill up to ``max_fill_id`` (the fills table's row id) was recorded."""

    __tablename__ = "live_balance_checkpoints"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    exchange: Mapped[str] = mapped_column(String(32))
    symbol: Mapped[str] = mapped_column(String(32))
    ts_ns: Mapped[int] = mapped_column(BigInteger)
    base: Mapped[Decimal] = mapped_column(DecimalText)  # base units
    quote: Mapped[Decimal] = mapped_column(DecimalText)  # quote currency
    max_fill_id: Mapped[int] = mapped_column(BigInteger)  # fills.id (BIGINT on PostgreSQL)


class BaseFee(Base):
    """A fee the exchange charged in the base currency (e.g. Binance on a buy), base units.
    The fills table values every fee in quote currency; this keeps what left the base
    balance so that inventory = balance (I5) holds."""

    __tablename__ = "live_base_fees"
    __table_args__ = (UniqueConstraint("exchange", "trade_id", name="uq_live_base_fee_trade"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    exchange: Mapped[str] = mapped_column(String(32))
    trade_id: Mapped[str] = mapped_column(String(64))
    base_fee: Mapped[Decimal] = mapped_column(DecimalText)
