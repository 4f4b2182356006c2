"""The contract between filestore and wherever ciphertext is kept.

A backend stores opaque ciphertext under a name that filestore derives from
the file id (32 lowercase hex characters); it never sees plaintext, file
names or keys. Every backend passes the same contract tests
(``tests/integration/test_blobstore_contract.py``).

Errors: a backend raises :class:`filestore.errors.StorageUnavailable` for any
failure of the medium (I/O error, network, permissions), translated at the
boundary with ``raise ... from exc``; its subclass
:class:`filestore.errors.StorageFull` when the medium is full or over quota
(answered 507). A missing blob on read raises :class:`filestore.errors.NotFound`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from filestore.errors import StorageUnavailable


class BlobWriter(Protocol):
    """One blob being written. Nothing is visible under the name until commit."""

    async def write(self, data: bytes | bytearray) -> None:
        """Append ``data``. The writer may hold on to it without copying it
        until two more writes or the commit have been called: the caller
        hands it over and must not change it before then."""

    async def commit(self) -> None:
        """Make the blob durable and visible under its name.

        After it returns, the whole blob survives a crash (fsync'd and renamed,
        or the S3 upload completed). Raises StorageUnavailable and leaves no
        partial blob behind if that cannot be done.
        """

    async def abort(self) -> None:
        """Discard everything written; safe to call more than once, never raises
        for a blob that is already gone."""


class BlobStore(Protocol):
    """What every blob backend must do."""

    #: Short backend name recorded in the audit log ("local", "s3").
    name: str

    async def create(self, name: str) -> BlobWriter:
        """Start writing a new blob called ``name``.

        If a blob of that name is committed again, the last commit wins. An
        ``abort`` after ``commit`` returned does nothing.
        """

    async def put(self, name: str, data: bytes | bytearray) -> None:
        """Store ``data`` as the whole blob ``name``, durable and visible when
        this returns, as :meth:`create`, one write and a commit would make it,
        but in one trip to the medium: the path of a file that arrived whole
        in its first batch. Raises as commit does and leaves no partial blob;
        cancelled, it raises only once nothing of the blob is left, since the
        caller never saw success."""

    def read(
        self,
        name: str,
        offset: int = 0,
        length: int | None = None,
        *,
        piece_size: int = 1 << 20,
    ) -> AsyncGenerator[bytes, None]:
        """Stream ``length`` bytes (to the end when None) from ``offset``.

        Yields pieces of exactly ``piece_size`` bytes, but the last, which may
        be shorter: a reader of chunked ciphertext asks for a whole number of
        chunks per piece and never has to re-buffer. Raises NotFound if the
        blob does not exist. Callers that stop early ``aclose()`` the
        generator so the backend releases its handle at once.
        """

    async def get(self, name: str, size: int) -> bytes:
        """The whole of a small blob the caller expects to be ``size`` bytes,
        in one trip to the medium (a download of a small file reads its blob
        once, not a header, a final chunk and a body in separate trips).
        Returns at most ``size + 1`` bytes, so a longer blob shows as longer
        without being read whole. Raises NotFound if the blob does not exist.
        """

    async def size(self, name: str) -> int | None:
        """The stored size in bytes, or None if there is no such blob."""

    async def delete(self, name: str) -> None:
        """Remove the blob irreversibly from this store, together with any
        partial upload of the same name (a crash's leftovers, an unaborted
        multipart upload), so the orphan sweep needs one call per name. A
        missing blob is not an error. Returns only once the removal is
        durable."""

    async def exists(self, name: str) -> bool:
        """Whether any copy of the blob is still readable (used to verify
        deletion)."""

    async def delete_many(self, names: Sequence[str]) -> dict[str, StorageUnavailable | None]:
        """:meth:`delete` for many blobs at once, each then verified gone, in
        as few round trips as the medium allows (the purge pass's batches).

        Returns an outcome for every name: None when the blob and its partial
        uploads are removed durably and verified absent, else the error that
        kept that blob (the caller leaves it pending and retries it later).
        A failure of the medium, even one that stops the whole call, comes
        back per name, never raised: no name is reported gone that was not
        verified gone. Duplicate names are fine.
        """

    async def check(self) -> None:
        """Raise StorageUnavailable unless the store is reachable and writable."""

    async def close(self) -> None:
        """Release clients, threads and file handles."""


@dataclass(frozen=True)
class StoredBlob:
    """A blob found while listing: its name and last-modified Unix time."""

    name: str
    modified_at: float


@runtime_checkable
class ListableBlobStore(Protocol):
    """Optional ability: list every blob, for the orphan sweep."""

    def list_blobs(self) -> AsyncGenerator[StoredBlob, None]:
        """Yield every committed blob and any partial upload left behind."""
