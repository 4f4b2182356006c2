"""The MetadataStore contract, run against every metadata backend (SQLite
and a real PostgreSQL), including what several instances sharing one database
rely on: claims that never overlap and one audit chain with no fork."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from filestore import ids
from filestore.audit import entries
from filestore.audit.entries import AuditEntry
from filestore.errors import ConfigError, MetadataUnavailable, NotFound
from filestore.metadata.base import (
    ApiKeyRecord,
    CosignatureRow,
    DeleteReason,
    FileKey,
    FileRecord,
    FileState,
    InstanceStatus,
    MetadataStore,
    Role,
)
from filestore.metadata.sql import SQLMetadataStore
from tests.support import db
from tests.support.db import MetadataBackend

NOW = 1_800_000_000.0


async def _open(backend: MetadataBackend) -> MetadataStore:
    return await SQLMetadataStore.open(backend.url)


@pytest.fixture
async def store(metadata_backend: MetadataBackend) -> AsyncIterator[MetadataStore]:
    opened = await _open(metadata_backend)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def other(metadata_backend: MetadataBackend) -> AsyncIterator[MetadataStore]:
    """A second store on the same database: another instance."""
    opened = await _open(metadata_backend)
    try:
        yield opened
    finally:
        await opened.close()


def _fields(rec: FileRecord, at: float = NOW + 70) -> AuditEntry:
    return entries.file_deleted(
        file_id=ids.to_text(rec.id),
        tenant=rec.tenant,
        size=123,
        created_at=rec.created_at,
        expires_at=rec.expires_at,
        deleted_at=at,
        reason="expired",
        backend="local",
        kek_id=1,
        actor="test",
        software_version="0",
    )


def _kek(kek_id: int = 1, at: float = NOW + 80) -> AuditEntry:
    return entries.kek_destroyed(
        kek_id=kek_id,
        created_at=NOW,
        destroyed_at=at,
        backend="keyring",
        actor="test",
        software_version="0",
    )


def _record(tenant: str = "t1", ttl: float = 3600, **kw: object) -> FileRecord:
    return FileRecord(
        id=secrets.token_bytes(16),
        tenant=tenant,
        state=FileState.UPLOADING,
        kek_id=1,
        created_at=NOW,
        expires_at=NOW + ttl,
        **kw,  # type: ignore[arg-type]
    )


async def _upload(store: MetadataStore, **kw: object) -> FileRecord:
    rec = _record(**kw)
    await store.files.create_upload(rec, FileKey(rec.id, 1, b"wrapped-" + rec.id))
    await store.files.activate(rec.id, 123, b"sealed")
    return rec


async def test_upload_lifecycle(store: MetadataStore) -> None:
    rec = _record()
    await store.files.create_upload(rec, FileKey(rec.id, 1, b"w" * 60))
    loaded = await store.files.load(rec.id)
    assert loaded is not None
    assert loaded[0].state == FileState.UPLOADING
    assert loaded[1] == FileKey(rec.id, 1, b"w" * 60)
    await store.files.activate(rec.id, 42, b"sealed-bytes")
    loaded = await store.files.load(rec.id)
    assert loaded is not None
    row, key = loaded
    assert (row.state, row.size, row.sealed, row.tenant) == (
        FileState.ACTIVE,
        42,
        b"sealed-bytes",
        "t1",
    )
    assert row.expires_at == NOW + 3600
    assert key is not None
    with pytest.raises(NotFound):
        await store.files.activate(rec.id, 42, b"again")


async def test_create_active_inserts_a_complete_file_and_its_key(store: MetadataStore) -> None:
    rec = dataclasses.replace(
        _record(max_downloads=3), state=FileState.ACTIVE, size=4096, sealed=b"s" * 40
    )
    key = FileKey(rec.id, 1, b"k" * 60)
    await store.files.create_active(rec, key)
    loaded = await store.files.load(rec.id)
    assert loaded is not None
    row, stored_key = loaded
    assert (row.state, row.size, row.sealed, row.max_downloads, row.downloads) == (
        FileState.ACTIVE,
        4096,
        b"s" * 40,
        3,
        0,
    )
    assert stored_key == key
    assert await store.files.count_download(rec.id, NOW) == 1  # readable, counted
    # The same id again is refused whole: neither row is written twice.
    with pytest.raises(MetadataUnavailable):
        await store.files.create_active(rec, FileKey(rec.id, 1, b"x" * 60))
    again = await store.files.load(rec.id)
    assert again is not None and again[1] == key
    with pytest.raises(ValueError):  # only a complete, active record
        await store.files.create_active(_record(), FileKey(rec.id, 1, b"w"))


async def test_concurrent_creates_keep_their_own_outcomes(store: MetadataStore) -> None:
    """Uploads finishing together (which PostgreSQL writes as one batch):
    each new file is readable with its own key, and one whose id is taken
    fails alone, leaving the file that holds the id as it was."""
    taken = dataclasses.replace(_record(), state=FileState.ACTIVE, size=1, sealed=b"t")
    await store.files.create_active(taken, FileKey(taken.id, 1, b"t" * 60))
    records = [
        dataclasses.replace(_record(), state=FileState.ACTIVE, size=n, sealed=bytes([n]) * 8)
        for n in range(40)
    ]
    records[17] = dataclasses.replace(taken, size=99, sealed=b"other")
    outcomes = await asyncio.gather(
        *(
            store.files.create_active(r, FileKey(r.id, 1, bytes([n]) * 60))
            for n, r in enumerate(records)
        ),
        return_exceptions=True,
    )
    assert [n for n, o in enumerate(outcomes) if o is not None] == [17]
    assert isinstance(outcomes[17], MetadataUnavailable)
    for n, r in enumerate(records):
        loaded = await store.files.load(r.id)
        assert loaded is not None
        row, key = loaded
        if n == 17:
            assert (row.size, row.sealed, key) == (1, b"t", FileKey(taken.id, 1, b"t" * 60))
        else:
            assert (row.size, row.sealed, key) == (
                n,
                bytes([n]) * 8,
                FileKey(r.id, 1, bytes([n]) * 60),
            )


async def test_concurrent_loads_each_get_their_own_file(store: MetadataStore) -> None:
    """Downloads starting together (which PostgreSQL reads as one batch):
    each gets its own file and key, the same id twice gets it twice, and an
    unknown id gets nothing."""
    records = [
        dataclasses.replace(_record(), state=FileState.ACTIVE, size=n, sealed=bytes([n]) * 8)
        for n in range(20)
    ]
    for n, r in enumerate(records):
        await store.files.create_active(r, FileKey(r.id, 1, bytes([n]) * 60))
    unknown = secrets.token_bytes(16)
    wanted = [r.id for r in records] + [records[3].id, unknown]
    loaded = await asyncio.gather(*(store.files.load(fid) for fid in wanted))
    for n, got in enumerate(loaded[:20]):
        assert got is not None
        row, key = got
        assert (row.id, row.size, key) == (
            records[n].id,
            n,
            FileKey(records[n].id, 1, bytes([n]) * 60),
        )
    assert loaded[20] == loaded[3]
    assert loaded[21] is None


async def test_missing_file(store: MetadataStore) -> None:
    assert await store.files.load(secrets.token_bytes(16)) is None


async def test_discard_upload_removes_row_and_key(store: MetadataStore) -> None:
    rec = _record()
    await store.files.create_upload(rec, FileKey(rec.id, 1, b"w"))
    await store.files.discard_upload(rec.id)
    assert await store.files.load(rec.id) is None
    await store.files.discard_upload(rec.id)  # idempotent


async def test_discard_never_touches_an_active_file(store: MetadataStore) -> None:
    rec = await _upload(store)
    await store.files.discard_upload(rec.id)
    loaded = await store.files.load(rec.id)
    assert loaded is not None and loaded[0].state == FileState.ACTIVE


async def test_count_download_respects_limit_and_expiry(store: MetadataStore) -> None:
    rec = await _upload(store, max_downloads=2)
    assert await store.files.count_download(rec.id, NOW) == 1
    assert await store.files.count_download(rec.id, NOW) == 2
    assert await store.files.count_download(rec.id, NOW) is None
    unlimited = await _upload(store)
    assert await store.files.count_download(unlimited.id, NOW + 3599) == 1
    assert await store.files.count_download(unlimited.id, NOW + 3600) is None


async def test_delete_steps(store: MetadataStore) -> None:
    rec = await _upload(store)
    row = await store.files.begin_delete(rec.id, DeleteReason.CLIENT_REQUEST, "a", NOW, NOW + 60)
    assert row is not None and row.state == FileState.PURGING
    assert row.delete_reason == DeleteReason.CLIENT_REQUEST
    # Another owner cannot take a live lease ...
    assert (
        await store.files.begin_delete(rec.id, DeleteReason.EXPIRED, "b", NOW + 1, NOW + 61) is None
    )
    # ... but can take it over once it lapsed; the first reason stays.
    row = await store.files.begin_delete(rec.id, DeleteReason.EXPIRED, "b", NOW + 60, NOW + 120)
    assert row is not None and row.lease_owner == "b"
    assert row.delete_reason == DeleteReason.CLIENT_REQUEST
    await store.files.crypto_erase([rec.id])
    loaded = await store.files.load(rec.id)
    assert loaded is not None and loaded[1] is None and loaded[0].sealed is None
    await store.files.crypto_erase([rec.id])  # idempotent
    # "a" lost its lease to "b", but its steps were done: whoever finishes
    # first marks the file purged and writes the one record.
    (appended,) = await store.files.finish_delete([(rec.id, _fields(rec))], "a", NOW + 70)
    assert appended.seq == 1 and appended.file_id == ids.to_text(rec.id)
    assert await store.files.finish_delete([(rec.id, _fields(rec))], "b", NOW + 71) == []
    loaded = await store.files.load(rec.id)
    assert loaded is not None
    assert loaded[0].state == FileState.PURGED and loaded[0].deleted_at == NOW + 70
    assert (
        await store.files.begin_delete(rec.id, DeleteReason.EXPIRED, "c", NOW + 80, NOW + 90)
        is None
    )


async def test_api_keys(store: MetadataStore) -> None:
    key = ApiKeyRecord("abcdef012345", b"h" * 32, Role.OPERATOR, "acme", NOW, "ops")
    await store.api_keys.add(key)
    assert await store.api_keys.get("abcdef012345") == key
    assert await store.api_keys.get("000000000000") is None
    assert [k.key_id for k in await store.api_keys.all()] == ["abcdef012345"]
    assert await store.api_keys.revoke("abcdef012345", NOW + 5)
    assert not await store.api_keys.revoke("abcdef012345", NOW + 6)
    revoked = await store.api_keys.get("abcdef012345")
    assert revoked is not None and revoked.revoked_at == NOW + 5


async def test_claim_expired_oldest_first_with_leases_and_backoff(store: MetadataStore) -> None:
    late = await _upload(store, ttl=30)
    early = await _upload(store, ttl=10)
    live = await _upload(store, ttl=3600)
    assert await store.files.claim_expired(NOW + 5, 10, "a", NOW + 100) == []
    claimed = await store.files.claim_expired(NOW + 40, 10, "a", NOW + 100)
    assert [r.id for r in claimed] == [early.id, late.id]
    assert all(r.state == FileState.PURGING and r.lease_owner == "a" for r in claimed)
    assert all(r.delete_reason == DeleteReason.EXPIRED for r in claimed)
    # Leased: nobody else claims them until the lease lapses.
    assert await store.files.claim_expired(NOW + 50, 10, "b", NOW + 150) == []
    await store.files.record_failure(early.id, "a", NOW + 500, "StorageUnavailable")
    stats = await store.files.purge_stats(NOW + 60)
    assert (stats.backlog, stats.oldest_expiry, stats.failing) == (2, NOW + 10, 1)
    assert stats.failures_by_error == {"StorageUnavailable": 1}
    assert (stats.live, stats.oldest_live_created) == (1, NOW)
    # The lapsed lease is taken over; the failed file waits out its backoff.
    again = await store.files.claim_expired(NOW + 101, 10, "b", NOW + 200)
    assert [r.id for r in again] == [late.id]
    assert await store.files.claim_expired(NOW + 199, 10, "c", NOW + 600) == []
    again = await store.files.claim_expired(NOW + 500, 10, "c", NOW + 600)
    assert [(r.id, r.purge_attempts) for r in again] == [(early.id, 1), (late.id, 0)]
    assert live.id not in {r.id for r in again}
    assert await store.files.live_ids([early.id, live.id, b"x" * 16]) == {early.id, live.id}


async def test_stuck_uploads(store: MetadataStore) -> None:
    rec = _record()
    await store.files.create_upload(rec, FileKey(rec.id, 1, b"w"))
    assert await store.files.stuck_uploads(NOW, 10) == []
    assert [r.id for r in await store.files.stuck_uploads(NOW + 1, 10)] == [rec.id]


async def test_audit_chain_and_checkpoints(store: MetadataStore) -> None:
    assert await store.audit.head() is None
    files = [await _upload(store, ttl=1) for _ in range(3)]
    claimed = await store.files.claim_expired(NOW + 2, 10, "o", NOW + 100)
    await store.files.crypto_erase([r.id for r in claimed])
    records = await store.files.finish_delete([(r.id, _fields(r)) for r in claimed], "o", NOW + 3)
    assert [r.seq for r in records] == [1, 2, 3]
    assert records[1].prev_hash == records[0].hash
    kek = await store.audit.append(_kek())
    assert kek.seq == 4 and kek.prev_hash == records[2].hash
    assert await store.audit.head() == kek
    assert [r.seq for r in await store.audit.records(1, 10)] == [2, 3, 4]
    assert await store.audit.hashes(2) == [bytes.fromhex(r.hash) for r in records[:2]]
    by_file = {r.file_id: r for r in records}
    assert (
        await store.audit.record_for_file(ids.to_text(files[1].id))
        == by_file[ids.to_text(files[1].id)]
    )
    assert await store.audit.record_for_kek(1) == kek
    assert await store.audit.seq_range(None, None, 3) == (1, 3)
    assert await store.audit.seq_range(NOW + 100, None, 4) is None
    await store.audit.add_checkpoint(2, "note-2", NOW)
    await store.audit.add_checkpoint(4, "note-4a", NOW)
    await store.audit.add_checkpoint(4, "note-4b", NOW + 1)
    assert await store.audit.latest_checkpoint() == (4, "note-4b")
    # One checkpoint per size, the newest: a quiet log does not grow the table.
    assert await store.audit.checkpoint_covering(3) == (4, "note-4b")
    assert await store.audit.checkpoints_between(0, 4) == ["note-2", "note-4b"]
    for n in range(5):
        await store.audit.add_checkpoint(4, f"note-4-{n}", NOW + 2 + n)
    assert await db.scalar(store, "SELECT count(*) FROM audit_checkpoints") == 2
    assert await store.audit.latest_checkpoint() == (4, "note-4-4")
    assert await store.files.count_keys(1) == 0


async def test_cosignatures_one_per_witness_and_size(store: MetadataStore) -> None:
    def row(size: int, digest: str, witness: str, line: str, at: float) -> CosignatureRow:
        return CosignatureRow(size, digest, witness, line, int(at), at)

    assert await store.audit.cosignatures(0, 10) == []
    await store.audit.add_cosignatures([])
    await store.audit.add_cosignatures(
        [
            row(3, "h3", "wa", "a3", NOW),
            row(3, "h3", "wb", "b3", NOW),
            row(5, "h5", "wa", "a5", NOW),
        ]
    )
    assert await store.audit.cosignatures(3, 3) == [("h3", "a3"), ("h3", "b3")]
    assert await store.audit.cosignatures(0, 10) == [("h3", "a3"), ("h5", "a5"), ("h3", "b3")]
    # The note at size 3 re-signed and cosigned again by wa: its older row goes.
    await store.audit.add_cosignatures([row(3, "h3b", "wa", "a3b", NOW + 60)])
    assert await store.audit.cosignatures(3, 3) == [("h3b", "a3b"), ("h3", "b3")]
    assert await db.scalar(store, "SELECT count(*) FROM audit_cosignatures") == 3


async def test_appends_are_idempotent_per_file_and_kek(store: MetadataStore) -> None:
    rec = _record()
    orphan = entries.orphan_deleted(
        file_id=ids.to_text(rec.id),
        deleted_at=NOW,
        backend="local",
        actor="a",
        software_version="0",
    )
    first = await store.audit.append(orphan)
    assert await store.audit.append(orphan) == first
    assert await store.audit.append(_kek(7)) == await store.audit.append(_kek(7, at=NOW + 99))
    assert [r.seq for r in await store.audit.records(0, 10)] == [1, 2]


async def test_finish_delete_skips_a_file_already_on_record(store: MetadataStore) -> None:
    rec = await _upload(store, ttl=1)
    await store.audit.append(
        entries.orphan_deleted(
            file_id=ids.to_text(rec.id),
            deleted_at=NOW,
            backend="local",
            actor="a",
            software_version="0",
        )
    )
    (claimed,) = await store.files.claim_expired(NOW + 2, 10, "o", NOW + 100)
    assert await store.files.finish_delete([(claimed.id, _fields(claimed))], "o", NOW + 3) == []
    loaded = await store.files.load(rec.id)
    assert loaded is not None and loaded[0].state == FileState.PURGED
    assert len(await store.audit.records(0, 10)) == 1


async def test_concurrent_claims_never_overlap(store: MetadataStore, other: MetadataStore) -> None:
    made = [await _upload(store, ttl=1) for _ in range(60)]

    async def drain(s: MetadataStore, owner: str) -> list[bytes]:
        got: list[bytes] = []
        while batch := await s.files.claim_expired(NOW + 5, 7, owner, NOW + 100):
            got.extend(r.id for r in batch)
            await asyncio.sleep(0)
        return got

    a, b, c = await asyncio.gather(drain(store, "a"), drain(other, "b"), drain(store, "c"))
    assert sorted(a + b + c) == sorted(r.id for r in made)
    assert len(set(a) | set(b) | set(c)) == len(made)


async def test_concurrent_appends_make_one_chain(
    store: MetadataStore, other: MetadataStore
) -> None:
    made = [await _upload(store, ttl=1) for _ in range(40)]
    claimed = await store.files.claim_expired(NOW + 2, 100, "o", NOW + 100)
    assert len(claimed) == len(made)
    await store.files.crypto_erase([r.id for r in claimed])

    async def finish(s: MetadataStore, part: list[FileRecord]) -> None:
        for rec in part:
            await s.files.finish_delete([(rec.id, _fields(rec))], "o", NOW + 3)

    async def keks(s: MetadataStore, start: int) -> None:
        for kek_id in range(start, start + 10):
            await s.audit.append(_kek(kek_id))

    await asyncio.gather(
        finish(store, claimed[::2]),
        finish(other, claimed[1::2]),
        keks(store, 100),
        keks(other, 200),
    )
    chain = await store.audit.records(0, 1000)
    assert [r.seq for r in chain] == list(range(1, 61))
    for before, after in itertools.pairwise(chain):
        assert after.prev_hash == before.hash
        after.check_hash()
    assert {r.file_id for r in chain if r.file_id} == {ids.to_text(r.id) for r in made}


async def test_reclaim_on_a_quiet_database_is_complete(store: MetadataStore) -> None:
    rec = await _upload(store)
    assert await store.files.begin_delete(rec.id, DeleteReason.EXPIRED, "o", NOW, NOW + 9)
    await store.files.crypto_erase([rec.id])
    report = await store.files.reclaim()
    assert report.complete and report.blocked_by is None


async def test_files_wrapped_under_a_destroyed_kek_go_to_deletion(store: MetadataStore) -> None:
    active = await _upload(store, ttl=2 * 86400)  # expiry pushed ahead
    uploading = _record()
    await store.files.create_upload(uploading, FileKey(uploading.id, 1, b"w" * 61))
    other_kek = dataclasses.replace(_record(), kek_id=2)
    await store.files.create_upload(other_kek, FileKey(other_kek.id, 2, b"w" * 61))
    await store.files.activate(other_kek.id, 1, b"sealed")
    deleting = await _upload(store)
    assert await store.files.begin_delete(
        deleting.id, DeleteReason.CLIENT_REQUEST, "deleter", NOW, NOW + 60
    )
    assert await store.files.count_keys(1) == 3

    assert await store.files.doom_wrapped_under(1) == 2
    assert await store.files.doom_wrapped_under(1) == 0  # idempotent
    for rec in (active, uploading):
        loaded = await store.files.load(rec.id)
        assert loaded is not None
        assert loaded[0].state == FileState.PURGING
        assert loaded[0].delete_reason == DeleteReason.KEK_DESTROYED
        assert loaded[0].lease_owner is None
    kept = await store.files.load(deleting.id)
    assert kept is not None and kept[0].delete_reason == DeleteReason.CLIENT_REQUEST
    assert kept[0].lease_owner == "deleter"
    untouched = await store.files.load(other_kek.id)
    assert untouched is not None and untouched[0].state == FileState.ACTIVE
    # The next pass takes them at once, long before the expiry they claim.
    claimed = await store.files.claim_expired(NOW + 1, 10, "pass", NOW + 61)
    assert {r.id for r in claimed} == {active.id, uploading.id}


async def test_legacy_keys_are_found_and_replaced_only_if_unchanged(
    store: MetadataStore,
) -> None:
    legacy = sorted([_record(tenant=f"t{n}") for n in range(3)], key=lambda r: r.id)
    for rec in legacy:
        await store.files.create_upload(rec, FileKey(rec.id, 1, b"v1" * 30))
    current = _record()
    await store.files.create_upload(current, FileKey(current.id, 1, b"\x02" + b"v2" * 30))

    found = await store.files.legacy_keys(b"", 10)
    assert [(k.file_id, t) for k, t in found] == [(r.id, r.tenant) for r in legacy]
    assert all(k.wrapped == b"v1" * 30 and k.kek_id == 1 for k, _ in found)
    after_first = await store.files.legacy_keys(legacy[0].id, 1)
    assert [k.file_id for k, _ in after_first] == [legacy[1].id]

    first, _ = found[0]
    stale = FileKey(first.file_id, 1, b"x" * 60)
    assert await store.files.replace_keys([(stale, b"new" * 20 + b"!")]) == 0
    assert await store.files.replace_keys([(first, b"new" * 20 + b"!")]) == 1
    loaded = await store.files.load(first.file_id)
    assert loaded is not None and loaded[1] is not None
    assert loaded[1].wrapped == b"new" * 20 + b"!"
    remaining = await store.files.legacy_keys(b"", 10)
    assert [k.file_id for k, _ in remaining] == [r.id for r in legacy[1:]]


async def test_instance_passes(store: MetadataStore, other: MetadataStore) -> None:
    assert await store.cluster.instance_passes() == []
    first = InstanceStatus("gw-a", NOW, NOW + 1, 3, 0, 2.5, None, None)
    await store.cluster.report_pass(first)
    await other.cluster.report_pass(
        InstanceStatus("gw-b", NOW, NOW + 2, 1, 1, 0.0, "X", "wal_busy")
    )
    await store.cluster.report_pass(InstanceStatus("gw-a", NOW + 5, NOW + 6, 4, 0, 1.0, None, None))
    passes = await other.cluster.instance_passes()
    assert [(p.instance, p.purged) for p in passes] == [("gw-a", 4), ("gw-b", 1)]
    assert passes[1].reclaim_blocked == "wal_busy" and passes[1].error == "X"


async def test_check(store: MetadataStore) -> None:
    await store.check()
    assert store.name in ("sqlite", "postgresql")


async def test_migrations_build_exactly_the_declared_schema(store: MetadataStore) -> None:
    """What the Alembic history creates is what schema.py declares (tables,
    columns, types, indexes), on each database."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from filestore.metadata.schema import metadata
    from filestore.metadata.sql import SQLMetadataStore

    assert isinstance(store, SQLMetadataStore)

    def diff(conn: Any) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return [d for d in compare_metadata(context, metadata) if not _is_server_default(d)]

    assert await store.db.run(diff, write=False) == []


def _is_server_default(change: Any) -> bool:
    # Alembic compares rendered server defaults textually ('' vs ''::text).
    return isinstance(change, list) and all(c[0] == "modify_default" for c in change)


async def test_a_database_newer_than_the_software_is_refused(
    store: MetadataStore, metadata_backend: MetadataBackend
) -> None:
    await db.execute(store, "UPDATE alembic_version SET version_num = '0999'")
    await store.close()
    with pytest.raises(ConfigError, match="newer than this filestore"):
        await _open(metadata_backend)
