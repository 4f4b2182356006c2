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

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


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

    async def crypto_erase(self, file_id: bytes) -> None:
        """Delete the key row and the sealed fields, durably.

        When it returns, no copy of the wrapped key is left in the live
        database files (SQLite: the WAL is checkpointed and truncated).
        Idempotent.
        """

    async def finish_delete(self, file_id: bytes, owner: str, now: float) -> bool:
        """``purging → purged`` if ``owner`` holds the lease; returns whether
        it did."""

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
