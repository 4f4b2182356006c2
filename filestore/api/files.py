"""Handlers for ``/v1/files``: upload, download (with ranges), HEAD, DELETE.

Handlers only translate HTTP to lifecycle calls and back. The rules about
files (who may see one, when it may be read, which transitions are allowed)
live in :mod:`filestore.metadata.rules`; the :mod:`filestore.lifecycle`
facade drives them.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from email.utils import formatdate

from aiohttp import web
from yarl import URL

from filestore import ids
from filestore.api.context import principal, reader_tenant, services
from filestore.api.params import parse_ttl, query_params
from filestore.api.ranges import parse_range
from filestore.api.streaming import send_stream
from filestore.api.uploads import open_body, parse_options
from filestore.clock import rfc3339
from filestore.errors import BadRequest, FilestoreError
from filestore.lifecycle import FileInfo, OpenFile
from filestore.metadata.base import DeleteReason, Role
from filestore.services import Services

log = logging.getLogger("filestore.api")
routes = web.RouteTableDef()


def _public_url(request: web.Request, path: str) -> URL:
    """``path`` on this service as the client reached it. Behind a proxy that
    terminated TLS (``X-Forwarded-Proto: https``) that is https: a signed
    link handed out as ``http://`` would send its signature, and then the
    file, in the clear. The header can only upgrade the scheme, never
    downgrade it, so a client that forges it changes nothing but its own
    answer."""
    url = request.url.with_path(path).with_query(None)
    if url.scheme == "http" and request.headers.get("X-Forwarded-Proto", "").lower() == "https":
        url = url.with_scheme("https")
    return url


def _file_json(request: web.Request, info: FileInfo) -> dict[str, object]:
    path = f"/v1/files/{info.id_text}"
    return {
        "id": info.id_text,
        "size": info.size,
        "sha256": info.sha256,
        "created_at": rfc3339(info.created_at),
        "expires_at": rfc3339(info.expires_at),
        "filename": info.filename,
        "content_type": info.content_type,
        "max_downloads": info.max_downloads,
        "url": str(_public_url(request, path)),
    }


def _content_disposition(filename: str | None) -> str:
    """RFC 6266: an ASCII fallback plus ``filename*`` in UTF-8 for any name."""
    if not filename:
        return "attachment"
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\%' else "_" for c in filename)
    encoded = urllib.parse.quote(filename, safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def _file_headers(info: FileInfo) -> dict[str, str]:
    return {
        "ETag": f'"{info.id_text}"',
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Accept-Ranges": "bytes",
        "Content-Disposition": _content_disposition(info.filename),
        "Expires": formatdate(info.expires_at, usegmt=True),
        "X-Expires-At": rfc3339(info.expires_at),
        "X-Checksum-SHA256": info.sha256,
        "Last-Modified": formatdate(info.created_at, usegmt=True),
    }


@routes.post("/v1/files")
async def upload(request: web.Request) -> web.Response:
    who = await principal(request, Role.CLIENT)
    svc = services(request)
    options = parse_options(request)
    body = await open_body(request, svc.settings.read_timeout)
    if body.filename is not None or body.content_type is not None:
        options = type(options)(
            ttl=options.ttl,
            filename=options.filename or body.filename,
            content_type=body.content_type or options.content_type,
            expected_sha256=options.expected_sha256,
            max_downloads=options.max_downloads,
        )
    info = await svc.lifecycle.upload(who.tenant, options, body.chunks)
    payload = _file_json(request, info)
    return web.json_response(payload, status=201, headers={"Location": f"/v1/files/{info.id_text}"})


@routes.head("/v1/files/{id}")
async def head(request: web.Request) -> web.Response:
    file_id = ids.from_text(request.match_info["id"])
    tenant = await reader_tenant(request, file_id)
    info = await services(request).lifecycle.stat(tenant, file_id)
    headers = _file_headers(info)
    headers["Content-Length"] = str(info.size)
    headers["Content-Type"] = info.content_type or "application/octet-stream"
    return web.Response(status=200, headers=headers)


@routes.get("/v1/files/{id}", allow_head=False)
async def download(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    file_id = ids.from_text(request.match_info["id"])
    tenant = await reader_tenant(request, file_id)
    opened = await svc.lifecycle.open(tenant, file_id)
    info = opened.info
    etag = f'"{info.id_text}"'
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match and (if_none_match.strip() == "*" or etag in if_none_match):
        return web.Response(status=304, headers={"ETag": etag, "Cache-Control": "no-store"})
    if_range = request.headers.get("If-Range")
    wanted = parse_range(request.headers.get("Range"), info.size)
    if if_range is not None and if_range.strip() != etag:
        wanted = None
    downloads = None
    if info.max_downloads is not None:
        # Only limited files pay for a counted (durable) download.
        downloads = await svc.lifecycle.record_download(file_id)
    used_up = (
        downloads is not None and info.max_downloads is not None and downloads >= info.max_downloads
    )
    try:
        return await _send_file(request, svc, opened, wanted)
    finally:
        if used_up:
            await _delete_used_up(svc, file_id)


async def _send_file(
    request: web.Request,
    svc: Services,
    opened: OpenFile,
    wanted: tuple[int, int] | None,
) -> web.StreamResponse:
    info = opened.info
    headers = _file_headers(info)
    if wanted is None:
        first, last, status = 0, info.size - 1, 200
    else:
        first, last = wanted
        status = 206
        headers["Content-Range"] = f"bytes {first}-{last}/{info.size}"
    response = web.StreamResponse(status=status, headers=headers)
    response.content_type = info.content_type or "application/octet-stream"
    response.content_length = max(0, last - first + 1)
    stream = opened.plaintext(first, last)
    # Decrypt the first batch before any header leaves, so a bad first chunk
    # is a clean error answer rather than a broken body.
    head_batch = await anext(stream, b"")
    deadline = info.expires_at + svc.settings.download_grace - svc.clock.now()
    await send_stream(
        request,
        response,
        head_batch,
        stream,
        f"the download of {info.id_text}",
        idle_timeout=svc.settings.read_timeout,
        deadline=deadline,
    )
    return response


async def _delete_used_up(svc: Services, file_id: bytes) -> None:
    """Delete a file whose last allowed download was counted, however that
    download ended: sent in full, cut by the client, or stopped by an error.
    Counting made the file unreadable, so keeping it would only leave it
    stored until expiry. A handler whose client goes away is cancelled, so
    this runs from a ``finally`` and is shielded, to finish once begun.

    A failure is logged, not answered: the body (or the client) is gone. A
    step that failed after the lease was held back by the eraser, and the
    purge finishes the file after the backoff; if even the lease could not
    be taken (database down), the file stays unreadable until it expires."""
    try:
        await asyncio.shield(svc.lifecycle.secure_delete(file_id, DeleteReason.MAX_DOWNLOADS))
    except FilestoreError as exc:
        log.warning(
            "could not yet delete %s after its last download (%s); the purge retries",
            ids.to_text(file_id),
            type(exc).__name__,
        )


@routes.delete("/v1/files/{id}")
async def delete(request: web.Request) -> web.Response:
    who = await principal(request, Role.CLIENT)
    file_id = ids.from_text(request.match_info["id"])
    done = await services(request).lifecycle.delete(who.tenant, file_id)
    return web.Response(status=204 if done else 202)


@routes.post("/v1/files/{id}/links")
async def create_link(request: web.Request) -> web.Response:
    """A signed URL that reads the file without an API key, valid for
    ``ttl`` (default ``FILESTORE_DEFAULT_LINK_TTL``) but never past the
    file's own expiry."""
    who = await principal(request, Role.CLIENT)
    svc = services(request)
    file_id = ids.from_text(request.match_info["id"])
    query = query_params(request, ("ttl",))
    ttl = svc.settings.default_link_ttl
    if "ttl" in query:
        ttl = parse_ttl(query["ttl"])
        if ttl <= 0:
            raise BadRequest("ttl must be positive")
    info = await svc.lifecycle.stat(who.tenant, file_id)
    expires = int(min(svc.clock.now() + ttl, info.expires_at))
    signature = svc.links.sign(file_id, who.tenant, expires)
    url = _public_url(request, f"/v1/files/{info.id_text}").with_query(
        {"expires": str(expires), "signature": signature}
    )
    return web.json_response(
        {"url": str(url), "expires_at": rfc3339(expires)},
        status=201,
        headers={"Cache-Control": "no-store"},
    )
