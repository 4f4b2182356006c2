"""Operator endpoints: purge status, manual pass, metrics."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST

from filestore.api.context import SCHEDULER
from filestore.metadata.base import InstanceStatus, Role
from tests.support.db import MetadataBackend
from tests.support.gateway import Gateway, running_gateway
from tests.support.metrics import parse

PROBLEM = "application/problem+json"


async def test_status_run_and_metrics(gateway: Gateway) -> None:
    ops = await gateway.auth("acme", Role.OPERATOR)
    for ttl in ("60", "120", "3600"):
        await gateway.upload(b"x" * 100, params={"ttl": ttl})
    gateway.clock.advance(150)

    status = await (await gateway.client.get("/v1/purge/status", headers=ops)).json()
    assert status["backlog"] == 2
    assert status["most_overdue_seconds"] == 90
    assert status["live_files"] == 3
    assert status["oldest_live_file_age_seconds"] == 150
    assert status["last_pass"] is None
    assert status["scheduler"]["running"] is False
    assert status["health"] == {"database": "ok", "storage": "ok", "keys": "ok", "clock": "ok"}

    run = await gateway.client.post("/v1/purge/run", headers=ops)
    assert run.status == 200
    report = (await run.json())["pass"]
    assert (report["claimed"], report["purged"], report["failed"]) == (2, 2, 0)

    status = await (await gateway.client.get("/v1/purge/status", headers=ops)).json()
    assert status["backlog"] == 0
    assert status["most_overdue_seconds"] == 0
    assert status["max_overdue_seconds_24h"] == 90
    assert status["purged_total"] == 2
    assert status["last_pass"]["purged"] == 2
    assert status["last_checkpoint_size"] == 2

    metrics = await gateway.client.get("/metrics")
    assert metrics.status == 200
    assert metrics.headers["Content-Type"] == CONTENT_TYPE_LATEST
    exp = parse(await metrics.text())
    assert exp.value("filestore_purged_files_total") == 2
    assert exp.value("filestore_purge_passes_total") == 1
    assert exp.value("filestore_purge_backlog_files") == 0
    assert exp.value("filestore_live_files") == 1
    assert exp.value("filestore_purge_max_overdue_seconds_24h") == 90
    assert exp.value("filestore_database_up") == 1
    assert exp.value("filestore_storage_up") == 1
    assert exp.types["filestore_purge_passes"] == "counter"


async def test_ops_endpoints_need_the_operator_role(gateway: Gateway) -> None:
    client = await gateway.auth("acme", Role.CLIENT)
    for method, path in (("GET", "/v1/purge/status"), ("POST", "/v1/purge/run")):
        resp = await gateway.client.request(method, path)
        assert resp.status == 401 and resp.content_type == PROBLEM
        resp = await gateway.client.request(method, path, headers=client)
        assert resp.status == 403 and resp.content_type == PROBLEM


async def test_status_shows_every_instance_sharing_the_database(
    gateway: Gateway, tmp_path: Path, metadata_backend: MetadataBackend
) -> None:
    """Two gateways on one database (their own data directories): each
    purges its share, and either one's status shows both instances' passes
    and the cluster's backlog from the database."""
    async with running_gateway(
        tmp_path / "second",
        database_url=metadata_backend.url,
        keyring_file=str(gateway.settings.keyring_path),
    ) as second:
        second.clock.set(gateway.clock.now())
        for ttl in ("60", "60", "3600"):
            await gateway.upload(b"y" * 10, params={"ttl": ttl})
        gateway.clock.advance(61)
        second.clock.advance(61)
        ops = await gateway.auth("acme", Role.OPERATOR)
        status = await (await second.client.get("/v1/purge/status", headers=ops)).json()
        assert status["backlog"] == 2  # the database's figure, not this process's
        assert status["cluster"] == {"instances": []}
        first_pass = await (await gateway.client.post("/v1/purge/run", headers=ops)).json()
        assert first_pass["pass"]["purged"] == 2
        await second.client.post("/v1/purge/run", headers=ops)
        status = await (await second.client.get("/v1/purge/status", headers=ops)).json()
        names = {i["instance"]: i for i in status["cluster"]["instances"]}
        assert set(names) == {
            gateway.services.lifecycle.instance,
            second.services.lifecycle.instance,
        }
        assert names[gateway.services.lifecycle.instance]["purged"] == 2
        assert names[second.services.lifecycle.instance]["purged"] == 0
        assert status["instance"] == second.services.lifecycle.instance
        metrics = parse(await (await gateway.client.get("/metrics")).text())
        stamps = metrics.series("filestore_instance_last_pass_timestamp_seconds")
        assert {dict(labels)["instance"] for labels in stamps} == set(names)


#: Shaped to close the label set and start a sample and a TYPE line.
HOSTILE = 'peer"} 1\nfilestore_database_up 0\n# TYPE forged counter\\'


async def test_metrics_print_exact_values(gateway: Gateway) -> None:
    """A real pass at a quarter-second clock time, another instance's
    hostile name in the shared database, a large counter: the served body
    parses back to exactly those values, and the hostile name forges
    nothing."""
    ops = await gateway.auth("acme", Role.OPERATOR)
    await gateway.upload(b"z" * 10, params={"ttl": "60"})
    when = gateway.clock.now() + 123.25  # 1_800_000_123.25
    gateway.clock.set(when)
    await gateway.client.post("/v1/purge/run", headers=ops)
    await gateway.services.metadata.cluster.report_pass(
        InstanceStatus(
            instance=HOSTILE,
            started_at=when - 10.5,
            finished_at=when - 10.125,
            purged=0,
            failed=0,
            max_overdue=0.0,
            error=None,
            reclaim_blocked=None,
        )
    )
    scheduler = gateway.client.app[SCHEDULER]
    scheduler.status.purged_total = 1_234_567
    scheduler.status.failures_total.update({'Odd"Name\\x': 3})

    resp = await gateway.client.get("/metrics")
    assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
    text = await resp.text()
    exp = parse(text)
    assert exp.value("filestore_purged_files_total") == 1_234_567
    assert exp.value("filestore_purge_last_pass_timestamp_seconds") == 1_800_000_123.25
    assert exp.value("filestore_purge_last_pass_duration_seconds") == 0
    assert exp.value("filestore_purge_max_overdue_seconds_24h") == 63.25
    assert exp.series("filestore_instance_last_pass_timestamp_seconds") == {
        frozenset({("instance", gateway.services.lifecycle.instance)}): 1_800_000_123.25,
        frozenset({("instance", HOSTILE)}): 1_800_000_113.125,
    }
    assert exp.series("filestore_purge_failures_total") == {
        frozenset({("error", 'Odd"Name\\x')}): 3
    }
    assert exp.series("filestore_database_up") == {frozenset(): 1}
    assert "forged" not in exp.types
    (info,) = exp.series("filestore_instance_info")
    assert dict(info)["instance"] == gateway.services.lifecycle.instance
    assert dict(info)["database"] == gateway.services.metadata.name
    # Nothing failed to purge: no placeholder sample.
    assert exp.series("filestore_purge_failing_files_by_error") == {}
    assert 'error="none"' not in text


async def test_a_clock_off_the_database_s_fails_readiness(
    gateway: Gateway, metadata_backend: MetadataBackend
) -> None:
    """Expiry is judged on each instance's clock: one that is off the shared
    database server's clock by more than MAX_CLOCK_SKEW is not ready."""
    import time

    from filestore.api.health import _clock

    svc = gateway.services
    assert await _clock(svc, time.time) == "ok"
    skewed = await _clock(svc, lambda: time.time() + 3 * svc.settings.max_clock_skew)
    assert skewed == ("failing" if metadata_backend.name == "postgresql" else "ok")
    offset = await svc.metadata.cluster.clock_offset(lambda: time.time() - 100)
    if metadata_backend.name == "postgresql":
        assert offset is not None and 99 < offset < 101
    else:
        assert offset is None
