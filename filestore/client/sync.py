"""The blocking client: :class:`AsyncClient` on a private event loop.

One implementation: every method here hands the matching coroutine of an
:class:`AsyncClient` to an event loop that runs in a thread of its own, and
waits for its result. Progress callbacks therefore run in that thread.
Interrupting a call (Ctrl-C) cancels the coroutine, so an interrupted
download leaves no temporary file behind.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator
from types import TracebackType
from typing import Any, BinaryIO, Self, TypeVar

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from filestore.client.aio import CHUNK, AsyncClient, DownloadStream, Progress, Ttl
from filestore.client.models import Deletion, Download, FileInfo, PurgeStatus, Receipt, SignedLink
from filestore.client.retry import RetryPolicy

__all__ = ["Client", "SyncSource"]

T = TypeVar("T")

#: Seconds an interrupted call is given to clean up.
CLEANUP_WAIT = 10.0

#: What the blocking client uploads: a path, bytes, an iterable of byte
#: chunks, or a binary file object (read in pieces, in a worker thread).
SyncSource = str | os.PathLike[str] | bytes | bytearray | memoryview | Iterable[bytes] | BinaryIO


async def _from_iterable(source: Iterable[bytes] | BinaryIO) -> AsyncIterator[bytes]:
    """A blocking source read in a worker thread, so the loop stays free."""
    if hasattr(source, "read"):
        reader: Any = source
        while chunk := await asyncio.to_thread(reader.read, CHUNK):
            yield chunk
        return
    iterator = iter(source)
    while (chunk := await asyncio.to_thread(next, iterator, None)) is not None:
        yield chunk


async def _next(stream: AsyncIterator[bytes]) -> tuple[bool, bytes]:
    try:
        return True, await anext(stream)
    except StopAsyncIteration:
        return False, b""


class Client:
    """A blocking client of one filestore server: ``Client(url, token)``.

    Use it as ``with Client(...) as fs:`` (or call :meth:`close`); the
    methods and their arguments are :class:`AsyncClient`'s.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> None:
        self._aio = AsyncClient(url, token, retry=retry, timeout=timeout)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="filestore-client", daemon=True
        )
        self._thread.start()
        self._closed = False

    @property
    def url(self) -> str:
        return self._aio.url

    def __repr__(self) -> str:  # never the token
        return f"Client({self.url!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._aio.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("the client is closed")
        finished = threading.Event()

        async def run() -> T:
            try:
                return await coro
            finally:
                finished.set()

        future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        try:
            return future.result()
        except BaseException:
            # Interrupted here (Ctrl-C): cancel the coroutine too, and let
            # its clean-up (a temporary file) run before going on.
            if not future.done():
                future.cancel()
                finished.wait(CLEANUP_WAIT)
            raise

    # ------------------------------------------------------------- the API
    def upload(
        self,
        source: SyncSource,
        *,
        filename: str | None = None,
        content_type: str | None = None,
        ttl: Ttl | None = None,
        max_downloads: int | None = None,
        sha256: str | None = None,
        progress: Progress | None = None,
    ) -> FileInfo:
        """See :meth:`AsyncClient.upload`; an iterable or a file object is
        streamed (read in a worker thread)."""
        if isinstance(source, bytes | bytearray | memoryview | str | os.PathLike):
            given: Any = source
        else:
            given = _from_iterable(source)
        return self._run(
            self._aio.upload(
                given,
                filename=filename,
                content_type=content_type,
                ttl=ttl,
                max_downloads=max_downloads,
                sha256=sha256,
                progress=progress,
            )
        )

    def download(
        self,
        target: str,
        path: str | os.PathLike[str],
        *,
        offset: int = 0,
        length: int | None = None,
        overwrite: bool = True,
        progress: Progress | None = None,
    ) -> Download:
        return self._run(
            self._aio.download(
                target,
                path,
                offset=offset,
                length=length,
                overwrite=overwrite,
                progress=progress,
            )
        )

    def read(self, target: str, *, offset: int = 0, length: int | None = None) -> bytes:
        return self._run(self._aio.read(target, offset=offset, length=length))

    def iter_bytes(
        self, target: str, *, offset: int = 0, length: int | None = None
    ) -> Iterator[bytes]:
        """The file's bytes chunk by chunk; the download stays open until the
        iterator is exhausted or closed (``with contextlib.closing(...)``
        when leaving early)."""
        stream: DownloadStream = self._aio.open(target, offset=offset, length=length)
        self._run(_enter(stream))
        try:
            chunks = aiter(stream)
            while True:
                more, chunk = self._run(_next(chunks))
                if not more:
                    return
                yield chunk
        finally:
            self._run(stream.__aexit__(None, None, None))

    def info(self, target: str) -> FileInfo:
        return self._run(self._aio.info(target))

    def delete(self, file_id: str) -> Deletion:
        return self._run(self._aio.delete(file_id))

    def link(self, file_id: str, *, ttl: Ttl | None = None) -> SignedLink:
        return self._run(self._aio.link(file_id, ttl=ttl))

    def receipt(
        self,
        file_id: str,
        *,
        public_key: Ed25519PublicKey | str | bytes | None = None,
        key_name: str | None = None,
    ) -> Receipt:
        return self._run(self._aio.receipt(file_id, public_key=public_key, key_name=key_name))

    def audit_public_key(self, *, fmt: str = "pem") -> str:
        return self._run(self._aio.audit_public_key(fmt=fmt))

    def purge_status(self) -> PurgeStatus:
        return self._run(self._aio.purge_status())


async def _enter(stream: DownloadStream) -> DownloadStream:
    return await stream.__aenter__()
