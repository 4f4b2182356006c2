"""Witness cosignatures of the audit log's checkpoints: one row per witness
and tree size (the newest), filed under the SHA-256 of the checkpoint text
they sign, so each is handed out with exactly the note it covers.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: SQLite's rowid alias wants INTEGER exactly; PostgreSQL gets 64 bits.
BigId = sa.Integer().with_variant(sa.BigInteger(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "audit_cosignatures",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("body_hash", sa.Text, nullable=False),
        sa.Column("witness", sa.Text, nullable=False),
        sa.Column("line", sa.Text, nullable=False),
        sa.Column("cosigned_at", sa.BigInteger, nullable=False),
        sa.Column("received_at", sa.Float(53), nullable=False),
    )
    op.create_index("audit_cosignatures_size", "audit_cosignatures", ["size", "witness"])
