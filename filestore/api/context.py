"""Typed application keys and per-request helpers shared by the handlers."""

from __future__ import annotations

from aiohttp import web

from filestore.auth import Principal, authenticate
from filestore.metadata.base import Role
from filestore.services import Services

SERVICES = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


async def principal(request: web.Request, *roles: Role) -> Principal:
    """Authenticate the caller (401) and check its role (403)."""
    who = await authenticate(services(request).metadata, request.headers.get("Authorization"))
    who.require(*roles)
    return who
