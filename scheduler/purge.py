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

import logging
from dataclasses import dataclass, field

from filestore.erasure import Eraser
from filestore.errors import FilestoreError
from filestore.metadata.base import DeleteReason, FileRecord, MetadataStore

log = logging.getLogger(__name__)

#: Files claimed per batch: one crypto-erase and one audit transaction each.
BATCH_SIZE = 500
#: Upper bound on batches per pass, so one pass always ends.
MAX_BATCHES = 1000
#: Longest wait before a failed file is retried.
MAX_BACKOFF = 600.0


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

    def _fail(self, error: FilestoreError, count: int = 1) -> None:
        name = type(error).__name__
        self.failed += count
        self.failures[name] = self.failures.get(name, 0) + count


def backoff(attempts: int, interval: float) -> float:
    """Seconds to wait after the ``attempts``-th failure: doubling from one
    purge interval, capped at :data:`MAX_BACKOFF`."""
    return float(min(interval * 2 ** min(attempts, 20), MAX_BACKOFF))


async def _hold_back(
    metadata: MetadataStore,
    eraser: Eraser,
    record: FileRecord,
    error: FilestoreError,
    interval: float,
) -> None:
    retry_at = eraser.clock.now() + backoff(record.purge_attempts, interval)
    try:
        await metadata.record_failure(record.id, eraser.instance, retry_at, type(error).__name__)
    except FilestoreError:
        # The database is down too: the lease lapses and a later pass retries.
        log.warning("could not record a purge failure; the lease will lapse instead")


async def purge_pass(
    metadata: MetadataStore,
    eraser: Eraser,
    *,
    interval: float,
    batch_size: int = BATCH_SIZE,
    max_batches: int = MAX_BATCHES,
) -> PassReport:
    """Erase every file whose ``expires_at`` has passed on ``eraser.clock``.

    Never raises for a storage or database failure: it is in the report.
    """
    clock = eraser.clock
    report = PassReport(started_at=clock.now())
    for _ in range(max_batches):
        now = clock.now()
        try:
            batch = await metadata.claim_expired(
                now, batch_size, eraser.instance, now + eraser.lease_seconds
            )
        except FilestoreError as exc:
            report.error = type(exc).__name__
            log.error("purge pass could not claim files: %s", report.error)
            break
        if not batch:
            break
        report.claimed += len(batch)
        try:
            result = await eraser.erase(batch)
        except FilestoreError as exc:
            # Crypto-erase of the batch failed: nothing changed state.
            report._fail(exc, len(batch))
            for record in batch:
                await _hold_back(metadata, eraser, record, exc, interval)
            continue
        for record, error in result.failed:
            report._fail(error)
            await _hold_back(metadata, eraser, record, error, interval)
        report.purged += len(result.purged)
        for audit in result.purged:
            if audit.reason == DeleteReason.EXPIRED and audit.expires_at is not None:
                overdue = (audit.deleted_at or now) - audit.expires_at
                report.max_overdue = max(report.max_overdue, overdue)
        if len(batch) < batch_size:
            break
    report.finished_at = clock.now()
    if report.purged or report.failed:
        log.info(
            "purge pass: claimed %d, purged %d, failed %d",
            report.claimed,
            report.purged,
            report.failed,
        )
    return report
