"""Single byte ranges (RFC 9110 §14).

Only one range per request is served. A header that is not a single
well-formed ``bytes=`` range is ignored (the whole file is sent, as RFC 9110
allows); a well-formed range that lies outside the file is refused with 416.
A position of more than 19 digits (past any file) also makes the header
ignored rather than parsed: a 200 of the whole file, never a 5xx.
"""

from __future__ import annotations

import re

from filestore.errors import RangeNotSatisfiable

# ASCII digits only, at most 19 of them: beyond any file size, and Python's
# int() refuses very long digit strings.
_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*([0-9]{0,19})\s*-\s*([0-9]{0,19})\s*$", re.IGNORECASE)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive ``(first, last)`` byte positions to send, or None for
    the whole file. Raises RangeNotSatisfiable (416)."""
    if header is None:
        return None
    match = _RANGE_RE.match(header)
    if not match:
        return None
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None
    if not first_text:
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable("the range selects no bytes of the file", size)
        return max(0, size - suffix), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None  # syntactically invalid: ignore (RFC 9110 §14.1.1)
    last = int(last_text) if last_text else size - 1
    if first >= size:
        raise RangeNotSatisfiable("the range starts past the end of the file", size)
    return first, min(last, size - 1)
