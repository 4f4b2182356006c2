"""The deletion log's Merkle tree as tlog-tiles: ``audit_tree`` holds the
root of every complete 256^level-leaf subtree (level >= 1), so receipts,
exports and tile requests read O(log n) rows instead of every leaf. Level 0
is derived from ``audit_log.hash``. Existing logs are backfilled here, in
the migration's transaction; the table is append-only like the log.
Instances sharing the database must all run code that knows this table:
older code appends without growing the tree.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

WIDTH = 256
BATCH = 1000


def _perfect(row: list[bytes]) -> bytes:
    while len(row) > 1:
        row = [
            hashlib.sha256(b"\x01" + row[i] + row[i + 1]).digest() for i in range(0, len(row), 2)
        ]
    return row[0]


def _backfill(conn: sa.Connection) -> None:
    """Every complete subtree of the existing log, built bottom-up as the
    append path would have written it, in one pass over the leaves."""
    tree = sa.table(
        "audit_tree", sa.column("level"), sa.column("idx"), sa.column("hash", sa.LargeBinary)
    )
    pending: list[dict[str, object]] = []
    # rows[l] collects the current run of level-l hashes (level 0: leaf hashes).
    rows: list[list[bytes]] = [[]]
    done = [0]
    result = conn.execute(
        sa.text("SELECT hash FROM audit_log ORDER BY seq"),
        execution_options={"yield_per": 10_000},
    )
    for (hex_hash,) in result:
        rows[0].append(hashlib.sha256(b"\x00" + bytes.fromhex(hex_hash)).digest())
        level = 0
        while len(rows[level]) == WIDTH:
            up = _perfect(rows[level])
            rows[level] = []
            level += 1
            if len(rows) == level:
                rows.append([])
                done.append(0)
            pending.append({"level": level, "idx": done[level], "hash": up})
            done[level] += 1
            rows[level].append(up)
        if len(pending) >= BATCH:
            conn.execute(tree.insert(), pending)
            pending = []
    if pending:
        conn.execute(tree.insert(), pending)


def upgrade() -> None:
    op.create_table(
        "audit_tree",
        sa.Column("level", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.CheckConstraint("level >= 1 AND length(hash) = 32", name="audit_tree_check"),
        sqlite_with_rowid=False,
    )
    if op.get_context().dialect.name == "sqlite":
        op.execute(
            "CREATE TRIGGER audit_tree_no_update BEFORE UPDATE ON audit_tree "
            "BEGIN SELECT RAISE(ABORT, 'the audit tree is append-only'); END"
        )
        op.execute(
            "CREATE TRIGGER audit_tree_no_delete BEFORE DELETE ON audit_tree "
            "BEGIN SELECT RAISE(ABORT, 'the audit tree is append-only'); END"
        )
    else:
        op.execute(
            "CREATE TRIGGER audit_tree_append_only BEFORE UPDATE OR DELETE ON audit_tree "
            "FOR EACH ROW EXECUTE FUNCTION filestore_refuse('the audit tree is append-only')"
        )
        op.execute(
            "CREATE TRIGGER audit_tree_no_truncate BEFORE TRUNCATE ON audit_tree "
            "FOR EACH STATEMENT EXECUTE FUNCTION filestore_refuse('the audit tree is append-only')"
        )
    _backfill(op.get_bind())
