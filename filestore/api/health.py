"""Liveness and readiness, and the OpenAPI document.

``/healthz`` says the process serves requests; ``/readyz`` says it can do
useful work: the database answers and storage is writable. Both are open to
anyone, and neither says more than ok/failing per dependency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiohttp import web

from filestore.api.context import services
from filestore.api.openapi import openapi_document
from filestore.errors import FilestoreError
from filestore.services import Services
from filestore.storage.base import ListableBlobStore

routes = web.RouteTableDef()
CHECK_TIMEOUT = 5.0


@routes.get("/healthz")
async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})


async def check_dependencies(svc: Services) -> dict[str, str]:
    """``ok`` or ``failing`` for the database and storage, each bounded in time."""
    results: dict[str, str] = {}
    storage = svc.storage_probe or svc.blobs.check  # reused a few seconds: no write per call
    for name, check in (("database", svc.metadata.check), ("storage", storage)):
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                await check()
            results[name] = "ok"
        except (FilestoreError, TimeoutError):
            results[name] = "failing"
    results["keys"] = "ok" if svc.lifecycle.uploads.halted is None else "failing"
    results["clock"] = await _clock(svc, time.time)
    return results


async def _clock(svc: Services, local: Callable[[], float]) -> str:
    """``failing`` when this host's clock is off the database server's by
    more than ``MAX_CLOCK_SKEW``: expiry is judged on each instance's clock,
    so instances that disagree would serve or purge files at different
    times. Compared with the host's real clock, not an injected one."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            offset = await svc.metadata.cluster.clock_offset(local)
    except (FilestoreError, TimeoutError):
        return "unknown"
    if offset is None or abs(offset) <= svc.settings.max_clock_skew:
        return "ok"
    return "failing"


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    svc = services(request)
    results = await check_dependencies(svc)
    ready = all(v == "ok" for v in results.values())
    return web.json_response(
        {
            "status": "ready" if ready else "unavailable",
            "checks": results,
            "storage_backend": svc.blobs.name,
            # Optional abilities of the backend (the orphan sweep needs listing).
            "abilities": {"list_blobs": isinstance(svc.blobs, ListableBlobStore)},
        },
        status=200 if ready else 503,
        headers={"Cache-Control": "no-store", **({} if ready else {"Retry-After": "5"})},
    )


@routes.get("/openapi.json")
async def openapi(_request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
