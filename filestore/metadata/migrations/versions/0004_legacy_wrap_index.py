"""Tenant-bound key wraps: an index of the keys still in the old layout.

Wrapped DEKs written before this revision are 60 bytes and bind only the KEK
id and the file id; from now on they are 61 bytes and bind the tenant too.
Re-sealing needs the KEKs, which the database never holds, so the rows are
converted by the service's key step after the upgrade (a batch at a time,
under the same KEK); this revision adds the partial index that finds them,
empty once they are done.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_LEGACY = sa.text("length(wrapped_dek) = 60")


def upgrade() -> None:
    op.create_index(
        "file_keys_legacy_wrap",
        "file_keys",
        ["file_id"],
        sqlite_where=_LEGACY,
        postgresql_where=_LEGACY,
    )
