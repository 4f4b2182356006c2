"""KEK rotation and destruction on a manual clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from filestore import ids
from filestore.errors import KeyNotFound
from filestore.metadata.base import FileKey, FileRecord, FileState
from scheduler.keys import destroy_after, manage_keys
from scheduler.runner import PurgeScheduler
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
            keyring.unwrap(first_kek, b"\0" * 16, b"\0" * 60)
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


async def test_kek_held_back_while_a_key_still_uses_it(
    tmp_path: Path, metadata_backend: MetadataBackend
) -> None:
    async with running_gateway(tmp_path, database_url=metadata_backend.url) as gw:
        svc = gw.services
        first_kek = svc.keyring.active_id
        fid = ids.new_file_id()
        now = gw.clock.now()
        # A key row under the first KEK whose file never got purged.
        await svc.metadata.files.create_upload(
            FileRecord(fid, "acme", FileState.UPLOADING, first_kek, now, now + 60),
            FileKey(fid, first_kek, b"w" * 60),
        )
        gw.clock.advance(HOUR)
        report = await manage_keys(svc.keyring, svc.metadata, svc.lifecycle.eraser, svc.settings)
        assert report.rotated_to is not None
        gw.clock.advance(destroy_after(svc.settings))
        report = await manage_keys(svc.keyring, svc.metadata, svc.lifecycle.eraser, svc.settings)
        assert report.held_back == [first_kek] and report.destroyed == []
        assert first_kek in dict(svc.keyring.entries())
        assert await svc.metadata.audit.records(0, 10) == []
