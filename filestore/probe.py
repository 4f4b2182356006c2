"""A probe whose answer is reused for a few seconds.

The storage probe writes and removes a small object. ``/readyz`` and
``/metrics`` are open to anyone, so without reuse any caller could make the
server write at will; with it, storage sees at most one probe per
``ttl`` seconds however often they are asked, and callers arriving while a
probe runs share it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from filestore.errors import FilestoreError


class CachedProbe:
    """Wraps ``check``; calling the probe raises what the last fresh check
    raised, or returns."""

    def __init__(
        self,
        check: Callable[[], Awaitable[None]],
        ttl: float = 5.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self._ttl = ttl
        self._now = now
        self._at = float("-inf")
        self._error: FilestoreError | None = None
        self._running: asyncio.Future[None] | None = None

    async def __call__(self) -> None:
        if self._now() - self._at < self._ttl:
            if self._error is not None:
                raise self._error
            return
        if self._running is None:
            self._running = asyncio.ensure_future(self._probe())
        await asyncio.shield(self._running)
        if self._error is not None:
            raise self._error

    async def _probe(self) -> None:
        try:
            await self._check()
            self._error = None
        except FilestoreError as exc:
            self._error = exc
        finally:
            self._at = self._now()
            self._running = None

    def forget(self) -> None:
        """Drop the kept answer: the next call probes again."""
        self._at = float("-inf")
