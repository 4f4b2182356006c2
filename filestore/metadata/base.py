"""The contract between filestore and its metadata database.

The database holds the lifecycle of every file, its wrapped data key (in the
narrow, insert-once ``file_keys`` table) and the API keys. Every backend passes
the same contract tests. Backends raise
:class:`filestore.errors.MetadataUnavailable` when the database cannot be
reached or stays locked, translated at the boundary.

Lifecycle: ``uploading → active → purging → purged``. A ``purged`` row stays
as a tombstone (no key, no sealed fields) so a later request for it can be
answered 410 and a receipt can be found.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from filestore.audit.records import AuditRecord


class FileState(StrEnum):
    UPLOADING = "uploading"
    ACTIVE = "active"
    PURGING = "purging"
    PURGED = "purged"


class DeleteReason(StrEnum):
    EXPIRED = "expired"
    CLIENT_REQUEST = "client_request"
    MAX_DOWNLOADS = "max_downloads"
    ORPHAN = "orphan"


class Role(StrEnum):
    CLIENT = "client"
    OPERATOR = "operator"
    AUDITOR = "auditor"


@dataclass(frozen=True)
class FileRecord:
    """One row of ``files``. ``sealed`` holds the encrypted name, content type
    and checksum (see ``filestore.crypto.sealed``); it is None once erased."""

    id: bytes
    tenant: str
    state: FileState
    kek_id: int
    created_at: float
    expires_at: float
    size: int | None = None
    sealed: bytes | None = None
    max_downloads: int | None = None
    downloads: int = 0
    delete_reason: DeleteReason | None = None
    deleted_at: float | None = None
    lease_owner: str | None = None
    lease_expires: float | None = None
    purge_attempts: int = 0


@dataclass(frozen=True)
class FileKey:
    """One row of ``file_keys``: the data key wrapped under a KEK."""

    file_id: bytes
    kek_id: int
    wrapped: bytes


@dataclass(frozen=True)
class ApiKeyRecord:
    """A stored API key: only the SHA-256 of its secret part is kept."""

    key_id: str
    secret_hash: bytes
    role: Role
    tenant: str
    created_at: float
    label: str = ""
    revoked_at: float | None = None


@dataclass(frozen=True)
class PurgeStats:
    """What the purge status endpoint shows, read in one query."""

    #: Files past expiry and not yet purged.
    backlog: int
    #: ``expires_at`` of the most overdue of them.
    oldest_expiry: float | None
    #: Files whose last purge attempt failed (retrying with backoff).
    failing: int
    #: Failing files by error class.
    failures_by_error: dict[str, int] = field(default_factory=dict)
    #: Live (uploading or active) files, and the oldest one's creation time.
    live: int = 0
    oldest_live_created: float | None = None


#: Audit fields a caller supplies for one deletion; the store adds ``seq``,
#: ``prev_hash`` and ``hash`` inside the transaction that marks it purged.
AuditFields = Mapping[str, Any]


class MetadataStore(Protocol):
    """What every metadata backend must do. All methods are atomic."""

    # ------------------------------------------------------------ uploads
    async def create_upload(self, record: FileRecord, key: FileKey) -> None:
        """Insert the ``uploading`` row and its key row in one transaction.

        Called before the first blob byte is written, so any blob that exists
        has a key row that can be crypto-erased.
        """

    async def activate(self, file_id: bytes, size: int, sealed: bytes) -> None:
        """``uploading → active`` with the final size and sealed fields.
        Raises NotFound if the row is not ``uploading`` any more."""

    async def discard_upload(self, file_id: bytes) -> None:
        """Remove the key and row of an upload that failed before it became
        active (nothing of it was ever readable). Missing rows are fine."""

    # -------------------------------------------------------------- reads
    async def load(self, file_id: bytes) -> tuple[FileRecord, FileKey | None] | None:
        """The row and its key (None once erased), or None if no such row."""

    async def count_download(self, file_id: bytes, now: float) -> int | None:
        """Atomically count one download of an active, unexpired file that is
        below its download limit; return the new count, or None if refused."""

    # ----------------------------------------------------------- deletion
    async def begin_delete(
        self,
        file_id: bytes,
        reason: DeleteReason,
        owner: str,
        now: float,
        lease_until: float,
    ) -> FileRecord | None:
        """Take the lease on a file for secure deletion.

        Moves ``active``/``uploading`` to ``purging`` recording ``reason``, or
        takes over a ``purging`` row whose lease expired (or that ``owner``
        already holds). Returns the updated row, or None if the row is missing,
        already purged, or leased by someone else.
        """

    async def crypto_erase(self, file_ids: Sequence[bytes]) -> None:
        """Delete the key rows and sealed fields of ``file_ids``, durably.

        When it returns, no copy of those wrapped keys is left in the live
        database files (SQLite: the WAL is checkpointed and truncated).
        Idempotent.
        """

    async def finish_delete(
        self, deletions: Sequence[tuple[bytes, AuditFields]], owner: str, now: float
    ) -> list[AuditRecord]:
        """In one transaction: for each file still ``purging`` under
        ``owner``'s lease, mark it ``purged`` and append its audit record.
        Files no longer held are skipped. Returns the records appended."""

    # -------------------------------------------------------------- purge
    async def claim_expired(
        self, now: float, limit: int, owner: str, lease_until: float
    ) -> list[FileRecord]:
        """Lease up to ``limit`` files due for purge, most overdue first.

        Due means: ``expires_at <= now`` and not purged, not leased by a live
        lease, and not waiting out a retry backoff. Claimed rows become
        ``purging`` with reason ``expired`` unless a reason was recorded.
        Cost grows with the number of due files, not with live ones.
        """

    async def record_failure(self, file_id: bytes, owner: str, retry_at: float, error: str) -> None:
        """Count a failed attempt, release the lease and hold the file back
        until ``retry_at``. ``error`` is an error class name, never text."""

    async def purge_stats(self, now: float) -> PurgeStats: ...

    async def stuck_uploads(self, cutoff: float, limit: int) -> list[FileRecord]:
        """Rows still ``uploading`` that were created before ``cutoff``."""

    async def live_ids(self, file_ids: Sequence[bytes]) -> set[bytes]:
        """Which of ``file_ids`` have a row that is not purged."""

    # -------------------------------------------------------------- audit
    async def count_keys(self, kek_id: int) -> int:
        """How many file keys are still wrapped under ``kek_id``."""

    async def append_audit(self, fields: AuditFields) -> AuditRecord:
        """Append one record that marks no file row (a KEK destruction, an
        orphan blob without a row). If that file's deletion or that KEK's
        destruction is already on record, return the existing record
        instead: one record each, whoever races."""

    async def audit_head(self) -> AuditRecord | None: ...

    async def audit_range(
        self,
        after_seq: int,
        limit: int,
        since: float | None = None,
        until: float | None = None,
    ) -> list[AuditRecord]:
        """Records with ``seq > after_seq`` in order, optionally only those
        recorded in ``[since, until)``."""

    async def audit_hashes(self, size: int, after: int = 0) -> list[bytes]:
        """The raw hashes of records ``after+1 .. size``, the Merkle tree's
        leaves (all of them with the default ``after``)."""

    async def audit_record_for(self, file_id: str) -> AuditRecord | None: ...

    async def audit_record_for_kek(self, kek_id: int) -> AuditRecord | None:
        """The record of a KEK's destruction, if any."""

    async def audit_seq_range(
        self, since: float | None, until: float | None, upto: int
    ) -> tuple[int, int] | None:
        """The first and last ``seq`` (at most ``upto``) of records recorded
        in ``[since, until)``, or None if there are none. Everything between
        them is exported, so a slice is always a run of consecutive records."""

    async def checkpoints_between(self, low: int, high: int) -> list[str]:
        """The newest signed note for each tree size in ``[low, high]``."""

    async def add_checkpoint(self, size: int, note: str, now: float) -> None: ...

    async def latest_checkpoint(self) -> tuple[int, str] | None:
        """The newest checkpoint's tree size and signed note."""

    async def checkpoint_covering(self, size: int) -> tuple[int, str] | None:
        """The first checkpoint whose tree holds at least ``size`` records."""

    # ----------------------------------------------------------- API keys
    async def add_api_key(self, key: ApiKeyRecord) -> None: ...

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None: ...

    async def list_api_keys(self) -> list[ApiKeyRecord]: ...

    async def revoke_api_key(self, key_id: str, now: float) -> bool:
        """Mark a key revoked; returns False if there is no such live key."""

    # -------------------------------------------------------------- admin
    async def check(self) -> None:
        """Raise MetadataUnavailable unless the database answers."""

    async def close(self) -> None: ...
