"""When and how long the client waits before it tries a call again.

Only calls that may safely run twice are retried: GET, HEAD and DELETE, and
creating a signed link (it changes nothing on the server). They are retried
on 503 and on a connection that could not be made or was lost. An upload is
sent again only when nothing of it can have reached the server — the
connection itself could not be made — and its body can be replayed (bytes or
a file, never an iterator).

Beneath this, aiohttp itself re-sends an idempotent request once, at once,
when its connection was closed under it (never a POST); so a call makes at
most ``2 * attempts`` requests, and waits ``attempts - 1`` times.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

__all__ = ["NO_RETRIES", "RetryPolicy", "parse_retry_after"]


def _default_sleep() -> Callable[[float], Awaitable[None]]:
    return asyncio.sleep


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries of a call in all (the first included). Between
    them the client waits what the server's ``Retry-After`` asks (at most
    ``max_retry_after`` seconds), or else an exponential backoff: about
    ``base_delay * 2**n``, at most ``max_delay``, with jitter so that many
    clients do not come back at once. ``sleep`` is how it waits (tests pass
    one that records the delays)."""

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0
    sleep: Callable[[float], Awaitable[None]] = field(default_factory=_default_sleep)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("delays must not be negative")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after try number ``attempt`` (1-based) failed."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return float(ceiling / 2 + random.uniform(0, ceiling / 2))


NO_RETRIES = RetryPolicy(attempts=1)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` value: a number of seconds or an
    HTTP date. None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None
