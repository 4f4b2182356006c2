"""The purge pass: a plain function that finds every expired file and
erases it, and returns what it did. APScheduler only times it; the CLI
(``filestore purge``), the operator endpoint and the tests call it directly.

A pass claims expired files in batches, most overdue first, through the
partial ``expires_at`` index, so its cost grows with the number of expired
files, not with the number of live ones. One failing file never stops the
pass: it is counted, held back with exponential backoff and retried by a
later pass. A pass that dies anywhere leaves leases that lapse, and the next
pass finishes the work.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from filestore.erasure import Eraser
from filestore.errors import FilestoreError
from filestore.metadata.base import DeleteReason, FileRecord, FileStore
from filestore.metadata.rules import backoff

log = logging.getLogger(__name__)

#: Files claimed per batch: one crypto-erase and one audit transaction each.
BATCH_SIZE = 500
#: Upper bound on batches per pass, so one pass always ends.
MAX_BATCHES = 1000


@dataclass
class PassReport:
    """The outcome of one pass (times are Unix seconds)."""

    started_at: float
    finished_at: float = 0.0
    claimed: int = 0
    purged: int = 0
    failed: int = 0
    #: Failures of this pass by error class.
    failures: dict[str, int] = field(default_factory=dict)
    #: Largest ``deleted_at - expires_at`` among files purged for expiry.
    max_overdue: float = 0.0
    #: Set when the pass itself could not run (e.g. the database is down).
    error: str | None = None
    #: Set when erased key bytes could not yet be dropped from the database's
    #: files (``wal_busy``: a reader outside filestore pins the SQLite WAL).
    reclaim_blocked: str | None = None

    def _fail(self, error: FilestoreError, count: int = 1) -> None:
        name = type(error).__name__
        self.failed += count
        self.failures[name] = self.failures.get(name, 0) + count


__all__ = ["PassReport", "backoff", "purge_pass"]


async def _hold_back_all(eraser: Eraser, failed: list[tuple[FileRecord, FilestoreError]]) -> None:
    """Hold back each failed file; stop at the first the database refuses
    (it is down: every lease lapses anyway, and waiting on it per file would
    stretch the pass)."""
    for record, error in failed:
        if not await eraser.hold_back(record, error):
            return


async def purge_pass(
    files: FileStore,
    eraser: Eraser,
    *,
    batch_size: int = BATCH_SIZE,
    max_batches: int = MAX_BATCHES,
) -> PassReport:
    """Erase every file whose ``expires_at`` has passed on ``eraser.clock``.

    Two batches overlap: the next one is claimed, crypto-erased and its blobs
    deleted while the previous one's audit records are written, since the
    blob store and the database are different resources. Each batch still
    runs its own steps in order, and the pass waits for every batch it
    started before it returns or raises.

    Never raises for a storage or database failure: it is in the report.
    """
    clock = eraser.clock
    report = PassReport(started_at=clock.now())
    owner = eraser.lease_owner()  # this pass's leases, apart from a DELETE's
    started: list[asyncio.Future[None]] = []
    try:
        for _ in range(max_batches):
            now = clock.now()
            try:
                batch = await files.claim_expired(
                    now, batch_size, owner, now + eraser.lease_seconds
                )
            except FilestoreError as exc:
                report.error = type(exc).__name__
                log.error("purge pass could not claim files: %s", report.error)
                break
            if not batch:
                break
            report.claimed += len(batch)
            started.append(asyncio.ensure_future(_erase_batch(eraser, batch, report, now)))
            if len(started) > 1:  # the batch before this one, done before a third starts
                await asyncio.shield(started[-2])
            if len(batch) < batch_size:
                break
    finally:
        # Every batch started is finished, whatever stopped the loop; the
        # first error (a test's injected crash) is raised after that.
        outcomes = await asyncio.shield(asyncio.gather(*started, return_exceptions=True))
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    report.finished_at = clock.now()
    if report.purged or report.failed:
        log.info(
            "purge pass: claimed %d, purged %d, failed %d",
            report.claimed,
            report.purged,
            report.failed,
        )
    return report


async def _erase_batch(
    eraser: Eraser, batch: list[FileRecord], report: PassReport, now: float
) -> None:
    """Erase one claimed batch and add its outcome to ``report``."""
    try:
        result = await eraser.erase(batch)
    except FilestoreError as exc:
        # Crypto-erase of the batch failed: nothing changed state.
        report._fail(exc, len(batch))
        await _hold_back_all(eraser, [(record, exc) for record in batch])
        return
    for _record, error in result.failed:
        report._fail(error)
    await _hold_back_all(eraser, result.failed)
    report.reclaim_blocked = result.reclaim_blocked or report.reclaim_blocked
    report.purged += len(result.purged)
    for audit in result.purged:
        if audit.reason == DeleteReason.EXPIRED and audit.expires_at is not None:
            overdue = (audit.deleted_at or now) - audit.expires_at
            report.max_overdue = max(report.max_overdue, overdue)
