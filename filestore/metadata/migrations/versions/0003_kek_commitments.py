"""Commitments of ratchet epochs: HMAC(KEK_e, label) per epoch, so an
instance running a different ratchet (created instead of joined) is refused
before it wraps a single key. A commitment reveals nothing of the KEK.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kek_commitments",
        sa.Column("kek_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("commitment", sa.LargeBinary, nullable=False),
        sa.Column("recorded_at", sa.Float(53), nullable=False),
    )
