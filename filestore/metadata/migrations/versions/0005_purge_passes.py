"""The cluster's pass history: every instance's purge passes of the last day
and a half, for the operator status page (its pass table and purge-lag
chart). Each report appends one row and prunes the old ones in the same
transaction, so the table stays a few thousand rows per instance.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

#: SQLite's rowid alias wants INTEGER exactly; PostgreSQL gets 64 bits.
BigId = sa.Integer().with_variant(sa.BigInteger(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "purge_passes",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("instance", sa.Text, nullable=False),
        sa.Column("started_at", sa.Float(53), nullable=False),
        sa.Column("finished_at", sa.Float(53), nullable=False),
        sa.Column("purged", sa.BigInteger, nullable=False),
        sa.Column("failed", sa.BigInteger, nullable=False),
        sa.Column("max_overdue", sa.Float(53), nullable=False),
        sa.Column("error", sa.Text),
    )
    op.create_index("purge_passes_finished", "purge_passes", ["finished_at"])
