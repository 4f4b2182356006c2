"""Secure, irreversible deletion: the steps every deletion path shares.

DELETE, download limits, the purge pass and the orphan sweep all end here, so
there is one order of steps and one audit path:

1. the caller holds the lease on each file (``purging``, reason recorded);
2. **crypto-erase**: the key rows and sealed fields of the whole batch are
   deleted and made durable in one transaction — from here the ciphertext is
   unreadable even if a later step fails — and the database is asked to drop
   the old bytes from its files (SQLite: truncate the WAL; PostgreSQL: vacuum
   the key table). If something outside filestore blocks that, the deletion
   goes on (the key row is gone; the epoch's KEK destruction covers the
   residue) and the report says so;
3. each blob is deleted and verified gone: one file alone through
   ``delete`` + ``exists``, a batch through the store's ``delete_many``
   (batched requests, verification in bulk; see the backends);
4. in one transaction: an audit record per file and ``purged``.

Every step is idempotent, so a run that dies at any line is finished by the
next run once the lease lapses; the audit log's uniqueness on the file id
keeps it to one record per file whatever happens.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from filestore import __version__, ids
from filestore.audit import entries
from filestore.audit.entries import AuditEntry
from filestore.audit.records import AuditRecord
from filestore.clock import Clock
from filestore.errors import FilestoreError, StorageUnavailable
from filestore.metadata import rules
from filestore.metadata.base import DeleteReason, FileRecord, FileStore
from filestore.storage.base import BlobStore

log = logging.getLogger(__name__)

#: How long a deleter holds a file when the caller sets nothing else. The
#: gateway uses one purge interval, so the next pass can take over what a
#: crashed one left.
DEFAULT_LEASE = 60.0

#: Test hook: awaited after each step with the step's name.
StepHook = Callable[[str], Awaitable[None]]


@dataclass
class ErasureReport:
    """What one call achieved: records appended, and files that failed with
    the error class that stopped them (retried later)."""

    purged: list[AuditRecord] = field(default_factory=list)
    failed: list[tuple[FileRecord, FilestoreError]] = field(default_factory=list)
    #: Set when the database could not drop the erased bytes from its files.
    reclaim_blocked: str | None = None


class Eraser:
    """Runs steps 2-4 for files whose lease the caller holds."""

    def __init__(
        self,
        files: FileStore,
        blobs: BlobStore,
        clock: Clock,
        instance: str,
        after_step: StepHook | None = None,
        lease: float = DEFAULT_LEASE,
        interval: float = DEFAULT_LEASE,
        retry_cap: float | None = None,
    ) -> None:
        self.lease_seconds = lease
        self.interval = interval
        #: Longest wait before a failed deletion is retried (see rules.backoff).
        self.retry_cap = interval if retry_cap is None else retry_cap
        #: What blocked the last reclaim of erased bytes (any deletion path),
        #: until one completes; the scheduler retries it every pass.
        self.reclaim_pending: str | None = None
        self.files = files
        self.blobs = blobs
        self.clock = clock
        self.instance = instance
        self.after_step = after_step

    async def _step(self, name: str) -> None:
        if self.after_step is not None:
            await self.after_step(name)

    def lease_owner(self) -> str:
        """A lease owner for one operation: the instance plus a token, so two
        deletions of one file in the same process (a DELETE racing the
        purge) do not both count as the holder."""
        return f"{self.instance}:{secrets.token_hex(4)}"

    async def lease(self, file_id: bytes, reason: DeleteReason) -> FileRecord | None:
        """Step 1 for one file (DELETE, download limit); None if someone else
        holds it or it is already purged."""
        now = self.clock.now()
        return await self.files.begin_delete(
            file_id, reason, self.lease_owner(), now, now + self.lease_seconds
        )

    async def erase(self, records: Sequence[FileRecord]) -> ErasureReport:
        """Steps 2-4 for ``records``. Raises only if the crypto-erase fails (then no
        file of the batch changed state and all are retried later); failures
        of single blobs are reported, not raised. Shielded from cancellation:
        a cancelled caller does not leave a step half done."""
        return await asyncio.shield(self._erase(records))

    async def _erase(self, records: Sequence[FileRecord]) -> ErasureReport:
        report = ErasureReport()
        if not records:
            return report
        await self._step("leased")
        await self.files.crypto_erase([r.id for r in records])
        try:
            blocked = (await self.files.reclaim()).blocked_by
        except FilestoreError:
            blocked = "unavailable"  # the keys are gone; the bytes go next pass
        self.reclaim_pending = report.reclaim_blocked = blocked
        await self._step("crypto_erased")
        outcomes = await self._remove_blobs(records)
        await self._step("blobs_deleted")
        done: list[FileRecord] = []
        for record, error in zip(records, outcomes, strict=True):
            if error is None:
                done.append(record)
            else:
                log.warning(
                    "could not remove blob of %s (%s); will retry",
                    ids.to_text(record.id),
                    type(error).__name__,
                )
                report.failed.append((record, error))
        now = self.clock.now()
        try:
            report.purged = await self.files.finish_delete(
                [(r.id, self.audit_entry(r, now)) for r in done], self.instance, now
            )
        except FilestoreError as exc:
            # Key and blob are gone; only the record and ``purged`` are
            # missing, and the next deleter to take the lease writes them.
            report.failed.extend((r, exc) for r in done)
        await self._step("finished")
        return report

    async def _remove_blobs(self, records: Sequence[FileRecord]) -> list[FilestoreError | None]:
        """Step 4: each record's blob deleted and verified gone, or the error
        that kept it. One file (a DELETE, a download limit) takes the single
        path, ``delete`` then ``exists``; a batch takes ``delete_many``, whose
        requests and verification cover many blobs at a time."""
        if len(records) == 1:
            name = ids.blob_name(records[0].id)
            try:
                await self.blobs.delete(name)
                if await self.blobs.exists(name):
                    raise StorageUnavailable("the blob is still present after deletion")
            except FilestoreError as exc:
                return [exc]
            return [None]
        names = [ids.blob_name(r.id) for r in records]
        outcome = await self.blobs.delete_many(names)
        # A name the store gave no outcome for is not taken as deleted.
        return [
            outcome[name] if name in outcome else StorageUnavailable("deletion not confirmed")
            for name in names
        ]

    def audit_entry(self, record: FileRecord, now: float) -> AuditEntry:
        """The audit entry of one deletion: lifecycle facts only — no name,
        content type, checksum, address or error text."""
        return entries.file_deleted(
            file_id=ids.to_text(record.id),
            tenant=record.tenant,
            size=record.size,
            created_at=record.created_at,
            expires_at=record.expires_at,
            deleted_at=now,
            reason=str(record.delete_reason or DeleteReason.EXPIRED),
            backend=self.blobs.name,
            kek_id=record.kek_id,
            actor=self.instance,
            software_version=__version__,
        )

    async def retry_reclaim(self) -> str | None:
        """Try again to drop erased bytes if the last attempt was blocked;
        returns what still blocks it, or None."""
        if self.reclaim_pending is not None:
            self.reclaim_pending = (await self.files.reclaim()).blocked_by
        return self.reclaim_pending

    async def hold_back(self, record: FileRecord, error: FilestoreError) -> bool:
        """Leave a failed deletion for a later pass: counted as failing and
        retried after the backoff the rules give (also a DELETE that failed
        before the file expired). If the database is down too, the lease
        lapses instead and a later pass takes the file over; returns False
        then, so a caller with more files stops trying."""
        wait = rules.backoff(record.purge_attempts, self.interval, self.retry_cap)
        try:
            await self.files.record_failure(
                record.id,
                record.lease_owner or self.instance,
                self.clock.now() + wait,
                type(error).__name__,
            )
        except FilestoreError:
            log.warning("could not record a failed deletion; its lease will lapse instead")
            return False
        return True
