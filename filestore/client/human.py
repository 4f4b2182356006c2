"""Sizes and times the way people read them (the CLI's output)."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["duration", "moment", "size"]

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def size(n: int) -> str:
    """``512 B``, ``48.2 KiB``, ``10.0 GiB``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    """``45s``, ``3m 20s``, ``1h 59m``, ``2d 3h``: the two largest units."""
    total = round(abs(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    first, second = parts[0], parts[1] if len(parts) > 1 else None
    text = f"{first[0]}{first[1]}"
    if second is not None and second[0]:
        text += f" {second[0]}{second[1]}"
    return text


def moment(when: datetime, now: datetime | None = None) -> str:
    """``2026-05-01 12:00:00 UTC (in 1h 59m)`` or ``(3m ago)``."""
    now = now or datetime.now(UTC)
    delta = (when - now).total_seconds()
    stamp = when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if abs(delta) < 1:
        return f"{stamp} (now)"
    return f"{stamp} (in {duration(delta)})" if delta > 0 else f"{stamp} ({duration(delta)} ago)"
