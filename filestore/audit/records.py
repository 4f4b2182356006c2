"""Deletion audit records and their canonical, hash-chained encoding.

One :class:`AuditRecord` is written per deleted file (``file_deleted``) and
per destroyed key-encryption key (``kek_destroyed``). Records form a chain:
record ``seq`` carries the hash of record ``seq - 1`` (64 zeros for the first)
and its own ``hash``, the SHA-256 of its canonical encoding without ``hash``.

Canonical encoding (what is hashed, and what :func:`encode_record` stores):
JSON with keys sorted by code point, no insignificant whitespace, UTF-8,
non-ASCII characters written as themselves, every field present (``null``
when absent), times as RFC 3339 UTC strings with exactly three fractional
digits (``2026-11-29T03:04:05.123Z``). Times are rounded to the nearest
millisecond when a record is constructed, so ``from_json(r.to_json()) == r``
holds exactly.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from filestore.audit._time import format_time, parse_time, round_ms
from filestore.audit.errors import AuditVerificationError

__all__ = [
    "EVENTS",
    "FILE_REASONS",
    "GENESIS_HASH",
    "AuditRecord",
    "canonical_json",
    "decode_record",
    "encode_record",
    "new_record",
]

GENESIS_HASH = "0" * 64
EVENTS = frozenset({"file_deleted", "kek_destroyed"})
FILE_REASONS = frozenset(
    {"expired", "client_request", "max_downloads", "orphan", "kek_destroyed"}
)
KEK_REASON = "kek_epoch_end"
KEK_METHOD = "destroy"

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FILE_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")
# Short machine tokens only: no spaces, so free-form error text cannot slip in.
_TOKEN = re.compile(r"^[A-Za-z0-9_.:+/@=-]{1,128}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TIME_FIELDS = ("recorded_at", "created_at", "expires_at", "deleted_at")


def canonical_json(obj: Any) -> bytes:
    """The canonical encoding of a JSON value (see the module docstring)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _bad(field: str, what: str) -> ValueError:
    return ValueError(f"audit record field {field!r} {what}")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class AuditRecord:
    """One entry of the deletion log. Immutable; validated on construction.

    What a caller may rely on: every instance has well-formed fields (enums,
    id and hash formats, times rounded to ms); ``hash`` is *not* checked
    against the contents by the constructor — :func:`new_record` computes it,
    :meth:`from_json` checks it, :meth:`check_hash` checks it on demand.

    By design the type has no field for file names, content types, content
    hashes (a hash of a document is a fingerprint), IP addresses, user
    agents, error text or key material, and the free-text-looking fields
    (``backend``, ``method``, ``actor``, ``software_version`` and the
    ``verification`` keys and string values) only accept short tokens
    without spaces.

    ``kek_destroyed`` records have no ``file_id``/``tenant``/``size``, reason
    ``kek_epoch_end``, method ``destroy`` and a ``kek_id``. ``file_deleted``
    records have a 22-character public ``file_id``; ``tenant`` and the file
    times may be None for an orphan blob that had no metadata row.
    """

    seq: int
    event: str
    recorded_at: float
    file_id: str | None
    tenant: str | None
    size: int | None
    created_at: float | None
    expires_at: float | None
    deleted_at: float | None
    reason: str
    backend: str
    method: str
    verification: Mapping[str, bool | str]
    kek_id: int | None
    actor: str
    software_version: str
    prev_hash: str
    hash: str

    def __post_init__(self) -> None:
        for name in _TIME_FIELDS:
            value = getattr(self, name)
            if value is None and name != "recorded_at":
                continue
            try:
                object.__setattr__(self, name, round_ms(value))
            except ValueError:
                raise _bad(name, "must be a finite number of Unix seconds") from None
        object.__setattr__(self, "verification", dict(self.verification))
        self._validate()

    def _validate(self) -> None:
        if not _is_int(self.seq) or self.seq < 1:
            raise _bad("seq", "must be an integer >= 1")
        for name in ("prev_hash", "hash"):
            if not isinstance(getattr(self, name), str) or not _HEX64.match(getattr(self, name)):
                raise _bad(name, "must be 64 lowercase hex digits")
        for name in ("backend", "method", "actor", "software_version"):
            if not isinstance(getattr(self, name), str) or not _TOKEN.match(getattr(self, name)):
                raise _bad(name, "must be a short token without spaces")
        for k, v in self.verification.items():
            if not isinstance(k, str) or not _TOKEN.match(k):
                raise _bad("verification", "keys must be short tokens")
            if not isinstance(v, bool) and not (isinstance(v, str) and _TOKEN.match(v)):
                raise _bad("verification", "values must be booleans or short tokens")
        if self.size is not None and (not _is_int(self.size) or self.size < 0):
            raise _bad("size", "must be a non-negative integer or None")
        if self.kek_id is not None and (not _is_int(self.kek_id) or self.kek_id < 0):
            raise _bad("kek_id", "must be a non-negative integer or None")
        if self.event == "file_deleted":
            if not isinstance(self.file_id, str) or not _FILE_ID.match(self.file_id):
                raise _bad("file_id", "must be a 22-character public file id")
            if self.tenant is not None and (
                not isinstance(self.tenant, str) or not self.tenant or _CONTROL.search(self.tenant)
            ):
                raise _bad("tenant", "must be a non-empty string without control characters")
            if self.reason not in FILE_REASONS:
                raise _bad("reason", f"must be one of {sorted(FILE_REASONS)}")
        elif self.event == "kek_destroyed":
            for name in ("file_id", "tenant", "size"):
                if getattr(self, name) is not None:
                    raise _bad(name, "must be None for a kek_destroyed record")
            if self.reason != KEK_REASON or self.method != KEK_METHOD:
                raise _bad("reason", f"must be {KEK_REASON!r} with method {KEK_METHOD!r}")
            if self.kek_id is None:
                raise _bad("kek_id", "is required for a kek_destroyed record")
        else:
            raise _bad("event", f"must be one of {sorted(EVENTS)}")

    def __hash__(self) -> int:  # the dict field makes the generated one fail
        return hash(self.hash)

    # ------------------------------------------------------------ encoding
    def _body(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _TIME_FIELDS and value is not None:
                value = format_time(value)
            elif f.name == "verification":
                value = dict(value)
            out[f.name] = value
        return out

    def to_json(self) -> dict[str, Any]:
        """Every field as a JSON-ready dict (times as RFC 3339 strings)."""
        return self._body()

    def recompute_hash(self) -> str:
        """SHA-256 hex of the canonical encoding of every field but ``hash``."""
        body = self._body()
        del body["hash"]
        return hashlib.sha256(canonical_json(body)).hexdigest()

    def check_hash(self) -> None:
        """AuditVerificationError unless ``hash`` matches the contents."""
        if self.recompute_hash() != self.hash:
            raise AuditVerificationError("record hash does not match its contents", seq=self.seq)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AuditRecord:
        """Parse :meth:`to_json` output strictly and check the hash.

        Unknown or missing fields, wrong types, a time in any other spelling
        and a hash that does not match all raise AuditVerificationError.
        """
        if not isinstance(data, Mapping):
            raise AuditVerificationError("a record must be a JSON object")
        names = [f.name for f in fields(cls)]
        seq = data.get("seq") if _is_int(data.get("seq")) else None
        missing = sorted(set(names) - set(data))
        unknown = sorted(set(data) - set(names))
        if missing or unknown:
            what = "; ".join(
                part
                for part in (
                    f"missing fields {missing}" if missing else "",
                    f"unknown fields {unknown}" if unknown else "",
                )
                if part
            )
            raise AuditVerificationError(f"malformed record: {what}", seq=seq)
        values = dict(data)
        try:
            for name in _TIME_FIELDS:
                if values[name] is not None or name == "recorded_at":
                    values[name] = parse_time(values[name])
        except ValueError:
            raise AuditVerificationError(
                f"malformed record: field {name!r} is not an RFC 3339 UTC time", seq=seq
            ) from None
        if not isinstance(values["verification"], Mapping):
            raise AuditVerificationError(
                "malformed record: 'verification' is not an object", seq=seq
            )
        for name in ("file_id", "tenant", "event", "reason"):
            if values[name] is not None and not isinstance(values[name], str):
                raise AuditVerificationError(f"malformed record: {name!r} is not a string", seq=seq)
        try:
            record = cls(**values)
        except (ValueError, TypeError) as exc:
            raise AuditVerificationError(f"malformed record: {exc}", seq=seq) from None
        record.check_hash()
        return record


def new_record(
    prev: AuditRecord | None,
    *,
    event: str,
    recorded_at: float,
    reason: str,
    backend: str,
    method: str,
    actor: str,
    software_version: str,
    verification: Mapping[str, bool | str],
    file_id: str | None = None,
    tenant: str | None = None,
    size: int | None = None,
    created_at: float | None = None,
    expires_at: float | None = None,
    deleted_at: float | None = None,
    kek_id: int | None = None,
) -> AuditRecord:
    """The record that follows ``prev`` (None for the first), with ``seq``,
    ``prev_hash`` and ``hash`` filled in. ValueError if a field is invalid."""
    draft = AuditRecord(
        seq=1 if prev is None else prev.seq + 1,
        event=event,
        recorded_at=recorded_at,
        file_id=file_id,
        tenant=tenant,
        size=size,
        created_at=created_at,
        expires_at=expires_at,
        deleted_at=deleted_at,
        reason=reason,
        backend=backend,
        method=method,
        verification=verification,
        kek_id=kek_id,
        actor=actor,
        software_version=software_version,
        prev_hash=GENESIS_HASH if prev is None else prev.hash,
        hash=GENESIS_HASH,
    )
    return _with_hash(draft)


def _with_hash(draft: AuditRecord) -> AuditRecord:
    values = {f.name: getattr(draft, f.name) for f in fields(draft)}
    values["hash"] = draft.recompute_hash()
    return AuditRecord(**values)


def encode_record(record: AuditRecord) -> str:
    """The record's canonical JSON text, ``hash`` included (for storage)."""
    return canonical_json(record.to_json()).decode("utf-8")


def decode_record(text: str | bytes) -> AuditRecord:
    """Parse :func:`encode_record` output; checks the hash like ``from_json``."""
    try:
        data = json.loads(text)
    except ValueError:
        raise AuditVerificationError("a record is not valid JSON") from None
    return AuditRecord.from_json(data)
