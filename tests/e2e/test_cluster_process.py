"""Several gateways as one service, as real processes: three ``filestore
serve`` instances with their own ports and data directories (sharing only the
database, the bucket, the cluster secret and the audit and link keys), one
PostgreSQL, one SeaweedFS.

Thousands of short-lived files go in through all three and come out through
a different instance than the one that took them; all three purge at once.
Afterwards every file has exactly one audit record, the exported log
verifies, the bucket holds no object and no multipart upload, and no
instance served a file after its expiry. Then one instance is SIGKILLed in
the middle of its pass: the others finish its claims once its leases lapse,
with the same result.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from filestore.audit import verify_export
from filestore.auth import create_key
from filestore.crypto import load_or_create_signing_key
from filestore.metadata.base import MetadataStore, Role
from filestore.metadata.sql import SQLMetadataStore
from tests.support import db
from tests.support.instances import Instance, Shared, cluster
from tests.support.seaweed import SeaweedServer

FILES = int(os.environ.get("FILESTORE_E2E_FILES", "2000"))
KILL_FILES = int(os.environ.get("FILESTORE_E2E_KILL_FILES", "600"))
TTL = 10.0
INTERVAL = 2.0
CONCURRENCY = 24
PREFIX = "filestore/"


async def _purged(store: MetadataStore) -> int:
    return int(await db.scalar(store, "SELECT count(*) FROM files WHERE state = 'purged'"))


async def _eventually_purged(store: MetadataStore, total: int, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await _purged(store) == total:
            return
        await asyncio.sleep(0.25)
    assert await _purged(store) == total, "not every file was purged in time"


class Traffic:
    """Uploads through one instance, downloads through another, and after
    each file's expiry one more attempt through a third, which must fail."""

    def __init__(self, session: aiohttp.ClientSession, instances: list[Instance], key: str):
        self.session = session
        self.instances = instances
        self.auth = {"Authorization": f"Bearer {key}"}
        self.limit = asyncio.Semaphore(CONCURRENCY)
        self.served_after_expiry: list[str] = []
        self.late_checks = 0
        self.ids: list[str] = []
        self.by: Counter[str] = Counter()
        self.started = time.monotonic()

    def _live(self, exclude: Instance | None = None) -> list[Instance]:
        return [i for i in self.instances if i is not exclude and i.proc.poll() is None]

    async def _get(self, n: int, file_id: str, exclude: Instance) -> tuple[int, bytes, float]:
        """GET through a live instance other than ``exclude``; like a load
        balancer, try the next one if an instance is gone (a killed one)."""
        for attempt in range(3):
            candidates = self._live(exclude)
            target = candidates[(n + attempt) % len(candidates)]
            sent_at = time.time()
            try:
                async with self.session.get(
                    f"{target.url}/v1/files/{file_id}", headers=self.auth
                ) as resp:
                    return resp.status, await resp.read(), sent_at
            except aiohttp.ClientConnectionError:
                continue
        raise AssertionError("no instance answered")

    async def one(self, n: int, uploaders: list[Instance], ttl: float) -> None:
        up = uploaders[n % len(uploaders)]
        body = os.urandom(random.randint(1, 6000))
        async with self.limit:
            async with self.session.post(
                f"{up.url}/v1/files", params={"ttl": f"{ttl}s"}, data=body, headers=self.auth
            ) as resp:
                assert resp.status == 201, await resp.text()
                meta = await resp.json()
            # On or after the server's expires_at (it was set before the 201).
            expires = time.time() + ttl
            self.ids.append(meta["id"])
            self.by[up.name] += 1
            status, got, _sent = await self._get(n, meta["id"], up)
            assert (status, got) == (200, body)
        await asyncio.sleep(max(0.0, expires + 0.5 - time.time()))
        async with self.limit:
            status, _got, sent_at = await self._get(n + 1, meta["id"], up)
            if sent_at >= expires:
                self.late_checks += 1
                if status == 200:
                    self.served_after_expiry.append(meta["id"])


async def _verify_log(
    store: MetadataStore, shared: Shared, session: aiohttp.ClientSession, url: str, ids: list[str]
) -> None:
    records = await store.audit.records(0, 100_000)
    deleted = Counter(r.file_id for r in records if r.event == "file_deleted")
    assert set(deleted) == set(ids)
    assert max(deleted.values()) == 1, "a file has more than one deletion record"
    key, _record = await create_key(store, Role.AUDITOR, "default", time.time())
    async with session.get(
        f"{url}/v1/audit/deletions",
        params={"format": "jsonl"},
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        assert resp.status == 200, await resp.text()
        lines = (await resp.text()).splitlines()
    public = load_or_create_signing_key(shared.secrets_dir / "audit-signing.pem").public_key()
    report = verify_export(lines, public, now=time.time())
    assert report.complete and report.records == len(records)


def _bucket_is_empty(server: SeaweedServer, bucket: str) -> dict[str, Any]:
    listed = server.admin.list_objects_v2(Bucket=bucket, Prefix=PREFIX)
    uploads = server.admin.list_multipart_uploads(Bucket=bucket, Prefix=PREFIX)
    return {"objects": listed.get("KeyCount", 0), "uploads": len(uploads.get("Uploads", []))}


async def _instance_id(session: aiohttp.ClientSession, instance: Instance, ops: str) -> str:
    async with session.get(
        f"{instance.url}/v1/purge/status", headers={"Authorization": f"Bearer {ops}"}
    ) as resp:
        assert resp.status == 200
        return str((await resp.json())["instance"])


@pytest.mark.slow
async def test_three_gateways_one_service(
    tmp_path: Path, pg_database_url: str, s3_env: SeaweedServer, s3_bucket: str
) -> None:
    storage = {
        k.upper() if k.startswith("AWS") else "FILESTORE_" + k.upper(): str(v)
        for k, v in {**s3_env.settings(s3_bucket), **s3_env.aws_env()}.items()
    }
    shared = Shared.create(
        tmp_path,
        pg_database_url,
        storage,
        FILESTORE_PURGE_INTERVAL=f"{INTERVAL}s",
        FILESTORE_DOWNLOAD_GRACE=f"{INTERVAL}s",
        FILESTORE_PURGE_BATCH_SIZE="50",
    )
    store = await SQLMetadataStore.open(pg_database_url)
    try:
        with cluster(tmp_path, shared, 3) as instances:
            key = instances[0].first_key
            assert key is not None, instances[0].lines
            assert all(i.first_key is None for i in instances[1:])
            assert all(i.data_dir != instances[0].data_dir for i in instances[1:])
            ratchets = [i.data_dir / "keys" / "ratchet.json" for i in instances]
            assert all(p.exists() for p in ratchets)
            ops, _ = await create_key(store, Role.OPERATOR, "default", time.time())
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
                traffic = Traffic(session, instances, key)
                await asyncio.gather(*(traffic.one(n, instances, TTL) for n in range(FILES)))
                assert len(traffic.ids) == FILES
                print(f"phase 1 traffic: {time.monotonic() - traffic.started:.1f} s", flush=True)
                assert min(traffic.by.values()) >= FILES // 3
                assert traffic.late_checks == FILES and traffic.served_after_expiry == []
                await _eventually_purged(store, FILES)
                passes = await store.cluster.instance_passes()
                assert len(passes) == 3
                actors = Counter(r.actor for r in await store.audit.records(0, 100_000))
                assert len(actors) >= 2, actors  # the purge was shared
                await _verify_log(store, shared, session, instances[1].url, traffic.ids)
                assert _bucket_is_empty(s3_env, s3_bucket) == {"objects": 0, "uploads": 0}

                # SIGKILL one instance while it holds leases mid-pass.
                victim = instances[2]
                victim_id = await _instance_id(session, victim, ops)
                second = Traffic(session, instances, key)
                uploads = asyncio.gather(
                    *(second.one(n, instances[:2], 3.0) for n in range(KILL_FILES))
                )
                killed = False
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not killed:
                    held = await db.scalar(
                        store,
                        "SELECT count(*) FROM files "
                        "WHERE state = 'purging' AND lease_owner LIKE :o",
                        o=victim_id + ":%",
                    )
                    if held:
                        victim.kill()
                        killed = True
                    await asyncio.sleep(0.002)
                assert killed, "the victim never held a lease"
                await uploads
                assert second.served_after_expiry == []
                await _eventually_purged(store, FILES + KILL_FILES)
                all_ids = traffic.ids + second.ids
                await _verify_log(store, shared, session, instances[0].url, all_ids)
                assert _bucket_is_empty(s3_env, s3_bucket) == {"objects": 0, "uploads": 0}
                survivors = [i for i in instances if i is not victim]
        assert [i.proc.returncode for i in survivors] == [0, 0]
    finally:
        await store.close()
    assert list(itertools.chain(*(i.lines for i in instances))) is not None
