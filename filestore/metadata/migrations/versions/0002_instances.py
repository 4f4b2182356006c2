"""Each instance's last purge pass (for the cluster status), and on
PostgreSQL an eager autovacuum of the key table, so the dead tuples of erased
keys are pruned within seconds even between the purge's own vacuums.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instance_passes",
        sa.Column("instance", sa.Text, primary_key=True),
        sa.Column("started_at", sa.Float(53), nullable=False),
        sa.Column("finished_at", sa.Float(53), nullable=False),
        sa.Column("purged", sa.BigInteger, nullable=False),
        sa.Column("failed", sa.BigInteger, nullable=False),
        sa.Column("max_overdue", sa.Float(53), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("reclaim_blocked", sa.Text),
    )
    if op.get_context().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE file_keys SET (autovacuum_vacuum_scale_factor = 0, "
            "autovacuum_vacuum_threshold = 100, autovacuum_vacuum_cost_delay = 0)"
        )
