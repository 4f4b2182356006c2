"""SQLite-specific promises: pragmas, the partial indexes in use, file mode,
no key residue once the WAL is truncated, an outside reader that pins the WAL
neither stalls requests nor hides, and old databases upgrading in place."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from filestore import ids
from filestore.errors import ConfigError, MetadataUnavailable
from filestore.metadata.base import DeleteReason, FileKey, FileRecord, FileState, Role
from filestore.metadata.migrate import head_revision
from filestore.metadata.sql import SQLMetadataStore
from tests.support import db
from tests.support.gateway import running_gateway
from tests.support.metrics import parse

NOW = 1_800_000_000.0
LEGACY = Path(__file__).with_name("legacy_schema_v4.sql")


def _record(ttl: float = 5) -> FileRecord:
    return FileRecord(secrets.token_bytes(16), "t", FileState.UPLOADING, 1, NOW, NOW + ttl)


async def test_schema_pragmas_and_indexes(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    store = await SQLMetadataStore.open(f"sqlite:///{path}")
    try:
        assert await db.scalar(store, "SELECT version_num FROM alembic_version") == (
            head_revision()
        )
        assert await db.scalar(store, "PRAGMA journal_mode") == "wal"
        assert await db.scalar(store, "PRAGMA secure_delete") == 1
        plan = " ".join(
            str(r)
            for r in await db.rows(
                store,
                "EXPLAIN QUERY PLAN SELECT id FROM files WHERE state <> 'purged' "
                "AND expires_at <= 5 ORDER BY expires_at",
            )
        )
        assert "files_live_expiry" in plan
    finally:
        await store.close()
    assert path.stat().st_mode & 0o777 == 0o600
    # Re-opening migrates nothing and keeps data.
    again = await SQLMetadataStore.open(f"sqlite:///{path}")
    await again.close()


async def test_crypto_erase_and_reclaim_leave_no_key_bytes(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    store = await SQLMetadataStore.open(f"sqlite:///{path}")
    try:
        wrapped = secrets.token_bytes(60)
        sealed = secrets.token_bytes(80)
        rec = _record()
        await store.files.create_upload(rec, FileKey(rec.id, 1, wrapped))
        await store.files.activate(rec.id, 10, sealed)
        # Before erasure the key is on disk somewhere (db or WAL).
        blob = path.read_bytes() + (tmp_path / "m.db-wal").read_bytes()
        assert wrapped in blob
        assert await store.files.begin_delete(rec.id, DeleteReason.EXPIRED, "o", NOW, NOW + 9)
        await store.files.crypto_erase([rec.id])
        assert (await store.files.reclaim()).complete
        for p in tmp_path.iterdir():
            if p.name.startswith("m.db"):
                data = p.read_bytes()
                assert wrapped not in data, p.name
                assert sealed not in data, p.name
    finally:
        await store.close()


@contextlib.contextmanager
def outside_reader(path: Path) -> Iterator[None]:
    """A read transaction held open by another program (a backup job, the
    ``sqlite3`` shell): it pins the WAL at its snapshot."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM files").fetchone()
        yield
    finally:
        conn.close()


async def test_a_pinned_wal_is_reported_and_blocks_no_request(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    store = await SQLMetadataStore.open(f"sqlite:///{path}")
    try:
        live = _record(ttl=3600)
        await store.files.create_upload(live, FileKey(live.id, 1, b"w" * 60))
        doomed = _record()
        await store.files.create_upload(doomed, FileKey(doomed.id, 1, b"k" * 60))
        with outside_reader(path):
            assert await store.files.begin_delete(doomed.id, DeleteReason.EXPIRED, "o", NOW, NOW)
            await store.files.crypto_erase([doomed.id])
            reclaim = asyncio.ensure_future(store.files.reclaim())
            # While the truncation retries, the database thread serves others.
            loaded = await store.files.load(live.id)
            assert loaded is not None and not reclaim.done()
            report = await reclaim
            assert (report.complete, report.blocked_by) == (False, "wal_busy")
        # The reader is gone: the next attempt completes.
        assert (await store.files.reclaim()).complete
    finally:
        await store.close()


async def test_legacy_database_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    try:
        conn.executescript(LEGACY.read_text())
        conn.execute("PRAGMA user_version=4")
        conn.execute(
            "INSERT INTO api_keys (key_id, secret_hash, role, tenant, created_at) "
            "VALUES ('abcdef012345', x'00', 'client', 'acme', 1)"
        )
        conn.commit()
    finally:
        conn.close()
    store = await SQLMetadataStore.open(f"sqlite:///{path}")
    try:
        assert [k.key_id for k in await store.api_keys.all()] == ["abcdef012345"]
        assert await db.scalar(store, "SELECT version_num FROM alembic_version") == (
            head_revision()
        )
        assert await store.cluster.instance_passes() == []
    finally:
        await store.close()


async def test_unknown_legacy_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=2")
    conn.close()
    with pytest.raises(ConfigError, match="legacy schema version 2"):
        await SQLMetadataStore.open(f"sqlite:///{path}")


async def test_unreachable_database_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(MetadataUnavailable):
        await SQLMetadataStore.open(f"sqlite:///{tmp_path / 'file' / 'm.db'}")


async def test_a_write_lock_never_let_go_fails_writes_after_the_busy_timeout(
    tmp_path: Path,
) -> None:
    """Another process holding the write lock and never letting go (one
    stopped mid-transaction) fails this store's writes as unavailable once
    the busy timeout has passed, instead of hanging its database thread;
    reads still answer. Once the holder lets go, writes go through again,
    and the abandoned wait's late grant is let go rather than kept."""
    path = tmp_path / "m.db"
    store = await SQLMetadataStore.open(f"sqlite:///{path}")
    try:
        store.db._write_lock.timeout = 0.3  # type: ignore[attr-defined]
        kept = _record(ttl=3600)
        await store.files.create_upload(kept, FileKey(kept.id, 1, b"w" * 60))
        holder = os.open(f"{path}.write-lock", os.O_RDONLY)
        try:
            fcntl.flock(holder, fcntl.LOCK_EX)  # a description of its own: another holder
            blocked = _record()
            async with asyncio.timeout(30):  # a hang guard, far above the 0.3 s
                with pytest.raises(MetadataUnavailable):
                    await store.files.create_upload(blocked, FileKey(blocked.id, 1, b"k" * 60))
                assert await store.files.load(kept.id) is not None
                assert await store.files.load(blocked.id) is None
        finally:
            os.close(holder)
        again = _record()
        await store.files.create_upload(again, FileKey(again.id, 1, b"a" * 60))
        assert await store.files.load(again.id) is not None
        probe = os.open(f"{path}.write-lock", os.O_RDONLY)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody kept it
        finally:
            os.close(probe)
    finally:
        await store.close()


async def test_an_outside_reader_cannot_hold_the_purge_past_its_bound(tmp_path: Path) -> None:
    """With a reader pinning the WAL, an expired file is still deleted on
    time (row purged, blob gone, audited); the pass says the WAL could not be
    truncated, in the status and the metrics, until the reader lets go."""
    async with running_gateway(tmp_path, purge_interval=5, download_grace=5) as gw:
        ops = await gw.auth("acme", Role.OPERATOR)
        meta = await gw.upload(b"short-lived", params={"ttl": "3s"})
        gw.clock.advance(4)
        with outside_reader(gw.settings.database_path):
            run = await (await gw.client.post("/v1/purge/run", headers=ops)).json()
            assert run["pass"]["purged"] == 1
            assert gw.blob_files() == []
            assert (await db.file_states(gw.services)) == {ids.from_text(meta["id"]): "purged"}
            status = await (await gw.client.get("/v1/purge/status", headers=ops)).json()
            assert status["reclaim_blocked"] == "wal_busy"
            assert status["reclaim_blocked_passes_total"] == 1
            metrics = parse(await (await gw.client.get("/metrics")).text())
            assert metrics.value("filestore_reclaim_blocked") == 1
            assert metrics.value("filestore_reclaim_blocked_passes_total") == 1
        await gw.client.post("/v1/purge/run", headers=ops)
        status = await (await gw.client.get("/v1/purge/status", headers=ops)).json()
        assert status["reclaim_blocked"] is None
        metrics = parse(await (await gw.client.get("/metrics")).text())
        assert metrics.value("filestore_reclaim_blocked") == 0
