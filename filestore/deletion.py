"""Deleting one file on request: a client's DELETE, or a download that used up
the file's limit.

This module holds only the checks and the lease that come first. The deletion
steps (crypto-erase, then verified blob removal, then ``purged`` with its
audit record) belong to :class:`filestore.erasure.Eraser`, which the purge pass
also uses. That way an early deletion and an expiry go through the same steps
in the same order and leave the same audit trail. When a step fails, the file
is left for a retry after a backoff (or, if the database is down as well, for
its lease to lapse), and a later call or the purge pass finishes the job.
"""

from __future__ import annotations

from filestore.erasure import Eraser
from filestore.errors import FilestoreError, Gone
from filestore.metadata import rules
from filestore.metadata.base import DeleteReason, FileState, FileStore


class Deletions:
    """Early, irreversible deletion of single files through the shared
    :class:`~filestore.erasure.Eraser`."""

    def __init__(self, files: FileStore, eraser: Eraser) -> None:
        self.files = files
        self.eraser = eraser

    async def delete(self, tenant: str, file_id: bytes) -> bool:
        """A client's early deletion. Returns False if another worker is
        already deleting it (the caller may answer 202)."""
        loaded = await self.files.load(file_id)
        record = rules.visible(loaded[0] if loaded else None, tenant)
        if record.state == FileState.PURGED:
            raise Gone("the file was already deleted")
        return await self.secure_delete(file_id, DeleteReason.CLIENT_REQUEST)

    async def secure_delete(self, file_id: bytes, reason: DeleteReason) -> bool:
        """Irreversibly delete one file now, through the same steps and audit
        path as the purge (:mod:`filestore.erasure`). Returns False if another
        worker holds the file; raises the storage or database error if a step
        failed (the file is unreadable from the first step on, and a later
        call or the purge finishes it)."""
        record = await self.eraser.lease(file_id, reason)
        if record is None:
            return False
        try:
            report = await self.eraser.erase([record])
        except FilestoreError as exc:
            await self.eraser.hold_back(record, exc)
            raise
        if report.failed:
            await self.eraser.hold_back(record, report.failed[0][1])
            raise report.failed[0][1]
        return True
