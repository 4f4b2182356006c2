"""Typed audit entries: what a caller hands the store to append.

An entry is an audit record before it joins the chain: the store adds
``seq``, ``prev_hash`` and ``hash`` inside the transaction that appends it.
The three constructors below are the only places a deletion or a KEK
destruction is described, so every record of one kind has the same shape,
and no free-form field (a file name, an error text) has a way in.

:attr:`AuditEntry.identity` names what the entry is about — one file or one
KEK — which the store uses to keep exactly one record per file or KEK
whoever races to append it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from filestore.audit.records import KEK_METHOD, KEK_REASON, AuditRecord, new_record

__all__ = ["AuditEntry", "file_deleted", "kek_destroyed", "orphan_deleted"]

#: The method of a deletion that erased the key first, then the blob.
ERASE_METHOD = "crypto_erase+delete"


@dataclass(frozen=True)
class AuditEntry:
    """The fields of one record, minus its place in the chain."""

    event: str
    recorded_at: float
    reason: str
    backend: str
    method: str
    actor: str
    software_version: str
    verification: Mapping[str, bool | str] = field(default_factory=dict)
    file_id: str | None = None
    tenant: str | None = None
    size: int | None = None
    created_at: float | None = None
    expires_at: float | None = None
    deleted_at: float | None = None
    kek_id: int | None = None

    @property
    def identity(self) -> tuple[str, str | int | None]:
        """``("file", id)`` or ``("kek", id)``: at most one record each."""
        if self.event == "kek_destroyed":
            return ("kek", self.kek_id)
        return ("file", self.file_id)

    def chain_after(self, prev: AuditRecord | None) -> AuditRecord:
        """The record this entry becomes when appended after ``prev``."""
        values: dict[str, Any] = asdict(self)
        values["verification"] = dict(self.verification)
        return new_record(prev, **values)


def file_deleted(
    *,
    file_id: str,
    tenant: str,
    size: int | None,
    created_at: float,
    expires_at: float,
    deleted_at: float,
    reason: str,
    backend: str,
    kek_id: int,
    actor: str,
    software_version: str,
) -> AuditEntry:
    """A file erased through the lease: key first, then the verified blob."""
    return AuditEntry(
        event="file_deleted",
        recorded_at=deleted_at,
        file_id=file_id,
        tenant=tenant,
        size=size,
        created_at=created_at,
        expires_at=expires_at,
        deleted_at=deleted_at,
        reason=reason,
        backend=backend,
        method=ERASE_METHOD,
        verification={"key_erased": True, "blob_absent": True},
        kek_id=kek_id,
        actor=actor,
        software_version=software_version,
    )


def orphan_deleted(
    *, file_id: str, deleted_at: float, backend: str, actor: str, software_version: str
) -> AuditEntry:
    """A blob no row claimed (its key, if it ever had one, is long gone)."""
    return AuditEntry(
        event="file_deleted",
        recorded_at=deleted_at,
        file_id=file_id,
        deleted_at=deleted_at,
        reason="orphan",
        backend=backend,
        method="delete",
        verification={"blob_absent": True},
        actor=actor,
        software_version=software_version,
    )


def kek_destroyed(
    *,
    kek_id: int,
    created_at: float,
    destroyed_at: float,
    backend: str,
    actor: str,
    software_version: str,
    verification: Mapping[str, bool | str] | None = None,
) -> AuditEntry:
    """A key-encryption key's end: every DEK it wrapped becomes unreadable."""
    return AuditEntry(
        event="kek_destroyed",
        recorded_at=destroyed_at,
        created_at=created_at,
        deleted_at=destroyed_at,
        reason=KEK_REASON,
        backend=backend,
        method=KEK_METHOD,
        verification=dict(verification or {"no_keys_remaining": True}),
        kek_id=kek_id,
        actor=actor,
        software_version=software_version,
    )
