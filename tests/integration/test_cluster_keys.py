"""Keys across machines that share nothing: gateways with their own data
directories (their own ratchet files), one database and one bucket. A new
gateway joins the key schedule from a live one over the authenticated
hand-over; each reads what the other wrote; after an epoch's deadline no
instance can unwrap a key it wrapped; a gateway on a different ratchet is
refused."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from filestore import ids
from filestore.clock import ManualClock
from filestore.crypto.ratchet import RatchetKeyring
from filestore.crypto.schedule import RatchetKeys
from filestore.crypto.wrapping import DekBinding
from filestore.errors import ConfigError, KeyDestroyed, KeyNotFound
from filestore.metadata.base import Role
from filestore.metadata.sql import SQLMetadataStore
from scheduler.keys import manage_keys
from tests.support import db
from tests.support.db import MetadataBackend
from tests.support.gateway import Gateway, running_gateway
from tests.support.seaweed import SeaweedServer

HOUR = 3600.0


@pytest.fixture
def cluster_secret(tmp_path: Path) -> Path:
    path = tmp_path / "cluster-secret"
    path.write_bytes(secrets.token_bytes(32))
    path.chmod(0o600)
    return path


@pytest.fixture
def cluster(
    tmp_path: Path,
    metadata_backend: MetadataBackend,
    cluster_secret: Path,
    s3_env: SeaweedServer,
    s3_bucket: str,
) -> Any:
    """A factory of gateways that share only the database, the bucket, the
    cluster secret and the audit and link keys (as a deployment would give
    them from a secret store)."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o700)

    @contextlib.asynccontextmanager
    async def gateway(
        name: str, clock: ManualClock | None = None, **overrides: Any
    ) -> AsyncIterator[Gateway]:
        settings: dict[str, Any] = {
            "database_url": metadata_backend.url,
            "key_schedule": "ratchet",
            "cluster_secret_file": str(cluster_secret),
            "signing_key_file": str(shared / "audit-signing.pem"),
            "link_key_file": str(shared / "link-signing.key"),
            "join_wait": 0,
            **s3_env.settings(s3_bucket),
            **overrides,
        }
        async with running_gateway(tmp_path / name, clock=clock, **settings) as gw:
            yield gw

    return gateway


def _url(gw: Gateway) -> str:
    return str(gw.client.make_url("")).rstrip("/")


async def test_join_read_each_other_then_lose_the_epoch_everywhere(cluster: Any) -> None:
    async with cluster("a") as a, cluster("b", join_peers=_url(a)) as b:
        keys_a, keys_b = a.services.keyring, b.services.keyring
        assert isinstance(keys_a, RatchetKeys) and isinstance(keys_b, RatchetKeys)
        assert keys_a.active_id == keys_b.active_id
        assert a.settings.ratchet_path != b.settings.ratchet_path
        assert b.settings.ratchet_path.exists()
        epoch = keys_a.active_id
        auth = await a.auth()
        from_a = await a.upload(b"written through a", params={"ttl": "1h"})
        b.keys.update(a.keys)
        from_b = await b.upload(b"written through b", params={"ttl": "1h"})
        got = await b.get(from_a["id"])
        assert got.status == 200 and await got.read() == b"written through a"
        got = await a.client.get(f"/v1/files/{from_b['id']}", headers=auth)
        assert got.status == 200 and await got.read() == b"written through b"
        loaded = await a.services.metadata.files.load(ids.from_text(from_a["id"]))
        assert loaded is not None and loaded[1] is not None
        wrapped = loaded[1]
        assert wrapped.kek_id == epoch

        # Past the epoch's deadline, each instance destroys it on its own.
        later = a.settings.kek_destroy_after + 2 * HOUR
        for gw in (a, b):
            gw.clock.advance(later)
            report = await manage_keys(
                gw.services.keyring, gw.services.metadata, gw.services.lifecycle.eraser, gw.settings
            )
            assert epoch in report.destroyed
        for keys in (keys_a, keys_b):
            with pytest.raises(KeyNotFound):
                keys.unwrap(epoch, DekBinding(wrapped.file_id, "acme"), wrapped.wrapped)
            assert keys.ratchet.oldest_epoch > epoch
        # One record of the destruction, whoever wrote it.
        kek_records = [
            r for r in await a.services.metadata.audit.records(0, 100) if r.event == "kek_destroyed"
        ]
        assert [r.kek_id for r in kek_records].count(epoch) == 1
        # A peer asked now hands over only what is still alive.
        async with cluster("c", join_peers=_url(b), clock=ManualClock(b.clock.now())) as c:
            c_keys = c.services.keyring
            assert isinstance(c_keys, RatchetKeys)
            assert c_keys.ratchet.oldest_epoch > epoch
            with pytest.raises(KeyNotFound):
                c_keys.unwrap(epoch, DekBinding(wrapped.file_id, "acme"), wrapped.wrapped)


async def test_an_instance_on_another_ratchet_is_refused(cluster: Any, tmp_path: Path) -> None:
    async with cluster("a"):
        pass
    # No peer answers and the cluster exists: it cannot found a second one.
    with pytest.raises(ConfigError, match="cannot join"):
        async with cluster("lonely"):
            pass
    # A ratchet created elsewhere (not joined) fails the commitment check.
    async with cluster("other", database_url=f"sqlite:///{tmp_path / 'elsewhere.db'}") as other:
        made = other.settings.ratchet_path
    with pytest.raises(ConfigError, match="not the cluster's"):
        async with cluster("other", ratchet_file=str(made)):
            pass


async def test_join_endpoint_refuses_strangers(cluster: Any, tmp_path: Path) -> None:
    async with cluster("a") as a:
        resp = await a.client.post("/v1/cluster/join", data=secrets.token_bytes(90))
        assert resp.status == 401
        assert resp.content_type == "application/problem+json"
        too_big = await a.client.post("/v1/cluster/join", data=b"x" * 5000)
        assert too_big.status == 400
        ops = await a.auth("acme", Role.OPERATOR)
        assert (await a.client.get("/v1/purge/status", headers=ops)).status == 200
    async with running_gateway(tmp_path / "plain") as plain:
        assert (await plain.client.post("/v1/cluster/join", data=b"x")).status == 404


async def test_a_second_keyring_on_the_same_database_is_refused(
    tmp_path: Path, metadata_backend: MetadataBackend
) -> None:
    """Keyring mode is for processes of one host sharing one keyring file: a
    gateway elsewhere with a keyring of its own would wrap keys no other
    instance can unwrap, so the database's commitment stops it."""
    async with running_gateway(tmp_path / "one", database_url=metadata_backend.url) as one:
        again = {
            "database_url": metadata_backend.url,
            "keyring_file": str(one.settings.keyring_path),
        }
        async with running_gateway(tmp_path / "same-host", **again):
            pass
        with pytest.raises(ConfigError, match="keyring is not the one"):
            async with running_gateway(tmp_path / "two", database_url=metadata_backend.url):
                pass


async def test_past_its_deadline_an_epoch_is_unreadable_before_the_file_advances(
    cluster: Any,
) -> None:
    async with cluster("a") as a:
        keys = a.services.keyring
        assert isinstance(keys, RatchetKeys)
        meta = await a.upload(b"soon gone", params={"ttl": "1h"})
        loaded = await a.services.metadata.files.load(ids.from_text(meta["id"]))
        assert loaded is not None and loaded[1] is not None
        key = loaded[1]
        binding = DekBinding(key.file_id, "acme")
        assert keys.unwrap(key.kek_id, binding, key.wrapped)
        a.clock.set(keys.ratchet.deadline(key.kek_id, a.settings.kek_destroy_after))
        with pytest.raises(KeyDestroyed, match="deadline"):
            keys.unwrap(key.kek_id, binding, key.wrapped)
        assert keys.ratchet.oldest_epoch == key.kek_id  # not advanced yet, still refused


async def test_a_split_brain_found_mid_run_stops_uploads(cluster: Any) -> None:
    """Another commitment for the epoch this instance moves into (an
    instance on other keys got there first): the key step refuses, uploads
    answer 503 and readiness fails, rather than wrapping keys nobody else
    can unwrap."""
    async with cluster("a") as a:
        keys = a.services.keyring
        assert isinstance(keys, RatchetKeys)
        a.clock.advance(a.settings.kek_rotation)
        await db.execute(
            a.services,
            "INSERT INTO kek_commitments (kek_id, commitment, recorded_at) VALUES (:k, :c, 0)",
            k=keys.active_id,
            c=secrets.token_bytes(32),
        )
        ops = await a.auth("acme", Role.OPERATOR)
        await a.client.post("/v1/purge/run", headers=ops)
        resp = await a.client.post("/v1/files", data=b"x", headers=await a.auth())
        assert resp.status == 503
        ready = await a.client.get("/readyz")
        assert ready.status == 503 and (await ready.json())["checks"]["keys"] == "failing"


async def test_a_founder_whose_reply_was_lost_keeps_its_ratchet(
    cluster: Any, tmp_path: Path, metadata_backend: MetadataBackend
) -> None:
    """The founding commitment was stored but the instance died before it
    renamed its candidate file: on restart it adopts the candidate instead of
    locking itself out of the cluster it founded."""
    data = tmp_path / "founder" / "data" / "keys"
    data.mkdir(parents=True, mode=0o700)
    candidate = RatchetKeyring.create(data / "ratchet.json.candidate", 1_800_000_000.0, HOUR)
    now = 1_800_000_000.0
    epoch = candidate.current_epoch(now)
    store = await SQLMetadataStore.open(metadata_backend.url)
    try:
        stored = await store.cluster.record_commitment(
            epoch, candidate.commitment(epoch, now), now, founding=True
        )
        assert stored is not None
    finally:
        await store.close()
    async with cluster("founder") as founder:
        keys = founder.services.keyring
        assert isinstance(keys, RatchetKeys)
        assert keys.commitment(epoch) == candidate.commitment(epoch, now)
        assert not (data / "ratchet.json.candidate").exists()
