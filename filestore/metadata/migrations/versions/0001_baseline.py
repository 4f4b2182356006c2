"""The baseline schema: files, insert-once keys, API keys, the append-only
audit log and its checkpoints, with the partial indexes the purge relies on.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.Integer().with_variant(sa.BigInteger(), "postgresql")
Time = sa.Float(53)


def _partial(name: str, table: str, columns: list[str], where: str, unique: bool = False) -> None:
    clause = sa.text(where)
    op.create_index(
        name, table, columns, unique=unique, sqlite_where=clause, postgresql_where=clause
    )


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.LargeBinary(16), primary_key=True),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("kek_id", sa.BigInteger, nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("expires_at", Time, nullable=False),
        sa.Column("size", sa.BigInteger),
        sa.Column("sealed", sa.LargeBinary),
        sa.Column("max_downloads", sa.BigInteger),
        sa.Column("downloads", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("delete_reason", sa.Text),
        sa.Column("deleted_at", Time),
        sa.Column("lease_owner", sa.Text),
        sa.Column("lease_expires", Time),
        sa.Column("purge_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", Time),
        sa.Column("last_error", sa.Text),
        sa.CheckConstraint(
            "state IN ('uploading', 'active', 'purging', 'purged')", name="files_state_check"
        ),
        sa.CheckConstraint("length(id) = 16", name="files_id_length_check"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "file_keys",
        sa.Column("file_id", sa.LargeBinary(16), sa.ForeignKey("files.id"), primary_key=True),
        sa.Column("kek_id", sa.BigInteger, nullable=False),
        sa.Column("wrapped_dek", sa.LargeBinary, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.Text, primary_key=True),
        sa.Column("secret_hash", sa.LargeBinary, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("label", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("revoked_at", Time),
        sa.CheckConstraint("role IN ('client', 'operator', 'auditor')", name="api_keys_role_check"),
    )
    op.create_table(
        "audit_log",
        sa.Column("seq", BigId, primary_key=True, autoincrement=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("file_id", sa.Text),
        sa.Column("kek_id", sa.BigInteger),
        sa.Column("tenant", sa.Text),
        sa.Column("recorded_at", Time, nullable=False),
        sa.Column("hash", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
    )
    _partial("files_live_expiry", "files", ["expires_at"], "state <> 'purged'")
    _partial("files_uploading", "files", ["created_at"], "state = 'uploading'")
    _partial("files_purging", "files", ["lease_expires"], "state = 'purging'")
    _partial("files_live_created", "files", ["created_at"], "state IN ('uploading', 'active')")
    op.create_index("file_keys_kek", "file_keys", ["kek_id"])
    op.create_index("audit_log_time", "audit_log", ["recorded_at"])
    op.create_index("audit_checkpoints_size", "audit_checkpoints", ["size"])
    _partial("audit_log_one_per_file", "audit_log", ["file_id"], "event = 'file_deleted'", True)
    _partial("audit_log_one_per_kek", "audit_log", ["kek_id"], "event = 'kek_destroyed'", True)
    # Insert-once keys (an update would leave the old key bytes behind, out
    # of crypto-erase's reach) and an append-only log, enforced by the
    # database itself, whoever writes to it.
    if op.get_context().dialect.name == "sqlite":
        op.execute(
            "CREATE TRIGGER file_keys_insert_once BEFORE UPDATE ON file_keys "
            "BEGIN SELECT RAISE(ABORT, 'file_keys rows are insert-once'); END"
        )
        op.execute(
            "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
            "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
        )
        op.execute(
            "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
            "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
        )
    else:
        op.execute(
            "CREATE FUNCTION filestore_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION '%', TG_ARGV[0]; END $$"
        )
        op.execute(
            "CREATE TRIGGER file_keys_insert_once BEFORE UPDATE ON file_keys FOR EACH ROW "
            "EXECUTE FUNCTION filestore_refuse('file_keys rows are insert-once')"
        )
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION filestore_refuse('the audit log is append-only')"
        )
        op.execute(
            "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
            "FOR EACH STATEMENT EXECUTE FUNCTION filestore_refuse('the audit log is append-only')"
        )
