"""Sending a streamed body whose source can fail after the headers left.

Once the status line is out, an error cannot become a problem+json answer;
ending the body cleanly would hand the client a short file that looks whole.
So any failure mid-stream aborts the connection: the client sees a transfer
error (the Content-Length or the chunked framing is not met), never a
truncated success.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator

from aiohttp import web

log = logging.getLogger("filestore.api")


async def send_stream(
    request: web.Request,
    response: web.StreamResponse,
    first: bytes | bytearray,
    rest: AsyncGenerator[bytes | bytearray, None],
    what: str,
    *,
    idle_timeout: float,
    deadline: float | None = None,
) -> web.StreamResponse:
    """Prepare ``response``, write ``first`` then ``rest``; abort the
    connection if anything fails after the headers are sent.

    A client that stops reading for ``idle_timeout`` seconds is cut off, and
    so is the whole transfer once ``deadline`` seconds have passed (a file's
    expiry plus the download grace): a stalled reader must not keep a
    deleted blob's bytes flowing, or its file open, past the promise.
    """
    await response.prepare(request)
    try:
        async with asyncio.timeout(deadline):
            if first:
                async with asyncio.timeout(idle_timeout):
                    await response.write(first)
            async for piece in rest:
                async with asyncio.timeout(idle_timeout):
                    await response.write(piece)
            await response.write_eof()
    except Exception as exc:
        log.warning("aborting %s mid-stream: %s", what, type(exc).__name__)
        if request.transport is not None:
            request.transport.abort()
    finally:
        await rest.aclose()
    return response
