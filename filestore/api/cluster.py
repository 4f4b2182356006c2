"""The ratchet hand-over endpoint: how a new instance gets the cluster's key
schedule from a live one (see filestore.cluster). Only served when the key
schedule is the ratchet; the request and answer are authenticated by the
cluster secret inside the protocol, so no API key is involved."""

from __future__ import annotations

import asyncio

from aiohttp import web

from filestore.api.context import services
from filestore.crypto.join import answer_join
from filestore.crypto.schedule import RatchetKeys
from filestore.errors import BadRequest, NotFound

routes = web.RouteTableDef()

#: A join request is 90 bytes.
MAX_REQUEST = 1024


@routes.post("/v1/cluster/join")
async def join(request: web.Request) -> web.Response:
    svc = services(request)
    keys = svc.keyring
    if not isinstance(keys, RatchetKeys) or svc.cluster_secret is None:
        raise NotFound("this instance does not run a shared key schedule")
    if (request.content_length or 0) > MAX_REQUEST:
        raise BadRequest("a join request is under 1 KiB")
    body = await request.read()  # bounded by the app's client_max_size too
    if len(body) > MAX_REQUEST:
        raise BadRequest("a join request is under 1 KiB")
    now = svc.clock.now()
    # Never hand over an epoch that is due for destruction. Checked in
    # memory first, so a stranger's request costs no file I/O.
    destroy_after = svc.settings.kek_destroy_after
    if keys.ratchet.due(now, destroy_after):
        destroyed = await asyncio.to_thread(keys.ratchet.advance, now, destroy_after)
        keys.note_destroyed(destroyed, now)  # the next key step records them
    answer = answer_join(svc.cluster_secret, body, keys.ratchet.export_state(), now)
    return web.Response(
        body=answer, content_type="application/octet-stream", headers={"Cache-Control": "no-store"}
    )
