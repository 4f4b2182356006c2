"""Operator endpoints: purge status, manual pass, metrics."""

from __future__ import annotations

from pathlib import Path

from filestore.api.context import SCHEDULER
from filestore.metadata.base import Role
from tests.support.db import MetadataBackend
from tests.support.gateway import Gateway, running_gateway

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
    assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await metrics.text()
    assert "filestore_purged_files_total 2" in text
    assert "filestore_purge_backlog_files 0" in text
    assert "filestore_purge_max_overdue_seconds_24h 90" in text
    assert "filestore_database_up 1" in text
    assert "# TYPE filestore_purge_passes_total counter" in text


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
        metrics = await (await gateway.client.get("/metrics")).text()
        name = second.services.lifecycle.instance
        stamp = f'filestore_instance_last_pass_timestamp_seconds{{instance="{name}"}}'
        assert stamp in metrics


async def test_metrics_print_exact_values(gateway: Gateway) -> None:
    scheduler = gateway.client.app[SCHEDULER]
    scheduler.status.purged_total = 1_234_567
    scheduler.status.failures_total.update({'Odd"Name\\x': 3})
    text = await (await gateway.client.get("/metrics")).text()
    assert "filestore_purged_files_total 1234567\n" in text
    assert 'filestore_purge_failures_total{error="Odd\\"Name\\\\x"} 3' in text
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
