"""What the access log may say about a request, gathered as it is handled.

* the **request id**: the caller's ``X-Request-Id`` if it is sane (one
  header, 1-64 characters of letters, digits and ``._:-``, and not shaped
  like an API key), else a fresh random one. It is kept in the request's
  storage and answered in every response's ``X-Request-Id`` (streamed
  downloads too: it is stamped on in ``on_response_prepare``);
* the **tenant**, once a key or a signed link has said whose request it is;
* the **route template** (``/v1/files/{id}``), never the concrete path: a
  path may carry a file id, and a junk path anything at all.
"""

from __future__ import annotations

import re

from aiohttp import web

from filestore.crypto.entropy import random_hex

REQUEST_ID = web.RequestKey("filestore.request_id", str)
TENANT = web.RequestKey("filestore.tenant", str)
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
#: What an API key looks like (``filestore.auth``); a client that sends its
#: own key as a request id would otherwise have it logged.
_KEY_SHAPED = re.compile(r"fs_[0-9a-f]{12}_", re.IGNORECASE)


def sane_request_id(values: list[str]) -> str | None:
    """The caller's request id if there is exactly one and it is sane."""
    if len(values) != 1:
        return None
    value = values[0]
    if not _SANE_ID.fullmatch(value) or _KEY_SHAPED.search(value):
        return None
    return value


def assign_request_id(request: web.Request) -> str:
    """The request's id (the caller's, if sane, else a new one), kept in
    its storage."""
    request_id = sane_request_id(request.headers.getall("X-Request-Id", []))
    request_id = request_id or random_hex(8)
    request[REQUEST_ID] = request_id
    return request_id


def request_id_of(request: web.BaseRequest) -> str | None:
    return request.get(REQUEST_ID)


def note_tenant(request: web.Request, tenant: str) -> None:
    """Remember whose request this is, for the access log."""
    request[TENANT] = tenant


def tenant_of(request: web.BaseRequest) -> str | None:
    return request.get(TENANT)


def route_template(request: web.BaseRequest) -> str | None:
    """The matched route's template (``/v1/files/{id}``), or None where no
    route matched (404, 405) or the request never reached the router."""
    if not isinstance(request, web.Request):
        return None
    try:
        resource = request.match_info.route.resource
    except (AssertionError, AttributeError):  # not routed yet
        return None
    return None if resource is None else resource.canonical


async def stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every answer names its request id, also one
    streamed (prepared by the handler before the middleware sees it)."""
    request_id = request_id_of(request)
    if request_id is not None:
        response.headers.setdefault("X-Request-Id", request_id)
