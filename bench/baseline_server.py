"""The yardstick: a minimal aiohttp server that streams uploads to disk and
back with no encryption, no database and no checks.

It does what any careful store must (temporary file, fsync, rename) so the
ratio measures what filestore adds: encryption, hashing, metadata.

    python bench/baseline_server.py PORT DIR
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import aiofiles
import aiofiles.os
from aiohttp import web

PIECE = 1 << 20


async def upload(request: web.Request) -> web.Response:
    root: Path = request.app["root"]
    name = secrets.token_hex(16)
    tmp = root / f"{name}.part"
    size = 0
    async with aiofiles.open(tmp, "wb") as fh:
        pending = bytearray()
        while chunk := await request.content.readany():
            size += len(chunk)
            pending += chunk
            if len(pending) >= PIECE:
                await fh.write(pending)
                pending = bytearray()
        await fh.write(pending)
        await fh.flush()
        await aiofiles.os.wrap(os.fsync)(fh.fileno())
    await aiofiles.os.rename(tmp, root / name)
    return web.json_response({"id": name, "size": size}, status=201)


async def download(request: web.Request) -> web.StreamResponse:
    path = request.app["root"] / request.match_info["id"]
    response = web.StreamResponse()
    response.content_length = (await aiofiles.os.stat(path)).st_size
    await response.prepare(request)
    async with aiofiles.open(path, "rb") as fh:
        while chunk := await fh.read(PIECE):
            await response.write(chunk)
    await response.write_eof()
    return response


def main() -> None:
    port, root = int(sys.argv[1]), Path(sys.argv[2])
    root.mkdir(parents=True, exist_ok=True)
    app = web.Application()
    app["root"] = root
    app.router.add_post("/v1/files", upload)
    app.router.add_get("/v1/files/{id}", download)
    web.run_app(app, host="127.0.0.1", port=port, print=lambda *_: print("listening", flush=True))


if __name__ == "__main__":
    main()
