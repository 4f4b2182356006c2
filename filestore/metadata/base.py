"""The contract between filestore and its metadata database, split by concern.

* :class:`FileStore` — files, their wrapped keys and the deletion leases;
* :class:`AuditStore` — the deletion log and its signed checkpoints;
* :class:`ApiKeyStore` — the API keys;
* :class:`ClusterStore` — what the instances sharing the database tell each
  other (KEK commitments, their last purge passes);
* :class:`MetadataStore` — one database holding the three, plus health.

The rules of the lifecycle (which transitions are allowed, who may see a
file, when a file is due, how retries back off, one audit record per file)
are written once, in :mod:`filestore.metadata.rules`; a backend stores rows
and takes locks, it does not decide. Every backend passes the same contract
tests. Backends raise :class:`filestore.errors.MetadataUnavailable` when the
database cannot be reached or stays locked, translated at the boundary.

Lifecycle: ``uploading → active → purging → purged``. A ``purged`` row stays
as a tombstone (no key, no sealed fields) so a later request for it can be
answered 410 and a receipt can be found. See docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from filestore.audit.entries import AuditEntry
from filestore.audit.records import AuditRecord
from filestore.audit.tiles import Tile


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
    #: The KEK schedule's backstop destroyed the file's key first.
    KEK_DESTROYED = "kek_destroyed"


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


@dataclass(frozen=True)
class ReclaimReport:
    """What a backend could do to remove erased key bytes from its files.

    ``complete`` is False when something outside filestore kept the
    database from dropping the old bytes (on SQLite an open read
    transaction pins the WAL); the purge shows it in the status and metrics
    and tries again next pass. KEK destruction covers whatever is left.
    """

    complete: bool
    #: Short machine token of what got in the way (``wal_busy``), or None.
    blocked_by: str | None = None


@dataclass(frozen=True)
class InstanceStatus:
    """One instance's last purge pass, as it reported it to the database."""

    instance: str
    started_at: float
    finished_at: float
    purged: int
    failed: int
    max_overdue: float
    error: str | None
    reclaim_blocked: str | None


@dataclass(frozen=True)
class CosignatureRow:
    """One witness's cosignature of one checkpoint note: filed under the
    tree size and the SHA-256 (hex) of the note's text, so it is handed out
    with exactly the note it signs."""

    size: int
    body_hash: str
    witness: str  #: the witness's vkey
    line: str  #: the signature line, without its newline
    cosigned_at: int  #: the cosignature's own timestamp (POSIX seconds)
    received_at: float


@dataclass(frozen=True)
class PassRecord:
    """One purge pass in the cluster's pass history (``purge_passes``)."""

    instance: str
    started_at: float
    finished_at: float
    purged: int
    failed: int
    max_overdue: float
    error: str | None


class FileStore(Protocol):
    """Files, their wrapped keys and the deletion leases. Each method is one
    transaction."""

    # ------------------------------------------------------------ uploads
    async def create_upload(self, record: FileRecord, key: FileKey) -> None:
        """Insert the ``uploading`` row and its key row in one transaction.

        Called before the first blob byte is written, so any blob that exists
        has a key row that can be crypto-erased.
        """

    async def activate(self, file_id: bytes, size: int, sealed: bytes) -> None:
        """``uploading → active`` with the final size and sealed fields.
        Raises NotFound if the row is not ``uploading`` any more."""

    async def create_active(self, record: FileRecord, key: FileKey) -> None:
        """Insert a complete file, ``active`` (``record.size`` and ``sealed``
        set), and its key row in one transaction: :meth:`create_upload` and
        :meth:`activate` in one, for a blob already stored whole.

        Its blob exists before its key row does, which is safe only because
        the DEK was never stored anywhere before this commit: if the process
        dies first, the blob is ciphertext under a key nobody has, and the
        orphan sweep removes it."""

    async def discard_upload(self, file_id: bytes) -> None:
        """Remove the key and row of an upload that failed before it became
        active (nothing of it was ever readable). Missing rows are fine."""

    # -------------------------------------------------------------- reads
    async def load(self, file_id: bytes) -> tuple[FileRecord, FileKey | None] | None:
        """The row and its key (None once erased), or None if no such row."""

    async def count_download(self, file_id: bytes, now: float) -> int | None:
        """Atomically count one download of a file the rules still let be
        downloaded; return the new count, or None if refused."""

    # ----------------------------------------------------------- deletion
    async def begin_delete(
        self,
        file_id: bytes,
        reason: DeleteReason,
        owner: str,
        now: float,
        lease_until: float,
    ) -> FileRecord | None:
        """Take the lease on a file for secure deletion, if the rules allow
        (``rules.may_lease``). Returns the updated row, or None if the row is
        missing, already purged, or leased by someone else."""

    async def crypto_erase(self, file_ids: Sequence[bytes]) -> None:
        """Delete the key rows and sealed fields of ``file_ids`` and commit.
        Idempotent. What stays in the database's own files afterwards is
        :meth:`reclaim`'s business."""

    async def reclaim(self) -> ReclaimReport:
        """Drop the bytes of erased keys from the database's files as far as
        the database allows (SQLite: truncate the WAL; PostgreSQL: vacuum the
        key table). Never waits long: a blocked attempt is reported."""

    async def finish_delete(
        self, deletions: Sequence[tuple[bytes, AuditEntry]], owner: str, now: float
    ) -> list[AuditRecord]:
        """In one transaction: for each file still ``purging``, mark it
        ``purged`` and append its audit entry (``rules.may_finish``: the
        caller's steps are done, even if its lease lapsed meanwhile). Files
        already purged are skipped. Returns the records appended."""

    # -------------------------------------------------------------- purge
    async def claim_expired(
        self, now: float, limit: int, owner: str, lease_until: float
    ) -> list[FileRecord]:
        """Lease up to ``limit`` files due for purge (``rules.due_expired`` or
        ``rules.due_abandoned``), most overdue first, skipping rows another
        instance is claiming right now. Cost grows with the number of due
        files, not with live ones."""

    async def record_failure(self, file_id: bytes, owner: str, retry_at: float, error: str) -> None:
        """Count a failed attempt, release the lease and hold the file back
        until ``retry_at``. ``error`` is an error class name, never text."""

    async def purge_stats(self, now: float) -> PurgeStats: ...

    async def lifetime_histogram(self, now: float, width: float, buckets: int) -> list[int]:
        """Live files (``uploading`` or ``active``) not yet expired, counted
        by remaining lifetime in one grouped query: element ``i`` counts those
        expiring in ``[now + i·width, now + (i+1)·width)``, the last element
        also those expiring later. Costs a pass over the live files' index
        entries (the status page, not the purge, asks for it)."""

    async def stuck_uploads(self, cutoff: float, limit: int) -> list[FileRecord]:
        """Rows still ``uploading`` that were created before ``cutoff``."""

    async def live_ids(self, file_ids: Sequence[bytes]) -> set[bytes]:
        """Which of ``file_ids`` have a row that is not purged."""

    async def count_keys(self, kek_id: int) -> int:
        """How many file keys are still wrapped under ``kek_id``."""

    async def doom_wrapped_under(self, kek_id: int) -> int:
        """Hand every file still wrapped under ``kek_id`` (a destroyed KEK) to
        deletion: ``uploading`` and ``active`` rows become ``purging`` with
        reason ``kek_destroyed`` and no lease, so the next purge pass takes
        them whatever their ``expires_at`` says. Rows already being deleted
        keep their reason and lease. Returns how many rows changed."""

    async def legacy_keys(self, after: bytes, limit: int) -> list[tuple[FileKey, str]]:
        """Up to ``limit`` keys still in the pre-tenant wrap layout (60 bytes
        long; served by an index that is empty once they are re-sealed),
        each with its file's tenant, by file id from just after ``after``."""

    async def replace_keys(self, changes: Sequence[tuple[FileKey, bytes]]) -> int:
        """Swap each key's wrapped bytes for the new ones (a delete and an
        insert: key rows are never updated), only where the row still holds
        the old bytes (another instance may have done it, or the file been
        erased). Returns how many rows changed."""


class ClusterStore(Protocol):
    """What the instances sharing one database tell each other: the
    commitments of the KEKs they wrap under (a split brain shows as a
    mismatch) and each instance's last purge pass."""

    async def record_commitment(
        self, kek_id: int, commitment: bytes, now: float, *, founding: bool = False
    ) -> bytes | None:
        """Store the commitment of epoch ``kek_id`` unless one is stored, and
        return the one stored (compare it with your own). With ``founding``
        (a first instance creating the cluster's ratchet) store it only if no
        commitment of any epoch exists yet, and return None if one does."""

    async def latest_commitment(self) -> tuple[int, bytes] | None:
        """The newest KEK id with a stored commitment, and the commitment."""

    async def clock_offset(self, local: Callable[[], float]) -> float | None:
        """The database server's clock minus ``local()`` (seconds, round
        trip halved), or None where the database has no clock of its own
        (SQLite runs on this host). Every instance measures against the same
        server, so their clocks agree within twice the largest offset."""

    async def report_pass(self, status: InstanceStatus) -> None:
        """Record an instance's last pass, for the cluster-wide status, and
        append it to the pass history; in the same transaction, forget
        history older than ``PASS_HISTORY`` (36 h) before this pass's end."""

    async def instance_passes(self) -> list[InstanceStatus]:
        """Every instance's last reported pass, newest first."""

    async def pass_history(self, since: float, limit: int) -> list[PassRecord]:
        """Passes of every instance that finished at or after ``since``,
        oldest first; at most ``limit``, the newest ones if there are more."""


class AuditStore(Protocol):
    """The deletion log and its checkpoints. Appends are serialised across
    every instance sharing the database: one chain, no gap, no fork."""

    async def append(self, entry: AuditEntry) -> AuditRecord:
        """Append one entry that marks no file row (a KEK destruction, an
        orphan blob without a row). If an entry with the same identity is
        already on record, return that record instead: one each, whoever
        races."""

    async def head(self) -> AuditRecord | None: ...

    async def records(
        self,
        after_seq: int,
        limit: int,
        since: float | None = None,
        until: float | None = None,
    ) -> list[AuditRecord]:
        """Records with ``seq > after_seq`` in order, optionally only those
        recorded in ``[since, until)``."""

    async def hashes(self, size: int, after: int = 0) -> list[bytes]:
        """The raw hashes of records ``after+1 .. size``, the Merkle tree's
        leaves (all of them with the default ``after``)."""

    async def read_tiles(self, tiles: Sequence[Tile]) -> list[bytes]:
        """The bytes of each tlog tile (``width`` hashes of 32 bytes), in one
        transaction: level 0 from the records' hashes, levels above from the
        stored subtree roots. A tile whose hashes do not all exist yet comes
        back short (callers check the length)."""

    async def record_texts(self, after_seq: int, limit: int) -> list[str]:
        """The stored canonical JSON of records ``after_seq+1 …`` (at most
        ``limit``), byte for byte as hashed and stored."""

    async def checkpoint_sized(self, low: int, high: int) -> bool:
        """Whether some stored checkpoint has a tree size in ``[low, high)``
        (the partial tiles the log must serve are those such a size needs)."""

    async def record_for_file(self, file_id: str) -> AuditRecord | None: ...

    async def record_for_kek(self, kek_id: int) -> AuditRecord | None:
        """The record of a KEK's destruction, if any."""

    async def seq_range(
        self, since: float | None, until: float | None, upto: int
    ) -> tuple[int, int] | None:
        """The first and last ``seq`` (at most ``upto``) of records recorded
        in ``[since, until)``, or None if there are none. Everything between
        them is exported, so a slice is always a run of consecutive records."""

    async def checkpoints_between(self, low: int, high: int) -> list[str]:
        """The newest signed note for each tree size in ``[low, high]``."""

    async def add_checkpoint(self, size: int, note: str, now: float) -> None:
        """Store a signed note; it replaces any older one of the same tree
        size, so the table holds one checkpoint per size, the newest."""

    async def latest_checkpoint(self) -> tuple[int, str] | None:
        """The newest checkpoint's tree size and signed note."""

    async def checkpoint_covering(self, size: int) -> tuple[int, str] | None:
        """The first checkpoint whose tree holds at least ``size`` records."""

    async def add_cosignatures(self, rows: Sequence[CosignatureRow]) -> None:
        """Store witness cosignatures; each replaces that witness's older
        ones at the same tree size (one per witness and size, the newest)."""

    async def cosignatures(self, low: int, high: int) -> list[tuple[str, str]]:
        """(body hash, signature line) of every cosignature stored for tree
        sizes in ``[low, high]``, by witness, then age."""


class ApiKeyStore(Protocol):
    """API keys, stored as hashes of their secrets."""

    async def add(self, key: ApiKeyRecord) -> None: ...

    async def get(self, key_id: str) -> ApiKeyRecord | None: ...

    async def all(self) -> list[ApiKeyRecord]: ...

    async def revoke(self, key_id: str, now: float) -> bool:
        """Mark a key revoked; returns False if there is no such live key."""

    @property
    def revocations(self) -> int:
        """How many revocations this object has committed: a cache of keys
        (``filestore.auth.KeyCache``) drops what it holds when it changes, so
        a revocation made in this process takes effect at once."""


class MetadataStore(Protocol):
    """One metadata database: the stores above, and its health."""

    @property
    def name(self) -> str:
        """``sqlite`` or ``postgresql``."""

    @property
    def files(self) -> FileStore: ...

    @property
    def audit(self) -> AuditStore: ...

    @property
    def api_keys(self) -> ApiKeyStore: ...

    @property
    def cluster(self) -> ClusterStore: ...

    async def check(self) -> None:
        """Raise MetadataUnavailable unless the database answers."""

    async def close(self) -> None: ...
