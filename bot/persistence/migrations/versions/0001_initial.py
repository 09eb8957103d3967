"""The record's schema as it was when Alembic came in (runs, orders, order_events, fills,
pnl_snapshots, mmbot_meta, run_processes, and live trading's live_balance_checkpoints and
live_base_fees).

Revision ID: 0001
Revises:
Create Date: 2026-12-05

A database written by mmbot before Alembic (no version table) is this revision: the tables
it already has are kept as they are, and only the missing ones are created (databases of
the first versions have no ``mmbot_meta``, ``run_processes`` nor the live tables).

Frozen here (not imported from ``bot.persistence.schema``, which moves on): money and
sizes are exact decimal text (VARCHAR(40)); timestamps integer ns (BIGINT). Row ids of the
growing tables are BIGINT on PostgreSQL (BIGSERIAL: a service writes order events for
months) and INTEGER on SQLite (the 64-bit rowid; BIGINT would not auto-increment there).
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
DEC = sa.String(40)  # exact decimal text, plain digits


def _tables(md: sa.MetaData) -> list[sa.Table]:
    runs = sa.Table(
        "runs", md,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("exchange", sa.String(32), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("started_ns", sa.BigInteger(), nullable=False),
        sa.Column("ended_ns", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("summary_json", sa.Text(), nullable=True),
    )
    meta = sa.Table(
        "mmbot_meta", md,
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    procs = sa.Table(
        "run_processes", md,
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("proc_start", sa.String(32), nullable=False),
        sa.Column("heartbeat_ns", sa.BigInteger(), nullable=False),
    )
    orders = sa.Table(
        "orders", md,
        sa.Column("id", ROW_ID, primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=False, index=True),
        sa.Column("client_id", sa.String(40), nullable=False),
        sa.Column("exchange_id", sa.String(64), nullable=True),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("price", DEC, nullable=False),
        sa.Column("size", DEC, nullable=False),
        sa.Column("filled", DEC, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("post_only", sa.Boolean(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("created_ns", sa.BigInteger(), nullable=False),
        sa.Column("updated_ns", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.UniqueConstraint("run_id", "client_id"),
    )
    events = sa.Table(
        "order_events", md,
        sa.Column("id", ROW_ID, primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=False, index=True),
        sa.Column("client_id", sa.String(40), nullable=False, index=True),
        sa.Column("ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("filled", DEC, nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
    )
    fills = sa.Table(
        "fills", md,
        sa.Column("id", ROW_ID, primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("exchange", sa.String(32), nullable=False),
        sa.Column("trade_id", sa.String(64), nullable=False),
        sa.Column("client_id", sa.String(40), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("price", DEC, nullable=False),
        sa.Column("size", DEC, nullable=False),
        sa.Column("fee", DEC, nullable=False),
        sa.Column("liquidity", sa.String(5), nullable=False),
        sa.Column("ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("mid", sa.Float(), nullable=False),
        sa.UniqueConstraint("exchange", "trade_id", name="uq_fill_exchange_trade"),
        sa.Index("ix_fills_run_ts", "run_id", "ts_ns"),
    )
    pnl = sa.Table(
        "pnl_snapshots", md,
        sa.Column("id", ROW_ID, primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("mid", sa.Float(), nullable=False),
        sa.Column("inventory", DEC, nullable=False),
        sa.Column("cash", DEC, nullable=False),
        sa.Column("mtm", sa.Float(), nullable=False),
        sa.Column("pnl", sa.Float(), nullable=False),
        sa.Column("fees_paid", DEC, nullable=False),
        sa.Column("spread_capture", sa.Float(), nullable=False),
        sa.Index("ix_pnl_run_ts", "run_id", "ts_ns"),
    )
    # live trading's reconciliation: the exchange balance (base units, quote currency) when
    # every fill up to max_fill_id (fills.id) was recorded; fees charged in the base currency
    checkpoints = sa.Table(
        "live_balance_checkpoints", md,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("exchange", sa.String(32), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("base", DEC, nullable=False),
        sa.Column("quote", DEC, nullable=False),
        sa.Column("max_fill_id", sa.BigInteger(), nullable=False),
    )
    base_fees = sa.Table(
        "live_base_fees", md,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("exchange", sa.String(32), nullable=False),
        sa.Column("trade_id", sa.String(64), nullable=False),
        sa.Column("base_fee", DEC, nullable=False),
        sa.UniqueConstraint("exchange", "trade_id", name="uq_live_base_fee_trade"),
    )
    return [runs, meta, procs, orders, events, fills, pnl, checkpoints, base_fees]


def upgrade() -> None:
    bind = op.get_bind()
    present = set(sa.inspect(bind).get_table_names())
    for table in _tables(sa.MetaData()):
        if table.name not in present:  # a database from before Alembic keeps what it has
            table.create(bind)


def downgrade() -> None:
    bind = op.get_bind()
    for table in reversed(_tables(sa.MetaData())):
        table.drop(bind, checkfirst=True)
