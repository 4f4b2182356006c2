"""Typed application keys and per-request helpers shared by the handlers."""

from __future__ import annotations

from aiohttp import web

from filestore.api.request_info import note_tenant
from filestore.auth import Principal, authenticate
from filestore.errors import AuthError, NotFound
from filestore.metadata.base import Role
from filestore.metrics import MetricsExposition
from filestore.services import Services
from scheduler.runner import PurgeScheduler

SERVICES = web.AppKey("services", Services)
SCHEDULER = web.AppKey("scheduler", PurgeScheduler)
#: The app's own Prometheus registry (never the global one).
METRICS = web.AppKey("metrics", MetricsExposition)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


async def reader_tenant(request: web.Request, file_id: bytes) -> str:
    """The tenant whose file may be read: from the API key, or from a signed
    link (``?expires=…&signature=…``) when no key is sent."""
    query = request.query
    if "Authorization" in request.headers or "signature" not in query:
        return (await principal(request, Role.CLIENT)).tenant
    svc = services(request)
    loaded = await svc.metadata.files.load(file_id)
    if loaded is None:
        raise NotFound("no such file")
    tenant = loaded[0].tenant
    svc.links.verify(file_id, tenant, query.get("expires", ""), query["signature"], svc.clock.now())
    note_tenant(request, tenant)
    return tenant


async def principal(request: web.Request, *roles: Role) -> Principal:
    """Authenticate the caller (401) and check its role (403). Several
    Authorization headers are refused rather than the first believed: which
    one a proxy on the way added, or kept, is anyone's guess."""
    if len(request.headers.getall("Authorization", [])) > 1:
        raise AuthError("send one Authorization header, not several")
    svc = services(request)
    who = await authenticate(svc.metadata, request.headers.get("Authorization"), svc.key_cache)
    note_tenant(request, who.tenant)
    who.require(*roles)
    return who
