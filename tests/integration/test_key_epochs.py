"""KEK rotation and destruction on a manual clock."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from filestore import ids
from filestore.crypto import Keyring
from filestore.crypto.wrapping import DekBinding
from filestore.errors import KeyNotFound, MetadataUnavailable
from scheduler.keys import destroy_after, manage_keys
from scheduler.runner import PurgeScheduler
from tests.support import db
from tests.support.db import MetadataBackend
from tests.support.gateway import running_gateway

HOUR = 3600.0


async def test_rotation_and_destruction(tmp_path: Path, metadata_backend: MetadataBackend) -> None:
    async with running_gateway(tmp_path, database_url=metadata_backend.url) as gw:
        svc = gw.services
        keyring = svc.keyring
        scheduler = PurgeScheduler(svc)
        first_kek = keyring.active_id
        old = await gw.upload(b"under the first KEK", params={"ttl": "23h"})
        await scheduler.run_pass()
        assert keyring.active_id == first_kek  # not an hour old yet

        gw.clock.advance(HOUR)
        await scheduler.run_pass()
        second_kek = keyring.active_id
        assert second_kek != first_kek
        new = await gw.upload(b"under the second KEK")
        loaded = await svc.metadata.files.load(ids.from_text(new["id"]))
        assert loaded is not None and loaded[0].kek_id == second_kek
        # Files under the old KEK are served until they expire.
        assert await (await gw.get(old["id"])).read() == b"under the first KEK"

        # Just before the destruction time the KEK stays.
        retired_at = dict(keyring.entries())[second_kek]
        gw.clock.set(retired_at + destroy_after(svc.settings) - 1)
        await scheduler.run_pass()
        assert first_kek in dict(keyring.entries())
        gw.clock.set(retired_at + destroy_after(svc.settings))
        await scheduler.run_pass()
        assert first_kek not in dict(keyring.entries())
        with pytest.raises(KeyNotFound):
            keyring.unwrap(first_kek, DekBinding(b"\0" * 16, "acme"), b"\0" * 61)
        records = await svc.metadata.audit.records(0, 1000)
        assert [r.kek_id for r in records if r.event == "kek_destroyed"] == [first_kek]
        # The file under it was purged first, on the record before the KEK.
        (old_record,) = [r for r in records if r.file_id == old["id"]]
        (kek_record,) = [r for r in records if r.event == "kek_destroyed"]
        assert old_record.seq < kek_record.seq
        # A later pass neither destroys nor records it again.
        await scheduler.run_pass()
        records = await svc.metadata.audit.records(0, 1000)
        assert [r.kek_id for r in records if r.event == "kek_destroyed"] == [first_kek]


async def test_a_kek_is_destroyed_at_its_deadline_whatever_rows_remain(
    tmp_path: Path, metadata_backend: MetadataBackend
) -> None:
    """The KEK schedule is a backstop independent of the database: a row
    whose expiry was pushed a day ahead cannot keep its file readable past
    the deadline, and the file is then purged and audited as crypto-erased."""
    async with running_gateway(tmp_path, database_url=metadata_backend.url) as gw:
        svc = gw.services
        scheduler = PurgeScheduler(svc)
        first_kek = svc.keyring.active_id
        meta = await gw.upload(b"kept alive by a bad row", params={"ttl": "1h"})
        file_id = ids.from_text(meta["id"])
        # A bug, or a write to the database: the expiry moves two days on.
        await db.execute(
            svc,
            "UPDATE files SET expires_at = expires_at + :more WHERE id = :id",
            more=2 * 86400.0,
            id=file_id,
        )
        gw.clock.advance(HOUR)
        await scheduler.run_pass()  # rotates; the file is not due
        assert (await gw.get(meta["id"])).status == 200
        retired_at = dict(svc.keyring.entries())[svc.keyring.active_id]
        gw.clock.set(retired_at + destroy_after(svc.settings))
        report = await manage_keys(svc.keyring, svc.metadata, svc.lifecycle.eraser, svc.settings)
        assert report.destroyed == [first_kek] and report.forced == [first_kek]
        assert report.held_back == [] and svc.keyring.tombstones() == []
        # Unreadable at once, before any purge: 410, not a server error.
        got = await gw.get(meta["id"])
        assert got.status == 410, await got.text()

        await scheduler.run_pass()
        assert await db.file_states(svc) == {file_id: "purged"}
        assert gw.blob_files() == []
        records = await svc.metadata.audit.records(0, 100)
        (file_record,) = [r for r in records if r.file_id == meta["id"]]
        assert file_record.reason == "kek_destroyed"
        (kek_record,) = [r for r in records if r.event == "kek_destroyed"]
        assert kek_record.kek_id == first_kek
        assert kek_record.verification == {"no_keys_remaining": False}


async def test_a_destruction_during_a_database_outage_is_recorded_later(
    tmp_path: Path, metadata_backend: MetadataBackend
) -> None:
    async with running_gateway(tmp_path, database_url=metadata_backend.url) as gw:
        svc = gw.services
        first_kek = svc.keyring.active_id
        gw.clock.advance(HOUR)
        await manage_keys(svc.keyring, svc.metadata, svc.lifecycle.eraser, svc.settings)
        retired_at = dict(svc.keyring.entries())[svc.keyring.active_id]
        gw.clock.set(retired_at + destroy_after(svc.settings))
        real = svc.metadata.audit

        class Down:
            async def record_for_kek(self, kek_id: int) -> None:
                raise MetadataUnavailable("the metadata database is unreachable")

        svc.metadata.audit = Down()  # type: ignore[assignment]
        try:
            report = await manage_keys(
                svc.keyring, svc.metadata, svc.lifecycle.eraser, svc.settings
            )
        finally:
            svc.metadata.audit = real
        # Destroyed on time all the same; the record waits in a tombstone
        # that a restart would read back from the keyring file.
        assert report.destroyed == [first_kek] and report.held_back == [first_kek]
        assert first_kek not in dict(svc.keyring.entries())
        reopened = Keyring.load_or_create(svc.settings.keyring_path, 0.0)
        assert [t.kek_id for t in reopened.tombstones()] == [first_kek]

        report = await manage_keys(svc.keyring, svc.metadata, svc.lifecycle.eraser, svc.settings)
        assert report.held_back == [] and svc.keyring.tombstones() == []
        await manage_keys(svc.keyring, svc.metadata, svc.lifecycle.eraser, svc.settings)
        records = await svc.metadata.audit.records(0, 100)
        assert [r.kek_id for r in records if r.event == "kek_destroyed"] == [first_kek]
        (kek_record,) = [r for r in records if r.event == "kek_destroyed"]
        assert kek_record.verification == {"no_keys_remaining": True}


async def test_a_row_moved_to_another_tenant_does_not_hand_over_the_file(
    tmp_path: Path, metadata_backend: MetadataBackend
) -> None:
    async with running_gateway(tmp_path, database_url=metadata_backend.url) as gw:
        meta = await gw.upload(b"acme's document")
        await gw.key("intruder")
        await db.execute(
            gw.services,
            "UPDATE files SET tenant = 'intruder' WHERE id = :id",
            id=ids.from_text(meta["id"]),
        )
        got = await gw.client.get(
            f"/v1/files/{meta['id']}", headers=await gw.auth("intruder")
        )
        body = await got.read()
        assert got.status == 500 and b"acme's document" not in body
        assert (await gw.get(meta["id"])).status == 404  # and acme no longer sees it


async def test_legacy_key_wraps_are_resealed_with_their_tenant(
    tmp_path: Path, metadata_backend: MetadataBackend
) -> None:
    """After an upgrade, the key step re-seals every key written in the old
    layout (which bound no tenant); the file stays readable throughout."""
    async with running_gateway(tmp_path, database_url=metadata_backend.url) as gw:
        svc = gw.services
        keyring = svc.keyring
        assert isinstance(keyring, Keyring)
        metas = [await gw.upload(f"file {n}".encode()) for n in range(3)]
        kek = base64.b64decode(
            json.loads(svc.settings.keyring_path.read_text())["keys"][0]["key"]
        )
        for meta in metas:
            file_id = ids.from_text(meta["id"])
            loaded = await svc.metadata.files.load(file_id)
            assert loaded is not None and loaded[1] is not None
            dek = keyring.unwrap(loaded[1].kek_id, DekBinding(file_id, "acme"), loaded[1].wrapped)
            # What the previous release wrote: no version byte, no tenant.
            nonce = os.urandom(12)
            aad = b"filestore/v1/dek-wrap\x00" + loaded[1].kek_id.to_bytes(4, "big") + file_id
            legacy = nonce + AESGCM(kek).encrypt(nonce, dek, aad)
            await db.execute(svc, "DELETE FROM file_keys WHERE file_id = :id", id=file_id)
            await db.execute(
                svc,
                "INSERT INTO file_keys (file_id, kek_id, wrapped_dek) VALUES (:id, :k, :w)",
                id=file_id,
                k=loaded[1].kek_id,
                w=legacy,
            )
            assert await (await gw.get(meta["id"])).read() == f"file {metas.index(meta)}".encode()
        report = await manage_keys(keyring, svc.metadata, svc.lifecycle.eraser, svc.settings)
        assert report.rewrapped == 3
        assert await svc.metadata.files.legacy_keys(b"", 10) == []
        sizes = await db.rows(svc, "SELECT length(wrapped_dek) FROM file_keys")
        assert sorted(sizes) == [(61,)] * 3
        for n, meta in enumerate(metas):
            assert await (await gw.get(meta["id"])).read() == f"file {n}".encode()
        again = await manage_keys(keyring, svc.metadata, svc.lifecycle.eraser, svc.settings)
        assert again.rewrapped == 0
