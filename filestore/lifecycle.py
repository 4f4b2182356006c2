"""One object that the API, the CLI, the scheduler and the tests all hold for
a file's life: :class:`Lifecycle`.

The work itself is split across three modules. :mod:`filestore.uploads` takes
files in, :mod:`filestore.reads` serves them, and :mod:`filestore.deletion`
deletes them early. This facade builds the three over shared stores, a shared
keyring, a clock and one :class:`~filestore.erasure.Eraser`. It keeps the
interface callers had before the split, and it exposes the parts as
``uploads``, ``reads`` and ``deletions``.

Which state transitions are allowed (``uploading → active → purging →
purged``), and who may see or read a row, is decided in
:mod:`filestore.metadata.rules`. The parts apply those rules; they do not
restate them. Taken together, the parts guarantee to callers:

* the key row exists before the first blob byte is written, so any blob that
  exists can be crypto-erased;
* a file is readable only while ``active`` and before ``expires_at``. Expiry
  is read from the clock on every call, never cached;
* a deletion goes crypto-erase → blob removal (verified) → ``purged``. Each
  step is idempotent, so if a process crashes partway, the next call or purge
  pass for the same file finishes it.

docs/architecture.md gives the overall picture.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

from filestore.clock import Clock
from filestore.config import Settings
from filestore.crypto.schedule import KekSource
from filestore.deletion import Deletions
from filestore.erasure import Eraser
from filestore.files_info import FileInfo
from filestore.metadata.base import DeleteReason, FileKey, FileRecord, MetadataStore
from filestore.reads import OpenFile, Reads
from filestore.storage.base import BlobStore
from filestore.uploads import UploadOptions, Uploads

__all__ = ["FileInfo", "Lifecycle", "OpenFile", "UploadOptions"]


class Lifecycle:
    """Uploads, reads and secure deletion over one metadata store and one
    blob store."""

    def __init__(
        self,
        settings: Settings,
        metadata: MetadataStore,
        blobs: BlobStore,
        keyring: KekSource,
        clock: Clock,
        instance: str | None = None,
    ) -> None:
        self.settings = settings
        self.metadata = metadata
        self.blobs = blobs
        self.keyring = keyring
        self.clock = clock
        self.instance = instance or "gw-" + secrets.token_hex(4)
        #: Shared by the client deletions below and by the scheduler's purge
        #: pass, so every deletion path runs the same steps.
        self.eraser = Eraser(
            metadata.files,
            blobs,
            clock,
            self.instance,
            lease=settings.purge_interval,
            interval=settings.purge_interval,
            retry_cap=settings.retry_cap,
        )
        self.uploads = Uploads(settings, metadata.files, blobs, keyring, clock)
        self.reads = Reads(settings, metadata.files, blobs, keyring, clock)
        self.deletions = Deletions(metadata.files, self.eraser)

    # ------------------------------------------------------------------ upload
    async def upload(
        self, tenant: str, options: UploadOptions, body: AsyncIterator[bytes]
    ) -> FileInfo:
        """See :meth:`filestore.uploads.Uploads.upload`."""
        return await self.uploads.upload(tenant, options, body)

    # -------------------------------------------------------------------- read
    async def info(self, tenant: str, file_id: bytes) -> tuple[FileRecord, FileKey, bytes]:
        """See :meth:`filestore.reads.Reads.info`."""
        return await self.reads.info(tenant, file_id)

    async def stat(self, tenant: str, file_id: bytes) -> FileInfo:
        """See :meth:`filestore.reads.Reads.stat`."""
        return await self.reads.stat(tenant, file_id)

    async def open(self, tenant: str, file_id: bytes) -> OpenFile:
        """See :meth:`filestore.reads.Reads.open`."""
        return await self.reads.open(tenant, file_id)

    async def record_download(self, file_id: bytes) -> int:
        """See :meth:`filestore.reads.Reads.record_download`."""
        return await self.reads.record_download(file_id)

    # ---------------------------------------------------------------- deletion
    async def delete(self, tenant: str, file_id: bytes) -> bool:
        """See :meth:`filestore.deletion.Deletions.delete`."""
        return await self.deletions.delete(tenant, file_id)

    async def secure_delete(self, file_id: bytes, reason: DeleteReason) -> bool:
        """See :meth:`filestore.deletion.Deletions.secure_delete`."""
        return await self.deletions.secure_delete(file_id, reason)
