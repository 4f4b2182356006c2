"""Sweeps: what a crash or an abandoned upload leaves behind.

* rows stuck in ``uploading`` past the grace time (the client vanished and
  the cleanup could not run) are erased like any file, ``reason=orphan``;
* blobs in storage with no live row (a crash between writing a blob and
  recording it, or between removing a row and its blob) are removed and
  audited ``reason=orphan`` — unless the file's deletion is already on the
  record, in which case only the leftover ciphertext (whose key is gone) is
  removed.

Blobs younger than the grace time are left alone: they may belong to an
upload in flight.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from filestore import __version__, ids
from filestore.audit import entries
from filestore.erasure import Eraser
from filestore.errors import StorageUnavailable
from filestore.metadata.base import DeleteReason, MetadataStore
from filestore.storage.base import BlobStore, ListableBlobStore

log = logging.getLogger(__name__)

LIST_BATCH = 500


@dataclass
class SweepReport:
    stuck_uploads: int = 0
    orphan_blobs: int = 0
    failed: int = 0


async def sweep_stuck_uploads(
    metadata: MetadataStore, eraser: Eraser, grace: float, limit: int = 500
) -> SweepReport:
    report = SweepReport()
    now = eraser.clock.now()
    for record in await metadata.files.stuck_uploads(now - grace, limit):
        leased = await metadata.files.begin_delete(
            record.id, DeleteReason.ORPHAN, eraser.lease_owner(), now, now + eraser.lease_seconds
        )
        if leased is None:
            continue
        result = await eraser.erase([leased])
        report.stuck_uploads += len(result.purged)
        report.failed += len(result.failed)
    return report


async def sweep_orphan_blobs(
    metadata: MetadataStore, blobs: BlobStore, eraser: Eraser, grace: float
) -> SweepReport:
    """Remove blobs that no live row claims. Needs a listable store."""
    report = SweepReport()
    if not isinstance(blobs, ListableBlobStore):
        return report
    cutoff = eraser.clock.now() - grace
    candidates: list[str] = []
    async for blob in blobs.list_blobs():
        if blob.modified_at < cutoff:
            candidates.append(blob.name)
        if len(candidates) >= LIST_BATCH:
            await _remove_orphans(metadata, blobs, eraser, candidates, report)
            candidates = []
    if candidates:
        await _remove_orphans(metadata, blobs, eraser, candidates, report)
    return report


async def _remove_orphans(
    metadata: MetadataStore,
    blobs: BlobStore,
    eraser: Eraser,
    names: list[str],
    report: SweepReport,
) -> None:
    by_id = {bytes.fromhex(name): name for name in dict.fromkeys(names)}
    live = await metadata.files.live_ids(list(by_id))
    orphans = {file_id: name for file_id, name in by_id.items() if file_id not in live}
    # One batch deletion (verified per name) for the lot, as the purge does.
    outcome = await blobs.delete_many(list(orphans.values())) if orphans else {}
    for file_id, name in orphans.items():
        error = outcome.get(name, StorageUnavailable("the blob store did not confirm it"))
        if error is not None:
            log.warning("could not remove orphan blob (%s)", type(error).__name__)
            report.failed += 1
            continue
        text_id = ids.to_text(file_id)
        if await metadata.audit.record_for_file(text_id) is None:
            await metadata.audit.append(
                entries.orphan_deleted(
                    file_id=text_id,
                    deleted_at=eraser.clock.now(),
                    backend=blobs.name,
                    actor=eraser.instance,
                    software_version=__version__,
                )
            )
        report.orphan_blobs += 1
