"""Overlapping the stages of a stream.

A download is three stages — read ciphertext, decrypt, send — and an upload
three more — receive, hash and encrypt, write. Run one after another on the
event loop they add up; run so that each stage works on the next batch while
the following stage handles the current one, the slowest stage alone sets the
pace. Hashing and AES-GCM release the GIL on large buffers, so the CPU stage
runs in a worker thread beside the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

T = TypeVar("T")


async def prefetch(source: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    """Yield ``source``'s items while already computing the next one.

    At most one item is fetched ahead, so memory stays bounded to two items.
    Closing the returned generator cancels the fetch in flight and closes
    ``source``.
    """
    ahead: asyncio.Future[T] = asyncio.ensure_future(anext(source))
    try:
        while True:
            try:
                item = await ahead
            except StopAsyncIteration:
                return
            ahead = asyncio.ensure_future(anext(source))
            yield item
    finally:
        if not ahead.done():
            ahead.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
            await ahead
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
