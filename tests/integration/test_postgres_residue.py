"""What a crypto-erased key leaves in PostgreSQL's files, found by searching
them: the purge's vacuum makes the dead key tuples' space reusable, so new
keys overwrite them; the WAL keeps its copies until its segments are recycled,
which only KEK destruction covers (docs/architecture.md, "Keys")."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from filestore.metadata.base import DeleteReason, FileKey, FileRecord, FileState, MetadataStore
from filestore.metadata.sql import SQLMetadataStore
from tests.support import db
from tests.support.postgres import PostgresServer

NOW = 1_800_000_000.0
FILES = 100


def _found(paths: list[Path], needles: list[bytes]) -> int:
    hits: set[bytes] = set()
    for path in paths:
        data = path.read_bytes()
        hits.update(n for n in needles if n in data)
    return len(hits)


async def _add(store: MetadataStore, count: int) -> dict[bytes, bytes]:
    keys: dict[bytes, bytes] = {}
    for _ in range(count):
        file_id, wrapped = secrets.token_bytes(16), secrets.token_bytes(60)
        record = FileRecord(file_id, "t", FileState.UPLOADING, 1, NOW, NOW + 5)
        await store.files.create_upload(record, FileKey(file_id, 1, wrapped))
        keys[file_id] = wrapped
    return keys


async def _erase(store: MetadataStore, file_ids: list[bytes]) -> None:
    for file_id in file_ids:
        assert await store.files.begin_delete(file_id, DeleteReason.EXPIRED, "o", NOW, NOW + 9)
    await store.files.crypto_erase(file_ids)


async def _bulk_live_keys(store: MetadataStore, count: int) -> None:
    """Many live keys, inserted in one statement each table: the realistic
    case where one purge batch is a small part of the key table."""
    rows = (
        "SELECT decode(lpad(to_hex(g), 32, '0'), 'hex') AS id, g FROM generate_series(1, :n) g"
    )
    await db.execute(
        store,
        "INSERT INTO files (id, tenant, state, kek_id, created_at, expires_at) "
        f"SELECT id, 't', 'active', 1, 0, 1e10 FROM ({rows}) r",
        n=count,
    )
    await db.execute(
        store,
        "INSERT INTO file_keys (file_id, kek_id, wrapped_dek) "
        f"SELECT id, 1, decode(md5(g::text) || md5(g::text), 'hex') FROM ({rows}) r",
        n=count,
    )


@pytest.mark.parametrize(
    ("vacuum", "live"),
    [(True, 0), (False, 0), (True, 20_000)],
    ids=["reclaimed", "not-reclaimed", "reclaimed-among-20k-live"],
)
async def test_reclaimed_key_space_is_overwritten_wal_keeps_copies(
    postgres: PostgresServer, pg_database_url: str, vacuum: bool, live: int
) -> None:
    if postgres.data_dir is None:
        pytest.skip("the server's files are not on this machine")
    store = await SQLMetadataStore.open(pg_database_url)
    try:
        heap = postgres.data_dir / str(
            await db.scalar(store, "SELECT pg_relation_filepath('file_keys')")
        )
        if live:
            await _bulk_live_keys(store, live)
        keys = await _add(store, FILES)
        postgres.checkpoint()
        erased = list(keys.values())
        assert _found([heap], erased) == FILES  # the search finds what is there
        await _erase(store, list(keys))
        if vacuum:
            assert (await store.files.reclaim()).complete
        # Ordinary traffic: as many new keys as were erased.
        await _add(store, FILES)
        postgres.checkpoint()
        left_in_heap = _found([heap], erased)
        wal = sorted((postgres.data_dir / "pg_wal").glob("0*"))
        left_in_wal = _found(wal, erased)
    finally:
        await store.close()
    if vacuum:
        assert left_in_heap == 0
    else:
        # Without the vacuum, dead tuples hold their bytes and new keys go
        # elsewhere: this is what the purge's reclaim step is for.
        assert left_in_heap == FILES
    # The WAL still has the erased keys (a plain search misses the odd one
    # split over a WAL page boundary): only the KEK's destruction makes those
    # copies, and archives, replicas and backups of them, unreadable.
    assert left_in_wal >= FILES * 0.9
