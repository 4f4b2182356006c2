"""Times in the audit log: whole milliseconds, rendered as RFC 3339 UTC.

A record's hash covers its times as text, so the text must be the only
possible spelling of the value and must parse back to exactly the same
float. Both hold because every time is first rounded to a whole number of
milliseconds (:func:`round_ms`, half to even) and the float kept is
``ms / 1000`` — the float nearest that decimal — which formats to the same
``YYYY-MM-DDTHH:MM:SS.mmmZ`` and parses back to the same ``ms``.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{3})Z$")


def _to_ms(ts: float) -> int:
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise ValueError("a time must be a finite number of Unix seconds")
    return round(ts * 1000)


def round_ms(ts: float) -> float:
    """``ts`` rounded to the nearest millisecond (the value records keep)."""
    return _to_ms(ts) / 1000


def format_time(ts: float) -> str:
    """RFC 3339 UTC with exactly three fractional digits and a ``Z``."""
    ms = _to_ms(ts)
    seconds, millis = divmod(ms, 1000)
    d = _EPOCH + timedelta(seconds=seconds)
    return (
        f"{d.year:04d}-{d.month:02d}-{d.day:02d}T"
        f"{d.hour:02d}:{d.minute:02d}:{d.second:02d}.{millis:03d}Z"
    )


def parse_time(text: str) -> float:
    """The inverse of :func:`format_time`; ValueError for any other spelling."""
    m = _RE.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError("not an RFC 3339 UTC time of the form YYYY-MM-DDTHH:MM:SS.mmmZ")
    year, month, day, hour, minute, second, millis = (int(g) for g in m.groups())
    d = datetime(year, month, day, hour, minute, second, tzinfo=UTC)  # ValueError if invalid
    delta = d - _EPOCH
    ms = (delta.days * 86_400 + delta.seconds) * 1000 + millis
    return ms / 1000
