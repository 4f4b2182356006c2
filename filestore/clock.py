"""Time as a parameter.

Every decision about expiry takes its time from a :class:`Clock` handed in,
never from ``time.time()`` directly, so tests move a manual clock instead of
sleeping and the server reads the real clock at each request.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """A source of wall-clock time in Unix seconds (UTC)."""

    def now(self) -> float: ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told to; for tests and simulations."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def set(self, when: float) -> None:
        self._now = when


def rfc3339(ts: float) -> str:
    """Format Unix seconds as an RFC 3339 UTC timestamp with a ``Z`` suffix."""
    return (
        datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def parse_time(text: str) -> float:
    """Unix seconds from an RFC 3339 time with a zone (``2026-11-29T00:00:00Z``)
    or a plain number of seconds. ValueError for anything else, including
    times without a zone and non-finite or absurd values."""
    try:
        value = float(text)
    except ValueError:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            raise ValueError("a time needs a zone, e.g. Z") from None
        value = parsed.timestamp()
    if not math.isfinite(value) or not 0 <= value < 1e11:
        raise ValueError("the time is out of range")
    return value
