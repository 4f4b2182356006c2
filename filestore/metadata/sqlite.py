"""SQLite metadata store: the embedded default.

One connection, owned by one dedicated thread: every method ships a small
synchronous function to that thread, so the event loop never blocks on SQLite
and each method is one transaction with no interleaving. SQLite serialises
writers anyway, so a single thread costs no throughput here; PostgreSQL is the
backend for several gateway instances.

The database runs in WAL mode with ``secure_delete=ON`` (deleted cells are
zeroed). A deleted key can still linger in WAL frames until they are
checkpointed, so :meth:`crypto_erase` truncates the WAL before returning.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from filestore.audit.records import AuditRecord, decode_record, encode_record, new_record
from filestore.errors import MetadataUnavailable, NotFound
from filestore.metadata.base import (
    ApiKeyRecord,
    AuditFields,
    DeleteReason,
    FileKey,
    FileRecord,
    FileState,
    PurgeStats,
    Role,
)

T = TypeVar("T")

#: Schema migrations, applied in order; ``PRAGMA user_version`` records how
#: many ran. Never edit a released entry: append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE files (
        id            BLOB PRIMARY KEY CHECK (length(id) = 16),
        tenant        TEXT NOT NULL,
        state         TEXT NOT NULL
                      CHECK (state IN ('uploading', 'active', 'purging', 'purged')),
        kek_id        INTEGER NOT NULL,
        created_at    REAL NOT NULL,
        expires_at    REAL NOT NULL,
        size          INTEGER,
        sealed        BLOB,
        max_downloads INTEGER,
        downloads     INTEGER NOT NULL DEFAULT 0,
        delete_reason TEXT,
        deleted_at    REAL,
        lease_owner   TEXT,
        lease_expires REAL
    ) WITHOUT ROWID;
    -- Only rows that still need purging are indexed, so finding expired files
    -- costs in proportion to them, not to tombstones.
    CREATE INDEX files_live_expiry ON files (expires_at) WHERE state <> 'purged';
    CREATE TABLE file_keys (
        file_id     BLOB PRIMARY KEY REFERENCES files (id),
        kek_id      INTEGER NOT NULL,
        wrapped_dek BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX file_keys_kek ON file_keys (kek_id);
    -- Insert-once: an update would leave the old key bytes in free pages or
    -- the WAL, outside crypto-erase's reach.
    CREATE TRIGGER file_keys_insert_once BEFORE UPDATE ON file_keys
    BEGIN SELECT RAISE(ABORT, 'file_keys rows are insert-once'); END;
    CREATE TABLE api_keys (
        key_id      TEXT PRIMARY KEY,
        secret_hash BLOB NOT NULL,
        role        TEXT NOT NULL CHECK (role IN ('client', 'operator', 'auditor')),
        tenant      TEXT NOT NULL,
        label       TEXT NOT NULL DEFAULT '',
        created_at  REAL NOT NULL,
        revoked_at  REAL
    );
    """,
    """
    ALTER TABLE files ADD COLUMN purge_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE files ADD COLUMN next_attempt_at REAL;
    ALTER TABLE files ADD COLUMN last_error TEXT;
    -- Append-only deletion log; body is the record's canonical JSON.
    CREATE TABLE audit_log (
        seq         INTEGER PRIMARY KEY,
        event       TEXT NOT NULL,
        file_id     TEXT,
        kek_id      INTEGER,
        tenant      TEXT,
        recorded_at REAL NOT NULL,
        hash        TEXT NOT NULL,
        body        TEXT NOT NULL
    );
    -- Exactly one deletion record per file, whatever crashes and retries do.
    CREATE UNIQUE INDEX audit_log_one_per_file ON audit_log (file_id)
        WHERE event = 'file_deleted';
    CREATE UNIQUE INDEX audit_log_one_per_kek ON audit_log (kek_id)
        WHERE event = 'kek_destroyed';
    CREATE INDEX audit_log_time ON audit_log (recorded_at);
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TABLE audit_checkpoints (
        id          INTEGER PRIMARY KEY,
        size        INTEGER NOT NULL,
        created_at  REAL NOT NULL,
        note        TEXT NOT NULL
    );
    CREATE INDEX audit_checkpoints_size ON audit_checkpoints (size);
    -- The stuck-upload sweep visits only uploads, never the live files.
    CREATE INDEX files_uploading ON files (created_at) WHERE state = 'uploading';
    """,
    """
    -- Deletions started before expiry (DELETE, download limits) whose
    -- worker died or failed: the purge finds them here without a scan.
    CREATE INDEX files_purging ON files (lease_expires) WHERE state = 'purging';
    """,
    """
    -- Live files for the status figures (count, oldest) without a table scan.
    CREATE INDEX files_live_created ON files (created_at)
        WHERE state IN ('uploading', 'active');
    """,
)

_FILE_COLUMNS = (
    "id, tenant, state, kek_id, created_at, expires_at, size, sealed, max_downloads, "
    "downloads, delete_reason, deleted_at, lease_owner, lease_expires, purge_attempts"
)
_NCOLS = len(_FILE_COLUMNS.split(","))
_FILE_COLUMNS_F = ", ".join("f." + c.strip() for c in _FILE_COLUMNS.split(","))


def _file_from_row(row: Sequence[Any]) -> FileRecord:
    (
        fid,
        tenant,
        state,
        kek_id,
        created,
        expires,
        size,
        sealed,
        maxd,
        downloads,
        reason,
        deleted,
        owner,
        lease,
        attempts,
    ) = row
    return FileRecord(
        id=bytes(fid),
        tenant=str(tenant),
        state=FileState(state),
        kek_id=int(kek_id),
        created_at=float(created),
        expires_at=float(expires),
        size=None if size is None else int(size),
        sealed=None if sealed is None else bytes(sealed),
        max_downloads=None if maxd is None else int(maxd),
        downloads=int(downloads),
        delete_reason=None if reason is None else DeleteReason(reason),
        deleted_at=None if deleted is None else float(deleted),
        lease_owner=None if owner is None else str(owner),
        lease_expires=None if lease is None else float(lease),
        purge_attempts=int(attempts),
    )


def _api_key_from_row(row: Sequence[Any]) -> ApiKeyRecord:
    key_id, secret_hash, role, tenant, label, created, revoked = row
    return ApiKeyRecord(
        key_id=str(key_id),
        secret_hash=bytes(secret_hash),
        role=Role(role),
        tenant=str(tenant),
        label=str(label),
        created_at=float(created),
        revoked_at=None if revoked is None else float(revoked),
    )


class SQLiteMetadataStore:
    """:class:`MetadataStore` on one SQLite file. Open with :meth:`open`."""

    name = "sqlite"

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="filestore-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    @classmethod
    async def open(cls, path: Path) -> SQLiteMetadataStore:
        """Create or open the database and bring its schema up to date."""
        store = cls(path)
        await store._run(store._connect)
        return store

    # ---------------------------------------------------------------- plumbing
    async def _run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            pending = loop.run_in_executor(self._executor, fn)
        except RuntimeError as exc:  # the executor is shut down: the store is closed
            raise MetadataUnavailable("the metadata store is closed") from exc
        try:
            return await pending
        except sqlite3.OperationalError as exc:
            # "database is locked", "disk I/O error", "unable to open": all
            # transient from a caller's view. The text stays out of the message.
            raise MetadataUnavailable("the metadata database is unavailable") from exc
        except sqlite3.DatabaseError as exc:
            raise MetadataUnavailable("the metadata database failed") from exc
        except OSError as exc:
            raise MetadataUnavailable("the metadata database cannot be opened") from exc

    def _connect(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = sqlite3.connect(
            self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        self._path.chmod(0o600)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=FULL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _split_statements(script):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        self._conn = conn

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> Callable[[], T]:
        """Wrap ``fn`` in BEGIN IMMEDIATE … COMMIT on the store's connection."""

        def run() -> T:
            conn = self._conn
            if conn is None:
                raise MetadataUnavailable("the metadata store is closed")
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return run

    def _query(self, fn: Callable[[sqlite3.Connection], T]) -> Callable[[], T]:
        def run() -> T:
            conn = self._conn
            if conn is None:
                raise MetadataUnavailable("the metadata store is closed")
            return fn(conn)

        return run

    # ----------------------------------------------------------------- uploads
    async def create_upload(self, record: FileRecord, key: FileKey) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO files (id, tenant, state, kek_id, created_at, expires_at, "
                "max_downloads) VALUES (?, ?, 'uploading', ?, ?, ?, ?)",
                (
                    record.id,
                    record.tenant,
                    record.kek_id,
                    record.created_at,
                    record.expires_at,
                    record.max_downloads,
                ),
            )
            conn.execute(
                "INSERT INTO file_keys (file_id, kek_id, wrapped_dek) VALUES (?, ?, ?)",
                (key.file_id, key.kek_id, key.wrapped),
            )

        await self._run(self._tx(fn))

    async def activate(self, file_id: bytes, size: int, sealed: bytes) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE files SET state = 'active', size = ?, sealed = ? "
                "WHERE id = ? AND state = 'uploading'",
                (size, sealed, file_id),
            )
            if cur.rowcount != 1:
                raise NotFound("the upload is no longer pending")

        await self._run(self._tx(fn))

    async def discard_upload(self, file_id: bytes) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            # Only an upload that never became active: a caller cancelled
            # after activate() committed must not strip a live file's key.
            pending = conn.execute(
                "SELECT 1 FROM files WHERE id = ? AND state = 'uploading'", (file_id,)
            ).fetchone()
            if pending:
                conn.execute("DELETE FROM file_keys WHERE file_id = ?", (file_id,))
                conn.execute("DELETE FROM files WHERE id = ?", (file_id,))

        await self._run(self._tx(fn))
        await self._run(self._checkpoint)

    # ------------------------------------------------------------------- reads
    async def load(self, file_id: bytes) -> tuple[FileRecord, FileKey | None] | None:
        def fn(conn: sqlite3.Connection) -> tuple[FileRecord, FileKey | None] | None:
            row = conn.execute(
                f"SELECT {_FILE_COLUMNS_F}, k.kek_id, k.wrapped_dek FROM files AS f "
                "LEFT JOIN file_keys AS k ON k.file_id = f.id WHERE f.id = ?",
                (file_id,),
            ).fetchone()
            if row is None:
                return None
            record = _file_from_row(row[:_NCOLS])
            kek_id, wrapped = row[_NCOLS:]
            key = None if kek_id is None else FileKey(file_id, int(kek_id), bytes(wrapped))
            return record, key

        return await self._run(self._query(fn))

    async def count_download(self, file_id: bytes, now: float) -> int | None:
        def fn(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(
                "UPDATE files SET downloads = downloads + 1 WHERE id = ? AND state = 'active' "
                "AND expires_at > ? AND (max_downloads IS NULL OR downloads < max_downloads) "
                "RETURNING downloads",
                (file_id, now),
            ).fetchone()
            return None if row is None else int(row[0])

        return await self._run(self._tx(fn))

    # ---------------------------------------------------------------- deletion
    async def begin_delete(
        self,
        file_id: bytes,
        reason: DeleteReason,
        owner: str,
        now: float,
        lease_until: float,
    ) -> FileRecord | None:
        def fn(conn: sqlite3.Connection) -> FileRecord | None:
            row = conn.execute(
                "UPDATE files SET state = 'purging', lease_owner = ?, lease_expires = ?, "
                "delete_reason = coalesce(CASE WHEN state = 'purging' THEN delete_reason END, ?) "
                "WHERE id = ? AND (state IN ('active', 'uploading') OR (state = 'purging' AND "
                "(lease_owner = ? OR lease_expires IS NULL OR lease_expires <= ?))) "
                f"RETURNING {_FILE_COLUMNS}",
                (owner, lease_until, str(reason), file_id, owner, now),
            ).fetchone()
            return None if row is None else _file_from_row(row)

        return await self._run(self._tx(fn))

    async def crypto_erase(self, file_ids: Sequence[bytes]) -> None:
        if isinstance(file_ids, bytes):
            raise TypeError("crypto_erase takes a sequence of file ids")

        def fn(conn: sqlite3.Connection) -> None:
            for file_id in file_ids:
                conn.execute("DELETE FROM file_keys WHERE file_id = ?", (file_id,))
                conn.execute("UPDATE files SET sealed = NULL WHERE id = ?", (file_id,))

        await self._run(self._tx(fn))
        await self._run(self._checkpoint)

    def _checkpoint(self) -> None:
        """Copy the WAL into the main file and truncate it, retrying while
        readers keep it busy; without this a deleted key survives in WAL
        frames until some later checkpoint."""
        conn = self._conn
        if conn is None:
            raise MetadataUnavailable("the metadata store is closed")
        deadline = time.monotonic() + self._busy_timeout
        while True:
            busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
            if time.monotonic() > deadline:
                raise MetadataUnavailable("the WAL could not be checkpointed (readers busy)")
            time.sleep(0.01)

    async def finish_delete(
        self, deletions: Sequence[tuple[bytes, AuditFields]], owner: str, now: float
    ) -> list[AuditRecord]:
        def fn(conn: sqlite3.Connection) -> list[AuditRecord]:
            appended: list[AuditRecord] = []
            prev = _audit_head(conn)
            for file_id, fields in deletions:
                cur = conn.execute(
                    "UPDATE files SET state = 'purged', deleted_at = ?, lease_owner = NULL, "
                    "lease_expires = NULL, sealed = NULL, next_attempt_at = NULL "
                    "WHERE id = ? AND state = 'purging' AND lease_owner = ?",
                    (now, file_id, owner),
                )
                if cur.rowcount != 1:
                    continue
                prev = _append(conn, prev, fields)
                appended.append(prev)
            return appended

        return await self._run(self._tx(fn))

    # ------------------------------------------------------------------- purge
    async def claim_expired(
        self, now: float, limit: int, owner: str, lease_until: float
    ) -> list[FileRecord]:
        def fn(conn: sqlite3.Connection) -> list[FileRecord]:
            # The inner scan walks the partial expiry index from the oldest
            # expiry and stops at ``now``: live files are never visited.
            due = "(next_attempt_at IS NULL OR next_attempt_at <= :now)"
            lapsed = "(lease_expires IS NULL OR lease_expires <= :now)"
            rows = conn.execute(
                "UPDATE files SET state = 'purging', lease_owner = :owner, "
                "lease_expires = :until, delete_reason = coalesce(delete_reason, 'expired') "
                "WHERE id IN (SELECT id FROM ("
                "  SELECT id, expires_at FROM files INDEXED BY files_live_expiry "
                "  WHERE state <> 'purged' AND expires_at <= :now "
                f"  AND (state <> 'purging' OR {lapsed}) AND {due} "
                "  UNION "
                "  SELECT id, expires_at FROM files INDEXED BY files_purging "
                f"  WHERE state = 'purging' AND {lapsed} AND {due}"
                ") ORDER BY expires_at LIMIT :limit) "
                f"RETURNING {_FILE_COLUMNS}",
                {"owner": owner, "until": lease_until, "now": now, "limit": limit},
            ).fetchall()
            return sorted((_file_from_row(r) for r in rows), key=lambda r: r.expires_at)

        return await self._run(self._tx(fn))

    async def record_failure(self, file_id: bytes, owner: str, retry_at: float, error: str) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE files SET purge_attempts = purge_attempts + 1, next_attempt_at = ?, "
                "last_error = ?, lease_owner = NULL, lease_expires = NULL "
                "WHERE id = ? AND state = 'purging' AND lease_owner = ?",
                (retry_at, error, file_id, owner),
            )

        await self._run(self._tx(fn))

    async def purge_stats(self, now: float) -> PurgeStats:
        def fn(conn: sqlite3.Connection) -> PurgeStats:
            backlog, oldest = conn.execute(
                "SELECT count(*), min(expires_at) FROM files INDEXED BY files_live_expiry "
                "WHERE state <> 'purged' AND expires_at <= ?",
                (now,),
            ).fetchone()
            failures = dict(
                conn.execute(
                    "SELECT last_error, count(*) FROM files INDEXED BY files_live_expiry "
                    "WHERE state <> 'purged' AND purge_attempts > 0 GROUP BY last_error"
                ).fetchall()
            )
            live, oldest_live = conn.execute(
                "SELECT count(*), min(created_at) FROM files WHERE state IN ('uploading', 'active')"
            ).fetchone()
            return PurgeStats(
                backlog=int(backlog),
                oldest_expiry=oldest,
                failing=sum(failures.values()),
                failures_by_error={str(k): int(v) for k, v in failures.items()},
                live=int(live),
                oldest_live_created=oldest_live,
            )

        return await self._run(self._query(fn))

    async def stuck_uploads(self, cutoff: float, limit: int) -> list[FileRecord]:
        def fn(conn: sqlite3.Connection) -> list[FileRecord]:
            rows = conn.execute(
                f"SELECT {_FILE_COLUMNS} FROM files INDEXED BY files_uploading "
                "WHERE state = 'uploading' AND created_at < ? LIMIT ?",
                (cutoff, limit),
            ).fetchall()
            return [_file_from_row(r) for r in rows]

        return await self._run(self._query(fn))

    async def live_ids(self, file_ids: Sequence[bytes]) -> set[bytes]:
        def fn(conn: sqlite3.Connection) -> set[bytes]:
            found: set[bytes] = set()
            for start in range(0, len(file_ids), 500):
                part = list(file_ids[start : start + 500])
                marks = ",".join("?" * len(part))
                found.update(
                    bytes(r[0])
                    for r in conn.execute(
                        f"SELECT id FROM files WHERE state <> 'purged' AND id IN ({marks})", part
                    )
                )
            return found

        return await self._run(self._query(fn))

    async def count_keys(self, kek_id: int) -> int:
        def fn(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT count(*) FROM file_keys WHERE kek_id = ?", (kek_id,))
            return int(row.fetchone()[0])

        return await self._run(self._query(fn))

    # ------------------------------------------------------------------- audit
    async def append_audit(self, fields: AuditFields) -> AuditRecord:
        def fn(conn: sqlite3.Connection) -> AuditRecord:
            # Check and insert in one transaction: two processes sweeping the
            # same orphan, or destroying the same KEK, record it once.
            if fields.get("event") == "file_deleted" and fields.get("file_id"):
                found = conn.execute(
                    "SELECT body FROM audit_log WHERE event = 'file_deleted' AND file_id = ?",
                    (fields["file_id"],),
                ).fetchone()
            elif fields.get("event") == "kek_destroyed":
                found = conn.execute(
                    "SELECT body FROM audit_log WHERE event = 'kek_destroyed' AND kek_id = ?",
                    (fields.get("kek_id"),),
                ).fetchone()
            else:
                found = None
            if found is not None:
                return decode_record(found[0])
            return _append(conn, _audit_head(conn), fields)

        return await self._run(self._tx(fn))

    async def audit_head(self) -> AuditRecord | None:
        return await self._run(self._query(_audit_head))

    async def audit_range(
        self,
        after_seq: int,
        limit: int,
        since: float | None = None,
        until: float | None = None,
    ) -> list[AuditRecord]:
        def fn(conn: sqlite3.Connection) -> list[AuditRecord]:
            rows = conn.execute(
                "SELECT body FROM audit_log WHERE seq > ? AND recorded_at >= ? "
                "AND recorded_at < ? ORDER BY seq LIMIT ?",
                (
                    after_seq,
                    float("-inf") if since is None else since,
                    float("inf") if until is None else until,
                    limit,
                ),
            ).fetchall()
            return [decode_record(r[0]) for r in rows]

        return await self._run(self._query(fn))

    async def audit_hashes(self, size: int, after: int = 0) -> list[bytes]:
        def fn(conn: sqlite3.Connection) -> list[bytes]:
            rows = conn.execute(
                "SELECT hash FROM audit_log WHERE seq > ? AND seq <= ? ORDER BY seq",
                (after, size),
            ).fetchall()
            return [bytes.fromhex(r[0]) for r in rows]

        return await self._run(self._query(fn))

    async def audit_record_for(self, file_id: str) -> AuditRecord | None:
        def fn(conn: sqlite3.Connection) -> AuditRecord | None:
            row = conn.execute(
                "SELECT body FROM audit_log WHERE file_id = ? AND event = 'file_deleted'",
                (file_id,),
            ).fetchone()
            return None if row is None else decode_record(row[0])

        return await self._run(self._query(fn))

    async def audit_record_for_kek(self, kek_id: int) -> AuditRecord | None:
        def fn(conn: sqlite3.Connection) -> AuditRecord | None:
            row = conn.execute(
                "SELECT body FROM audit_log WHERE kek_id = ? AND event = 'kek_destroyed'",
                (kek_id,),
            ).fetchone()
            return None if row is None else decode_record(row[0])

        return await self._run(self._query(fn))

    async def audit_seq_range(
        self, since: float | None, until: float | None, upto: int
    ) -> tuple[int, int] | None:
        def fn(conn: sqlite3.Connection) -> tuple[int, int] | None:
            low, high = conn.execute(
                "SELECT min(seq), max(seq) FROM audit_log WHERE seq <= ? "
                "AND recorded_at >= ? AND recorded_at < ?",
                (
                    upto,
                    float("-inf") if since is None else since,
                    float("inf") if until is None else until,
                ),
            ).fetchone()
            return None if low is None else (int(low), int(high))

        return await self._run(self._query(fn))

    async def checkpoints_between(self, low: int, high: int) -> list[str]:
        def fn(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT note FROM audit_checkpoints WHERE id IN (SELECT max(id) "
                "FROM audit_checkpoints WHERE size BETWEEN ? AND ? GROUP BY size) ORDER BY id",
                (low, high),
            ).fetchall()
            return [str(r[0]) for r in rows]

        return await self._run(self._query(fn))

    async def add_checkpoint(self, size: int, note: str, now: float) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO audit_checkpoints (size, created_at, note) VALUES (?, ?, ?)",
                (size, now, note),
            )

        await self._run(self._tx(fn))

    async def latest_checkpoint(self) -> tuple[int, str] | None:
        def fn(conn: sqlite3.Connection) -> tuple[int, str] | None:
            row = conn.execute(
                "SELECT size, note FROM audit_checkpoints ORDER BY id DESC LIMIT 1"
            ).fetchone()
            return None if row is None else (int(row[0]), str(row[1]))

        return await self._run(self._query(fn))

    async def checkpoint_covering(self, size: int) -> tuple[int, str] | None:
        def fn(conn: sqlite3.Connection) -> tuple[int, str] | None:
            row = conn.execute(
                "SELECT size, note FROM audit_checkpoints WHERE size >= ? ORDER BY id LIMIT 1",
                (size,),
            ).fetchone()
            return None if row is None else (int(row[0]), str(row[1]))

        return await self._run(self._query(fn))

    # ---------------------------------------------------------------- API keys
    async def add_api_key(self, key: ApiKeyRecord) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO api_keys (key_id, secret_hash, role, tenant, label, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (key.key_id, key.secret_hash, str(key.role), key.tenant, key.label, key.created_at),
            )

        await self._run(self._tx(fn))

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        def fn(conn: sqlite3.Connection) -> ApiKeyRecord | None:
            row = conn.execute(
                "SELECT key_id, secret_hash, role, tenant, label, created_at, revoked_at "
                "FROM api_keys WHERE key_id = ?",
                (key_id,),
            ).fetchone()
            return None if row is None else _api_key_from_row(row)

        return await self._run(self._query(fn))

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        def fn(conn: sqlite3.Connection) -> list[ApiKeyRecord]:
            rows = conn.execute(
                "SELECT key_id, secret_hash, role, tenant, label, created_at, revoked_at "
                "FROM api_keys ORDER BY created_at, key_id"
            ).fetchall()
            return [_api_key_from_row(r) for r in rows]

        return await self._run(self._query(fn))

    async def revoke_api_key(self, key_id: str, now: float) -> bool:
        def fn(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (now, key_id),
            )
            return cur.rowcount == 1

        return await self._run(self._tx(fn))

    # ------------------------------------------------------------------- admin
    async def check(self) -> None:
        await self._run(self._query(lambda conn: conn.execute("SELECT 1").fetchone()))

    async def close(self) -> None:
        """Close the connection and stop the thread; safe to call twice."""
        if self._closed:
            return
        self._closed = True

        def fn() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        self._executor.shutdown(wait=True)


def _audit_head(conn: sqlite3.Connection) -> AuditRecord | None:
    row = conn.execute("SELECT body FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    return None if row is None else decode_record(row[0])


def _append(conn: sqlite3.Connection, prev: AuditRecord | None, fields: AuditFields) -> AuditRecord:
    """Chain one record after ``prev`` and insert it (inside the caller's
    transaction, which holds SQLite's single write lock: one chain, no
    forks)."""
    record = new_record(prev, **fields)
    conn.execute(
        "INSERT INTO audit_log (seq, event, file_id, kek_id, tenant, recorded_at, hash, body) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.seq,
            record.event,
            record.file_id,
            record.kek_id,
            record.tenant,
            record.recorded_at,
            record.hash,
            encode_record(record),
        ),
    )
    return record


def _split_statements(script: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies whole."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--"):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements
