"""The file lifecycle: the one state machine that the API, the CLI and the
purge all drive.

``uploading → active → purging → purged``. The invariants callers may rely on:

* a key row exists before the first blob byte is written, so any blob that
  exists can be crypto-erased;
* a file is readable only while ``active`` and before ``expires_at`` (read from
  the clock on every call, never cached);
* :meth:`Lifecycle.secure_delete` runs crypto-erase → blob removal (verified) →
  ``purged``, each step idempotent, so a crash at any point is finished by the
  next call for the same file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TypeVar

from filestore import ids
from filestore.clock import Clock
from filestore.config import Settings
from filestore.crypto import (
    CHUNK_SIZE,
    ENC_CHUNK_SIZE,
    PREFIX_SIZE,
    Decryptor,
    Encryptor,
    Header,
    Keyring,
    chunk_span,
    ciphertext_size,
    open_fields,
    seal_fields,
)
from filestore.erasure import Eraser
from filestore.errors import (
    BadRequest,
    ChecksumMismatch,
    FilestoreError,
    Gone,
    IntegrityError,
    KeyNotFound,
    StorageUnavailable,
    TooLarge,
)
from filestore.metadata import rules
from filestore.metadata.base import DeleteReason, FileKey, FileRecord, FileState, MetadataStore
from filestore.pipeline import prefetch
from filestore.storage.base import BlobStore

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class UploadOptions:
    """What a client may ask of an upload; validated by the caller."""

    ttl: float | None = None
    filename: str | None = None
    content_type: str | None = None
    expected_sha256: bytes | None = None
    max_downloads: int | None = None


@dataclass(frozen=True)
class FileInfo:
    """What a client may learn of its file."""

    id: bytes
    size: int
    sha256: str
    created_at: float
    expires_at: float
    filename: str | None
    content_type: str | None
    max_downloads: int | None
    downloads: int

    @property
    def id_text(self) -> str:
        return ids.to_text(self.id)


async def _shielded(aw: Awaitable[T]) -> T:
    """Run must-finish cleanup even if the caller is being cancelled."""
    return await asyncio.shield(aw)


class OpenFile:
    """A readable file whose header, commitment and final chunk checked out.

    Produced by :meth:`Lifecycle.open`; stream it with :meth:`plaintext`.
    """

    def __init__(
        self,
        info: FileInfo,
        blobs: BlobStore,
        decryptor: Decryptor,
        batch_chunks: int,
        clock: Clock,
        deadline: float,
    ) -> None:
        self.info = info
        self._clock = clock
        self._deadline = deadline
        self._blobs = blobs
        self._decryptor = decryptor
        self._batch_chunks = batch_chunks
        self._name = ids.blob_name(info.id)

    async def plaintext(
        self, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes | bytearray, None]:
        """Yield plaintext bytes ``start..end`` (inclusive), decrypting only the
        chunks they touch, in batches of about 1 MiB.

        The next batch is read (and decrypted, ~0.2 ms per MiB, on the loop:
        a thread hop measured slower) while the caller sends the current one.
        Raises IntegrityError mid-stream if a chunk fails, and Gone once the
        file is past its expiry plus the download grace; the caller must then
        abort the connection rather than end the body cleanly. Close the
        generator to stop early.
        """
        size = self.info.size
        if end is None:
            end = size - 1
        if size == 0 or end < start:
            return
        batches = prefetch(self._decrypted_batches(start // CHUNK_SIZE, end // CHUNK_SIZE))
        skip = start % CHUNK_SIZE
        remaining = end - start + 1
        try:
            async for plain in batches:
                if self._clock.now() >= self._deadline:
                    # Past expiry plus the download grace: no more bytes.
                    raise Gone("the file expired during the download")
                out, skip, remaining = _trim(plain, skip, remaining)
                if out:
                    yield out
        finally:
            await batches.aclose()
        if remaining:
            # The store returned fewer bytes than the layout requires.
            raise IntegrityError()

    async def _decrypted_batches(self, first: int, last: int) -> AsyncGenerator[bytearray, None]:
        """Plaintext of chunks ``first..last``, one batch at a time. The store
        hands over whole batches of chunks, so nothing is copied to re-frame
        them."""
        size = self.info.size
        offset, length = chunk_span(size, first, last)
        index = first
        reader = self._blobs.read(
            self._name, offset, length, piece_size=self._batch_chunks * ENC_CHUNK_SIZE
        )
        try:
            async for piece in reader:
                yield self._decryptor.decrypt_chunks(index, piece, size)
                index += self._batch_chunks
        finally:
            await reader.aclose()


def _trim(
    plain: bytes | bytearray, skip: int, remaining: int
) -> tuple[bytes | bytearray, int, int]:
    """Drop ``skip`` leading bytes and anything past ``remaining``."""
    if skip:
        cut = min(skip, len(plain))
        plain = plain[cut:]
        skip -= cut
    if len(plain) > remaining:
        plain = plain[:remaining]
    return plain, skip, remaining - len(plain)


class Lifecycle:
    """Uploads, reads and secure deletion over one metadata store and one
    blob store."""

    def __init__(
        self,
        settings: Settings,
        metadata: MetadataStore,
        blobs: BlobStore,
        keyring: Keyring,
        clock: Clock,
        instance: str | None = None,
    ) -> None:
        self.settings = settings
        self.metadata = metadata
        self.blobs = blobs
        self.keyring = keyring
        self.clock = clock
        self.instance = instance or "gw-" + secrets.token_hex(4)
        self.eraser = Eraser(
            metadata.files,
            blobs,
            clock,
            self.instance,
            lease=settings.purge_interval,
            interval=settings.purge_interval,
        )

    # ------------------------------------------------------------------ upload
    def _ttl(self, requested: float | None) -> float:
        ttl = self.settings.default_ttl if requested is None else requested
        if ttl <= 0:
            raise BadRequest("ttl must be positive")
        if ttl > self.settings.max_ttl:
            raise BadRequest(f"ttl may be at most {self.settings.max_ttl:g} seconds")
        return ttl

    async def upload(
        self, tenant: str, options: UploadOptions, body: AsyncIterator[bytes]
    ) -> FileInfo:
        """Stream ``body`` through encryption into the blob store.

        Returns once the blob is durable and the row is ``active``. On any
        failure (bad input, client gone, outage) the partial blob is removed
        and the row discarded before the error propagates; what cleanup cannot
        reach (an outage) is left ``uploading`` for the sweep, never readable.
        """
        ttl = self._ttl(options.ttl)
        if options.max_downloads is not None and options.max_downloads < 1:
            raise BadRequest("max_downloads must be at least 1")
        now = self.clock.now()
        file_id = ids.new_file_id()
        dek = secrets.token_bytes(32)
        kek_id, wrapped = self.keyring.wrap(dek, file_id)
        record = FileRecord(
            id=file_id,
            tenant=tenant,
            state=FileState.UPLOADING,
            kek_id=kek_id,
            created_at=now,
            expires_at=now + ttl,
            max_downloads=options.max_downloads,
        )
        await self.metadata.files.create_upload(record, FileKey(file_id, kek_id, wrapped))
        try:
            size, digest = await self._write_blob(file_id, dek, kek_id, body)
            if options.expected_sha256 is not None and not hmac.compare_digest(
                digest, options.expected_sha256
            ):
                raise ChecksumMismatch(
                    "the body's SHA-256 does not match the checksum sent with it"
                )
            sealed = seal_fields(
                dek,
                file_id,
                {
                    "filename": options.filename,
                    "content_type": options.content_type,
                    "sha256": digest.hex(),
                },
            )
            await self.metadata.files.activate(file_id, size, sealed)
        except BaseException:
            await _shielded(self._abandon(file_id))
            raise
        return FileInfo(
            id=file_id,
            size=size,
            sha256=digest.hex(),
            created_at=now,
            expires_at=now + ttl,
            filename=options.filename,
            content_type=options.content_type,
            max_downloads=options.max_downloads,
            downloads=0,
        )

    async def _write_blob(
        self, file_id: bytes, dek: bytes, kek_id: int, body: AsyncIterator[bytes]
    ) -> tuple[int, bytes]:
        """Receive, hash + encrypt, and write as three overlapping stages:
        the loop receives batch N+1 while a worker thread hashes and encrypts
        batch N and the store writes batch N-1."""
        limit = self.settings.max_file_size
        batch = self.settings.batch_size
        encryptor = Encryptor(dek, Header(kek_id, file_id))
        digest = hashlib.sha256()
        loop = asyncio.get_running_loop()

        def seal(pieces: list[bytes]) -> bytes | bytearray:
            # Runs in a worker thread: joining, hashing and AES-GCM all
            # release the GIL or are memcpy, so the loop keeps receiving.
            plain = b"".join(pieces)
            digest.update(plain)
            return encryptor.update(plain)

        size = 0
        pending: list[bytes] = []
        pending_size = 0
        sealing: asyncio.Future[bytes | bytearray] | None = None
        writer = await self.blobs.create(ids.blob_name(file_id))
        try:
            await writer.write(encryptor.prefix())
            async for piece in body:
                size += len(piece)
                if size > limit:
                    raise TooLarge(limit)
                pending.append(piece)
                pending_size += len(piece)
                if pending_size >= batch:
                    if sealing is not None:
                        await writer.write(await sealing)
                    sealing = loop.run_in_executor(None, seal, pending)
                    pending, pending_size = [], 0
            if sealing is not None:
                await writer.write(await sealing)
                sealing = None
            await writer.write(bytes(seal(pending)) + encryptor.finalize())
            await writer.commit()
        except BaseException:
            if sealing is not None:
                # Let the worker finish with the buffers before they go.
                with contextlib.suppress(BaseException):
                    await asyncio.shield(sealing)
            await _shielded(writer.abort())
            raise
        return size, digest.digest()

    async def _abandon(self, file_id: bytes) -> None:
        """Forget a failed upload; leave it to the sweep if that fails too."""
        try:
            await self.blobs.delete(ids.blob_name(file_id))
            await self.metadata.files.discard_upload(file_id)
        except FilestoreError:
            log.warning(
                "could not clean up failed upload %s; the sweep will remove it",
                ids.to_text(file_id),
            )

    # -------------------------------------------------------------------- read
    async def info(self, tenant: str, file_id: bytes) -> tuple[FileRecord, FileKey, bytes]:
        """The readable row, its key and the DEK, or NotFound/Gone."""
        record, key = rules.readable(
            await self.metadata.files.load(file_id), tenant, self.clock.now()
        )
        try:
            dek = self.keyring.unwrap(key.kek_id, file_id, key.wrapped)
        except KeyNotFound:
            # Another process sharing the keyring may have rotated since we
            # loaded it; a destroyed KEK stays missing after the reload.
            await asyncio.to_thread(self.keyring.reload)
            dek = self.keyring.unwrap(key.kek_id, file_id, key.wrapped)
        return record, key, dek

    def _file_info(self, record: FileRecord, dek: bytes) -> FileInfo:
        assert record.sealed is not None and record.size is not None
        fields = open_fields(dek, record.id, record.sealed)
        return FileInfo(
            id=record.id,
            size=record.size,
            sha256=str(fields["sha256"]),
            created_at=record.created_at,
            expires_at=record.expires_at,
            filename=_opt_str(fields.get("filename")),
            content_type=_opt_str(fields.get("content_type")),
            max_downloads=record.max_downloads,
            downloads=record.downloads,
        )

    async def stat(self, tenant: str, file_id: bytes) -> FileInfo:
        """Metadata of a readable file (for HEAD); reads no blob bytes."""
        record, _key, dek = await self.info(tenant, file_id)
        return self._file_info(record, dek)

    async def open(self, tenant: str, file_id: bytes) -> OpenFile:
        """Check a file end to end before anything is sent: visibility,
        expiry, download limit, blob length, header, key commitment and the
        final chunk."""
        record, _key, dek = await self.info(tenant, file_id)
        info = self._file_info(record, dek)
        name = ids.blob_name(file_id)
        stored = await self.blobs.size(name)
        if stored is None:
            raise StorageUnavailable("the file's blob is missing from storage")
        if stored != ciphertext_size(info.size):
            raise IntegrityError()
        prefix = await _read_all(self.blobs.read(name, 0, PREFIX_SIZE))
        decryptor = Decryptor.open(dek, Header(record.kek_id, file_id), prefix)
        last = info.size // CHUNK_SIZE
        offset, length = chunk_span(info.size, last, last)
        decryptor.decrypt_chunks(
            last, await _read_all(self.blobs.read(name, offset, length)), info.size
        )
        return OpenFile(
            info,
            self.blobs,
            decryptor,
            self.settings.batch_size // CHUNK_SIZE,
            self.clock,
            record.expires_at + self.settings.download_grace,
        )

    async def record_download(self, file_id: bytes) -> int:
        """Count one download atomically; Gone if the file expired or hit its
        limit since it was opened. Returns the count including this one."""
        count = await self.metadata.files.count_download(file_id, self.clock.now())
        if count is None:
            raise Gone("the file expired or reached its download limit")
        return count

    # ---------------------------------------------------------------- deletion
    async def delete(self, tenant: str, file_id: bytes) -> bool:
        """A client's early deletion. Returns False if another worker is
        already deleting it (the caller may answer 202)."""
        loaded = await self.metadata.files.load(file_id)
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


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


async def _read_all(stream: AsyncIterator[bytes]) -> bytes:
    """Collect a short ranged read (a prefix or one chunk)."""
    out = bytearray()
    async for piece in stream:
        out += piece
    return bytes(out)
