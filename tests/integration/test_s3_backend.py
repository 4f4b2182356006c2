"""The S3 backend end to end, on a real SeaweedFS (``seaweed`` in conftest).

The HTTP round trip runs through a real gateway whose blobs live in S3;
what is left in the bucket is checked with a client of our own (objects,
every version and delete marker, incomplete multipart uploads), never through
the store under test. Fault tests take the server away mid-operation by
killing it and bring it back on the same ports and data.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import filestore.storage.s3 as s3_storage
from filestore import ids
from filestore.config import Settings
from filestore.crypto import CHUNK_SIZE, ENC_CHUNK_SIZE, PREFIX_SIZE, ciphertext_size
from filestore.errors import ConfigError, StorageUnavailable
from filestore.metadata.rules import backoff
from filestore.storage.s3 import S3BlobStore, lifecycle_findings
from scheduler.runner import PurgeScheduler
from tests.support import db
from tests.support.gateway import Gateway, running_gateway
from tests.support.seaweed import SeaweedServer, SeaweedUnavailable

MiB = 1 << 20
PART = 5 * MiB
PREFIX = "filestore/"
LIFECYCLE = Path(__file__).resolve().parents[2] / "deploy" / "s3-lifecycle.json"


# ------------------------------------------------------------------ helpers
@pytest.fixture
def versioned_bucket(s3_env: SeaweedServer) -> Iterator[str]:
    try:
        name = s3_env.create_bucket(versioned=True)
    except SeaweedUnavailable as exc:
        pytest.skip(f"versioned-bucket tests: {exc}")
    try:
        yield name
    finally:
        s3_env.start()
        s3_env.delete_bucket(name)


@contextlib.asynccontextmanager
async def s3_gateway(
    tmp_path: Path, server: SeaweedServer, bucket: str, **overrides: Any
) -> AsyncIterator[Gateway]:
    """A gateway on ``bucket`` with 5 MiB parts (S3's least)."""
    async with running_gateway(
        tmp_path, **server.settings(bucket, s3_part_size=PART, **overrides)
    ) as gw:
        yield gw


def leftovers(server: SeaweedServer, bucket: str) -> dict[str, list[str]]:
    """Everything under the prefix: current objects, every version and delete
    marker, incomplete multipart uploads."""
    s3 = server.admin
    objects = s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX).get("Contents", [])
    versions = s3.list_object_versions(Bucket=bucket, Prefix=PREFIX)
    uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=PREFIX).get("Uploads", [])
    return {
        "objects": [o["Key"] for o in objects],
        "versions": [v["Key"] for v in versions.get("Versions", [])],
        "markers": [m["Key"] for m in versions.get("DeleteMarkers", [])],
        "uploads": [u["Key"] for u in uploads],
    }


NOTHING: dict[str, list[str]] = {"objects": [], "versions": [], "markers": [], "uploads": []}


def key_of(file_id: str) -> str:
    return PREFIX + ids.blob_name(ids.from_text(file_id))


async def file_states(gw: Gateway) -> dict[str, str]:
    return {ids.to_text(fid): state for fid, state in (await db.file_states(gw.services)).items()}


async def audit_ids(gw: Gateway) -> Counter[str]:
    records = await gw.services.metadata.audit.records(0, 10_000)
    return Counter(r.file_id for r in records if r.file_id is not None)


def plaintext_at(ciphertext_offset: int) -> int:
    """The plaintext offset stored at (about) ``ciphertext_offset``."""
    chunk, within = divmod(ciphertext_offset - PREFIX_SIZE, ENC_CHUNK_SIZE)
    return chunk * CHUNK_SIZE + min(within, CHUNK_SIZE - 1)


# ------------------------------------------------------- HTTP round trip
async def test_round_trip_sizes_and_delete(
    tmp_path: Path, s3_env: SeaweedServer, s3_bucket: str
) -> None:
    async with s3_gateway(tmp_path, s3_env, s3_bucket) as gw:
        ready = await gw.client.get("/readyz")
        assert ready.status == 200, await ready.text()
        assert (await ready.json())["storage_backend"] == "s3"
        sizes = {"empty": 0, "one": 1, "small": 100_000, "multipart": 16 * MiB + 5}
        uploaded = {}
        for label, size in sizes.items():
            data = os.urandom(size)
            meta = await gw.upload(data)
            assert (meta["size"], meta["sha256"]) == (size, hashlib.sha256(data).hexdigest())
            uploaded[label] = (meta["id"], data)
        for label, (file_id, data) in uploaded.items():
            resp = await gw.get(file_id)
            assert resp.status == 200, label
            assert await resp.read() == data, label
            head = s3_env.admin.head_object(Bucket=s3_bucket, Key=key_of(file_id))
            assert head["ContentLength"] == ciphertext_size(len(data)), label
        # 16 MiB of ciphertext in 5 MiB parts: a multipart upload of 4 parts.
        big = key_of(uploaded["multipart"][0])
        assert s3_env.admin.head_object(Bucket=s3_bucket, Key=big, PartNumber=1)["PartsCount"] == 4
        assert b"\x00" * 64 not in s3_env.admin.get_object(Bucket=s3_bucket, Key=big)["Body"].read(
            1 << 16
        )  # ciphertext, not the file
        for file_id, _data in uploaded.values():
            resp = await gw.client.delete(f"/v1/files/{file_id}", headers=await gw.auth())
            assert resp.status == 204
            assert (await gw.get(file_id)).status == 410
        assert leftovers(s3_env, s3_bucket) == NOTHING
        assert set(await audit_ids(gw)) == {fid for fid, _ in uploaded.values()}


async def test_ranges_across_part_edges(
    tmp_path: Path, s3_env: SeaweedServer, s3_bucket: str
) -> None:
    data = os.urandom(16 * MiB)
    async with s3_gateway(tmp_path, s3_env, s3_bucket) as gw:
        meta = await gw.upload(data)
        cases = [(0, 0), (0, 99), (len(data) - 1, len(data) - 1), (3 * PART, len(data) - 1)]
        for edge in (PART, 2 * PART, 3 * PART):  # ciphertext offsets where parts meet
            at = plaintext_at(edge)
            cases += [(at - 1, at), (at - 20_000, at + 20_000), (at, at)]
        cases.append((plaintext_at(PART) - 5, plaintext_at(3 * PART) + 5))  # a whole part
        for first, last in cases:
            resp = await gw.get(meta["id"], headers={"Range": f"bytes={first}-{last}"})
            assert resp.status == 206, (first, last)
            assert await resp.read() == data[first : last + 1], (first, last)
        suffix = await gw.get(meta["id"], headers={"Range": "bytes=-70000"})
        assert await suffix.read() == data[-70_000:]


@pytest.mark.parametrize("size", [40_000, 6 * MiB], ids=["single-put", "multipart"])
async def test_checksum(tmp_path: Path, s3_env: SeaweedServer, s3_bucket: str, size: int) -> None:
    data = os.urandom(size)
    digest = hashlib.sha256(data).digest()
    good = {"Content-Digest": f"sha-256=:{base64.b64encode(digest).decode()}:"}
    async with s3_gateway(tmp_path, s3_env, s3_bucket) as gw:
        resp = await gw.client.post(
            "/v1/files", data=io.BytesIO(data + b"!"), headers={**(await gw.auth()), **good}
        )
        assert resp.status == 422, await resp.text()
        assert leftovers(s3_env, s3_bucket) == NOTHING
        assert await file_states(gw) == {}
        meta = await gw.upload(data, headers={"X-Checksum-SHA256": digest.hex()})
        assert meta["sha256"] == digest.hex()
        assert await (await gw.get(meta["id"])).read() == data


async def test_size_limit_aborts_the_multipart_upload(
    tmp_path: Path, s3_env: SeaweedServer, s3_bucket: str
) -> None:
    async with s3_gateway(tmp_path, s3_env, s3_bucket, max_file_size=12 * MiB) as gw:
        resp = await gw.client.post(
            "/v1/files", data=io.BytesIO(os.urandom(20 * MiB)), headers=await gw.auth()
        )
        assert resp.status == 413, await resp.text()
        # Two parts had gone up; the upload is aborted, not left to a lifecycle rule.
        assert leftovers(s3_env, s3_bucket) == NOTHING
        assert await file_states(gw) == {}


# ------------------------------------------------------ versioned bucket
async def test_versioned_bucket_purge_leaves_no_version(
    tmp_path: Path, s3_env: SeaweedServer, versioned_bucket: str
) -> None:
    bucket = versioned_bucket
    async with s3_gateway(tmp_path, s3_env, bucket) as gw:
        assert isinstance(gw.services.blobs, S3BlobStore) and gw.services.blobs.versioned
        small = await gw.upload(os.urandom(50_000), params={"ttl": "60"})
        big = await gw.upload(os.urandom(11 * MiB), params={"ttl": "60"})
        # Older versions and a delete marker of the same key, as retries and
        # a half-finished earlier deletion would leave them.
        key = key_of(small["id"])
        s3_env.admin.put_object(Bucket=bucket, Key=key, Body=b"an older version")
        s3_env.admin.delete_object(Bucket=bucket, Key=key)
        s3_env.admin.put_object(Bucket=bucket, Key=key, Body=b"and a newer one")
        listed = s3_env.admin.list_object_versions(Bucket=bucket, Prefix=key)
        assert len(listed["Versions"]) == 3 and len(listed["DeleteMarkers"]) == 1
        gw.clock.advance(61)
        report = await PurgeScheduler(gw.services).run_pass()
        assert (report.purged, report.failed) == (2, 0)
        for file_id in (small["id"], big["id"]):
            listed = s3_env.admin.list_object_versions(Bucket=bucket, Prefix=key_of(file_id))
            assert "Versions" not in listed and "DeleteMarkers" not in listed
        assert leftovers(s3_env, bucket) == NOTHING
        assert await audit_ids(gw) == Counter({small["id"]: 1, big["id"]: 1})


async def test_store_deletes_every_version_and_sees_noncurrent_ones(
    s3_env: SeaweedServer, versioned_bucket: str
) -> None:
    settings = Settings.load(env={}, **s3_env.settings(versioned_bucket))
    store = await S3BlobStore.open(settings)
    try:
        name = ids.blob_name(ids.new_file_id())
        for body in (b"first", b"second"):
            writer = await store.create(name)
            await writer.write(body)
            await writer.commit()
        s3_env.admin.delete_object(Bucket=versioned_bucket, Key=PREFIX + name)
        # HEAD says 404 now, but two versions are still readable by id.
        assert await store.size(name) is None
        assert await store.exists(name) is True
        assert [b.name async for b in store.list_blobs()] == [name]
        await store.delete(name)
        assert await store.exists(name) is False
        assert leftovers(s3_env, versioned_bucket) == NOTHING
    finally:
        await store.close()


async def test_versioning_turned_on_after_start_is_noticed(
    s3_env: SeaweedServer, s3_bucket: str
) -> None:
    store = await S3BlobStore.open(Settings.load(env={}, **s3_env.settings(s3_bucket)))
    try:
        assert store.versioned is False
        s3_env.admin.put_bucket_versioning(
            Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"}
        )
        name = ids.blob_name(ids.new_file_id())
        for body in (b"first", b"second"):
            writer = await store.create(name)
            await writer.write(body)
            await writer.commit()
        await store.delete(name)  # the delete marker in the reply gives it away
        assert store.versioned is True
        assert leftovers(s3_env, s3_bucket) == NOTHING
    finally:
        await store.close()


# ------------------------------------------------------- start-up check
async def test_startup_check_reports_versioning_and_lifecycle(
    s3_env: SeaweedServer, versioned_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings.load(env={}, **s3_env.settings(versioned_bucket))
    with caplog.at_level(logging.WARNING, logger="filestore.storage.s3"):
        store = await S3BlobStore.open(settings)
    await store.close()
    assert store.versioned is True and store.lifecycle_ok is False
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for missing in ("aborts incomplete multipart", "noncurrent versions", "expires current"):
        assert missing in logged
    # The recommended backstop satisfies the check (and a real S3 API takes it).
    rules = json.loads(LIFECYCLE.read_text())
    s3_env.admin.put_bucket_lifecycle_configuration(
        Bucket=versioned_bucket, LifecycleConfiguration=rules
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="filestore.storage.s3"):
        store = await S3BlobStore.open(settings)
    await store.close()
    assert (store.versioned, store.lifecycle_ok, store.lifecycle_warnings) == (True, True, ())
    assert caplog.records == []
    # A rule for another prefix does not count.
    other = Settings.load(env={}, **s3_env.settings(versioned_bucket, s3_prefix="elsewhere/"))
    store = await S3BlobStore.open(other)
    await store.close()
    assert store.lifecycle_ok is False


async def test_startup_check_refuses_bad_buckets_and_credentials(
    s3_env: SeaweedServer, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="FILESTORE_S3_BUCKET"):
        await S3BlobStore.open(Settings.load(env={}, **s3_env.settings("no-such-bucket-4711")))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-4711")
    with pytest.raises(StorageUnavailable) as caught:
        await S3BlobStore.open(Settings.load(env={}, **s3_env.settings(s3_bucket)))
    message = str(caught.value)
    assert "check the bucket" in message
    assert "4711" not in message and "filestore-test" not in message
    with pytest.raises(ConfigError, match="FILESTORE_S3_BUCKET"):
        Settings.load(env={"FILESTORE_STORAGE": "s3"})


# ------------------------------------------------------------ faults
async def test_server_stopped_mid_upload(
    tmp_path: Path, s3_env: SeaweedServer, s3_bucket: str
) -> None:
    async with s3_gateway(tmp_path, s3_env, s3_bucket) as gw:
        sent = 0

        async def body() -> AsyncIterator[bytes]:
            nonlocal sent
            for _ in range(20):
                if sent == 8 * MiB:  # once the multipart upload has begun: outage
                    async with asyncio.timeout(10):
                        while not leftovers(s3_env, s3_bucket)["uploads"]:
                            await asyncio.sleep(0.02)
                    assert "uploading" in (await file_states(gw)).values()
                    s3_env.kill()
                yield os.urandom(MiB)
                sent += MiB

        started = time.monotonic()
        resp = await gw.client.post("/v1/files", data=body(), headers=await gw.auth())
        assert resp.status == 503, await resp.text()
        assert resp.headers["Retry-After"].isdigit()
        assert time.monotonic() - started < 30
        states = await file_states(gw)
        assert "active" not in states.values() and len(states) == 1
        (file_id,) = states
        # While it is down every operation fails quickly and says nothing of S3.
        blobs = gw.services.blobs
        started = time.monotonic()
        with pytest.raises(StorageUnavailable) as caught:
            await blobs.size(ids.blob_name(ids.from_text(file_id)))
        assert time.monotonic() - started < 10
        assert "filestore-test" not in str(caught.value) and "127.0.0.1" not in str(caught.value)
        assert (await gw.client.get("/readyz")).status == 503
        s3_env.start()
        assert (await gw.get(file_id)).status == 404
        assert leftovers(s3_env, s3_bucket)["objects"] == []
        # The abandoned upload is finished off by the sweep: nothing stays.
        gw.clock.advance(gw.settings.upload_grace + 1)
        await PurgeScheduler(gw.services).run_pass()
        assert leftovers(s3_env, s3_bucket) == NOTHING
        assert await file_states(gw) == {file_id: "purged"}
        assert await audit_ids(gw) == Counter({file_id: 1})


async def test_server_stopped_during_a_purge_pass(
    tmp_path: Path, s3_env: SeaweedServer, s3_bucket: str
) -> None:
    async with s3_gateway(tmp_path, s3_env, s3_bucket) as gw:
        made = [await gw.upload(os.urandom(n), params={"ttl": "60"}) for n in (10, 70_000)]
        made.append(await gw.upload(os.urandom(6 * MiB), params={"ttl": "60"}))
        file_ids = {m["id"] for m in made}
        gw.clock.advance(61)
        eraser = gw.services.lifecycle.eraser

        async def outage(step: str) -> None:
            if step == "crypto_erased":  # keys gone, blobs next: S3 goes away
                s3_env.kill()

        eraser.after_step = outage
        scheduler = PurgeScheduler(gw.services)
        report = await scheduler.run_pass()
        eraser.after_step = None
        assert (report.claimed, report.purged, report.failed) == (3, 0, 3)
        assert report.failures == {"StorageUnavailable": 3}
        assert set((await file_states(gw)).values()) == {"purging"}
        assert await audit_ids(gw) == Counter()
        for file_id in file_ids:
            assert (await gw.get(file_id)).status == 410
        s3_env.start()
        assert len(leftovers(s3_env, s3_bucket)["objects"]) == 3  # still there: keys are not
        # Within the back-off nothing is retried; past it everything is purged.
        assert (await scheduler.run_pass()).claimed == 0
        gw.clock.advance(600)
        report = await scheduler.run_pass()
        assert (report.purged, report.failed) == (3, 0)
        assert set((await file_states(gw)).values()) == {"purged"}
        assert leftovers(s3_env, s3_bucket) == NOTHING
        assert await audit_ids(gw) == Counter(dict.fromkeys(file_ids, 1))


@contextlib.contextmanager
def s3_outage(server: SeaweedServer, kind: str) -> Iterator[None]:
    """S3 goes away for the block: ``stopped`` (SIGKILL: connections are
    refused) or ``hung`` (SIGSTOP: connections are accepted, nothing answers,
    so only the client's timeouts end a call). It is back after the block."""
    if kind == "stopped":
        server.kill()
    else:
        server.pause()
    try:
        yield
    finally:
        if kind == "stopped":
            server.start()
        else:
            server.resume()


@pytest.fixture
def short_s3_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Client timeouts of half a second (and two attempts), so a hung server
    fails a call within seconds; read when a store opens."""
    monkeypatch.setattr(s3_storage, "CONNECT_TIMEOUT", 0.5)
    monkeypatch.setattr(s3_storage, "READ_TIMEOUT", 0.5)
    monkeypatch.setattr(s3_storage, "MAX_ATTEMPTS", 2)


def assert_unavailable_problem(status: int, headers: Any, body: bytes) -> None:
    assert status == 503, body[:300]
    assert headers["Content-Type"].startswith("application/problem+json"), headers
    assert json.loads(body)["type"] == "urn:filestore:problem:unavailable"
    assert headers["Retry-After"].isdigit(), headers


async def served(gw: Gateway, file_id: str, attempts: int = 20) -> bytes:
    """The file's bytes once S3 serves again (a restarted SeaweedFS may
    refuse a read or two while its volume server rejoins)."""
    for _ in range(attempts):
        resp = await gw.get(file_id)
        if resp.status != 503:
            assert resp.status == 200, await resp.text()
            return await resp.read()
        await asyncio.sleep(0.25)
    raise AssertionError(f"S3 still unavailable after {attempts} reads")


@pytest.mark.parametrize("outage", ["stopped", "hung"])
@pytest.mark.parametrize("size", [50_000, 1_500_000], ids=["whole", "streamed"])
async def test_s3_outage_upload_and_download_are_503_and_leave_nothing(
    tmp_path: Path,
    s3_env: SeaweedServer,
    s3_bucket: str,
    short_s3_timeouts: None,
    outage: str,
    size: int,
) -> None:
    """While S3 refuses connections or hangs, an upload and a download each
    answer 503 with Retry-After (the hang ended by the client's own timeouts).
    A streamed upload's row can only stay ``uploading`` (its cleanup cannot
    reach S3 either); a file that fit one batch never got a row, since its
    blob is stored first. Neither is ever readable. A hung server may still
    store the PUT the client gave up on when it wakes: that object is the
    ``uploading`` row's and goes with the stuck-upload sweep, or it is no
    row's (under a key never stored) and goes with the orphan sweep; either
    way with one record, once S3 is back. Then the bucket holds exactly what
    it held before. The stored file is untouched throughout."""
    async with s3_gateway(tmp_path, s3_env, s3_bucket) as gw:
        auth = await gw.auth()
        data = os.urandom(70_000)
        kept = await gw.upload(data, params={"ttl": "10h"})  # outlives the sweep's grace
        before = leftovers(s3_env, s3_bucket)
        with s3_outage(s3_env, outage):
            async with asyncio.timeout(60):  # a hang guard; the timeouts are 0.5 s
                body = io.BytesIO(os.urandom(size))
                up = await gw.client.post("/v1/files", data=body, headers=auth)
                up_body = await up.read()
                down = await gw.get(kept["id"])
                down_body = await down.read()
        assert_unavailable_problem(up.status, up.headers, up_body)
        assert_unavailable_problem(down.status, down.headers, down_body)
        states = await file_states(gw)
        assert states.pop(kept["id"]) == "active"
        assert set(states.values()) <= {"uploading"}, states
        if size < gw.settings.batch_size:
            assert states == {}, "a file that fit one batch has no row before its blob"
        for failed in states:
            assert (await gw.get(failed)).status == 404
        # A hung server may still be finishing the PUT it was given: wait
        # (bounded) until the bucket stops changing before judging it.
        now, still = leftovers(s3_env, s3_bucket), 0
        for _ in range(50):
            await asyncio.sleep(0.1)
            again = leftovers(s3_env, s3_bucket)
            still, now = (still + 1 if again == now else 0), again
            if still == 5:
                break
        late = set(now["objects"]) - set(before["objects"])
        assert len(late) <= 1, late
        assert leftovers(s3_env, s3_bucket)["uploads"] == []
        assert await served(gw, kept["id"]) == data
        gw.clock.advance(gw.settings.upload_grace + 1)
        await PurgeScheduler(gw.services).run_pass()
        recorded = set(states) | {ids.to_text(bytes.fromhex(key[len(PREFIX) :])) for key in late}
        assert await audit_ids(gw) == Counter(dict.fromkeys(recorded, 1))
        assert leftovers(s3_env, s3_bucket) == before
        assert await served(gw, kept["id"]) == data


async def test_purge_during_s3_outage_backs_off_then_audits_once(
    tmp_path: Path, s3_env: SeaweedServer, s3_bucket: str, short_s3_timeouts: None
) -> None:
    """A pass during an S3 outage erases the key, fails the blob, and records
    the failure: one attempt more, the lease released, the next attempt one
    ``backoff`` later (metadata/rules.py), no audit record. Passes before then
    leave the file alone; a pass at that time while S3 is still down doubles
    the wait. Once S3 is back the next due pass deletes the blob and audits
    the deletion once; later passes add nothing. (A MAX_TTL of 23 h leaves
    the backoff room to double: with the default 23h58m the 24-hour budget
    caps it at one interval.)"""
    async with s3_gateway(tmp_path, s3_env, s3_bucket, max_ttl="23h") as gw:
        svc = gw.services
        meta = await gw.upload(os.urandom(40_000), params={"ttl": "60"})
        interval, cap = svc.settings.purge_interval, svc.settings.retry_cap
        scheduler = PurgeScheduler(svc)

        async def retry_state() -> tuple[Any, ...]:
            (row,) = await db.rows(
                svc,
                "SELECT state, purge_attempts, next_attempt_at, last_error, lease_owner FROM files",
            )
            return row

        gw.clock.advance(61)
        with s3_outage(s3_env, "stopped"):
            first = await scheduler.run_pass()
            assert (first.claimed, first.purged, first.failed) == (1, 0, 1)
            assert first.failures == {"StorageUnavailable": 1}
            retry_at = gw.clock.now() + backoff(0, interval, cap)
            assert await retry_state() == ("purging", 1, retry_at, "StorageUnavailable", None)
            assert await db.scalar(svc, "SELECT count(*) FROM file_keys") == 0
            assert (await gw.get(meta["id"])).status == 410
            assert await audit_ids(gw) == Counter()

            gw.clock.set(retry_at - 1)  # still backing off: not even claimed
            assert (await scheduler.run_pass()).claimed == 0
            gw.clock.set(retry_at)  # due again, S3 still down: the wait doubles
            second = await scheduler.run_pass()
            assert (second.claimed, second.failed) == (1, 1)
            retry_at = gw.clock.now() + backoff(1, interval, cap)
            assert [backoff(n, interval, cap) for n in (0, 1)] == [interval, 2 * interval]
            assert await retry_state() == ("purging", 2, retry_at, "StorageUnavailable", None)
            assert await audit_ids(gw) == Counter()

        assert leftovers(s3_env, s3_bucket)["objects"] == [key_of(meta["id"])]
        gw.clock.set(retry_at)
        third = await scheduler.run_pass()
        assert (third.claimed, third.purged, third.failed) == (1, 1, 0)
        assert leftovers(s3_env, s3_bucket) == NOTHING
        assert (await retry_state())[0] == "purged"
        assert await audit_ids(gw) == Counter({meta["id"]: 1})
        (record,) = await svc.metadata.audit.records(0, 10)
        assert (record.reason, record.deleted_at) == ("expired", retry_at)
        gw.clock.advance(10 * interval)
        assert (await scheduler.run_pass()).claimed == 0
        assert await audit_ids(gw) == Counter({meta["id"]: 1})


async def test_orphan_multipart_upload_is_aborted_by_the_sweep(
    tmp_path: Path, s3_env: SeaweedServer, s3_bucket: str
) -> None:
    async with s3_gateway(tmp_path, s3_env, s3_bucket) as gw:
        gw.clock.set(time.time())  # the sweep compares S3's times with the clock
        orphan_upload = ids.new_file_id()
        orphan_object = ids.new_file_id()
        s3 = s3_env.admin
        key = PREFIX + ids.blob_name(orphan_upload)
        upload = s3.create_multipart_upload(Bucket=s3_bucket, Key=key)
        s3.upload_part(
            Bucket=s3_bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1000
        )
        s3.put_object(Bucket=s3_bucket, Key=PREFIX + ids.blob_name(orphan_object), Body=b"y")
        s3.put_object(Bucket=s3_bucket, Key=PREFIX + "not-a-blob", Body=b"left alone")
        live = await gw.upload(b"a live file", params={"ttl": "2h"})
        scheduler = PurgeScheduler(gw.services)
        await scheduler.run_pass()  # young: could be an upload in flight
        assert len(leftovers(s3_env, s3_bucket)["uploads"]) == 1
        gw.clock.advance(max(gw.settings.upload_grace, gw.settings.sweep_interval) + 1)
        await scheduler.run_pass()
        assert leftovers(s3_env, s3_bucket) == {
            **NOTHING,
            "objects": sorted([PREFIX + "not-a-blob", key_of(live["id"])]),
            "versions": sorted([PREFIX + "not-a-blob", key_of(live["id"])]),
        }
        records = await gw.services.metadata.audit.records(0, 100)
        assert sorted((r.file_id, r.reason) for r in records) == sorted(
            [(ids.to_text(orphan_upload), "orphan"), (ids.to_text(orphan_object), "orphan")]
        )
        assert (await gw.get(live["id"])).status == 200


# ------------------------------------------------------------ the store
async def test_incomplete_upload_is_listed_and_delete_aborts_it(
    s3_env: SeaweedServer, s3_bucket: str
) -> None:
    settings = Settings.load(env={}, **s3_env.settings(s3_bucket, s3_part_size=PART))
    store = await S3BlobStore.open(settings)
    try:
        name = ids.blob_name(ids.new_file_id())
        writer = await store.create(name)
        await writer.write(os.urandom(PART + 1))  # the first part goes up
        assert leftovers(s3_env, s3_bucket)["uploads"] == [PREFIX + name]
        assert await store.exists(name) is False  # nothing readable yet
        assert [b.name async for b in store.list_blobs()] == [name]
        await store.delete(name)  # as the orphan sweep would
        assert leftovers(s3_env, s3_bucket) == NOTHING
        await writer.abort()  # the upload is already gone: fine
        await writer.abort()
    finally:
        await store.close()


async def test_abort_after_an_interrupted_commit_removes_what_it_published(
    s3_env: SeaweedServer, s3_bucket: str
) -> None:
    settings = Settings.load(env={}, **s3_env.settings(s3_bucket, s3_part_size=PART))
    store = await S3BlobStore.open(settings)
    try:
        name = ids.blob_name(ids.new_file_id())
        writer = await store.create(name)
        await writer.write(os.urandom(2 * PART + 7))
        committing = asyncio.ensure_future(writer.commit())
        await asyncio.sleep(0)  # the commit is under way ...
        committing.cancel()  # ... and its caller goes away: the caller never saw success
        with pytest.raises(asyncio.CancelledError):
            await committing
        await writer.abort()
        assert leftovers(s3_env, s3_bucket) == NOTHING
    finally:
        await store.close()


def test_lifecycle_findings() -> None:
    backstop = json.loads(LIFECYCLE.read_text())["Rules"]
    assert lifecycle_findings(backstop, PREFIX, versioned=True) == []
    assert lifecycle_findings(backstop, PREFIX + "deeper/", versioned=True) == []
    assert len(lifecycle_findings(backstop, "other/", versioned=True)) == 3
    everything = {"ID": "all", "Status": "Enabled", "Filter": {}}
    abort = {**everything, "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}
    expire = {**everything, "Prefix": "", "Expiration": {"Days": 2}}
    del expire["Filter"]  # the legacy form: Prefix on the rule itself
    assert lifecycle_findings([abort, expire], PREFIX, versioned=False) == []
    tagged = {**abort, "Filter": {"And": {"Prefix": "", "Tags": [{"Key": "k", "Value": "v"}]}}}
    disabled = {**abort, "Status": "Disabled"}
    for rule in (tagged, disabled):
        assert lifecycle_findings([rule, expire], PREFIX, versioned=False) == [
            "no lifecycle rule aborts incomplete multipart uploads"
        ]
    assert lifecycle_findings([abort, expire], PREFIX, versioned=True) == [
        "versioning is on but no lifecycle rule expires noncurrent versions"
    ]


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"FILESTORE_STORAGE": "s3"}, "FILESTORE_S3_BUCKET must be set"),
        ({"FILESTORE_STORAGE": "gcs"}, "FILESTORE_STORAGE"),
        ({"FILESTORE_S3_PART_SIZE": "4MiB"}, "FILESTORE_S3_PART_SIZE"),
        ({"FILESTORE_S3_ADDRESSING_STYLE": "dns"}, "FILESTORE_S3_ADDRESSING_STYLE"),
        ({"FILESTORE_S3_MAX_WORKERS": "0"}, "FILESTORE_S3_MAX_WORKERS"),
        (
            {"FILESTORE_STORAGE": "s3", "FILESTORE_S3_BUCKET": "b",
             "FILESTORE_MAX_FILE_SIZE": "100GiB"},
            "at most 10000 parts",
        ),
    ],
)  # fmt: skip
def test_s3_settings_are_checked(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Settings.load(env=env)


def test_s3_settings_defaults_and_environment() -> None:
    default = Settings.load(env={})
    assert (default.s3_prefix, default.s3_part_size, default.s3_addressing_style) == (
        "filestore/",
        8 << 20,
        "auto",
    )
    s = Settings.load(
        env={
            "FILESTORE_STORAGE": "s3",
            "FILESTORE_S3_BUCKET": "files",
            "FILESTORE_S3_PREFIX": "fs/",
            "FILESTORE_S3_ENDPOINT_URL": "http://minio:9000",
            "FILESTORE_S3_REGION": "eu-west-1",
            "FILESTORE_S3_ADDRESSING_STYLE": "path",
            "FILESTORE_S3_PART_SIZE": "16MiB",
            "FILESTORE_S3_MAX_WORKERS": "4",
        }
    )
    assert (s.storage, s.s3_bucket, s.s3_prefix, s.s3_endpoint_url, s.s3_region) == (
        "s3",
        "files",
        "fs/",
        "http://minio:9000",
        "eu-west-1",
    )
    assert (s.s3_addressing_style, s.s3_part_size, s.s3_max_workers) == ("path", 16 << 20, 4)
