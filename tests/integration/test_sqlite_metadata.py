"""SQLite-specific promises: schema, pragmas, insert-once keys, no residue."""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

import pytest

from filestore.errors import MetadataUnavailable
from filestore.metadata.base import DeleteReason, FileKey, FileRecord, FileState
from filestore.metadata.sqlite import MIGRATIONS, SQLiteMetadataStore

NOW = 1_800_000_000.0


async def test_schema_version_and_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    store = await SQLiteMetadataStore.open(path)
    await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        plan = " ".join(
            str(r)
            for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM files WHERE state <> 'purged' "
                "AND expires_at <= 5 ORDER BY expires_at"
            )
        )
        assert "files_live_expiry" in plan
    finally:
        conn.close()
    assert path.stat().st_mode & 0o777 == 0o600
    # Re-opening migrates nothing and keeps data.
    again = await SQLiteMetadataStore.open(path)
    await again.close()


async def test_file_keys_are_insert_once(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    store = await SQLiteMetadataStore.open(path)
    rec = FileRecord(secrets.token_bytes(16), "t", FileState.UPLOADING, 1, NOW, NOW + 5)
    await store.create_upload(rec, FileKey(rec.id, 1, b"k" * 60))
    await store.close()
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="insert-once"):
            conn.execute("UPDATE file_keys SET wrapped_dek = x'00'")
    finally:
        conn.close()


async def test_crypto_erase_leaves_no_key_bytes_in_db_or_wal(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    store = await SQLiteMetadataStore.open(path)
    try:
        wrapped = secrets.token_bytes(60)
        sealed = secrets.token_bytes(80)
        rec = FileRecord(secrets.token_bytes(16), "t", FileState.UPLOADING, 1, NOW, NOW + 5)
        await store.create_upload(rec, FileKey(rec.id, 1, wrapped))
        await store.activate(rec.id, 10, sealed)
        # Before erasure the key is on disk somewhere (db or WAL).
        blob = path.read_bytes() + (tmp_path / "m.db-wal").read_bytes()
        assert wrapped in blob
        assert await store.begin_delete(rec.id, DeleteReason.EXPIRED, "o", NOW, NOW + 9)
        await store.crypto_erase([rec.id])
        files = [p for p in tmp_path.iterdir() if p.name.startswith("m.db")]
        for p in files:
            data = p.read_bytes()
            assert wrapped not in data, p.name
            assert sealed not in data, p.name
    finally:
        await store.close()


async def test_unreachable_database_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(MetadataUnavailable):
        await SQLiteMetadataStore.open(tmp_path / "file" / "m.db")
