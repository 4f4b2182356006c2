"""Auditor endpoints (the deletion log, its checkpoint and public key) and
the per-file deletion receipt for the owning tenant.

The log is the deployment's: an auditor key sees every record (file ids,
tenants, sizes and times — never names or contents). A tenant proves the
deletion of its own file with a receipt, which shows nothing of other
records but sibling hashes.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from aiohttp import web

from filestore import auditlog, ids
from filestore.api.context import principal, services
from filestore.api.params import query_params
from filestore.api.streaming import send_stream
from filestore.audit import verifier_key_string
from filestore.audit.cosignature import parse_witness_key
from filestore.clock import parse_time
from filestore.crypto.signing import public_key_pem
from filestore.errors import BadRequest, Conflict, NotFound
from filestore.metadata import rules
from filestore.metadata.base import FileState, Role

routes = web.RouteTableDef()


def _time(name: str, value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise BadRequest(f"{name} must be an RFC 3339 time with a zone, or Unix seconds") from exc


@routes.get("/v1/audit/deletions")
async def deletions(request: web.Request) -> web.StreamResponse:
    await principal(request, Role.AUDITOR)
    svc = services(request)
    query = query_params(request, ("format", "since", "until", "consistency_from"))
    fmt = query.get("format", "jsonl")
    since, until = _time("since", query.get("since")), _time("until", query.get("until"))
    consistency_from = None
    if "consistency_from" in query:
        raw = query["consistency_from"]
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
            raise BadRequest("consistency_from must be a tree size (a whole number)")
        consistency_from = int(query["consistency_from"])
    stream = auditlog.export(
        svc.metadata,
        svc.signing_key,
        svc.settings.audit_origin,
        svc.clock.now(),
        fmt=fmt,
        since=since,
        until=until,
        consistency_from=consistency_from,
    )
    # Fail before headers: the first batch validates arguments and signs.
    first = await anext(stream, "")
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/x-ndjson; charset=utf-8"
            if fmt == "jsonl"
            else "text/csv; charset=utf-8",
            "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="filestore-audit.{fmt}"',
        }
    )

    async def encoded() -> AsyncGenerator[bytes, None]:
        async for chunk in stream:
            yield chunk.encode()

    return await send_stream(
        request,
        response,
        first.encode(),
        encoded(),
        "an audit export",
        idle_timeout=svc.settings.read_timeout,
    )


@routes.get("/v1/audit/checkpoint")
async def checkpoint(request: web.Request) -> web.Response:
    await principal(request, Role.AUDITOR)
    note = await auditlog.cosigned_note(services(request).metadata)
    if note is None:
        raise NotFound("no checkpoint has been written yet")
    return web.Response(text=note, content_type="text/plain", headers={"Cache-Control": "no-store"})


def _size(name: str, raw: str | None) -> int:
    if raw is None or not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise BadRequest(f"{name} must be a tree size (a whole number)")
    return int(raw)


@routes.get("/v1/audit/consistency")
async def consistency(request: web.Request) -> web.Response:
    """The RFC 9162 consistency proof between two tree sizes: what a witness
    needs to check that the log only grew since the checkpoint it cosigned."""
    await principal(request, Role.AUDITOR)
    query = query_params(request, ("from", "to"))
    old, new = _size("from", query.get("from")), _size("to", query.get("to"))
    proof = await auditlog.consistency_proof(services(request).metadata, old, new)
    return web.json_response(
        {"from": old, "to": new, "proof": [p.hex() for p in proof]},
        headers={"Cache-Control": "no-store"},
    )


#: A cosigned note is a checkpoint and a handful of signature lines.
MAX_COSIGNED_NOTE = 16 * 1024


@routes.post("/v1/audit/cosignatures")
async def cosignatures(request: web.Request) -> web.Response:
    """A witness hands back the checkpoint it fetched with its cosignature
    line appended; kept if the witness is configured and the note is the
    one this log holds at that size (see docs/audit-log.md, Witnesses)."""
    await principal(request, Role.AUDITOR)
    svc = services(request)
    body = await request.content.read(MAX_COSIGNED_NOTE + 1)
    if len(body) > MAX_COSIGNED_NOTE:
        raise BadRequest(f"a cosigned checkpoint is at most {MAX_COSIGNED_NOTE} bytes")
    try:
        note = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("a cosigned checkpoint is UTF-8 text") from None
    witnesses = [parse_witness_key(v) for v in svc.settings.audit_witnesses]
    names = await auditlog.add_cosignatures(
        svc.metadata, svc.signing_key, svc.settings.audit_origin, witnesses, note, svc.clock.now()
    )
    return web.json_response({"witnesses": names}, headers={"Cache-Control": "no-store"})


@routes.get("/v1/audit/public-key")
async def public_key(request: web.Request) -> web.Response:
    svc = services(request)
    key = svc.signing_key
    fmt = request.query.get("format", "pem")
    if fmt == "pem":
        return web.Response(body=public_key_pem(key), content_type="application/x-pem-file")
    if fmt == "vkey":
        ident = await auditlog.identity(svc.metadata, key, svc.settings.audit_origin)
        return web.Response(
            text=verifier_key_string(ident.key_name, key.public_key()) + "\n",
            content_type="text/plain",
        )
    raise BadRequest("format must be pem or vkey")


@routes.get("/v1/files/{id}/receipt")
async def file_receipt(request: web.Request) -> web.Response:
    who = await principal(request, Role.CLIENT)
    svc = services(request)
    file_id = ids.from_text(request.match_info["id"])
    loaded = await svc.metadata.files.load(file_id)
    record = rules.visible(loaded[0] if loaded else None, who.tenant)
    if record.state != FileState.PURGED:
        raise Conflict("the file is not deleted yet; a receipt exists once it is purged")
    found = await auditlog.receipt(svc.metadata, ids.to_text(file_id))
    if found is None:
        raise Conflict(
            "the deletion is not yet under a signed checkpoint; retry after the next pass"
        )
    return web.json_response(found, headers={"Cache-Control": "no-store"})
