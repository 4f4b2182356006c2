"""Taking a file in: the request body is encrypted and written to the blob
store, and then the file's row is activated.

All the code that runs before a file exists lives here. That includes the TTL
and download-limit checks, the three-stage receive/encrypt/write pipeline,
and the cleanup when an upload fails partway. None of it is needed once a file
is ``active``.

Two orders, one rule: a stored key never unlocks an incomplete blob, and
every blob can be made unreadable. A streamed upload writes its key row
(``uploading``) before the first blob byte, so a blob left by a crash can be
crypto-erased; a failure removes the partial blob and discards the row, and
whatever cleanup cannot reach during an outage stays ``uploading``, where no
read accepts it (:func:`filestore.metadata.rules.readable`), for the sweep. A
file that arrives within its first batch is stored whole first and its row
and key row inserted ``active`` after, in one transaction: until that commit
its DEK exists only in this process, so a crash leaves ciphertext nobody can
decrypt, and the orphan sweep removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TypeVar

from filestore import ids
from filestore.clock import Clock
from filestore.config import Settings
from filestore.crypto import Encryptor, Header, seal_fields
from filestore.crypto.entropy import random_bytes
from filestore.crypto.schedule import KekSource
from filestore.crypto.wrapping import DekBinding
from filestore.errors import BadRequest, ChecksumMismatch, FilestoreError, TooLarge, Unavailable
from filestore.files_info import FileInfo
from filestore.lanes import Lane
from filestore.metadata.base import FileKey, FileRecord, FileState, FileStore
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


async def _shielded(aw: Awaitable[T]) -> T:
    """Run must-finish cleanup even if the caller is being cancelled."""
    return await asyncio.shield(aw)


#: Batches at least this large are hashed on a worker thread while the loop
#: encrypts them; below it the hand-over costs more than it saves.
PARALLEL_HASH_MIN = 1 << 18
_hashing = ThreadPoolExecutor(max_workers=4, thread_name_prefix="filestore-hash")
#: Batches of one upload in the pipeline at once: one being sealed on the
#: loop, the two before it still being hashed or written.
DEPTH = 3

#: ``hashlib`` gives the GIL up while it hashes a buffer of this many bytes or
#: more (CPython's ``HASHLIB_GIL_MINSIZE``).
HASHLIB_GIL_MIN = 2048

#: Below this, a batch hashed on the loop is fed to ``hashlib`` in pieces it
#: hashes without giving the GIL up (a small upload is one such batch).
KEEP_GIL_BELOW = 16 << 10


def hash_keeping_gil(digest: hashlib._Hash, data: bytearray) -> None:
    """Add ``data`` to ``digest`` without giving the GIL up when it is small.

    On the loop, each release of the GIL while a storage or database thread
    waits for it hands the interpreter over, and the loop then waits to take
    it back: a futex wake and a sleep on each side, for the 2 µs that
    hashing 4 KiB takes. In pieces under :data:`HASHLIB_GIL_MIN` hashlib
    keeps it. Measured on three alternated pairs of ``python -m bench --only
    filestore-sqlite,aiohttp-durable --workloads 4KiB``: a context switch
    less an upload (17.2 against 18.3) and 2-9 % less server CPU. A large
    batch is still hashed whole, so that other threads run meanwhile.
    """
    if len(data) >= KEEP_GIL_BELOW:
        digest.update(data)
        return
    step = HASHLIB_GIL_MIN - 1
    with memoryview(data) as view:
        for at in range(0, len(view), step):
            digest.update(view[at : at + step])


class _BatchSealer:
    """The CPU stage of an upload: hash and encrypt one batch at a time.

    SHA-256 costs about five times what AES-GCM does here. ``hashlib``
    releases the GIL once for the whole batch, so a large batch is hashed on
    a worker thread, in a :class:`~filestore.lanes.Lane` of its own so that
    the batches are hashed in order. ``cryptography`` releases it on every
    AEAD call too, but the format makes one call per 16 KiB chunk, and at
    that size two threads sealing get almost no parallelism (twice the work
    takes 1.9 times as long) while every call is a hand-over of the GIL: on a
    thread of its own it only traded the GIL with the loop 64 times a MiB.
    It runs on the loop instead, while the batch is being hashed.

    The buffers are reused, since fresh megabytes per batch cost as much
    system time in page faults as the writes themselves. There are
    :data:`DEPTH` of each, taken in turn: a plaintext buffer is filled again
    only once its hash is done, and a ciphertext buffer three batches after
    it was handed to the blob writer (which holds at most the last two).
    So the loop can seal a batch while the two before it are still being
    hashed and written, instead of waiting for each in turn.
    """

    def __init__(self, encryptor: Encryptor, digest: hashlib._Hash) -> None:
        self._encryptor = encryptor
        self._digest = digest
        self._plain = [bytearray() for _ in range(DEPTH)]
        self._sealed = [bytearray() for _ in range(DEPTH)]
        self._hashes: list[asyncio.Future[None] | None] = [None] * DEPTH
        self._turn = 0
        self._lane = Lane(_hashing)

    async def seal(self, pieces: list[bytes]) -> bytearray:
        """Encrypt ``pieces`` and start hashing them; the result is valid
        until the blob writer is done with it (see the class docstring).
        :meth:`digest` waits for the hashes."""
        turn = self._turn
        self._turn = (turn + 1) % DEPTH
        plain, out = self._plain[turn], self._sealed[turn]
        await self._wait(turn)  # that buffer's hash may still be reading it
        total = sum(map(len, pieces))
        if len(plain) > total:
            del plain[total:]
        elif len(plain) < total:
            plain.extend(bytes(total - len(plain)))
        with memoryview(plain) as view:
            pos = 0
            for piece in pieces:
                view[pos : pos + len(piece)] = piece
                pos += len(piece)
        if total < PARALLEL_HASH_MIN:
            await self._wait_all()  # hashes go in order
            hash_keeping_gil(self._digest, plain)
        else:
            job = self._lane.submit(functools.partial(self._digest.update, plain))
            self._hashes[turn] = asyncio.wrap_future(job)
        self._encryptor.update_into(plain, out)
        return out

    async def _wait(self, turn: int) -> None:
        hashing, self._hashes[turn] = self._hashes[turn], None
        if hashing is not None:
            # Shielded: the worker is reading the buffer until it is done.
            await asyncio.shield(hashing)

    async def _wait_all(self) -> None:
        for turn in range(DEPTH):
            await self._wait(turn)

    async def digest(self) -> bytes:
        """The SHA-256 of everything sealed, once its last hash is done."""
        await self._wait_all()
        return self._digest.digest()

    async def settle(self) -> None:
        """Wait for the hashes in flight, failing or cancelled (cleanup: the
        buffers must outlive the worker's reading)."""
        for turn in range(DEPTH):
            with contextlib.suppress(BaseException):
                await self._wait(turn)


class _Stream:
    """The request body as it is received: size checked against the limit,
    pieces held until a batch is full, and the hash + encryption state.

    The first batch is read before anything is stored, so that a file that
    ends within it can go the short path (:meth:`Uploads._store_whole`).
    """

    def __init__(self, encryptor: Encryptor, body: AsyncIterator[bytes], limit: int) -> None:
        self.encryptor = encryptor
        self.sealer = _BatchSealer(encryptor, hashlib.sha256())
        self._body = aiter(body)
        self._limit = limit
        self.size = 0
        self.pending: list[bytes] = []
        self.pending_size = 0

    async def receive(self) -> bool:
        """Take the next piece into ``pending``; False at the end of the body."""
        piece = await anext(self._body, None)
        if piece is None:
            return False
        self.size += len(piece)
        if self.size > self._limit:
            raise TooLarge(self._limit)
        self.pending.append(piece)
        self.pending_size += len(piece)
        return True

    async def first_batch(self, batch: int) -> bool:
        """Receive up to a full batch; True if the body ended within it."""
        while self.pending_size < batch:
            if not await self.receive():
                return True
        return False

    def take(self) -> list[bytes]:
        pending, self.pending, self.pending_size = self.pending, [], 0
        return pending

    async def seal_whole(self) -> tuple[bytes, int, bytes]:
        """The whole blob of a body that ended within its first batch: the
        header, its one batch sealed, the final chunk; with size and digest."""
        sealed = await self.sealer.seal(self.take())
        blob = self.encryptor.prefix() + bytes(sealed) + self.encryptor.finalize()
        return blob, self.size, await self.sealer.digest()


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

        A body that ends within its first batch (``batch_size``) takes the
        short path: sealed whole, stored by one ``put``, then its row and key
        row inserted ``active`` in one transaction. That is half the database
        commits and two fewer trips of a streamed upload, and it keeps the
        rule that matters: no blob is ever readable through a stored key
        before it is complete, and a blob whose row never came is under a
        key that was never stored.
        """
        if self.halted is not None:
            raise Unavailable("this instance does not take uploads: " + self.halted)
        ttl = self._ttl(options.ttl)
        if options.max_downloads is not None and options.max_downloads < 1:
            raise BadRequest("max_downloads must be at least 1")
        now = self.clock.now()
        file_id = ids.new_file_id()
        dek = random_bytes(32)
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
        key = FileKey(file_id, kek_id, wrapped)
        stream = _Stream(Encryptor(dek, Header(kek_id, file_id)), body, self.settings.max_file_size)
        whole = await stream.first_batch(self.settings.batch_size)
        if whole:
            size, digest = await self._store_whole(record, key, dek, options, stream)
        else:
            await self.files.create_upload(record, key)
            try:
                size, digest = await self._write_blob(file_id, stream)
                sealed = self._seal(dek, file_id, options, digest)
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

    def _seal(self, dek: bytes, file_id: bytes, options: UploadOptions, digest: bytes) -> bytes:
        """Check the client's checksum (422), then seal what the row keeps
        of the file under its DEK."""
        if options.expected_sha256 is not None and not hmac.compare_digest(
            digest, options.expected_sha256
        ):
            raise ChecksumMismatch("the body's SHA-256 does not match the checksum sent with it")
        return seal_fields(
            dek,
            file_id,
            {
                "filename": options.filename,
                "content_type": options.content_type,
                "sha256": digest.hex(),
            },
        )

    async def _store_whole(
        self,
        record: FileRecord,
        key: FileKey,
        dek: bytes,
        options: UploadOptions,
        stream: _Stream,
    ) -> tuple[int, bytes]:
        """The short path: blob first, then one insert. A bad checksum is
        refused before anything is written."""
        try:
            blob, size, digest = await stream.seal_whole()
        finally:
            await stream.sealer.settle()
        sealed = self._seal(dek, record.id, options, digest)
        name = ids.blob_name(record.id)
        stored_at = self.clock.now()
        await self.blobs.put(name, blob)
        try:
            # The orphan sweep takes blobs no row claims once they are older
            # than the upload grace: a row this late could lose its blob.
            if self.clock.now() - stored_at > self.settings.upload_grace / 2:
                raise Unavailable("the database took too long to record the upload")
            active = replace(record, state=FileState.ACTIVE, size=size, sealed=sealed)
            await self.files.create_active(active, key)
        except BaseException:
            await _shielded(self._remove_blob(name))
            raise
        return size, digest

    async def _write_blob(self, file_id: bytes, stream: _Stream) -> tuple[int, bytes]:
        """Receive, seal and write as overlapping stages: while the store
        writes batch N-1 (a thread) and batch N is hashed (another), the loop
        encrypts N and receives N+1. The first batch is already in
        ``stream``."""
        batch = self.settings.batch_size
        sealer = stream.sealer
        writer = await self.blobs.create(ids.blob_name(file_id))
        try:
            # The header goes out before the first batch's ciphertext.
            await writer.write(stream.encryptor.prefix())
            while True:
                if stream.pending_size >= batch:
                    await writer.write(await sealer.seal(stream.take()))
                if not await stream.receive():
                    break
            tail = await sealer.seal(stream.take())
            await writer.write(bytes(tail) + stream.encryptor.finalize())
            digest = await sealer.digest()
            await writer.commit()
        except BaseException:
            await sealer.settle()
            await _shielded(writer.abort())
            raise
        return stream.size, digest

    async def _remove_blob(self, name: str) -> None:
        """Take back a blob whose row was never written; the orphan sweep
        removes it if this fails (nothing can decrypt it meanwhile)."""
        try:
            await self.blobs.delete(name)
        except FilestoreError:
            log.warning("could not remove blob %s of a failed upload; the sweep will", name)

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
