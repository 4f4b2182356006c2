"""Strict parsing of export lines: JSON objects, hashes, integers, times.

Duplicate keys, NaN/Infinity, hashes that are not 64 lowercase hex digits and
times in any but the canonical spelling are refused, so one export has one
meaning for every reader.
"""

from __future__ import annotations

import json
from typing import Any

from filestore.audit._time import parse_time
from filestore.audit.errors import AuditVerificationError

HEADER_KEYS = frozenset(
    {
        "type",
        "format",
        "since",
        "until",
        "first_seq",
        "prev_hash",
        "frontier",
        "partial",
        "exported_at",
    }
)
CHECKPOINT_KEYS = frozenset({"type", "note", "consistency", "head_proof", "consistency_from"})


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise AuditVerificationError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _reject_constant(_: str) -> Any:
    raise AuditVerificationError("NaN and Infinity are not JSON")


def load(line: str) -> dict[str, Any]:
    try:
        obj = json.loads(line, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise AuditVerificationError("not valid JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise AuditVerificationError("not a JSON object with a 'type'")
    return obj


def hashes(value: Any, what: str) -> list[bytes]:
    if not isinstance(value, list) or not all(
        isinstance(h, str) and len(h) == 64 and h == h.lower() for h in value
    ):
        raise AuditVerificationError(f"{what} is not a list of 64-digit hex hashes")
    try:
        return [bytes.fromhex(h) for h in value]
    except ValueError:
        raise AuditVerificationError(f"{what} is not a list of 64-digit hex hashes") from None


def non_negative(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AuditVerificationError(f"{what} is not a non-negative integer")
    return value


def time_or_none(value: Any, what: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError:
        raise AuditVerificationError(f"{what} is not an RFC 3339 UTC time") from None
