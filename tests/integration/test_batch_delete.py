"""Batch deletion (``BlobStore.delete_many``) and the purge pass that uses it,
on the real backends: local disk, and S3 on a real SeaweedFS. Per-key
refusals come from :class:`tests.support.s3_faults.RefusingClient` around
the store's real client; outages are the real server killed mid-pass."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from filestore import ids
from filestore.clock import ManualClock
from filestore.config import Settings
from filestore.errors import StorageUnavailable
from filestore.services import Services, open_services
from filestore.storage.base import BlobStore, ListableBlobStore
from filestore.storage.s3 import S3BlobStore
from scheduler.purge import purge_pass
from tests.support import db
from tests.support.files import FileInfo, make_file
from tests.support.s3_faults import RefusingClient
from tests.support.seaweed import SeaweedServer


class Boom(Exception):
    """An injected crash."""


def blob(info: FileInfo) -> str:
    return ids.blob_name(info.id)


def names(count: int) -> list[str]:
    return [ids.blob_name(ids.new_file_id()) for _ in range(count)]


async def present(store: BlobStore, these: list[str]) -> set[str]:
    return {name for name in these if await store.exists(name)}


async def put(store: BlobStore, name: str, body: bytes = b"ciphertext") -> None:
    writer = await store.create(name)
    await writer.write(body)
    await writer.commit()


# ------------------------------------------------------------ the contract
async def test_delete_many_removes_each_blob_and_its_partial_upload(
    blob_store: BlobStore,
) -> None:
    doomed, kept = names(5), names(2)
    for name in doomed + kept:
        await put(blob_store, name)
    # A crash's leftover under a doomed name: a partial upload that is not
    # committed (on S3 a multipart upload: more than one 5 MiB part).
    writer = await blob_store.create(doomed[0])
    await writer.write(os.urandom((5 << 20) + 1))
    await writer.write(b"more")
    never_stored = names(1)[0]
    outcome = await blob_store.delete_many([*doomed, doomed[1], never_stored])
    assert outcome == dict.fromkeys([*doomed, never_stored])
    assert await present(blob_store, doomed + kept + [never_stored]) == set(kept)
    assert isinstance(blob_store, ListableBlobStore)
    assert sorted([b.name async for b in blob_store.list_blobs()]) == sorted(kept)
    for name in kept:
        assert b"".join([p async for p in blob_store.read(name)]) == b"ciphertext"
    await writer.abort()


async def test_delete_many_of_nothing_and_bad_names(blob_store: BlobStore) -> None:
    assert await blob_store.delete_many([]) == {}
    with pytest.raises(ValueError):
        await blob_store.delete_many(["../etc/passwd"])


# ------------------------------------------------------------ S3 specifics
@contextlib.asynccontextmanager
async def s3_store(server: SeaweedServer, bucket: str) -> AsyncIterator[S3BlobStore]:
    store = await S3BlobStore.open(Settings.load(env={}, **server.settings(bucket)))
    try:
        yield store
    finally:
        await store.close()


async def test_s3_batch_makes_one_request_per_thousand_keys(
    s3_env: SeaweedServer, s3_bucket: str
) -> None:
    """One listing of the prefix's uploads, one DeleteObjects per 1,000 keys,
    no HEAD: the reply's per-key result is the verification."""
    async with s3_store(s3_env, s3_bucket) as store:
        doomed, kept = names(1001), names(2)
        for name in doomed + kept:
            await put(store, name)
        client = store._client = RefusingClient(store._client, set())
        assert await store.delete_many(doomed) == dict.fromkeys(doomed)
        assert client.calls == {"get_paginator": 1, "delete_objects": 2}
        store._client = client.real
        assert await present(store, doomed + kept) == set(kept)


async def test_s3_key_left_out_of_the_reply_is_not_taken_as_deleted(
    s3_env: SeaweedServer, s3_bucket: str
) -> None:
    async with s3_store(s3_env, s3_bucket) as store:
        doomed = names(3)
        for name in doomed:
            await put(store, name)
        quiet = frozenset({store.prefix + doomed[0]})
        store._client = RefusingClient(store._client, set(), silent=quiet)
        outcome = await store.delete_many(doomed)
        assert {n for n, error in outcome.items() if error is not None} == {doomed[0]}
        # Deleting again is harmless: the next pass does exactly that.
        store._client = store._client.real
        assert await store.delete_many(doomed[:1]) == {doomed[0]: None}
        assert await present(store, doomed) == set()


async def test_s3_refused_keys_are_reported_and_stay(s3_env: SeaweedServer, s3_bucket: str) -> None:
    async with s3_store(s3_env, s3_bucket) as store:
        doomed = names(6)
        for name in doomed:
            await put(store, name)
        refused = {store.prefix + doomed[1], store.prefix + doomed[4]}
        store._client = RefusingClient(store._client, refused)
        outcome = await store.delete_many(doomed)
        failed = {n for n, error in outcome.items() if error is not None}
        assert failed == {doomed[1], doomed[4]}
        assert await present(store, doomed) == failed
        store._client.refused.clear()
        assert await store.delete_many(sorted(failed)) == dict.fromkeys(sorted(failed))
        assert await present(store, doomed) == set()


async def test_s3_versioning_turned_on_is_noticed_by_a_batch(
    s3_env: SeaweedServer, s3_bucket: str
) -> None:
    """The delete markers in the DeleteObjects reply give versioning away:
    those keys then lose every version, one by one."""
    async with s3_store(s3_env, s3_bucket) as store:
        assert store.versioned is False
        s3_env.admin.put_bucket_versioning(
            Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"}
        )
        doomed = names(3)
        for name in doomed:
            await put(store, name, b"first")
            await put(store, name, b"second")
        assert await store.delete_many(doomed) == dict.fromkeys(doomed)
        assert store.versioned is True
        listed = s3_env.admin.list_object_versions(Bucket=s3_bucket, Prefix=store.prefix)
        assert "Versions" not in listed and "DeleteMarkers" not in listed
        assert await present(store, doomed) == set()


async def test_s3_outage_is_an_error_for_every_name(s3_env: SeaweedServer, s3_bucket: str) -> None:
    async with s3_store(s3_env, s3_bucket) as store:
        doomed = names(4)
        for name in doomed:
            await put(store, name)
        s3_env.kill()
        try:
            outcome = await store.delete_many(doomed)
        finally:
            s3_env.start()
        assert set(outcome) == set(doomed)
        assert all(error is not None for error in outcome.values())
        assert await present(store, doomed) == set(doomed)


# ------------------------------------------------------- the purge on S3
@contextlib.asynccontextmanager
async def s3_services(
    tmp_path: Path, server: SeaweedServer, bucket: str, **overrides: Any
) -> AsyncIterator[Services]:
    settings = Settings.load(env={}, data_dir=tmp_path / "data", **server.settings(bucket))
    async with open_services(settings, ManualClock()) as svc:
        yield svc


async def files_made(svc: Services, count: int) -> list[FileInfo]:
    made = [await make_file(svc, ttl=30, size=100) for _ in range(count)]
    assert isinstance(svc.clock, ManualClock)
    svc.clock.advance(31)
    return made


def objects(server: SeaweedServer, bucket: str) -> set[str]:
    listed = server.admin.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {str(o["Key"]).rsplit("/", 1)[-1] for o in listed}


async def recorded(svc: Services) -> Counter[str]:
    records = await svc.metadata.audit.records(0, 10_000)
    return Counter(str(r.file_id) for r in records if r.file_id is not None)


async def states(svc: Services) -> Counter[str]:
    return Counter((await db.file_states(svc)).values())


async def settle_later(svc: Services) -> None:
    """Past any back-off or lease the first pass left, a pass finishes all."""
    assert isinstance(svc.clock, ManualClock)
    svc.clock.advance(600 + svc.lifecycle.eraser.lease_seconds)
    report = await purge_pass(svc.metadata.files, svc.lifecycle.eraser)
    assert report.failed == 0


async def test_purge_keeps_refused_keys_pending_and_finishes_them_later(
    tmp_path: Path, s3_env: SeaweedServer, s3_bucket: str
) -> None:
    async with s3_services(tmp_path, s3_env, s3_bucket) as svc:
        made = await files_made(svc, 8)
        store = svc.blobs
        assert isinstance(store, S3BlobStore)
        stuck = [made[2], made[5]]
        store._client = RefusingClient(store._client, {store.prefix + blob(f) for f in stuck})
        report = await purge_pass(svc.metadata.files, svc.lifecycle.eraser)
        assert (report.claimed, report.purged, report.failed) == (8, 6, 2)
        assert report.failures == {"StorageUnavailable": 2}
        assert await recorded(svc) == Counter({f.id_text: 1 for f in made if f not in stuck})
        assert await states(svc) == Counter({"purged": 6, "purging": 2})
        assert objects(s3_env, s3_bucket) == {blob(f) for f in stuck}
        # Held back: the next pass at once leaves them; past the back-off,
        # with S3 no longer refusing, they are finished and audited once.
        assert (await purge_pass(svc.metadata.files, svc.lifecycle.eraser)).claimed == 0
        store._client.refused.clear()
        await settle_later(svc)
        assert await recorded(svc) == Counter({f.id_text: 1 for f in made})
        assert await states(svc) == Counter({"purged": 8})
        assert objects(s3_env, s3_bucket) == set()


async def test_purge_outage_half_way_loses_nothing(
    tmp_path: Path, s3_env: SeaweedServer, s3_bucket: str
) -> None:
    """S3 dies once the first batch is on record; the batches after it fail
    (keys erased, blobs left) and a later pass finishes them."""
    async with s3_services(tmp_path, s3_env, s3_bucket) as svc:
        made = await files_made(svc, 9)
        eraser = svc.lifecycle.eraser

        async def outage(step: str) -> None:
            if step == "finished" and s3_env.running:
                s3_env.kill()

        eraser.after_step = outage
        try:
            report = await purge_pass(svc.metadata.files, eraser, batch_size=3)
        finally:
            eraser.after_step = None
            s3_env.start()
        # The second batch may have finished its deletions before the kill;
        # the third starts after it.
        assert report.claimed == 9 and report.purged + report.failed == 9
        assert 3 <= report.purged <= 6
        assert sum((await recorded(svc)).values()) == report.purged
        for info in made:  # unreadable whatever the outage left: no key
            loaded = await svc.metadata.files.load(info.id)
            assert loaded is not None and loaded[1] is None
        assert len(objects(s3_env, s3_bucket)) >= 3
        await settle_later(svc)
        assert await recorded(svc) == Counter({f.id_text: 1 for f in made})
        assert objects(s3_env, s3_bucket) == set()


@pytest.mark.parametrize("step", ["crypto_erased", "blobs_deleted"])
async def test_purge_crash_mid_batch_on_s3_is_finished_later(
    tmp_path: Path, s3_env: SeaweedServer, s3_bucket: str, step: str
) -> None:
    """A crash between the erase and the blob deletion (blobs left, keys
    gone), or between the deletion and the record (blobs gone, nothing on
    record): the leases lapse and the next pass finishes, one record each."""
    async with s3_services(tmp_path, s3_env, s3_bucket) as svc:
        made = await files_made(svc, 5)
        eraser = svc.lifecycle.eraser

        async def crash(name: str) -> None:
            if name == step:
                raise Boom(name)

        eraser.after_step = crash
        with pytest.raises(Boom):
            await purge_pass(svc.metadata.files, eraser)
        eraser.after_step = None
        left = objects(s3_env, s3_bucket)
        assert left == ({blob(f) for f in made} if step == "crypto_erased" else set())
        assert await recorded(svc) == Counter()
        await settle_later(svc)
        assert await recorded(svc) == Counter({f.id_text: 1 for f in made})
        assert await states(svc) == Counter({"purged": 5})
        assert objects(s3_env, s3_bucket) == set()


# ---------------------------------------------------- local disk specifics
async def test_local_name_that_cannot_be_unlinked_fails_alone(tmp_path: Path) -> None:
    """A real refusal: a directory where the blob should be (unlink says
    EISDIR). Only that name fails; the rest of the batch is gone."""
    from filestore.storage.local import LocalBlobStore

    store = await LocalBlobStore.open(tmp_path / "storage")
    try:
        doomed = names(6)
        for name in doomed:
            await put(store, name)
        blocked = store.root / "blobs" / doomed[3][0:2] / doomed[3]
        blocked.unlink()
        (blocked / "inside").mkdir(parents=True)
        outcome = await store.delete_many(doomed)
        assert {n for n, error in outcome.items() if error is not None} == {doomed[3]}
        assert isinstance(outcome[doomed[3]], StorageUnavailable)
        assert await present(store, doomed) == {doomed[3]}
        assert blocked.is_dir()
    finally:
        await store.close()


async def test_local_purge_holds_back_what_cannot_be_removed(tmp_path: Path) -> None:
    settings = Settings.load(env={}, data_dir=tmp_path / "data")
    async with open_services(settings, ManualClock()) as svc:
        made = await files_made(svc, 5)
        name = blob(made[1])
        path = settings.storage_dir / "blobs" / name[0:2] / name
        path.unlink()
        (path / "inside").mkdir(parents=True)
        report = await purge_pass(svc.metadata.files, svc.lifecycle.eraser)
        assert (report.purged, report.failed) == (4, 1)
        assert await recorded(svc) == Counter({f.id_text: 1 for f in made if f is not made[1]})
        (path / "inside").rmdir()
        path.rmdir()
        await settle_later(svc)
        assert await recorded(svc) == Counter({f.id_text: 1 for f in made})
        assert await states(svc) == Counter({"purged": 5})
