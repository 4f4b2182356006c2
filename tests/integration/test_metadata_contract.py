"""The MetadataStore contract, run against every metadata backend."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from filestore import ids
from filestore.errors import NotFound
from filestore.metadata.base import (
    ApiKeyRecord,
    DeleteReason,
    FileKey,
    FileRecord,
    FileState,
    MetadataStore,
    Role,
)
from filestore.metadata.sqlite import SQLiteMetadataStore

NOW = 1_800_000_000.0


@pytest.fixture(params=["sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MetadataStore]:
    opened = await SQLiteMetadataStore.open(tmp_path / "meta.db")
    try:
        yield opened
    finally:
        await opened.close()


def _fields(rec: FileRecord, **kw: object) -> dict[str, object]:
    return {
        "event": "file_deleted",
        "recorded_at": NOW + 70,
        "file_id": ids.to_text(rec.id),
        "tenant": rec.tenant,
        "size": 123,
        "created_at": rec.created_at,
        "expires_at": rec.expires_at,
        "deleted_at": NOW + 70,
        "reason": "expired",
        "backend": "local",
        "method": "crypto_erase+delete",
        "verification": {"key_erased": True, "blob_absent": True},
        "kek_id": 1,
        "actor": "test",
        "software_version": "0",
        **kw,
    }


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
    await store.create_upload(rec, FileKey(rec.id, 1, b"wrapped-" + rec.id))
    await store.activate(rec.id, 123, b"sealed")
    return rec


async def test_upload_lifecycle(store: MetadataStore) -> None:
    rec = _record()
    await store.create_upload(rec, FileKey(rec.id, 1, b"w" * 60))
    loaded = await store.load(rec.id)
    assert loaded is not None
    assert loaded[0].state == FileState.UPLOADING
    assert loaded[1] == FileKey(rec.id, 1, b"w" * 60)
    await store.activate(rec.id, 42, b"sealed-bytes")
    loaded = await store.load(rec.id)
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
        await store.activate(rec.id, 42, b"again")


async def test_missing_file(store: MetadataStore) -> None:
    assert await store.load(secrets.token_bytes(16)) is None


async def test_discard_upload_removes_row_and_key(store: MetadataStore) -> None:
    rec = _record()
    await store.create_upload(rec, FileKey(rec.id, 1, b"w"))
    await store.discard_upload(rec.id)
    assert await store.load(rec.id) is None
    await store.discard_upload(rec.id)  # idempotent


async def test_discard_never_touches_an_active_file(store: MetadataStore) -> None:
    rec = await _upload(store)
    await store.discard_upload(rec.id)
    loaded = await store.load(rec.id)
    assert loaded is not None and loaded[0].state == FileState.ACTIVE


async def test_count_download_respects_limit_and_expiry(store: MetadataStore) -> None:
    rec = await _upload(store, max_downloads=2)
    assert await store.count_download(rec.id, NOW) == 1
    assert await store.count_download(rec.id, NOW) == 2
    assert await store.count_download(rec.id, NOW) is None
    unlimited = await _upload(store)
    assert await store.count_download(unlimited.id, NOW + 3599) == 1
    assert await store.count_download(unlimited.id, NOW + 3600) is None


async def test_delete_steps(store: MetadataStore) -> None:
    rec = await _upload(store)
    row = await store.begin_delete(rec.id, DeleteReason.CLIENT_REQUEST, "a", NOW, NOW + 60)
    assert row is not None and row.state == FileState.PURGING
    assert row.delete_reason == DeleteReason.CLIENT_REQUEST
    # Another owner cannot take a live lease ...
    assert await store.begin_delete(rec.id, DeleteReason.EXPIRED, "b", NOW + 1, NOW + 61) is None
    # ... but can take it over once it lapsed; the first reason stays.
    row = await store.begin_delete(rec.id, DeleteReason.EXPIRED, "b", NOW + 60, NOW + 120)
    assert row is not None and row.lease_owner == "b"
    assert row.delete_reason == DeleteReason.CLIENT_REQUEST
    await store.crypto_erase([rec.id])
    loaded = await store.load(rec.id)
    assert loaded is not None and loaded[1] is None and loaded[0].sealed is None
    await store.crypto_erase([rec.id])  # idempotent
    assert await store.finish_delete([(rec.id, _fields(rec))], "a", NOW + 70) == []  # lost lease
    (appended,) = await store.finish_delete([(rec.id, _fields(rec))], "b", NOW + 70)
    assert appended.seq == 1 and appended.file_id == ids.to_text(rec.id)
    loaded = await store.load(rec.id)
    assert loaded is not None
    assert loaded[0].state == FileState.PURGED and loaded[0].deleted_at == NOW + 70
    assert await store.begin_delete(rec.id, DeleteReason.EXPIRED, "c", NOW + 80, NOW + 90) is None


async def test_api_keys(store: MetadataStore) -> None:
    key = ApiKeyRecord("abcdef012345", b"h" * 32, Role.OPERATOR, "acme", NOW, "ops")
    await store.add_api_key(key)
    assert await store.get_api_key("abcdef012345") == key
    assert await store.get_api_key("000000000000") is None
    assert [k.key_id for k in await store.list_api_keys()] == ["abcdef012345"]
    assert await store.revoke_api_key("abcdef012345", NOW + 5)
    assert not await store.revoke_api_key("abcdef012345", NOW + 6)
    revoked = await store.get_api_key("abcdef012345")
    assert revoked is not None and revoked.revoked_at == NOW + 5


async def test_check(store: MetadataStore) -> None:
    await store.check()


async def test_claim_expired_oldest_first_with_leases_and_backoff(store: MetadataStore) -> None:
    late = await _upload(store, ttl=30)
    early = await _upload(store, ttl=10)
    live = await _upload(store, ttl=3600)
    assert await store.claim_expired(NOW + 5, 10, "a", NOW + 100) == []
    claimed = await store.claim_expired(NOW + 40, 10, "a", NOW + 100)
    assert [r.id for r in claimed] == [early.id, late.id]
    assert all(r.state == FileState.PURGING and r.lease_owner == "a" for r in claimed)
    assert all(r.delete_reason == DeleteReason.EXPIRED for r in claimed)
    # Leased: nobody else claims them until the lease lapses.
    assert await store.claim_expired(NOW + 50, 10, "b", NOW + 150) == []
    await store.record_failure(early.id, "a", NOW + 500, "StorageUnavailable")
    stats = await store.purge_stats(NOW + 60)
    assert (stats.backlog, stats.oldest_expiry, stats.failing) == (2, NOW + 10, 1)
    assert stats.failures_by_error == {"StorageUnavailable": 1}
    assert (stats.live, stats.oldest_live_created) == (1, NOW)
    # The lapsed lease is taken over; the failed file waits out its backoff.
    again = await store.claim_expired(NOW + 101, 10, "b", NOW + 200)
    assert [r.id for r in again] == [late.id]
    assert await store.claim_expired(NOW + 199, 10, "c", NOW + 600) == []
    again = await store.claim_expired(NOW + 500, 10, "c", NOW + 600)
    assert [(r.id, r.purge_attempts) for r in again] == [(early.id, 1), (late.id, 0)]
    assert live.id not in {r.id for r in again}
    assert await store.live_ids([early.id, live.id, b"x" * 16]) == {early.id, live.id}


async def test_stuck_uploads(store: MetadataStore) -> None:
    rec = _record()
    await store.create_upload(rec, FileKey(rec.id, 1, b"w"))
    assert await store.stuck_uploads(NOW, 10) == []
    assert [r.id for r in await store.stuck_uploads(NOW + 1, 10)] == [rec.id]


async def test_audit_chain_and_checkpoints(store: MetadataStore) -> None:
    assert await store.audit_head() is None
    files = [await _upload(store, ttl=1) for _ in range(3)]
    claimed = await store.claim_expired(NOW + 2, 10, "o", NOW + 100)
    await store.crypto_erase([r.id for r in claimed])
    records = await store.finish_delete([(r.id, _fields(r)) for r in claimed], "o", NOW + 3)
    assert [r.seq for r in records] == [1, 2, 3]
    assert records[1].prev_hash == records[0].hash
    kek = await store.append_audit(
        _fields(
            files[0],
            event="kek_destroyed",
            file_id=None,
            tenant=None,
            size=None,
            reason="kek_epoch_end",
            method="destroy",
            expires_at=None,
            verification={"no_keys_remaining": True},
        )
    )
    assert kek.seq == 4 and kek.prev_hash == records[2].hash
    assert await store.audit_head() == kek
    assert [r.seq for r in await store.audit_range(1, 10)] == [2, 3, 4]
    assert await store.audit_hashes(2) == [bytes.fromhex(r.hash) for r in records[:2]]
    by_file = {r.file_id: r for r in records}
    assert (
        await store.audit_record_for(ids.to_text(files[1].id)) == by_file[ids.to_text(files[1].id)]
    )
    assert await store.audit_record_for_kek(1) == kek
    assert await store.audit_seq_range(None, None, 3) == (1, 3)
    assert await store.audit_seq_range(NOW + 100, None, 4) is None
    await store.add_checkpoint(2, "note-2", NOW)
    await store.add_checkpoint(4, "note-4a", NOW)
    await store.add_checkpoint(4, "note-4b", NOW + 1)
    assert await store.latest_checkpoint() == (4, "note-4b")
    assert await store.checkpoint_covering(3) == (4, "note-4a")
    assert await store.checkpoints_between(0, 4) == ["note-2", "note-4b"]
    assert await store.count_keys(1) == 0
