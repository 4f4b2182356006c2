"""Streaming to and from S3: the blob writer (one ``PutObject`` or a multipart
upload, with bounded memory) and the reader of a ``GetObject`` body in
exact pieces.

This module never imports the AWS SDK (only :mod:`filestore.storage.s3`
does): the writer drives S3 through :class:`UploadCalls`, the handful of calls
it makes, and every blocking call runs in a :class:`Pool` that turns the
SDK's errors into filestore's with a translation the store hands in.

Memory: a writer buffers up to one part and has at most
:data:`PARTS_IN_FLIGHT` parts uploading, so an upload holds about three parts
at worst (24 MiB at the default 8 MiB part size), whatever the file size; a
reader holds two pieces (the one handed out and the one being read).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from filestore.errors import FilestoreError, StorageUnavailable
from filestore.storage._jobs import after

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Parts uploading at once per writer; the next part waits for the oldest.
PARTS_IN_FLIGHT = 2

#: Bytes of a blob's start a writer buffers by appending, before it sets
#: aside a whole part's buffer and copies into that: a small blob (most are;
#: the gateway's first batch is 1 MiB and a header) never reserves a part,
#: and a large one never regrows its buffer (each regrowth of a bytearray may
#: copy all of it: filling an 8 MiB part in 1 MiB writes copied 36 MiB).
SMALL_BUFFER = 2 << 20

#: Runs a blocking call in the store's pool: ``run(what, fn)``; the SDK's
#: errors come out as StorageUnavailable naming ``what``.
Runner = Callable[[str, Callable[[], Any]], Awaitable[Any]]


class UploadCalls(Protocol):
    """The S3 calls a writer makes. Each raises StorageUnavailable on failure;
    none blocks the event loop, and none is cancelled half-way by a cancelled
    caller (the call runs to its end in a worker thread)."""

    async def put_object(self, key: str, body: bytearray) -> str | None:
        """Store ``body`` under ``key`` at once; returns the version id, if any."""

    async def create_multipart_upload(self, key: str) -> str:
        """Start a multipart upload; returns its upload id."""

    async def upload_part(self, key: str, upload_id: str, number: int, body: bytearray) -> str:
        """Upload part ``number`` (from 1); returns its ETag. ``body`` is left
        whole on success (the writer reuses it for a later part) and emptied
        on failure, to free it at once."""

    async def complete_multipart_upload(
        self, key: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> str | None:
        """Join ``parts`` (number, ETag) into the object; returns its version id."""

    async def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        """Discard the upload and its parts; an unknown upload is not an error."""

    async def delete_version(self, key: str, version_id: str | None) -> None:
        """Remove one version of ``key`` (the current object when None)."""

    async def release(self, buffers: list[bytearray]) -> None:
        """Empty ``buffers`` in a worker thread: handing megabytes back to the
        system takes a millisecond or two per part, kept off the loop."""


class ClientUploads:
    """:class:`UploadCalls` as S3 operations on the store's client: ``call``
    makes one (blocking) on the bucket, ``run`` runs it off the loop, and
    ``abort_upload`` aborts, treating an upload already gone as done."""

    def __init__(
        self,
        run: Runner,
        call: Callable[..., dict[str, Any]],
        abort_upload: Callable[[str, str], None],
    ) -> None:
        self._run = run
        self._call = call
        self._abort_upload = abort_upload

    async def _op(self, what: str, operation: str, **params: Any) -> dict[str, Any]:
        reply: dict[str, Any] = await self._run(
            what, functools.partial(self._call, operation, **params)
        )
        return reply

    async def put_object(self, key: str, body: bytearray) -> str | None:
        reply = await self._op("write a blob", "put_object", Key=key, Body=body)
        return version_of(reply)

    async def create_multipart_upload(self, key: str) -> str:
        reply = await self._op("start a multipart upload", "create_multipart_upload", Key=key)
        return str(reply["UploadId"])

    async def upload_part(self, key: str, upload_id: str, number: int, body: bytearray) -> str:
        def upload() -> dict[str, Any]:
            try:
                return self._call(
                    "upload_part", Key=key, UploadId=upload_id, PartNumber=number, Body=body
                )
            except BaseException:
                # In the thread, right after the SDK is done with it: the SDK
                # may keep the request (and so the body) in a reference cycle
                # until the garbage collector runs, which would let memory
                # grow past the parts in flight.
                _empty([body])
                raise

        reply: dict[str, Any] = await self._run("upload a part", upload)
        return str(reply["ETag"])

    async def complete_multipart_upload(
        self, key: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> str | None:
        done = {"Parts": [{"PartNumber": number, "ETag": etag} for number, etag in parts]}
        reply = await self._op(
            "complete a multipart upload", "complete_multipart_upload",
            Key=key, UploadId=upload_id, MultipartUpload=done,
        )  # fmt: skip
        return version_of(reply)

    async def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        abort = functools.partial(self._abort_upload, key, upload_id)
        await self._run("abort a multipart upload", abort)

    async def delete_version(self, key: str, version_id: str | None) -> None:
        extra = {"VersionId": version_id} if version_id else {}
        await self._op("delete a blob", "delete_object", Key=key, **extra)

    async def release(self, buffers: list[bytearray]) -> None:
        await self._run("free its buffers", functools.partial(_empty, buffers))


def _empty(buffers: list[bytearray]) -> None:
    """Free each buffer's memory now, even if something still refers to it."""
    for buffer in buffers:
        with contextlib.suppress(BufferError):
            buffer.clear()


def version_of(reply: dict[str, Any]) -> str | None:
    """The ``VersionId`` of a reply, if the bucket gave one."""
    version = reply.get("VersionId")
    return None if version is None else str(version)


class S3Writer:
    """:class:`~filestore.storage.base.BlobWriter` for one S3 object.

    Nothing is visible under the key until :meth:`commit` returns: a blob
    smaller than one part goes up in one ``PutObject`` at commit, a larger one
    as a multipart upload that S3 publishes only on completion. Use from one
    task at a time. Any failure of S3 raises StorageUnavailable, aborts the
    multipart upload at once (best effort: if S3 is unreachable the upload is
    left for the orphan sweep) and fails every later write and commit; only
    :meth:`abort` remains.
    """

    def __init__(self, calls: UploadCalls, key: str, part_size: int) -> None:
        self._calls = calls
        self._key = key
        self._part_size = part_size
        #: The part being filled: its first ``_filled`` bytes are data; past
        #: :data:`SMALL_BUFFER` it is a whole part long (see :meth:`_take`).
        self._buffer = bytearray()
        self._filled = 0
        #: Whole-part buffers whose upload is done, for the next parts: a
        #: fresh 8 MiB costs ~3 ms of page faults here, a third of its copy.
        #: With those in flight and the one filling, never more than
        #: ``PARTS_IN_FLIGHT + 1`` part buffers exist.
        self._spare: list[bytearray] = []
        self._upload_id: str | None = None
        self._next_part = 1
        self._parts: list[tuple[int, str]] = []
        self._in_flight: deque[asyncio.Task[tuple[int, str]]] = deque()
        self._finishing: asyncio.Task[str | None] | None = None
        self._failure: BaseException | None = None
        self._state = "open"  # → committing → committed, or → aborted / closed

    def _require_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"the blob writer is {self._state}")
        if self._failure is not None:
            raise StorageUnavailable("an earlier write to this blob failed") from self._failure

    async def write(self, data: bytes | bytearray) -> None:
        """Buffer ``data`` (copied; the caller may reuse it at once); each full
        part goes up in the background, after waiting for the oldest of the
        parts in flight if there are already :data:`PARTS_IN_FLIGHT`."""
        self._require_open()
        try:
            done = 0
            while done < len(data):
                room = self._part_size - self._filled
                # No view of the caller's buffer outlives the copy (nor is
                # held across an await), so the caller may resize it after.
                with memoryview(data) as view, view[done : done + room] as piece:
                    self._take(piece)
                    done += len(piece)
                if self._filled == self._part_size:
                    part, self._buffer, self._filled = self._buffer, bytearray(), 0
                    await self._send(part)
        except BaseException as exc:
            await self._fail(exc)
            raise

    def _take(self, piece: memoryview) -> None:
        """Copy ``piece`` (no longer than the room left in the part) into the
        buffer: appended while the blob is still small, else into a buffer of
        the whole part's size (a spare one if there is), never regrown."""
        end = self._filled + len(piece)
        if end > len(self._buffer):
            if end <= SMALL_BUFFER and self._upload_id is None:
                self._buffer += piece
                self._filled = end
                return
            whole = self._spare.pop() if self._spare else bytearray(self._part_size)
            whole[: self._filled] = memoryview(self._buffer)[: self._filled]
            self._buffer = whole
        self._buffer[self._filled : end] = piece
        self._filled = end

    async def _send(self, part: bytearray) -> None:
        if self._upload_id is None:
            self._upload_id = await self._calls.create_multipart_upload(self._key)
        while len(self._in_flight) >= PARTS_IN_FLIGHT:
            await self._collect_oldest()
        number, self._next_part = self._next_part, self._next_part + 1
        self._in_flight.append(asyncio.ensure_future(self._upload(self._upload_id, number, part)))

    async def _collect_oldest(self) -> None:
        # Shielded: a cancelled caller must not cancel the part's task, whose
        # outcome abort() still needs.
        self._parts.append(await asyncio.shield(self._in_flight[0]))
        self._in_flight.popleft()

    async def _upload(self, upload_id: str, number: int, part: bytearray) -> tuple[int, str]:
        etag = await self._calls.upload_part(self._key, upload_id, number, part)
        if len(part) == self._part_size and self._state in ("open", "committing"):
            self._spare.append(part)
        return number, etag

    async def commit(self) -> None:
        """Upload what is buffered (one ``PutObject`` if no part was started),
        wait for every part and complete the multipart upload. On failure
        nothing is visible under the key and the upload is aborted."""
        self._require_open()
        self._state = "committing"
        # A task of its own, so a cancelled caller cannot stop it half-way;
        # abort() waits for it and removes what it published.
        self._finishing = asyncio.ensure_future(self._finish())
        try:
            await asyncio.shield(self._finishing)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._state = "open"
            await self._fail(exc)
            raise
        self._state = "committed"

    async def _finish(self) -> str | None:
        tail, self._buffer = self._buffer, bytearray()
        del tail[self._filled :]
        self._filled = 0
        if self._upload_id is None:
            return await self._calls.put_object(self._key, tail)
        if tail:
            await self._send(tail)
        while self._in_flight:
            await self._collect_oldest()
        if self._spare:
            spare, self._spare = self._spare, []
            await self._calls.release(spare)
        return await self._calls.complete_multipart_upload(
            self._key, self._upload_id, sorted(self._parts)
        )

    async def _fail(self, exc: BaseException) -> None:
        """Record the failure; for a storage failure abort the upload now."""
        if self._failure is None:
            self._failure = exc
        if isinstance(exc, FilestoreError):
            try:
                await asyncio.shield(self._discard())
            except FilestoreError:
                log.warning("could not abort a failed multipart upload; the sweep will")

    async def _settle_parts(self) -> bool:
        """Wait for every part in flight, whatever its outcome; True if any was."""
        tasks = list(self._in_flight)
        self._in_flight.clear()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await asyncio.shield(task)
        return bool(tasks)

    async def _discard(self) -> None:
        """Abort the multipart upload at once, wait for the parts in flight,
        and abort again if there were any: a part that lands after an abort
        may be kept by some services. If an abort fails the upload id is
        kept, so a later :meth:`abort` tries again."""
        upload_id = self._upload_id
        try:
            if upload_id is not None:
                await self._calls.abort_multipart_upload(self._key, upload_id)
        finally:
            had_parts = await self._settle_parts()
        if upload_id is not None and had_parts:
            await self._calls.abort_multipart_upload(self._key, upload_id)
        self._upload_id = None

    async def abort(self) -> None:
        """Discard everything written. A no-op after a commit that returned;
        after a commit that was interrupted it deletes what that commit
        published, since the caller never saw success. Idempotent. Raises
        StorageUnavailable only if S3 cannot be reached to abort (the
        incomplete upload is then left for the orphan sweep). A no-op once
        the store is closed."""
        if self._state in ("committed", "closed"):
            return
        finishing, self._finishing = self._finishing, None
        self._state = "aborted"
        self._buffer, self._filled, self._spare = bytearray(), 0, []
        if finishing is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(finishing)
            if not finishing.cancelled() and finishing.exception() is None:
                await self._calls.delete_version(self._key, finishing.result())
                return
        await asyncio.shield(self._discard())

    def _pending(self) -> list[asyncio.Task[tuple[int, str]]]:
        """The store is closing: hand over the parts in flight to be awaited.
        The incomplete upload stays for the orphan sweep, as after a crash."""
        self._state = "closed"
        self._spare = []
        tasks = list(self._in_flight)
        self._in_flight.clear()
        return tasks


# ------------------------------------------------------------------ threads
class Pool:
    """The store's own bounded thread pool for blocking SDK calls.

    ``translate(what, exc)`` turns an SDK error into the filestore error to
    raise (None: not an SDK error, re-raised as it is), so the error
    boundary stays in :mod:`filestore.storage.s3`. Jobs are awaited through
    :func:`asyncio.shield`: a cancelled caller never cuts a call half-way.
    """

    def __init__(
        self, max_workers: int, translate: Callable[[str, BaseException], Exception | None]
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="filestore-s3")
        self._translate = translate
        self.closed = False

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Start ``fn`` in a worker thread; RuntimeError once closed."""
        if self.closed:
            raise RuntimeError("the blob store is closed")
        return self._executor.submit(fn)

    async def settle(self, what: str, job: Future[T]) -> T:
        """Await ``job``; an SDK error comes out translated, naming ``what``."""
        try:
            return await asyncio.shield(asyncio.wrap_future(job))
        except Exception as exc:
            if (translated := self._translate(what, exc)) is None:
                raise
            raise translated from exc

    async def run(self, what: str, fn: Callable[[], T]) -> T:
        return await self.settle(what, self.submit(fn))

    async def close(self, *clients: Any) -> None:
        """Refuse new jobs, wait for running ones, close ``clients``."""
        self.closed = True

        def shut_down() -> None:
            self._executor.shutdown(wait=True)
            for client in clients:
                if client is not None:
                    client.close()

        await asyncio.shield(asyncio.to_thread(shut_down))


# ------------------------------------------------------------------ reading


def take(walk: Iterator[T], count: int) -> list[T]:
    """The next ``count`` items of ``walk`` (one thread hop of a listing)."""
    return list(itertools.islice(walk, count))


def close_opened(opening: Future[Any]) -> None:
    """Close the body a GET returned to a caller that was cancelled meanwhile."""
    with contextlib.suppress(Exception):
        if (body := opening.result()) is not None:
            body.close()


def read_piece(body: Any, size: int) -> bytes:
    """Exactly ``size`` bytes from a streaming body, fewer only at its end:
    ``read(n)`` may return less than asked, so this re-buffers."""
    first: bytes = body.read(size)
    if len(first) == size or not first:
        return first
    chunks, got = [first], len(first)
    while got < size and (more := body.read(size - got)):
        chunks.append(more)
        got += len(more)
    return b"".join(chunks)


async def read_body(jobs: Pool, body: Any, piece_size: int) -> AsyncGenerator[bytes, None]:
    """Yield ``body`` in pieces of exactly ``piece_size`` bytes but the last,
    reading the next piece in a worker thread while the caller handles this
    one. The body (and its connection) is closed when the generator ends or
    is closed early, after any read in flight."""
    job: Future[bytes] | None = None
    try:
        job = jobs.submit(lambda: read_piece(body, piece_size))
        while job is not None:
            piece = await jobs.settle("read a blob", job)
            full = len(piece) == piece_size
            job = jobs.submit(lambda: read_piece(body, piece_size)) if full else None
            if piece:
                yield piece
    finally:
        if jobs.closed:
            body.close()  # only closes a socket
        else:
            await jobs.settle("close a blob", jobs.submit(after(job, body.close)))
