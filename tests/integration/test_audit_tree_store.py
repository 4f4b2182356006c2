"""The audit tree the store keeps as records are appended, on SQLite and
PostgreSQL: the tiles it serves are those of the records on file, the rows
are append-only, and migration 0006 backfills an existing log to exactly
what the append path writes."""

from __future__ import annotations

import secrets

from filestore import ids
from filestore.audit import decode_record, encode_record, entries, merkle
from filestore.audit.tiles import TILE_WIDTH, Tile, partial_tiles, read_root, tile_width
from filestore.metadata.base import FileKey, FileRecord, FileState, MetadataStore
from filestore.metadata.migrate import head_revision
from filestore.metadata.sql import SQLMetadataStore
from tests.support import db
from tests.support.db import MetadataBackend

NOW = 1_800_000_000.0


def _kek(kek_id: int) -> entries.AuditEntry:
    return entries.kek_destroyed(
        kek_id=kek_id,
        created_at=NOW,
        destroyed_at=NOW + 1,
        backend="keyring",
        actor="test",
        software_version="0",
    )


async def _purge_batch(store: MetadataStore, n: int) -> None:
    """n files deleted in one finish_delete: one transaction, many leaves."""
    made = []
    for _ in range(n):
        rec = FileRecord(secrets.token_bytes(16), "t", FileState.UPLOADING, 1, NOW, NOW + 1)
        await store.files.create_upload(rec, FileKey(rec.id, 1, b"w" * 60 + rec.id))
        await store.files.activate(rec.id, 1, b"sealed")
        made.append(rec)
    claimed = await store.files.claim_expired(NOW + 2, n, "o", NOW + 100)
    await store.files.crypto_erase([r.id for r in claimed])
    deletions = [
        (
            r.id,
            entries.file_deleted(
                file_id=ids.to_text(r.id),
                tenant=r.tenant,
                size=1,
                created_at=r.created_at,
                expires_at=r.expires_at,
                deleted_at=NOW + 3,
                reason="expired",
                backend="local",
                kek_id=1,
                actor="test",
                software_version="0",
            ),
        )
        for r in claimed
    ]
    assert len(await store.files.finish_delete(deletions, "o", NOW + 3)) == n


class _StoreSource:
    """A synchronous TileSource over tiles read beforehand from the store."""

    def __init__(self, tiles: dict[Tile, bytes]) -> None:
        self.tiles = tiles

    def read_tiles(self, tiles: list[Tile]) -> list[bytes]:
        return [self.tiles[t] for t in tiles]


async def _all_tiles(store: MetadataStore, size: int) -> dict[Tile, bytes]:
    wanted = []
    level = 0
    while size >> (8 * level):
        index = 0
        while width := tile_width(level, index, size):
            wanted.append(Tile(level, index, width))
            index += 1
        level += 1
    return dict(zip(wanted, await store.audit.read_tiles(wanted), strict=True))


async def test_tiles_follow_appends_and_migration_backfills(
    metadata_backend: MetadataBackend,
) -> None:
    store = await SQLMetadataStore.open(metadata_backend.url)
    try:
        # Single appends up to one short of a tile, then a batch that
        # crosses the boundary inside one transaction, then more singles.
        for k in range(TILE_WIDTH - 3):
            await store.audit.append(_kek(k))
        await _purge_batch(store, 7)
        for k in range(1000, 1000 + TILE_WIDTH + 10):
            await store.audit.append(_kek(k))
        size = TILE_WIDTH - 3 + 7 + TILE_WIDTH + 10
        leaves = await store.audit.hashes(size)
        assert len(leaves) == size
        tiles = await _all_tiles(store, size)
        assert read_root(size, _StoreSource(tiles)) == merkle.root(leaves)
        for tile in partial_tiles(size):
            assert len(tiles[tile]) == 32 * tile.width
        rows = await db.rows(store, "SELECT level, idx, hash FROM audit_tree ORDER BY level, idx")
        assert rows == [
            (1, i, merkle.root(leaves[i * TILE_WIDTH : (i + 1) * TILE_WIDTH])) for i in range(2)
        ]
        # A tile beyond the records comes back short, never padded.
        (beyond,) = await store.audit.read_tiles([Tile(0, 5, 256)])
        assert beyond == b""
        # Append-only, by the database itself.
        assert "append-only" in await db.refused(store, "DELETE FROM audit_tree")
        assert "append-only" in await db.refused(store, "UPDATE audit_tree SET idx = idx + 9")
        # An existing log from before 0006: the migration rebuilds the same
        # rows (the later migrations' tables go too, to be made again).
        await db.execute(store, "DROP TABLE audit_tree")
        await db.execute(store, "DROP TABLE audit_cosignatures")
        await db.execute(store, "UPDATE alembic_version SET version_num = '0005'")
    finally:
        await store.close()
    again = await SQLMetadataStore.open(metadata_backend.url)
    try:
        assert await db.scalar(again, "SELECT version_num FROM alembic_version") == (
            head_revision()
        )
        assert (
            await db.rows(again, "SELECT level, idx, hash FROM audit_tree ORDER BY level, idx")
            == rows
        )
        # And appending after the backfill goes on from there.
        grown = 3 * TILE_WIDTH
        for k in range(2000, 2000 + grown - size):
            await again.audit.append(_kek(k))
        size = grown
        leaves = await again.audit.hashes(size)
        assert read_root(size, _StoreSource(await _all_tiles(again, size))) == merkle.root(leaves)
        assert await db.scalar(again, "SELECT count(*) FROM audit_tree") == 3
        assert await again.audit.checkpoint_sized(0, 10) is False
        await again.audit.add_checkpoint(5, "note", NOW)
        assert await again.audit.checkpoint_sized(5, 6) is True
        assert await again.audit.checkpoint_sized(6, 700) is False
        texts = await again.audit.record_texts(2, 3)
        assert [r.seq for r in await again.audit.records(2, 3)] == [3, 4, 5]
        assert [bytes.fromhex(decode_record(t).hash) for t in texts] == leaves[2:5]
        assert [encode_record(decode_record(t)) for t in texts] == texts
    finally:
        await again.close()
