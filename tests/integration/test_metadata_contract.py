"""The MetadataStore contract, run against every metadata backend."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

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
    await store.crypto_erase(rec.id)
    loaded = await store.load(rec.id)
    assert loaded is not None and loaded[1] is None and loaded[0].sealed is None
    await store.crypto_erase(rec.id)  # idempotent
    assert not await store.finish_delete(rec.id, "a", NOW + 70)  # lost its lease
    assert await store.finish_delete(rec.id, "b", NOW + 70)
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
