"""Operator endpoints: purge status, manual pass, metrics."""

from __future__ import annotations

from filestore.metadata.base import Role
from tests.support.gateway import Gateway

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
    assert status["health"] == {"database": "ok", "storage": "ok"}

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
