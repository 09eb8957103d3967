"""The fee of a fill as the venue charged it: fills.fee_cost, fee_currency, fee_rate.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05

Live venues charge fees in other currencies than the quote (Binance: the asset received, or
BNB). ``fills.fee`` stays the fee in quote currency; the new nullable columns keep the
original amount (``fee_cost``, in ``fee_currency`` units) and the price that valued it in
quote (``fee_rate``, quote per fee-currency unit; NULL = not converted). Additive: rows of
earlier runs get NULLs (their ``fee`` was charged in quote, or recorded as 0 when it was not).
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DEC = sa.String(40)  # exact decimal text, plain digits


def upgrade() -> None:
    op.add_column("fills", sa.Column("fee_cost", DEC, nullable=True))
    op.add_column("fills", sa.Column("fee_currency", sa.String(16), nullable=True))
    op.add_column("fills", sa.Column("fee_rate", DEC, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fills") as b:
        b.drop_column("fee_rate")
        b.drop_column("fee_currency")
        b.drop_column("fee_cost")
