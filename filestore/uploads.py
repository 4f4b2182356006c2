"""Taking a file in: the request body is encrypted and written to the blob
store, and then the file's row is activated.

All the code that runs before a file exists lives here. That includes the TTL
and download-limit checks, the three-stage receive/encrypt/write pipeline,
and the cleanup when an upload fails partway. None of it is needed once a file
is ``active``. The order is fixed: the key row is written before the first
blob byte, so any blob that exists can be crypto-erased. A failure removes the
partial blob and discards the row. Whatever cleanup cannot reach during an
outage stays ``uploading``, where no read accepts it (see
:func:`filestore.metadata.rules.readable`), and the sweep removes it later.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from filestore import ids
from filestore.clock import Clock
from filestore.config import Settings
from filestore.crypto import Encryptor, Header, seal_fields
from filestore.crypto.schedule import KekSource
from filestore.crypto.wrapping import DekBinding
from filestore.errors import BadRequest, ChecksumMismatch, FilestoreError, TooLarge, Unavailable
from filestore.files_info import FileInfo
from filestore.metadata.base import FileKey, FileRecord, FileState, FileStore
from filestore.storage.base import BlobStore, BlobWriter

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


async def _shielded(aw: Awaitable[T]) -> T:
    """Run must-finish cleanup even if the caller is being cancelled."""
    return await asyncio.shield(aw)


#: Batches at least this large are hashed on a second thread while the first
#: encrypts them; below it the hand-over costs more than it saves.
PARALLEL_HASH_MIN = 1 << 18
_hashing = ThreadPoolExecutor(max_workers=4, thread_name_prefix="filestore-hash")


class _BatchSealer:
    """The CPU stage of an upload: hash and encrypt one batch at a time.

    SHA-256 costs about three times what AES-GCM does, and both release the
    GIL, so a large batch is hashed on one worker thread while another
    encrypts it, beside the loop that receives the next batch. The buffers
    are reused, since fresh megabytes per batch cost as much system time in
    page faults as the writes themselves: one plaintext buffer (a batch is
    sealed only after the previous one was), and two ciphertext buffers
    taken in turn, because the blob writer may still be writing the
    previous batch's while this one is sealed (it holds at most one).
    """

    def __init__(self, encryptor: Encryptor, digest: hashlib._Hash) -> None:
        self._encryptor = encryptor
        self._digest = digest
        self._plain = bytearray()
        self._sealed = (bytearray(), bytearray())
        self._turn = 0

    def seal(self, pieces: list[bytes]) -> bytearray:
        """Hash and encrypt ``pieces``; the result is valid until the call
        after next."""
        plain = self._plain
        total = sum(map(len, pieces))
        if len(plain) > total:
            del plain[total:]
        elif len(plain) < total:
            plain.extend(bytes(total - len(plain)))
        out = self._sealed[self._turn]
        self._turn ^= 1
        with memoryview(plain) as view:
            pos = 0
            for piece in pieces:
                view[pos : pos + len(piece)] = piece
                pos += len(piece)
            if total < PARALLEL_HASH_MIN:
                self._digest.update(view)
                self._encryptor.update_into(view, out)
                return out
            hashed = _hashing.submit(self._digest.update, view)
            try:
                self._encryptor.update_into(view, out)
            finally:
                hashed.result()  # the view must outlive the hash
        return out


class Uploads:
    """Turns a request body into an ``active`` file, or into nothing."""

    def __init__(
        self,
        settings: Settings,
        files: FileStore,
        blobs: BlobStore,
        keyring: KekSource,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.files = files
        self.blobs = blobs
        self.keyring = keyring
        self.clock = clock
        #: Set when this instance found its KEKs are not the cluster's: it
        #: wraps no more keys (503) until an operator fixes it and restarts.
        self.halted: str | None = None

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
        if self.halted is not None:
            raise Unavailable("this instance does not take uploads: " + self.halted)
        ttl = self._ttl(options.ttl)
        if options.max_downloads is not None and options.max_downloads < 1:
            raise BadRequest("max_downloads must be at least 1")
        now = self.clock.now()
        file_id = ids.new_file_id()
        dek = secrets.token_bytes(32)
        kek_id, wrapped = self.keyring.wrap(dek, DekBinding(file_id, tenant))
        record = FileRecord(
            id=file_id,
            tenant=tenant,
            state=FileState.UPLOADING,
            kek_id=kek_id,
            created_at=now,
            expires_at=now + ttl,
            max_downloads=options.max_downloads,
        )
        await self.files.create_upload(record, FileKey(file_id, kek_id, wrapped))
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
            await self.files.activate(file_id, size, sealed)
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
        seal = _BatchSealer(encryptor, digest).seal

        size = 0
        pending: list[bytes] = []
        pending_size = 0
        sealing: asyncio.Future[bytearray] | None = None
        # The header goes out with the first batch: one write fewer. The blob
        # is only created once a first batch fills; a file that ends before
        # that (most small files) is stored by one put, one trip to storage.
        prefix: bytes | None = encryptor.prefix()
        name = ids.blob_name(file_id)
        writer: BlobWriter | None = None
        try:
            async for piece in body:
                size += len(piece)
                if size > limit:
                    raise TooLarge(limit)
                pending.append(piece)
                pending_size += len(piece)
                if pending_size >= batch:
                    if writer is None:
                        writer = await self.blobs.create(name)
                    if sealing is not None:
                        await writer.write(await sealing)
                    elif prefix is not None:
                        await writer.write(prefix)
                        prefix = None
                    sealing = loop.run_in_executor(None, seal, pending)
                    pending, pending_size = [], 0
            if writer is not None and sealing is not None:
                # The last batch is sealed only after this one: one stream.
                await writer.write(await sealing)
                sealing = None
            tail = (prefix or b"") + bytes(seal(pending)) + encryptor.finalize()
            if writer is None:
                await self.blobs.put(name, tail)
            else:
                await writer.write(tail)
                await writer.commit()
        except BaseException:
            if sealing is not None:
                # Let the worker finish with the buffers before they go.
                with contextlib.suppress(BaseException):
                    await asyncio.shield(sealing)
            if writer is not None:
                await _shielded(writer.abort())
            raise
        return size, digest.digest()

    async def _abandon(self, file_id: bytes) -> None:
        """Forget a failed upload; leave it to the sweep if that fails too."""
        try:
            await self.blobs.delete(ids.blob_name(file_id))
            await self.files.discard_upload(file_id)
        except FilestoreError:
            log.warning(
                "could not clean up failed upload %s; the sweep will remove it",
                ids.to_text(file_id),
            )
