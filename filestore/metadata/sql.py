"""The metadata store on SQLAlchemy Core: one implementation for SQLite and
PostgreSQL.

Each method builds its statements from the tables in
:mod:`filestore.metadata.schema` and the conditions in
:mod:`filestore.metadata.rules`, and hands a small synchronous function to
the :class:`~filestore.metadata.database.Database`, which runs it as one
transaction where it belongs (SQLite's thread, or PostgreSQL's pool). What
differs between the databases is said by the database object, never here:
``FOR UPDATE SKIP LOCKED`` (which SQLite ignores: it has one writer), the
lock around audit appends, and reclaiming erased bytes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import ARRAY

from filestore.audit.entries import AuditEntry
from filestore.audit.merkle import leaf_hash
from filestore.audit.records import AuditRecord, decode_record, encode_record
from filestore.audit.tiles import TILE_WIDTH, Tile, completed_subtrees, leaf_tile, perfect_hash
from filestore.errors import NotFound
from filestore.metadata import rules
from filestore.metadata.base import (
    ApiKeyRecord,
    CosignatureRow,
    DeleteReason,
    FileKey,
    FileRecord,
    FileState,
    InstanceStatus,
    PassRecord,
    PurgeStats,
    ReclaimReport,
    Role,
)
from filestore.metadata.batching import Coalescer
from filestore.metadata.database import GROUP_COMMIT_MAX, Database, open_database
from filestore.metadata.schema import (
    LEGACY_WRAP_SIZE,
    api_keys,
    audit_checkpoints,
    audit_cosignatures,
    audit_log,
    audit_tree,
    file_keys,
    files,
    instance_passes,
    kek_commitments,
    purge_passes,
)

T = TypeVar("T")

_FILE_COLUMNS = (
    files.c.id,
    files.c.tenant,
    files.c.state,
    files.c.kek_id,
    files.c.created_at,
    files.c.expires_at,
    files.c.size,
    files.c.sealed,
    files.c.max_downloads,
    files.c.downloads,
    files.c.delete_reason,
    files.c.deleted_at,
    files.c.lease_owner,
    files.c.lease_expires,
    files.c.purge_attempts,
)
_NCOLS = len(_FILE_COLUMNS)
_KEY_COLUMNS = (
    api_keys.c.key_id,
    api_keys.c.secret_hash,
    api_keys.c.role,
    api_keys.c.tenant,
    api_keys.c.label,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
)
#: How long an instance that stopped reporting stays in the cluster status.
INSTANCE_MEMORY = 86400.0
#: How far back the pass history reaches (from the newest pass's end).
PASS_HISTORY = 36 * 3600.0
#: Ids per ``IN (…)`` list, under every database's parameter limit.
IN_CHUNK = 500

# The statements every upload and download runs, built once. A statement
# built per call (``insert().values(...)``) is coerced and cache-keyed on
# every call, which on SQLite's single database thread cost more than the
# statement itself; a prebuilt one with bound parameters is compiled once
# and its cache key is memoised.
#: The columns every new row binds, whichever state it starts in.
_NEW_ROW: dict[str, sa.BindParameter[Any]] = {
    name: sa.bindparam(name)
    for name in ("id", "tenant", "kek_id", "created_at", "expires_at", "max_downloads")
}
_INSERT_UPLOAD = files.insert().values(**_NEW_ROW, state=str(FileState.UPLOADING))
_INSERT_ACTIVE = files.insert().values(
    **_NEW_ROW,
    state=str(FileState.ACTIVE),
    size=sa.bindparam("size"),
    sealed=sa.bindparam("sealed"),
)
_INSERT_KEY = file_keys.insert().values(
    file_id=sa.bindparam("file_id"),
    kek_id=sa.bindparam("key_kek_id"),
    wrapped_dek=sa.bindparam("wrapped_dek"),
)
_ACTIVATE = (
    files.update()
    .where(files.c.id == sa.bindparam("file_id"), rules.state_is(FileState.UPLOADING))
    .values(state=str(FileState.ACTIVE), size=sa.bindparam("size"), sealed=sa.bindparam("sealed"))
)
#: The columns of a new active row and its key row, as
#: :meth:`SQLFileStore.create_active` binds them.
_ACTIVE_COLUMNS: dict[str, Any] = {
    "id": sa.LargeBinary,
    "tenant": sa.Text,
    "kek_id": sa.BigInteger,
    "created_at": sa.Float(53),
    "expires_at": sa.Float(53),
    "size": sa.BigInteger,
    "sealed": sa.LargeBinary,
    "max_downloads": sa.BigInteger,
    "key_kek_id": sa.BigInteger,
    "wrapped_dek": sa.LargeBinary,
}


def _active_batch() -> sa.TableValuedAlias:
    """PostgreSQL: the rows of a batch, one array parameter a column."""
    arrays = (sa.bindparam(name, type_=ARRAY(t)) for name, t in _ACTIVE_COLUMNS.items())
    return sa.func.unnest(*arrays).table_valued(*_ACTIVE_COLUMNS).render_derived(name="batch")


_BATCH = _active_batch()
_NEW_FILES = (
    files.insert()
    .from_select(
        [*_NEW_ROW, "state", "size", "sealed"],
        sa.select(
            *(_BATCH.c[name] for name in _NEW_ROW),
            sa.literal(str(FileState.ACTIVE)),
            _BATCH.c.size,
            _BATCH.c.sealed,
        ),
    )
    .returning(files.c.id)
    .cte("new_files")
)
#: PostgreSQL: the active rows of a batch of uploads and their key rows in
#: one statement (a data-modifying WITH over arrays: the same text whatever
#: the batch's size, so asyncpg prepares it once), atomic on its own.
_INSERT_ACTIVE_BATCH = file_keys.insert().from_select(
    ["file_id", "kek_id", "wrapped_dek"],
    sa.select(_NEW_FILES.c.id, _BATCH.c.key_kek_id, _BATCH.c.wrapped_dek).select_from(
        _NEW_FILES.join(_BATCH, _BATCH.c.id == _NEW_FILES.c.id)
    ),
)
_LOAD = (
    sa.select(*_FILE_COLUMNS, file_keys.c.kek_id, file_keys.c.wrapped_dek)
    .select_from(files.outerjoin(file_keys, file_keys.c.file_id == files.c.id))
    .where(files.c.id == sa.bindparam("file_id"))
)
#: PostgreSQL: the rows of a batch of files read together.
_LOAD_MANY = (
    sa.select(*_FILE_COLUMNS, file_keys.c.kek_id, file_keys.c.wrapped_dek)
    .select_from(files.outerjoin(file_keys, file_keys.c.file_id == files.c.id))
    .where(files.c.id == sa.any_(sa.bindparam("ids", type_=ARRAY(sa.LargeBinary))))
)
_GET_KEY = sa.select(*_KEY_COLUMNS).where(api_keys.c.key_id == sa.bindparam("key_id"))
#: One per purged file, so a pass of thousands runs it thousands of times.
_APPEND_RECORD = audit_log.insert().values(
    {
        name: sa.bindparam(name)
        for name in ("seq", "event", "file_id", "kek_id", "tenant", "recorded_at", "hash", "body")
    }
)


def _file(row: Sequence[Any]) -> FileRecord:
    (fid, tenant, state, kek, created, expires, size, sealed, maxd, downloads) = row[:10]
    (reason, deleted, owner, lease, attempts) = row[10:15]
    return FileRecord(
        id=bytes(fid),
        tenant=str(tenant),
        state=FileState(state),
        kek_id=int(kek),
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


#: What :meth:`SQLFileStore.load` returns: a file and its key, if any.
_Loaded = tuple[FileRecord, FileKey | None] | None


def _loaded(row: Sequence[Any]) -> tuple[FileRecord, FileKey | None]:
    """A row of ``_LOAD``: the file's columns, then its key's (or NULLs)."""
    kek_id, wrapped = row[_NCOLS:]
    file_id = bytes(row[0])
    return _file(row), None if kek_id is None else FileKey(file_id, int(kek_id), bytes(wrapped))


def _api_key(row: Sequence[Any]) -> ApiKeyRecord:
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


def _chunks(items: Sequence[bytes]) -> list[list[bytes]]:
    return [list(items[i : i + IN_CHUNK]) for i in range(0, len(items), IN_CHUNK)]


@functools.cache
def _sqlite_text(stmt: sa.ClauseElement) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    """``stmt`` compiled once for SQLite: its text, the order of its
    parameters, and the values it binds itself."""
    compiled = stmt.compile(dialect=sqlite.dialect())
    order = getattr(compiled, "positiontup", None) or ()  # SQLCompiler, qmark style
    return str(compiled), tuple(order), dict(compiled.params)


def _on_driver(
    conn: sa.Connection, stmt: sa.ClauseElement, params: dict[str, Any]
) -> tuple[Any, ...] | None:
    """Run a prebuilt SQLite statement straight on the driver's connection;
    its first row, if any, as the driver returns it.

    For the statements of every small upload and download: SQLAlchemy's
    execution (context, events, result) cost more than SQLite's own work,
    and taking it out of a 4 KiB upload's two inserts took 120 µs off the
    database thread's CPU. Only for statements whose parameters and columns
    need no conversion (bytes, numbers, text); the transaction is still
    SQLAlchemy's, and a driver error is caught where SQLAlchemy's are."""
    text, order, defaults = _sqlite_text(stmt)
    raw = conn.connection.dbapi_connection
    assert raw is not None
    cursor = raw.execute(text, [params[n] if n in params else defaults[n] for n in order])
    try:
        row: tuple[Any, ...] | None = cursor.fetchone()
        return row
    finally:
        cursor.close()


class _Part:
    """Shared plumbing of the three stores: one database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def _write(self, fn: Callable[[sa.Connection], T]) -> T:
        return await self._db.run(fn, write=True)

    async def _read(self, fn: Callable[[sa.Connection], T]) -> T:
        return await self._db.run(fn, write=False)


# ----------------------------------------------------------------- the chain
def _head(conn: sa.Connection) -> AuditRecord | None:
    body = conn.execute(
        sa.select(audit_log.c.body).order_by(audit_log.c.seq.desc()).limit(1)
    ).scalar()
    return None if body is None else decode_record(body)


def _existing(conn: sa.Connection, entry: AuditEntry) -> AuditRecord | None:
    kind, value = entry.identity
    if value is None:
        return None
    column = audit_log.c.kek_id if kind == "kek" else audit_log.c.file_id
    body = conn.execute(
        sa.select(audit_log.c.body).where(audit_log.c.event == entry.event, column == value)
    ).scalar()
    return None if body is None else decode_record(body)


def _recorded_files(conn: sa.Connection, file_ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(file_ids), IN_CHUNK):
        part = list(file_ids[start : start + IN_CHUNK])
        found.update(
            str(f)
            for f in conn.execute(
                sa.select(audit_log.c.file_id).where(
                    audit_log.c.event == "file_deleted", audit_log.c.file_id.in_(part)
                )
            ).scalars()
        )
    return found


def _append(conn: sa.Connection, prev: AuditRecord | None, entry: AuditEntry) -> AuditRecord:
    """Chain ``entry`` after ``prev`` and insert it; the caller holds the
    audit lock for this transaction, so ``prev`` is the true head."""
    record = entry.chain_after(prev)
    conn.execute(
        _APPEND_RECORD,
        {
            "seq": record.seq,
            "event": record.event,
            "file_id": record.file_id,
            "kek_id": record.kek_id,
            "tenant": record.tenant,
            "recorded_at": record.recorded_at,
            "hash": record.hash,
            "body": encode_record(record),
        },
    )
    _grow_tree(conn, record.seq)
    return record


def _tree_row(conn: sa.Connection, level: int, first: int, count: int) -> list[bytes]:
    """Hashes ``first .. first+count-1`` at ``level`` of the tree (level 0:
    leaf hashes of the records' hashes; above: stored subtree roots)."""
    if level == 0:
        rows = conn.execute(
            sa.select(audit_log.c.hash)
            .where(audit_log.c.seq > first, audit_log.c.seq <= first + count)
            .order_by(audit_log.c.seq)
        ).scalars()
        return [bytes.fromhex(h) for h in rows]
    rows = conn.execute(
        sa.select(audit_tree.c.hash)
        .where(
            audit_tree.c.level == level,
            audit_tree.c.idx >= first,
            audit_tree.c.idx < first + count,
        )
        .order_by(audit_tree.c.idx)
    ).scalars()
    return [bytes(h) for h in rows]


def _grow_tree(conn: sa.Connection, size: int) -> None:
    """Store the roots of the subtrees leaf ``size - 1`` completes, in the
    appending transaction (under the audit lock): the tree's tiles are
    always those of the records on file."""
    for level, index in completed_subtrees(size):
        below = _tree_row(conn, level - 1, index * TILE_WIDTH, TILE_WIDTH)
        if level == 1:
            below = [leaf_hash(h) for h in below]
        if len(below) != TILE_WIDTH:
            raise RuntimeError(f"the audit tree lacks level {level - 1} under index {index}")
        conn.execute(audit_tree.insert().values(level=level, idx=index, hash=perfect_hash(below)))


# ------------------------------------------------------------------- files
class SQLFileStore(_Part):
    """:class:`~filestore.metadata.base.FileStore` on SQLAlchemy Core."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        #: PostgreSQL: the new files of uploads in flight together go in
        #: one statement, and so do the row reads of downloads (see
        #: :mod:`filestore.metadata.batching`); SQLite's database thread
        #: already commits its waiting writes as one, and its reads cost no
        #: round trip.
        self._actives: Coalescer[dict[str, Any], None] = Coalescer(
            self._insert_actives, limit=GROUP_COMMIT_MAX
        )
        self._loads: Coalescer[bytes, _Loaded] = Coalescer(self._load_many, limit=GROUP_COMMIT_MAX)

    async def _insert_actives(self, rows: Sequence[dict[str, Any]]) -> list[None]:
        params = {name: [row[name] for row in rows] for name in _ACTIVE_COLUMNS}
        await self._db.run(lambda conn: conn.execute(_INSERT_ACTIVE_BATCH, params), single=True)
        return [None] * len(rows)

    async def _load_many(self, file_ids: Sequence[bytes]) -> list[_Loaded]:
        def fn(conn: sa.Connection) -> list[Sequence[Any]]:
            return list(conn.execute(_LOAD_MANY, {"ids": list(dict.fromkeys(file_ids))}))

        found = {bytes(row[0]): _loaded(row) for row in await self._read(fn)}
        return [found.get(file_id) for file_id in file_ids]

    async def create_upload(self, record: FileRecord, key: FileKey) -> None:
        def fn(conn: sa.Connection) -> None:
            conn.execute(
                _INSERT_UPLOAD,
                {
                    "id": record.id,
                    "tenant": record.tenant,
                    "kek_id": record.kek_id,
                    "created_at": record.created_at,
                    "expires_at": record.expires_at,
                    "max_downloads": record.max_downloads,
                },
            )
            conn.execute(
                _INSERT_KEY,
                {"file_id": key.file_id, "key_kek_id": key.kek_id, "wrapped_dek": key.wrapped},
            )

        await self._write(fn)

    async def activate(self, file_id: bytes, size: int, sealed: bytes) -> None:
        def fn(conn: sa.Connection) -> None:
            done = conn.execute(_ACTIVATE, {"file_id": file_id, "size": size, "sealed": sealed})
            if done.rowcount != 1:
                raise NotFound("the upload is no longer pending")

        await self._write(fn)

    async def create_active(self, record: FileRecord, key: FileKey) -> None:
        if record.state != FileState.ACTIVE or record.size is None or record.sealed is None:
            raise ValueError("create_active takes an active record with its size and sealed fields")
        row = {
            "id": record.id,
            "tenant": record.tenant,
            "kek_id": record.kek_id,
            "created_at": record.created_at,
            "expires_at": record.expires_at,
            "size": record.size,
            "sealed": record.sealed,
            "max_downloads": record.max_downloads,
            "key_kek_id": key.kek_id,
            "wrapped_dek": key.wrapped,
        }
        if self._db.dialect == "postgresql":
            # Both rows in one statement, atomic on its own (autocommit: one
            # round trip where a transaction takes four), shared with the
            # uploads that arrive meanwhile.
            await self._actives.submit(row)
            return

        def fn(conn: sa.Connection) -> None:
            _on_driver(conn, _INSERT_ACTIVE, row)
            _on_driver(conn, _INSERT_KEY, {"file_id": key.file_id, **row})

        await self._write(fn)

    async def discard_upload(self, file_id: bytes) -> None:
        def fn(conn: sa.Connection) -> None:
            # Only an upload that never became active: a caller cancelled
            # after activate() committed must not strip a live file's key.
            pending = conn.execute(
                sa.select(files.c.id)
                .where(files.c.id == file_id, rules.state_is(FileState.UPLOADING))
                .with_for_update()
            ).first()
            if pending:
                conn.execute(file_keys.delete().where(file_keys.c.file_id == file_id))
                conn.execute(files.delete().where(files.c.id == file_id))

        await self._write(fn)
        await self._db.reclaim()

    async def load(self, file_id: bytes) -> tuple[FileRecord, FileKey | None] | None:
        if self._db.dialect == "postgresql":  # with the downloads starting meanwhile
            return await self._loads.submit(file_id)

        def fn(conn: sa.Connection) -> _Loaded:
            row = _on_driver(conn, _LOAD, {"file_id": file_id})  # every download reads it
            return None if row is None else _loaded(row)

        return await self._read(fn)

    async def count_download(self, file_id: bytes, now: float) -> int | None:
        def fn(conn: sa.Connection) -> int | None:
            count = conn.execute(
                files.update()
                .where(files.c.id == file_id, rules.downloadable(now))
                .values(downloads=files.c.downloads + 1)
                .returning(files.c.downloads)
            ).scalar()
            return None if count is None else int(count)

        return await self._write(fn)

    async def begin_delete(
        self,
        file_id: bytes,
        reason: DeleteReason,
        owner: str,
        now: float,
        lease_until: float,
    ) -> FileRecord | None:
        def fn(conn: sa.Connection) -> FileRecord | None:
            # A deletion already under way keeps the reason it started with.
            keep = sa.case((rules.state_is(FileState.PURGING), files.c.delete_reason), else_=None)
            row = conn.execute(
                files.update()
                .where(files.c.id == file_id, rules.may_lease(owner, now))
                .values(
                    state=str(FileState.PURGING),
                    lease_owner=owner,
                    lease_expires=lease_until,
                    delete_reason=sa.func.coalesce(keep, str(reason)),
                )
                .returning(*_FILE_COLUMNS)
            ).first()
            return None if row is None else _file(row)

        return await self._write(fn)

    async def crypto_erase(self, file_ids: Sequence[bytes]) -> None:
        if isinstance(file_ids, bytes):
            raise TypeError("crypto_erase takes a sequence of file ids")

        def fn(conn: sa.Connection) -> None:
            for part in _chunks(file_ids):
                # The files rows first, then their keys: the order every
                # writer takes them in, so two never deadlock.
                conn.execute(files.update().where(files.c.id.in_(part)).values(sealed=None))
                conn.execute(file_keys.delete().where(file_keys.c.file_id.in_(part)))

        await self._write(fn)

    async def reclaim(self) -> ReclaimReport:
        return await self._db.reclaim()

    async def finish_delete(
        self, deletions: Sequence[tuple[bytes, AuditEntry]], owner: str, now: float
    ) -> list[AuditRecord]:
        if not deletions:
            return []

        def fn(conn: sa.Connection) -> list[AuditRecord]:
            self._db.lock_audit(conn)
            held: set[bytes] = set()
            for part in _chunks([file_id for file_id, _entry in deletions]):
                held.update(
                    bytes(r)
                    for r in conn.execute(
                        files.update()
                        .where(files.c.id.in_(part), rules.may_finish())
                        .values(
                            state=str(FileState.PURGED),
                            deleted_at=now,
                            lease_owner=None,
                            lease_expires=None,
                            sealed=None,
                            next_attempt_at=None,
                        )
                        .returning(files.c.id)
                    ).scalars()
                )
            entries = [entry for file_id, entry in deletions if file_id in held]
            # An orphan sweep may have recorded one of them already.
            recorded = _recorded_files(conn, [e.file_id for e in entries if e.file_id])
            appended: list[AuditRecord] = []
            prev = _head(conn)
            for entry in entries:
                if entry.file_id in recorded:
                    continue
                prev = _append(conn, prev, entry)
                appended.append(prev)
            return appended

        return await self._write(fn)

    async def claim_expired(
        self, now: float, limit: int, owner: str, lease_until: float
    ) -> list[FileRecord]:
        def fn(conn: sa.Connection) -> list[FileRecord]:
            claimed: list[FileRecord] = []
            # Two claims, each served by its own partial index and each
            # skipping rows another instance has locked this instant.
            for due, order in (
                (rules.due_expired(now), files.c.expires_at),
                (rules.due_abandoned(now), files.c.lease_expires),
            ):
                room = limit - len(claimed)
                if room <= 0:
                    break
                pick = (
                    sa.select(files.c.id)
                    .where(due)
                    .order_by(order)
                    .limit(room)
                    .with_for_update(skip_locked=True)
                    .scalar_subquery()
                )
                rows = conn.execute(
                    files.update()
                    .where(files.c.id.in_(pick))
                    .values(
                        state=str(FileState.PURGING),
                        lease_owner=owner,
                        lease_expires=lease_until,
                        delete_reason=sa.func.coalesce(
                            files.c.delete_reason, str(DeleteReason.EXPIRED)
                        ),
                    )
                    .returning(*_FILE_COLUMNS)
                ).all()
                claimed.extend(_file(r) for r in rows)
            return sorted(claimed, key=lambda r: r.expires_at)

        return await self._write(fn)

    async def record_failure(self, file_id: bytes, owner: str, retry_at: float, error: str) -> None:
        def fn(conn: sa.Connection) -> None:
            conn.execute(
                files.update()
                .where(files.c.id == file_id, rules.held_by(owner))
                .values(
                    purge_attempts=files.c.purge_attempts + 1,
                    next_attempt_at=retry_at,
                    last_error=error,
                    lease_owner=None,
                    lease_expires=None,
                )
            )

        await self._write(fn)

    async def purge_stats(self, now: float) -> PurgeStats:
        def fn(conn: sa.Connection) -> PurgeStats:
            backlog, oldest = conn.execute(
                sa.select(sa.func.count(), sa.func.min(files.c.expires_at)).where(
                    rules.NOT_PURGED, files.c.expires_at <= now
                )
            ).one()
            failures = {
                str(error): int(count)
                for error, count in conn.execute(
                    sa.select(files.c.last_error, sa.func.count())
                    .where(rules.NOT_PURGED, files.c.purge_attempts > 0)
                    .group_by(files.c.last_error)
                )
            }
            live, oldest_live = conn.execute(
                sa.select(sa.func.count(), sa.func.min(files.c.created_at)).where(
                    rules.state_is(FileState.UPLOADING, FileState.ACTIVE)
                )
            ).one()
            return PurgeStats(
                backlog=int(backlog),
                oldest_expiry=None if oldest is None else float(oldest),
                failing=sum(failures.values()),
                failures_by_error=failures,
                live=int(live),
                oldest_live_created=None if oldest_live is None else float(oldest_live),
            )

        return await self._read(fn)

    async def lifetime_histogram(self, now: float, width: float, buckets: int) -> list[int]:
        if buckets < 1 or width <= 0:
            raise ValueError("a histogram needs at least one bucket of positive width")
        # Plain comparisons in a CASE, the same on every database (casts of
        # a float to an integer truncate on SQLite and round on PostgreSQL),
        # grouped by its name so the statement binds each bound once.
        bucket = sa.case(
            *(
                (files.c.expires_at < now + (i + 1) * width, sa.literal_column(str(i)))
                for i in range(buckets - 1)
            ),
            else_=sa.literal_column(str(buckets - 1)),
        ).label("bucket")
        live = (
            rules.state_is(FileState.UPLOADING, FileState.ACTIVE),
            files.c.expires_at > now,
        )

        def fn(conn: sa.Connection) -> list[int]:
            counts = [0] * buckets
            if buckets == 1:
                counts[0] = int(conn.execute(sa.select(sa.func.count()).where(*live)).scalar_one())
                return counts
            query = sa.select(bucket, sa.func.count()).where(*live).group_by(sa.text("bucket"))
            for index, count in conn.execute(query):
                counts[int(index)] = int(count)
            return counts

        return await self._read(fn)

    async def stuck_uploads(self, cutoff: float, limit: int) -> list[FileRecord]:
        def fn(conn: sa.Connection) -> list[FileRecord]:
            rows = conn.execute(
                sa.select(*_FILE_COLUMNS)
                .where(rules.state_is(FileState.UPLOADING), files.c.created_at < cutoff)
                .limit(limit)
            ).all()
            return [_file(r) for r in rows]

        return await self._read(fn)

    async def live_ids(self, file_ids: Sequence[bytes]) -> set[bytes]:
        def fn(conn: sa.Connection) -> set[bytes]:
            found: set[bytes] = set()
            for part in _chunks(file_ids):
                found.update(
                    bytes(r)
                    for r in conn.execute(
                        sa.select(files.c.id).where(rules.NOT_PURGED, files.c.id.in_(part))
                    ).scalars()
                )
            return found

        return await self._read(fn)

    async def count_keys(self, kek_id: int) -> int:
        def fn(conn: sa.Connection) -> int:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(file_keys.c.kek_id == kek_id)
                ).scalar_one()
            )

        return await self._read(fn)

    async def doom_wrapped_under(self, kek_id: int) -> int:
        def fn(conn: sa.Connection) -> int:
            wrapped = sa.select(file_keys.c.file_id).where(file_keys.c.kek_id == kek_id)
            result = conn.execute(
                files.update()
                .where(
                    rules.state_is(FileState.UPLOADING, FileState.ACTIVE),
                    sa.or_(files.c.kek_id == kek_id, files.c.id.in_(wrapped)),
                )
                .values(
                    state=str(FileState.PURGING),
                    delete_reason=str(DeleteReason.KEK_DESTROYED),
                    lease_owner=None,
                    lease_expires=None,
                )
            )
            return int(result.rowcount)

        return await self._write(fn)

    async def legacy_keys(self, after: bytes, limit: int) -> list[tuple[FileKey, str]]:
        def fn(conn: sa.Connection) -> list[tuple[FileKey, str]]:
            # The size as a literal, so the planner sees the partial index's
            # predicate (``file_keys_legacy_wrap``) in the query.
            legacy = sa.func.length(file_keys.c.wrapped_dek) == sa.literal_column(
                str(LEGACY_WRAP_SIZE)
            )
            rows = conn.execute(
                sa.select(
                    file_keys.c.file_id, file_keys.c.kek_id, file_keys.c.wrapped_dek, files.c.tenant
                )
                .join(files, files.c.id == file_keys.c.file_id)
                .where(legacy, file_keys.c.file_id > after)
                .order_by(file_keys.c.file_id)
                .limit(limit)
            ).all()
            return [(FileKey(bytes(f), int(k), bytes(w)), str(t)) for f, k, w, t in rows]

        return await self._read(fn)

    async def replace_keys(self, changes: Sequence[tuple[FileKey, bytes]]) -> int:
        def fn(conn: sa.Connection) -> int:
            # Key rows are insert-once (an update would leave the old bytes
            # where crypto-erase's reclaim does not look): delete and insert,
            # so the old wrap goes the way every erased key goes.
            changed = 0
            for key, wrapped in changes:
                gone = conn.execute(
                    file_keys.delete().where(
                        file_keys.c.file_id == key.file_id,
                        file_keys.c.wrapped_dek == key.wrapped,
                    )
                ).rowcount
                if gone:
                    conn.execute(
                        file_keys.insert().values(
                            file_id=key.file_id, kek_id=key.kek_id, wrapped_dek=wrapped
                        )
                    )
                    changed += 1
            return changed

        return await self._write(fn)


# ------------------------------------------------------------------- audit
class SQLAuditStore(_Part):
    """:class:`~filestore.metadata.base.AuditStore` on SQLAlchemy Core."""

    async def append(self, entry: AuditEntry) -> AuditRecord:
        def fn(conn: sa.Connection) -> AuditRecord:
            # Check and insert under the audit lock: two instances sweeping
            # the same orphan, or destroying the same KEK, record it once.
            self._db.lock_audit(conn)
            found = _existing(conn, entry)
            if found is not None:
                return found
            return _append(conn, _head(conn), entry)

        return await self._write(fn)

    async def head(self) -> AuditRecord | None:
        return await self._read(_head)

    async def records(
        self,
        after_seq: int,
        limit: int,
        since: float | None = None,
        until: float | None = None,
    ) -> list[AuditRecord]:
        def fn(conn: sa.Connection) -> list[AuditRecord]:
            query = sa.select(audit_log.c.body).where(audit_log.c.seq > after_seq)
            if since is not None:
                query = query.where(audit_log.c.recorded_at >= since)
            if until is not None:
                query = query.where(audit_log.c.recorded_at < until)
            rows = conn.execute(query.order_by(audit_log.c.seq).limit(limit)).scalars()
            return [decode_record(body) for body in rows]

        return await self._read(fn)

    async def hashes(self, size: int, after: int = 0) -> list[bytes]:
        def fn(conn: sa.Connection) -> list[bytes]:
            rows = conn.execute(
                sa.select(audit_log.c.hash)
                .where(audit_log.c.seq > after, audit_log.c.seq <= size)
                .order_by(audit_log.c.seq)
            ).scalars()
            return [bytes.fromhex(h) for h in rows]

        return await self._read(fn)

    async def read_tiles(self, tiles: Sequence[Tile]) -> list[bytes]:
        def fn(conn: sa.Connection) -> list[bytes]:
            out = []
            for tile in tiles:
                row = _tree_row(conn, tile.level, tile.first, tile.width)
                out.append(leaf_tile(row) if tile.level == 0 else b"".join(row))
            return out

        return await self._read(fn)

    async def record_texts(self, after_seq: int, limit: int) -> list[str]:
        def fn(conn: sa.Connection) -> list[str]:
            rows = conn.execute(
                sa.select(audit_log.c.body)
                .where(audit_log.c.seq > after_seq, audit_log.c.seq <= after_seq + limit)
                .order_by(audit_log.c.seq)
            ).scalars()
            return [str(body) for body in rows]

        return await self._read(fn)

    async def checkpoint_sized(self, low: int, high: int) -> bool:
        def fn(conn: sa.Connection) -> bool:
            found = conn.execute(
                sa.select(audit_checkpoints.c.id)
                .where(audit_checkpoints.c.size >= low, audit_checkpoints.c.size < high)
                .limit(1)
            ).first()
            return found is not None

        return await self._read(fn)

    async def _one(self, where: sa.ColumnElement[bool]) -> AuditRecord | None:
        def fn(conn: sa.Connection) -> AuditRecord | None:
            body = conn.execute(sa.select(audit_log.c.body).where(where)).scalar()
            return None if body is None else decode_record(body)

        return await self._read(fn)

    async def record_for_file(self, file_id: str) -> AuditRecord | None:
        return await self._one(
            sa.and_(audit_log.c.file_id == file_id, audit_log.c.event == "file_deleted")
        )

    async def record_for_kek(self, kek_id: int) -> AuditRecord | None:
        return await self._one(
            sa.and_(audit_log.c.kek_id == kek_id, audit_log.c.event == "kek_destroyed")
        )

    async def seq_range(
        self, since: float | None, until: float | None, upto: int
    ) -> tuple[int, int] | None:
        def fn(conn: sa.Connection) -> tuple[int, int] | None:
            query = sa.select(sa.func.min(audit_log.c.seq), sa.func.max(audit_log.c.seq)).where(
                audit_log.c.seq <= upto
            )
            if since is not None:
                query = query.where(audit_log.c.recorded_at >= since)
            if until is not None:
                query = query.where(audit_log.c.recorded_at < until)
            low, high = conn.execute(query).one()
            return None if low is None else (int(low), int(high))

        return await self._read(fn)

    async def checkpoints_between(self, low: int, high: int) -> list[str]:
        def fn(conn: sa.Connection) -> list[str]:
            newest = (
                sa.select(sa.func.max(audit_checkpoints.c.id))
                .where(audit_checkpoints.c.size.between(low, high))
                .group_by(audit_checkpoints.c.size)
            )
            rows = conn.execute(
                sa.select(audit_checkpoints.c.note)
                .where(audit_checkpoints.c.id.in_(newest))
                .order_by(audit_checkpoints.c.id)
            ).scalars()
            return [str(n) for n in rows]

        return await self._read(fn)

    async def add_checkpoint(self, size: int, note: str, now: float) -> None:
        def fn(conn: sa.Connection) -> None:
            new_id = conn.execute(
                audit_checkpoints.insert()
                .values(size=size, created_at=now, note=note)
                .returning(audit_checkpoints.c.id)
            ).scalar_one()
            # One checkpoint per tree size, the newest: a quiet log signed
            # every pass would otherwise keep a row per pass without bound.
            conn.execute(
                audit_checkpoints.delete().where(
                    audit_checkpoints.c.size == size, audit_checkpoints.c.id < new_id
                )
            )

        await self._write(fn)

    async def _checkpoint(self, query: sa.Select[Any]) -> tuple[int, str] | None:
        def fn(conn: sa.Connection) -> tuple[int, str] | None:
            row = conn.execute(query).first()
            return None if row is None else (int(row[0]), str(row[1]))

        return await self._read(fn)

    async def latest_checkpoint(self) -> tuple[int, str] | None:
        return await self._checkpoint(
            sa.select(audit_checkpoints.c.size, audit_checkpoints.c.note)
            .order_by(audit_checkpoints.c.id.desc())
            .limit(1)
        )

    async def checkpoint_covering(self, size: int) -> tuple[int, str] | None:
        return await self._checkpoint(
            sa.select(audit_checkpoints.c.size, audit_checkpoints.c.note)
            .where(audit_checkpoints.c.size >= size)
            .order_by(audit_checkpoints.c.id)
            .limit(1)
        )

    async def add_cosignatures(self, rows: Sequence[CosignatureRow]) -> None:
        def fn(conn: sa.Connection) -> None:
            for row in rows:
                new_id = conn.execute(
                    audit_cosignatures.insert()
                    .values(
                        size=row.size,
                        body_hash=row.body_hash,
                        witness=row.witness,
                        line=row.line,
                        cosigned_at=row.cosigned_at,
                        received_at=row.received_at,
                    )
                    .returning(audit_cosignatures.c.id)
                ).scalar_one()
                # One per witness and size, like the checkpoints: a witness
                # cosigning the re-signed note of a quiet log every pass
                # keeps one row, not one a pass.
                conn.execute(
                    audit_cosignatures.delete().where(
                        audit_cosignatures.c.size == row.size,
                        audit_cosignatures.c.witness == row.witness,
                        audit_cosignatures.c.id < new_id,
                    )
                )

        if rows:
            await self._write(fn)

    async def cosignatures(self, low: int, high: int) -> list[tuple[str, str]]:
        def fn(conn: sa.Connection) -> list[tuple[str, str]]:
            rows = conn.execute(
                sa.select(audit_cosignatures.c.body_hash, audit_cosignatures.c.line)
                .where(audit_cosignatures.c.size.between(low, high))
                .order_by(audit_cosignatures.c.witness, audit_cosignatures.c.id)
            ).all()
            return [(str(h), str(line)) for h, line in rows]

        return await self._read(fn)


# ----------------------------------------------------------------- cluster
class SQLClusterStore(_Part):
    """:class:`~filestore.metadata.base.ClusterStore` on SQLAlchemy Core."""

    async def record_commitment(
        self, kek_id: int, commitment: bytes, now: float, *, founding: bool = False
    ) -> bytes | None:
        def fn(conn: sa.Connection) -> bytes | None:
            # Under the audit lock: two instances founding a cluster at once
            # cannot both win.
            self._db.lock_audit(conn)
            if founding and conn.execute(sa.select(kek_commitments.c.kek_id).limit(1)).first():
                return None
            stored = conn.execute(
                sa.select(kek_commitments.c.commitment).where(kek_commitments.c.kek_id == kek_id)
            ).scalar()
            if stored is not None:
                return bytes(stored)
            conn.execute(
                kek_commitments.insert().values(
                    kek_id=kek_id, commitment=commitment, recorded_at=now
                )
            )
            return commitment

        return await self._write(fn)

    async def latest_commitment(self) -> tuple[int, bytes] | None:
        def fn(conn: sa.Connection) -> tuple[int, bytes] | None:
            row = conn.execute(
                sa.select(kek_commitments.c.kek_id, kek_commitments.c.commitment)
                .order_by(kek_commitments.c.kek_id.desc())
                .limit(1)
            ).first()
            return None if row is None else (int(row[0]), bytes(row[1]))

        return await self._read(fn)

    async def clock_offset(self, local: Callable[[], float]) -> float | None:
        if self._db.dialect != "postgresql":
            return None

        def fn(conn: sa.Connection) -> float:
            before = local()
            server = conn.execute(
                sa.text("SELECT extract(epoch FROM clock_timestamp())")
            ).scalar_one()
            after = local()
            return float(server) - (before + after) / 2

        return await self._read(fn)

    async def report_pass(self, status: InstanceStatus) -> None:
        values = {
            "started_at": status.started_at,
            "finished_at": status.finished_at,
            "purged": status.purged,
            "failed": status.failed,
            "max_overdue": status.max_overdue,
            "error": status.error,
            "reclaim_blocked": status.reclaim_blocked,
        }

        def fn(conn: sa.Connection) -> None:
            done = conn.execute(
                instance_passes.update()
                .where(instance_passes.c.instance == status.instance)
                .values(**values)
            )
            if done.rowcount == 0:
                conn.execute(instance_passes.insert().values(instance=status.instance, **values))
            # Instance names are per process: forget the ones gone a day.
            conn.execute(
                instance_passes.delete().where(
                    instance_passes.c.finished_at < status.finished_at - INSTANCE_MEMORY
                )
            )
            conn.execute(
                purge_passes.insert().values(
                    instance=status.instance,
                    **{k: v for k, v in values.items() if k != "reclaim_blocked"},
                )
            )
            conn.execute(
                purge_passes.delete().where(
                    purge_passes.c.finished_at < status.finished_at - PASS_HISTORY
                )
            )

        await self._write(fn)

    async def pass_history(self, since: float, limit: int) -> list[PassRecord]:
        def fn(conn: sa.Connection) -> list[PassRecord]:
            rows = conn.execute(
                sa.select(purge_passes)
                .where(purge_passes.c.finished_at >= since)
                .order_by(purge_passes.c.finished_at.desc(), purge_passes.c.id.desc())
                .limit(limit)
            ).all()
            return [
                PassRecord(
                    instance=str(r.instance),
                    started_at=float(r.started_at),
                    finished_at=float(r.finished_at),
                    purged=int(r.purged),
                    failed=int(r.failed),
                    max_overdue=float(r.max_overdue),
                    error=r.error,
                )
                for r in reversed(rows)
            ]

        return await self._read(fn)

    async def instance_passes(self) -> list[InstanceStatus]:
        def fn(conn: sa.Connection) -> list[InstanceStatus]:
            rows = conn.execute(
                sa.select(instance_passes).order_by(instance_passes.c.finished_at.desc())
            ).all()
            return [
                InstanceStatus(
                    instance=str(r.instance),
                    started_at=float(r.started_at),
                    finished_at=float(r.finished_at),
                    purged=int(r.purged),
                    failed=int(r.failed),
                    max_overdue=float(r.max_overdue),
                    error=r.error,
                    reclaim_blocked=r.reclaim_blocked,
                )
                for r in rows
            ]

        return await self._read(fn)


# ---------------------------------------------------------------- API keys
class SQLApiKeyStore(_Part):
    """:class:`~filestore.metadata.base.ApiKeyStore` on SQLAlchemy Core."""

    _revocations = 0

    @property
    def revocations(self) -> int:
        return self._revocations

    async def add(self, key: ApiKeyRecord) -> None:
        def fn(conn: sa.Connection) -> None:
            conn.execute(
                api_keys.insert().values(
                    key_id=key.key_id,
                    secret_hash=key.secret_hash,
                    role=str(key.role),
                    tenant=key.tenant,
                    label=key.label,
                    created_at=key.created_at,
                )
            )

        await self._write(fn)

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        def fn(conn: sa.Connection) -> ApiKeyRecord | None:
            row = conn.execute(_GET_KEY, {"key_id": key_id}).first()
            return None if row is None else _api_key(row)

        return await self._read(fn)

    async def all(self) -> list[ApiKeyRecord]:
        def fn(conn: sa.Connection) -> list[ApiKeyRecord]:
            rows = conn.execute(
                sa.select(*_KEY_COLUMNS).order_by(api_keys.c.created_at, api_keys.c.key_id)
            ).all()
            return [_api_key(r) for r in rows]

        return await self._read(fn)

    async def revoke(self, key_id: str, now: float) -> bool:
        def fn(conn: sa.Connection) -> bool:
            done = conn.execute(
                api_keys.update()
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            return bool(done.rowcount == 1)

        revoked = await self._write(fn)
        self._revocations += 1
        return revoked


# ------------------------------------------------------------------- whole
class SQLMetadataStore:
    """:class:`~filestore.metadata.base.MetadataStore`: the stores on one
    database. Open with :meth:`open`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.name = db.dialect
        self.files = SQLFileStore(db)
        self.audit = SQLAuditStore(db)
        self.api_keys = SQLApiKeyStore(db)
        self.cluster = SQLClusterStore(db)

    @classmethod
    async def open(
        cls, url: str = "", sqlite_path: Path | None = None, pool_size: int = 10
    ) -> SQLMetadataStore:
        """Open (and migrate) the database ``url`` names; an empty URL means
        SQLite at ``sqlite_path``."""
        if not url and sqlite_path is None:
            raise ValueError("an empty URL needs a SQLite path")
        path = sqlite_path if sqlite_path is not None else Path()
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///") :])
        return cls(await open_database(url, path, pool_size))

    async def check(self) -> None:
        def fn(conn: sa.Connection) -> None:
            conn.execute(sa.select(sa.literal(1))).scalar()

        await self.db.run(fn, write=False)

    async def close(self) -> None:
        await self.db.close()
