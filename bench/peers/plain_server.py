"""The baseline a user would write with aiohttp: uploads written with plain
blocking ``write`` calls as the body arrives, downloads served by
``web.FileResponse`` (sendfile). No encryption, no database, no checks.

With ``--fsync`` it is durable the way filestore is: the file is written
under a temporary name, fsynced, renamed into place and its directory
fsynced before the 201. Without it, the bytes are only handed to the page
cache, which is what most quick servers do.

    python -m bench.peers.plain_server --port PORT --dir DIR [--fsync]
"""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path

from aiohttp import web

ROOT = web.AppKey("root", Path)
DURABLE = web.AppKey("durable", bool)


async def upload(request: web.Request) -> web.Response:
    root = request.app[ROOT]
    name = secrets.token_hex(16)
    part = root / f"{name}.part"
    size = 0
    # Blocking writes on the loop, as the simplest handler does: each write
    # lands in the page cache at once, so there is nothing to wait for.
    with part.open("wb") as out:
        async for chunk in request.content.iter_any():
            out.write(chunk)
            size += len(chunk)
        if request.app[DURABLE]:
            out.flush()
            os.fsync(out.fileno())
    os.rename(part, root / name)
    if request.app[DURABLE]:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return web.json_response({"id": name, "size": size}, status=201)


def _path(request: web.Request) -> Path:
    name = request.match_info["id"]
    if len(name) != 32 or not all(c in "0123456789abcdef" for c in name):
        raise web.HTTPNotFound()
    return request.app[ROOT] / name


async def download(request: web.Request) -> web.FileResponse:
    return web.FileResponse(_path(request))


async def delete(request: web.Request) -> web.Response:
    try:
        _path(request).unlink()
    except FileNotFoundError:
        raise web.HTTPNotFound() from None
    return web.Response(status=204)


def make_app(root: Path, durable: bool) -> web.Application:
    app = web.Application()
    app[ROOT] = root
    app[DURABLE] = durable
    app.router.add_post("/files", upload)
    app.router.add_get("/files/{id}", download)
    app.router.add_delete("/files/{id}", delete)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--fsync", action="store_true", help="durable before the 201")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    web.run_app(
        make_app(args.dir, args.fsync),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=lambda *_: print("listening", flush=True),
    )


if __name__ == "__main__":
    main()
