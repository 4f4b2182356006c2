"""Operator endpoints: purge status, a manual pass, Prometheus metrics.

Figures come from two places: the database (backlog, most overdue file,
failing files, live files, and every instance's last pass — true across the
whole cluster) and this process's scheduler (its passes, totals, the 24-hour
overdue maximum).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from filestore.api.context import METRICS, SCHEDULER, principal, services
from filestore.api.health import check_dependencies
from filestore.clock import rfc3339
from filestore.errors import FilestoreError
from filestore.metadata.base import InstanceStatus, PurgeStats, Role
from filestore.metrics import MetricsSnapshot
from scheduler.purge import PassReport

routes = web.RouteTableDef()


def _ts(value: float | None) -> str | None:
    return None if value is None else rfc3339(value)


def _report(report: PassReport | None) -> dict[str, Any] | None:
    if report is None:
        return None
    return {
        "started_at": _ts(report.started_at),
        "finished_at": _ts(report.finished_at),
        "duration_seconds": round(report.finished_at - report.started_at, 3),
        "claimed": report.claimed,
        "purged": report.purged,
        "failed": report.failed,
        "failures": dict(report.failures),
        "max_overdue_seconds": round(report.max_overdue, 3),
        "error": report.error,
    }


async def _stats(request: web.Request) -> PurgeStats | None:
    try:
        return await services(request).metadata.files.purge_stats(services(request).clock.now())
    except FilestoreError:
        return None


async def _instances(request: web.Request) -> list[InstanceStatus] | None:
    try:
        return await services(request).metadata.cluster.instance_passes()
    except FilestoreError:
        return None


def _instance(item: InstanceStatus, now: float) -> dict[str, Any]:
    return {
        "instance": item.instance,
        "last_pass_started_at": rfc3339(item.started_at),
        "last_pass_finished_at": rfc3339(item.finished_at),
        "seconds_since_last_pass": round(max(0.0, now - item.finished_at), 3),
        "purged": item.purged,
        "failed": item.failed,
        "max_overdue_seconds": round(item.max_overdue, 3),
        "error": item.error,
        "reclaim_blocked": item.reclaim_blocked,
    }


@routes.get("/v1/purge/status")
async def purge_status(request: web.Request) -> web.Response:
    await principal(request, Role.OPERATOR)
    body = await status_document(request)
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def status_document(request: web.Request) -> dict[str, Any]:
    """The purge status, as ``/v1/purge/status`` answers it (the operator
    status page shows the same figures); the caller checks access."""
    svc = services(request)
    status = request.app[SCHEDULER].status
    now = svc.clock.now()
    stats = await _stats(request)
    instances = await _instances(request)
    overdue_now = (
        max(0.0, now - stats.oldest_expiry) if stats and stats.oldest_expiry is not None else 0.0
    )
    body = {
        "now": rfc3339(now),
        "scheduler": {
            "running": status.running,
            "keys_only": status.keys_only,
            "pass_in_progress": status.in_pass,
            "interval_seconds": status.interval,
            "next_pass_at": _ts(status.next_run_at),
            "passes": status.passes,
            "last_error": status.last_error,
        },
        "instance": svc.lifecycle.instance,
        "last_pass": _report(status.last),
        # Erased key bytes an outside reader (a backup job, a sqlite3 shell)
        # keeps in the database's files: deletions go on, the bytes stay
        # until the reader lets go (alert on it; see docs/operations.md).
        "reclaim_blocked": status.reclaim_blocked,
        "reclaim_blocked_passes_total": status.reclaim_blocked_total,
        "cluster": None
        if instances is None
        else {"instances": [_instance(i, now) for i in instances]},
        "backlog": None if stats is None else stats.backlog,
        "most_overdue_seconds": round(overdue_now, 3),
        "max_overdue_seconds_24h": round(max(overdue_now, status.max_overdue_24h(now)), 3),
        "failing_files": None if stats is None else stats.failing,
        "failing_files_by_error": None if stats is None else stats.failures_by_error,
        "failures_total_by_error": dict(status.failures_total),
        "purged_total": status.purged_total,
        "failed_attempts_total": status.failed_total,
        "orphans_removed_total": status.orphans_total,
        "sweep_failures_total": status.sweep_failed_total,
        "keks_held_back": status.kek_held_back,
        "live_files": None if stats is None else stats.live,
        "oldest_live_file_age_seconds": None
        if stats is None or stats.oldest_live_created is None
        else round(now - stats.oldest_live_created, 3),
        "last_checkpoint_size": status.last_checkpoint_size,
        "health": await check_dependencies(services(request)),
    }
    return body


@routes.post("/v1/purge/run")
async def purge_run(request: web.Request) -> web.Response:
    await principal(request, Role.OPERATOR)
    report = await request.app[SCHEDULER].run_pass()
    return web.json_response({"pass": _report(report)}, headers={"Cache-Control": "no-store"})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of the purge figures (``filestore.metrics``).

    The figures are awaited here, into a snapshot; the app's registry then
    renders it synchronously."""
    svc = services(request)
    now = svc.clock.now()
    stats = await _stats(request)
    instances = await _instances(request)
    health = await check_dependencies(svc)
    snapshot = MetricsSnapshot.take(
        request.app[SCHEDULER].status,
        now,
        instance=svc.lifecycle.instance,
        database_backend=svc.metadata.name,
        storage_backend=svc.blobs.name,
        health=health,
        stats=stats,
        instances=instances,
    )
    return web.Response(
        body=request.app[METRICS].render(snapshot),
        headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"},
    )
