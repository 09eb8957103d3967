"""Sessions: the runs of one process that trades several markets (``markets:`` in the
config) share ``runs.session_id`` (one run row per market). Runs of a one-market process,
and every run written before this revision, have none (NULL).

Revision ID: 0003_sessions
Revises: 0002
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_sessions"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("session_id", sa.String(40), nullable=True))
    op.create_index("ix_runs_session_id", "runs", ["session_id"])


def downgrade() -> None:
    op.drop_index("ix_runs_session_id", table_name="runs")
    with op.batch_alter_table("runs") as b:
        b.drop_column("session_id")
