"""The tables, as SQLAlchemy Core metadata: one description for every
database.

The migrations (``filestore/metadata/migrations``) create exactly this
schema; a test compares the two on SQLite and PostgreSQL. Dialect options
keep what each database does best: on SQLite the file tables are
``WITHOUT ROWID`` (the 16-byte id is the key), and the partial indexes —
rows that still need work, never the tombstones — exist on both.

Times are Unix seconds as double precision, ids raw 16-byte values.
"""

from __future__ import annotations

import sqlalchemy as sa

#: SQLite's rowid alias wants INTEGER exactly; PostgreSQL gets 64 bits.
BigId = sa.Integer().with_variant(sa.BigInteger(), "postgresql")

metadata = sa.MetaData()

files = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.LargeBinary(16), primary_key=True),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("kek_id", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Float(53), nullable=False),
    sa.Column("expires_at", sa.Float(53), nullable=False),
    sa.Column("size", sa.BigInteger),
    sa.Column("sealed", sa.LargeBinary),
    sa.Column("max_downloads", sa.BigInteger),
    sa.Column("downloads", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("delete_reason", sa.Text),
    sa.Column("deleted_at", sa.Float(53)),
    sa.Column("lease_owner", sa.Text),
    sa.Column("lease_expires", sa.Float(53)),
    sa.Column("purge_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.Float(53)),
    sa.Column("last_error", sa.Text),
    sa.CheckConstraint(
        "state IN ('uploading', 'active', 'purging', 'purged')", name="files_state_check"
    ),
    sa.CheckConstraint("length(id) = 16", name="files_id_length_check"),
    sqlite_with_rowid=False,
)

file_keys = sa.Table(
    "file_keys",
    metadata,
    sa.Column("file_id", sa.LargeBinary(16), sa.ForeignKey("files.id"), primary_key=True),
    sa.Column("kek_id", sa.BigInteger, nullable=False),
    sa.Column("wrapped_dek", sa.LargeBinary, nullable=False),
    sqlite_with_rowid=False,
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.Text, primary_key=True),
    sa.Column("secret_hash", sa.LargeBinary, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("label", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", sa.Float(53), nullable=False),
    sa.Column("revoked_at", sa.Float(53)),
    sa.CheckConstraint("role IN ('client', 'operator', 'auditor')", name="api_keys_role_check"),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", BigId, primary_key=True, autoincrement=False),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("file_id", sa.Text),
    sa.Column("kek_id", sa.BigInteger),
    sa.Column("tenant", sa.Text),
    sa.Column("recorded_at", sa.Float(53), nullable=False),
    sa.Column("hash", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
)

audit_checkpoints = sa.Table(
    "audit_checkpoints",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Float(53), nullable=False),
    sa.Column("note", sa.Text, nullable=False),
)

#: Witness cosignatures of checkpoints: one per witness and tree size, the
#: newest, filed under the SHA-256 of the note text they sign.
audit_cosignatures = sa.Table(
    "audit_cosignatures",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("body_hash", sa.Text, nullable=False),
    sa.Column("witness", sa.Text, nullable=False),
    sa.Column("line", sa.Text, nullable=False),
    sa.Column("cosigned_at", sa.BigInteger, nullable=False),
    sa.Column("received_at", sa.Float(53), nullable=False),
)

#: The deletion log's Merkle tree above the leaves, as tlog-tiles keep it:
#: row (level, idx) is the root of the perfect subtree over leaves
#: ``[idx·256^level, (idx+1)·256^level)``, written (append-only) in the
#: transaction that appends the leaf completing it. Level 0 (the leaf
#: hashes) is derived from ``audit_log.hash`` and not stored twice.
audit_tree = sa.Table(
    "audit_tree",
    metadata,
    sa.Column("level", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.LargeBinary(32), nullable=False),
    sa.CheckConstraint("level >= 1 AND length(hash) = 32", name="audit_tree_check"),
    sqlite_with_rowid=False,
)

#: Each instance's last purge pass, for the cluster's status page.
instance_passes = sa.Table(
    "instance_passes",
    metadata,
    sa.Column("instance", sa.Text, primary_key=True),
    sa.Column("started_at", sa.Float(53), nullable=False),
    sa.Column("finished_at", sa.Float(53), nullable=False),
    sa.Column("purged", sa.BigInteger, nullable=False),
    sa.Column("failed", sa.BigInteger, nullable=False),
    sa.Column("max_overdue", sa.Float(53), nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("reclaim_blocked", sa.Text),
)

#: Every instance's passes of the last day and a half (the status page's
#: pass history and purge-lag chart); pruned by each report.
purge_passes = sa.Table(
    "purge_passes",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("instance", sa.Text, nullable=False),
    sa.Column("started_at", sa.Float(53), nullable=False),
    sa.Column("finished_at", sa.Float(53), nullable=False),
    sa.Column("purged", sa.BigInteger, nullable=False),
    sa.Column("failed", sa.BigInteger, nullable=False),
    sa.Column("max_overdue", sa.Float(53), nullable=False),
    sa.Column("error", sa.Text),
)

#: Commitments of ratchet epochs (HMAC under each epoch's KEK), one per epoch.
kek_commitments = sa.Table(
    "kek_commitments",
    metadata,
    sa.Column("kek_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("commitment", sa.LargeBinary, nullable=False),
    sa.Column("recorded_at", sa.Float(53), nullable=False),
)


def _partial(name: str, table: sa.Table, columns: list[str], where: str) -> sa.Index:
    clause = sa.text(where)
    return sa.Index(
        name, *(table.c[c] for c in columns), sqlite_where=clause, postgresql_where=clause
    )


# Rows that still need purging only, so finding expired files costs in
# proportion to them, not to tombstones.
_partial("files_live_expiry", files, ["expires_at"], "state <> 'purged'")
# The stuck-upload sweep visits only uploads, never the live files.
_partial("files_uploading", files, ["created_at"], "state = 'uploading'")
# Deletions started before expiry whose worker died or failed.
_partial("files_purging", files, ["lease_expires"], "state = 'purging'")
# Live files for the status figures (count, oldest) without a table scan.
_partial("files_live_created", files, ["created_at"], "state IN ('uploading', 'active')")
sa.Index("file_keys_kek", file_keys.c.kek_id)
#: Keys still in the pre-tenant wrap layout (60 bytes): empty once the key
#: step has re-sealed them, so looking for them each step costs nothing.
LEGACY_WRAP_SIZE = 60
_partial(
    "file_keys_legacy_wrap", file_keys, ["file_id"], f"length(wrapped_dek) = {LEGACY_WRAP_SIZE}"
)
sa.Index("audit_log_time", audit_log.c.recorded_at)
sa.Index("purge_passes_finished", purge_passes.c.finished_at)
sa.Index("audit_checkpoints_size", audit_checkpoints.c.size)
sa.Index("audit_cosignatures_size", audit_cosignatures.c.size, audit_cosignatures.c.witness)
# Exactly one deletion record per file and one per KEK, whatever crashes,
# retries and racing instances do.
_partial("audit_log_one_per_file", audit_log, ["file_id"], "event = 'file_deleted'").unique = True
_partial("audit_log_one_per_kek", audit_log, ["kek_id"], "event = 'kek_destroyed'").unique = True
