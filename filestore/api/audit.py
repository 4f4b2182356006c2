"""Auditor endpoints (the deletion log, its checkpoint, tiles and public
key) and the per-file deletion receipt for the owning tenant.

The log is the deployment's: an auditor key sees every record (file ids,
tenants, sizes and times — never names or contents). A tenant proves the
deletion of its own file with a receipt (a C2SP tlog-proof), which shows
nothing of other records but sibling hashes.

``/v1/audit`` is also a C2SP tlog-tiles log: ``checkpoint``,
``tile/<L>/<N>[.p/<W>]``, ``tile/entries/…`` (each entry the 32-byte record
hash, the leaf input) and ``tile/records/…`` (the records' canonical JSON,
a full mirror of the log). Tiles are served only within what a stored
checkpoint covers: a full tile once some checkpoint reaches its end, a
partial one only at a width some checkpoint's size requires.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from aiohttp import web

from filestore import auditlog, ids
from filestore.api.context import principal, services
from filestore.api.params import query_params
from filestore.api.streaming import send_stream
from filestore.audit import RECEIPT_MEDIA_TYPE, verifier_key_string
from filestore.audit.cosignature import parse_witness_key
from filestore.audit.tiles import TILE_WIDTH, Tile, parse_tile_path
from filestore.clock import parse_time
from filestore.crypto.signing import public_key_pem
from filestore.errors import BadRequest, Conflict, IntegrityError, NotFound
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


#: Tile resources never change: a full one is kept for a year.
FULL_TILE_CACHE = "private, max-age=31536000, immutable"
#: A partial one may be dropped once its full tile exists (tlog-tiles).
PARTIAL_TILE_CACHE = "private, max-age=60"
TILE_BUNDLES = ("entries", "records")
#: Tree sizes are 64-bit in the database.
_MAX_SIZE = (1 << 63) - 1


async def _require_covered(request: web.Request, tile: Tile) -> None:
    """NotFound unless a stored checkpoint needs ``tile`` at its width."""
    audit = services(request).metadata.audit
    span = TILE_WIDTH**tile.level
    end = (tile.first + tile.width) * span  # leaves up to the tile's last hash
    if end > _MAX_SIZE:
        raise NotFound("no such tile")
    if tile.full:
        latest = await audit.latest_checkpoint()
        if latest is None or latest[0] < end:
            raise NotFound("no checkpoint covers this tile yet")
    elif not await audit.checkpoint_sized(end, min(end + span, _MAX_SIZE)):
        raise NotFound("no checkpoint has a tree size with this partial tile")


def _bundle(items: list[bytes]) -> bytes:
    """tlog-tiles entry bundle framing: big-endian uint16 length prefixes."""
    out = bytearray()
    for item in items:
        if len(item) > 0xFFFF:
            raise IntegrityError("an audit record is longer than a bundle entry can be")
        out += len(item).to_bytes(2, "big") + item
    return bytes(out)


@routes.get("/v1/audit/tile/{path:.+}")
async def tile(request: web.Request) -> web.Response:
    await principal(request, Role.AUDITOR)
    query_params(request, ())
    try:
        parsed = parse_tile_path(request.match_info["path"], TILE_BUNDLES)
    except ValueError as exc:
        # Like a malformed file id: a path that names no tile is not found.
        raise NotFound(f"no such tile: {exc}") from None
    t = parsed.tile
    await _require_covered(request, t)
    audit = services(request).metadata.audit
    if parsed.kind == "hash":
        (body,) = await audit.read_tiles([t])
        count = len(body) // 32
    elif parsed.kind == "entries":
        hashes = await audit.hashes(t.first + t.width, after=t.first)
        body, count = _bundle(hashes), len(hashes)
    else:
        texts = await audit.record_texts(t.first, t.width)
        body, count = _bundle([text.encode("utf-8") for text in texts]), len(texts)
    if count != t.width:
        raise IntegrityError("the audit log lacks entries a checkpoint covers")
    response = web.Response(
        body=body,
        content_type="application/octet-stream",
        headers={"Cache-Control": FULL_TILE_CACHE if t.full else PARTIAL_TILE_CACHE},
    )
    if parsed.kind != "hash":
        response.enable_compression()
    return response


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
    return web.Response(
        text=found, content_type=RECEIPT_MEDIA_TYPE, headers={"Cache-Control": "no-store"}
    )
