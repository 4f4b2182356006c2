"""The asynchronous client, on aiohttp; :class:`filestore.client.Client` runs
this same code on a private event loop.

Bodies stream both ways in pieces of :data:`CHUNK` bytes, so memory stays
flat whatever the file's size; local files are read and written through
aiofiles. Every upload carries its SHA-256 when it can be known beforehand
(bytes, a file), and the server's answer is checked against the digest the
client computed as it sent; every whole download is checked against the
server's ``X-Checksum-SHA256``.

The API key goes only in the ``Authorization`` header of requests to the
client's own server: never in a URL, a log line or an error, and never with
a signed link (which needs none). Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import mimetypes
import os
import tempfile
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiofiles
import aiofiles.os
import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from yarl import URL

from filestore import __version__
from filestore.audit import AuditVerificationError, load_verifier, peek_receipt, verify_receipt
from filestore.client.errors import (
    AuthError,
    ChecksumMismatchError,
    ClientError,
    ConnectionFailedError,
    ReceiptVerificationError,
    ServerError,
    error_for,
)
from filestore.client.models import (
    Deletion,
    Download,
    FileInfo,
    PurgeStatus,
    Receipt,
    SignedLink,
)
from filestore.client.retry import RetryPolicy, parse_retry_after

__all__ = [
    "CHUNK",
    "DEFAULT_TIMEOUT",
    "AsyncClient",
    "DownloadStream",
    "Progress",
    "Source",
    "Ttl",
]

log = logging.getLogger("filestore.client")

#: Bytes read from a file or a response at a time.
CHUNK = 256 * 1024
#: No limit on a whole transfer (files are large), but on each step of it.
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=30, sock_connect=30, sock_read=120)
USER_AGENT = f"filestore-client/{__version__}"

#: What can be uploaded: a path (``str`` or ``os.PathLike``), the bytes
#: themselves, or an async iterable of byte chunks (streamed as it comes).
Source = str | os.PathLike[str] | bytes | bytearray | memoryview | AsyncIterable[bytes]
#: A lifetime: seconds, a ``timedelta``, or the server's spelling (``"2h"``).
Ttl = float | int | str | timedelta
#: Called as bytes are sent or received, with the count so far and the
#: total (None when it is not known: a stream being uploaded).
Progress = Callable[[int, int | None], None]

_PROBLEM_TYPES = ("application/problem+json", "application/json")
_MAX_PROBLEM = 64 * 1024


def _ttl_text(ttl: Ttl) -> str:
    if isinstance(ttl, str):
        return ttl
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("a ttl must be a positive number of seconds")
    if seconds == int(seconds):
        return str(int(seconds))
    return f"{seconds:.3f}".rstrip("0")


def _time(value: object) -> datetime:
    if not isinstance(value, str):
        raise ServerError("the server's answer lacks a time")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ServerError("the server's answer has a malformed time") from None
    return parsed.astimezone(UTC)


def _file_info(data: object) -> FileInfo:
    if not isinstance(data, Mapping):
        raise ServerError("the server's answer is not a file description")
    try:
        max_downloads = data.get("max_downloads")
        return FileInfo(
            id=str(data["id"]),
            size=int(data["size"]),
            sha256=str(data["sha256"]),
            created_at=_time(data["created_at"]),
            expires_at=_time(data["expires_at"]),
            filename=data.get("filename"),
            content_type=data.get("content_type"),
            max_downloads=int(max_downloads) if max_downloads is not None else None,
            url=data.get("url"),
        )
    except (KeyError, TypeError, ValueError):
        raise ServerError("the server's answer is not a file description") from None


def _info_from_headers(file_id: str, headers: Mapping[str, str], size: int) -> FileInfo:
    """A file's metadata from its download or HEAD headers."""
    try:
        created = parsedate_to_datetime(headers["Last-Modified"]).astimezone(UTC)
        expires = _time(headers["X-Expires-At"])
        sha256 = headers["X-Checksum-SHA256"]
    except (KeyError, TypeError, ValueError):
        raise ServerError("the server's answer lacks the file's headers") from None
    return FileInfo(
        id=file_id,
        size=size,
        sha256=sha256,
        created_at=created,
        expires_at=expires,
        filename=_disposition_filename(headers.get("Content-Disposition")),
        content_type=headers.get("Content-Type") or None,
    )


def _disposition_filename(header: str | None) -> str | None:
    if not header:
        return None
    # aiohttp's own parser knows RFC 6266 and the UTF-8 ``filename*`` form.
    _kind, params = aiohttp.multipart.parse_content_disposition(header)
    return aiohttp.multipart.content_disposition_filename(params, "filename")


def _content_disposition(filename: str) -> str:
    """The name goes in a header, as RFC 5987 UTF-8: never in the URL, where
    proxies would log it."""
    return "attachment; filename*=UTF-8''" + urllib.parse.quote(filename, safe="")


def _range_header(offset: int, length: int | None) -> str | None:
    if offset < 0:
        if length is not None:
            raise ValueError("a negative offset (the last bytes) takes no length")
        return f"bytes={offset}"
    if length is not None and length < 1:
        raise ValueError("length must be at least 1")
    if offset == 0 and length is None:
        return None
    return f"bytes={offset}-" + ("" if length is None else str(offset + length - 1))


def _content_range(value: str | None) -> tuple[int, int, int]:
    """``(first, last, size)`` of a ``Content-Range: bytes a-b/n``."""
    try:
        unit, _, spec = (value or "").partition(" ")
        span, _, total = spec.partition("/")
        first, _, last = span.partition("-")
        if unit != "bytes":
            raise ValueError(unit)
        return int(first), int(last), int(total)
    except ValueError:
        raise ServerError("the server's Content-Range is malformed") from None


class _SourceChanged(Exception):
    """The file being uploaded is shorter than when it was measured."""


class _Tally:
    """The digest and count of what one try of an upload has sent."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.total: int | None = None
        self.restart()

    def restart(self) -> _Tally:
        self.digest = hashlib.sha256()
        self.size = 0
        return self

    def __call__(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        self.size += len(chunk)
        if self.progress is not None:
            self.progress(self.size, self.total)


class AsyncClient:
    """A client of one filestore server: ``AsyncClient(url, token)``.

    Use it as ``async with AsyncClient(...) as fs:`` or call :meth:`close`.
    ``token`` is an API key (``fs_…``); calls that need none (signed links,
    the audit public key) work without it. ``retry`` says how calls that
    may run twice are retried (:class:`~filestore.client.retry.RetryPolicy`).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> None:
        base = URL(url)
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError("the server URL must be http:// or https:// with a host")
        if base.query_string or base.fragment:
            raise ValueError("the server URL takes no query or fragment")
        if token is not None and (
            not token or not token.isascii() or not token.isprintable() or " " in token
        ):
            raise ValueError("the API key must be printable ASCII without spaces")
        self.url = str(base).rstrip("/")
        self.retry = retry or RetryPolicy()
        self._token = token
        self._timeout = timeout or DEFAULT_TIMEOUT
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def __repr__(self) -> str:  # never the token
        return f"AsyncClient({self.url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------ plumbing
    def _url(self, *segments: str) -> URL:
        path = "".join("/" + urllib.parse.quote(s, safe="") for s in segments)
        return URL(self.url + path, encoded=True)

    def _file_url(self, target: str, *rest: str) -> tuple[URL, str, bool]:
        """The URL for a file id or a signed link, the file id, and whether
        the API key goes with it (never with a link)."""
        if target.startswith(("http://", "https://")):
            if rest:
                raise ValueError("a signed link only downloads; give the file id")
            link = URL(target)
            return link, link.name, False
        return self._url("v1", "files", target, *rest), target, True

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the client is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                headers={"User-Agent": USER_AGENT},
                # Cookies are not part of the API; keep none between calls.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    def _headers(self, extra: Mapping[str, str] | None, auth: bool) -> dict[str, str]:
        headers = dict(extra or {})
        if auth:
            if self._token is None:
                raise AuthError("no API key was given (token)")
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def _wait(self, attempt: int, retry_after: float | None, what: str, why: str) -> None:
        delay = self.retry.delay(attempt, retry_after)
        log.info(
            "%s: %s; try %d of %d in %.2f s",
            what,
            why,
            attempt + 1,
            self.retry.attempts,
            delay,
        )
        await self.retry.sleep(delay)

    async def _send(
        self,
        method: str,
        url: URL,
        *,
        what: str,
        auth: bool = True,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        body: Callable[[], object] | None = None,
        idempotent: bool,
        replayable: bool = False,
        expect100: bool = False,
        accept: frozenset[int] = frozenset(),
    ) -> aiohttp.ClientResponse:
        """One call, retried as the policy allows; an answer of 400 or more
        becomes its :class:`ClientError` unless its status is in ``accept``.
        ``what`` names the call in messages: it never holds a query string,
        so a link's signature stays out of logs and errors."""
        session = self._get_session()
        sent_headers = self._headers(headers, auth)
        attempt = 0
        while True:
            attempt += 1
            last = attempt >= self.retry.attempts
            try:
                response = await session.request(
                    method,
                    url,
                    params=params,
                    headers=sent_headers,
                    data=body() if body is not None else None,
                    allow_redirects=False,
                    expect100=expect100,
                )
            except aiohttp.ClientSSLError as exc:
                raise ConnectionFailedError(f"{what} failed: TLS: {exc}") from exc
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # No connection was made: nothing of the request was sent.
                if (idempotent or replayable) and not last:
                    await self._wait(attempt, None, what, "cannot connect")
                    continue
                raise ConnectionFailedError(
                    f"{what} failed: cannot connect to {url.host}:{url.port}"
                ) from exc
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                if self._source_changed(exc):
                    raise ChecksumMismatchError(
                        f"{what} failed: the file changed while it was being sent"
                    ) from exc
                if idempotent and not last:
                    await self._wait(attempt, None, what, "the connection was lost")
                    continue
                raise ConnectionFailedError(
                    f"{what} failed: the connection was lost ({type(exc).__name__})"
                ) from exc
            if response.status == 503 and idempotent and not last:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                response.release()
                await self._wait(attempt, retry_after, what, "503 Service unavailable")
                continue
            if response.status >= 400 and response.status not in accept:
                try:
                    raise await self._error(response, method, what)
                finally:
                    response.release()
            return response

    @staticmethod
    def _source_changed(exc: BaseException) -> bool:
        seen: BaseException | None = exc
        while seen is not None:
            if isinstance(seen, _SourceChanged):
                return True
            seen = seen.__cause__ or seen.__context__
        return False

    @staticmethod
    async def _error(response: aiohttp.ClientResponse, method: str, what: str) -> ClientError:
        problem: Mapping[str, Any] | None = None
        if method != "HEAD" and response.content_type in _PROBLEM_TYPES:
            with contextlib.suppress(
                aiohttp.ClientError, TimeoutError, ValueError, UnicodeDecodeError
            ):
                data = json.loads(await response.content.read(_MAX_PROBLEM))
                problem = data if isinstance(data, Mapping) else None
        size = None
        unsatisfied = response.headers.get("Content-Range", "")
        if unsatisfied.startswith("bytes */"):
            with contextlib.suppress(ValueError):
                size = int(unsatisfied.removeprefix("bytes */"))
        return error_for(
            response.status,
            problem,
            request_id=response.headers.get("X-Request-Id"),
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            range_size=size,
            what=what,
        )

    @staticmethod
    async def _json(response: aiohttp.ClientResponse, what: str) -> Any:
        try:
            return await response.json(content_type=None)
        except (ValueError, UnicodeDecodeError):
            raise ServerError(f"{what}: the server's answer is not JSON") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ConnectionFailedError(f"{what}: the answer was cut off") from exc
        finally:
            response.release()

    # -------------------------------------------------------------- upload
    async def upload(
        self,
        source: Source,
        *,
        filename: str | None = None,
        content_type: str | None = None,
        ttl: Ttl | None = None,
        max_downloads: int | None = None,
        sha256: str | None = None,
        progress: Progress | None = None,
    ) -> FileInfo:
        """Store ``source`` and return its description.

        A path is read twice — once for its SHA-256, which is sent as
        ``X-Checksum-SHA256`` so the server refuses different bytes (422),
        then to send it; bytes are hashed in place. An async iterable is
        sent as it comes (chunked), with ``sha256`` as the expected
        checksum if the caller knows it. Either way the digest of what was
        sent is checked against the server's answer; a mismatch deletes the
        stored file and raises :class:`ChecksumMismatchError`.

        ``filename`` defaults to a path's name; ``content_type`` to a guess
        from that name. Uploads are not retried once anything may have
        reached the server (see :mod:`filestore.client.retry`)."""
        if sha256 is not None:
            sha256 = sha256.strip().lower()
            if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
                raise ValueError("sha256 must be 64 hexadecimal characters")
        async with contextlib.AsyncExitStack() as resources:
            return await self._upload(
                resources, source, filename, content_type, ttl, max_downloads, sha256, progress
            )

    async def _upload(
        self,
        resources: contextlib.AsyncExitStack,
        source: Source,
        filename: str | None,
        content_type: str | None,
        ttl: Ttl | None,
        max_downloads: int | None,
        sha256: str | None,
        progress: Progress | None,
    ) -> FileInfo:
        headers: dict[str, str] = {}
        tally = _Tally(progress)
        body: Callable[[], AsyncGenerator[bytes, None]]
        size: int | None
        digest: str | None
        replayable = True
        if isinstance(source, bytes | bytearray | memoryview):
            data = bytes(source)
            size, digest = len(data), hashlib.sha256(data).hexdigest()

            def body() -> AsyncGenerator[bytes, None]:
                return self._bytes_body(data, tally.restart())

        elif isinstance(source, str | os.PathLike):
            path = Path(source)
            size, digest = await self._measure(path)
            filename = filename if filename is not None else path.name
            if content_type is None:
                content_type = mimetypes.guess_type(path.name)[0]
            file_size = size
            # Opened here and closed when the upload is over, whatever state
            # aiohttp left the body's generator in.
            opened = await resources.enter_async_context(aiofiles.open(path, "rb"))

            def body() -> AsyncGenerator[bytes, None]:
                return self._file_body(opened, file_size, tally.restart())

        else:
            size, digest, replayable = None, None, False
            iterable = source

            def body() -> AsyncGenerator[bytes, None]:
                return self._stream_body(iterable, tally.restart())

        if digest is not None and sha256 is not None and digest != sha256:
            raise ChecksumMismatchError(
                f"the upload's SHA-256 is {digest}, not the expected {sha256}"
            )
        expected = digest or sha256
        if expected is not None:
            headers["X-Checksum-SHA256"] = expected
        if size is not None:
            headers["Content-Length"] = str(size)
        tally.total = size
        headers["Content-Type"] = content_type or "application/octet-stream"
        if filename is not None:
            headers["Content-Disposition"] = _content_disposition(filename)
        params: dict[str, str] = {}
        if ttl is not None:
            params["ttl"] = _ttl_text(ttl)
        if max_downloads is not None:
            params["max_downloads"] = str(int(max_downloads))
        bodies: list[AsyncGenerator[bytes, None]] = []

        def each_try() -> object:
            made = body()
            bodies.append(made)
            return made

        try:
            response = await self._send(
                "POST",
                self._url("v1", "files"),
                what="the upload",
                headers=headers,
                params=params,
                body=each_try,
                idempotent=False,
                replayable=replayable,
                # A wrong key or a size over the limit is refused before the
                # body leaves.
                expect100=True,
            )
            info = _file_info(await self._json(response, "the upload"))
        finally:
            # An answer that came before the whole body was sent (a refusal)
            # leaves the body's generator suspended: end it.
            for made in bodies:
                with contextlib.suppress(RuntimeError):  # still being cancelled
                    await made.aclose()
        ours = tally.digest.hexdigest()
        if info.sha256 != ours or info.size != tally.size:
            with contextlib.suppress(ClientError):
                await self.delete(info.id)
            raise ChecksumMismatchError(
                f"the server stored {info.size} bytes with SHA-256 {info.sha256}, but "
                f"{tally.size} bytes with SHA-256 {ours} were sent; the stored copy was deleted"
            )
        return info

    @staticmethod
    async def _measure(path: Path) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        async with aiofiles.open(path, "rb") as fh:
            while chunk := await fh.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return size, digest.hexdigest()

    @staticmethod
    async def _bytes_body(data: bytes, count: _Tally) -> AsyncGenerator[bytes, None]:
        view = memoryview(data)
        for start in range(0, len(data), CHUNK):
            chunk = bytes(view[start : start + CHUNK])
            count(chunk)
            yield chunk

    @staticmethod
    async def _file_body(fh: Any, size: int, count: _Tally) -> AsyncGenerator[bytes, None]:
        await fh.seek(0)
        left = size
        while left > 0:
            chunk = await fh.read(min(CHUNK, left))
            if not chunk:
                raise _SourceChanged()
            left -= len(chunk)
            count(chunk)
            yield chunk

    @staticmethod
    async def _stream_body(
        source: AsyncIterable[bytes], count: _Tally
    ) -> AsyncGenerator[bytes, None]:
        async for piece in source:
            if not isinstance(piece, bytes | bytearray | memoryview):
                raise TypeError("an upload stream must yield bytes")
            chunk = bytes(piece)
            if chunk:
                count(chunk)
                yield chunk

    # ------------------------------------------------------------ download
    def open(self, target: str, *, offset: int = 0, length: int | None = None) -> DownloadStream:
        """An open download of a file id or a signed link's URL::

            async with fs.open(file_id) as stream:
                stream.file          # FileInfo, from the headers
                async for chunk in stream: ...

        ``offset``/``length`` select a range (a negative ``offset`` alone:
        the last bytes). A connection lost mid-body is resumed where it
        stopped (a ``Range`` from there, ``If-Range`` on the file's ETag),
        within the retry policy; note that for a file with
        ``max_downloads`` every resumption counts as a download. A whole
        file is checked against the server's SHA-256 at its end
        (:class:`ChecksumMismatchError`)."""
        return DownloadStream(self, target, offset, length)

    async def iter_bytes(
        self, target: str, *, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """The file's bytes, chunk by chunk (see :meth:`open`)."""
        async with self.open(target, offset=offset, length=length) as stream:
            async for chunk in stream:
                yield chunk

    async def read(self, target: str, *, offset: int = 0, length: int | None = None) -> bytes:
        """The file (or range) in memory: for small files."""
        async with self.open(target, offset=offset, length=length) as stream:
            return b"".join([chunk async for chunk in stream])

    async def download(
        self,
        target: str,
        path: str | os.PathLike[str],
        *,
        offset: int = 0,
        length: int | None = None,
        overwrite: bool = True,
        progress: Progress | None = None,
    ) -> Download:
        """Write the file (or a range) to ``path``, atomically: into a
        temporary file beside it (mode 0600), flushed to disk, then renamed
        over ``path``. On any failure the temporary file is removed and
        ``path`` is left as it was. With ``overwrite=False`` an existing
        ``path`` is never replaced (FileExistsError)."""
        dest = Path(path)
        async with self.open(target, offset=offset, length=length) as stream:
            if not overwrite and await aiofiles.os.path.exists(dest):
                raise FileExistsError(f"{dest} exists")
            fd, tmp_name = await asyncio.to_thread(
                tempfile.mkstemp, prefix=f".{dest.name}.", suffix=".part", dir=dest.parent
            )
            tmp = Path(tmp_name)
            done = 0
            try:
                async with aiofiles.open(fd, "wb") as out:
                    async for chunk in stream:
                        await out.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, stream.length)
                    await out.flush()
                    await asyncio.to_thread(os.fsync, out.fileno())
                if overwrite:
                    await aiofiles.os.replace(tmp, dest)
                else:
                    # link() refuses an existing name, where rename would not.
                    await aiofiles.os.link(tmp, dest)
                    await aiofiles.os.remove(tmp)
            except BaseException:
                # Synchronous on purpose: this also runs when the task is
                # cancelled, where awaiting is not possible.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            return Download(
                file=stream.file,
                path=dest,
                offset=stream.offset,
                length=stream.length,
                verified=stream.verified,
            )

    # ------------------------------------------------------------ the rest
    async def info(self, target: str) -> FileInfo:
        """The file's metadata (a HEAD request: nothing is counted as a
        download). ``max_downloads`` and ``url`` are not in the headers."""
        url, file_id, auth = self._file_url(target)
        response = await self._send(
            "HEAD", url, what=f"info on {file_id}", auth=auth, idempotent=True
        )
        try:
            size = int(response.headers.get("Content-Length", ""))
        except ValueError:
            raise ServerError("the server's answer lacks Content-Length") from None
        finally:
            response.release()
        return _info_from_headers(file_id, response.headers, size)

    async def delete(self, file_id: str) -> Deletion:
        """Delete the file now: its key is erased, its blob removed.

        Idempotent, and retried like any DELETE: a file that is already gone
        (410: deleted before, perhaps by an earlier try whose answer was
        lost, or expired) is a deletion done, with ``already_gone`` set. An
        unknown id is still NotFoundError."""
        url, file_id, _ = self._file_url(file_id)
        response = await self._send(
            "DELETE",
            url,
            what=f"the deletion of {file_id}",
            idempotent=True,
            accept=frozenset({410}),
        )
        response.release()
        return Deletion(
            id=file_id,
            completed=response.status != 202,
            already_gone=response.status == 410,
        )

    async def link(self, file_id: str, *, ttl: Ttl | None = None) -> SignedLink:
        """A signed download URL, valid for ``ttl`` (the server's default
        otherwise) and never past the file's expiry."""
        url, file_id, _ = self._file_url(file_id, "links")
        params = {"ttl": _ttl_text(ttl)} if ttl is not None else None
        # Signing changes nothing on the server, so it may run twice.
        response = await self._send(
            "POST", url, what=f"a link to {file_id}", params=params, idempotent=True
        )
        data = await self._json(response, "a link")
        if not isinstance(data, Mapping) or not isinstance(data.get("url"), str):
            raise ServerError("the server's answer is not a link")
        return SignedLink(url=data["url"], expires_at=_time(data.get("expires_at")))

    async def receipt(
        self,
        file_id: str,
        *,
        public_key: Ed25519PublicKey | str | bytes | None = None,
        key_name: str | None = None,
    ) -> Receipt:
        """The deletion receipt of a purged file. With ``public_key`` (the
        audit log's key that you pinned: an Ed25519 key, or its PEM or C2SP
        vkey text) it is verified with filestore's own audit code — the
        checkpoint's signature, the inclusion proof, and that the record is
        this file's — and :class:`ReceiptVerificationError` raised if not.
        ConflictError (409) until the deletion is under a checkpoint."""
        url, file_id, _ = self._file_url(file_id, "receipt")
        response = await self._send("GET", url, what=f"the receipt of {file_id}", idempotent=True)
        try:
            text = await response.text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ServerError("the server's answer is not a receipt") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ConnectionFailedError(
                f"the receipt of {file_id}: the answer was cut off"
            ) from exc
        finally:
            response.release()
        verified = False
        try:
            if public_key is not None:
                if isinstance(public_key, Ed25519PublicKey):
                    key, name = public_key, key_name
                else:
                    key, vkey_name = load_verifier(public_key)
                    name = key_name or vkey_name
                record = verify_receipt(text, key, name)
                verified = True
            # The tree size is the embedded checkpoint's (signature checked above
            # when a key was given; only shown otherwise).
            record, tree_size = peek_receipt(text)
        except AuditVerificationError as exc:
            raise ReceiptVerificationError(f"the receipt of {file_id} is not valid: {exc}") from exc
        if record.file_id != file_id:
            raise ReceiptVerificationError(
                f"the receipt is for another file ({record.file_id}), not {file_id}"
            )
        return Receipt(
            file_id=file_id,
            record=record,
            tree_size=tree_size,
            text=text,
            verified=verified,
        )

    async def audit_public_key(self, *, fmt: str = "pem") -> str:
        """The audit log's public key as the server publishes it (``pem`` or
        ``vkey``). Pin it once, out of band if you can: verifying receipts
        against a key fetched from the same server each time proves little."""
        response = await self._send(
            "GET",
            self._url("v1", "audit", "public-key"),
            what="the audit public key",
            auth=False,
            params={"format": fmt},
            idempotent=True,
        )
        try:
            return await response.text()
        finally:
            response.release()

    async def purge_status(self) -> PurgeStatus:
        """The purge status (an operator key)."""
        response = await self._send(
            "GET", self._url("v1", "purge", "status"), what="the purge status", idempotent=True
        )
        raw = await self._json(response, "the purge status")
        if not isinstance(raw, Mapping):
            raise ServerError("the server's answer is not a status")
        return _purge_status(raw)


def _maybe_time(value: object) -> datetime | None:
    return _time(value) if isinstance(value, str) else None


def _maybe_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _purge_status(raw: Mapping[str, Any]) -> PurgeStatus:
    scheduler = _mapping(raw.get("scheduler"))
    last = _mapping(raw.get("last_pass"))
    health = _mapping(raw.get("health"))
    interval = scheduler.get("interval_seconds")
    overdue = raw.get("most_overdue_seconds")
    return PurgeStatus(
        now=_maybe_time(raw.get("now")),
        health={str(k): str(v) for k, v in health.items()},
        scheduler_running=bool(scheduler.get("running")),
        interval_seconds=float(interval) if isinstance(interval, int | float) else None,
        next_pass_at=_maybe_time(scheduler.get("next_pass_at")),
        last_pass_finished_at=_maybe_time(last.get("finished_at")),
        last_pass_purged=_maybe_int(last.get("purged")),
        last_pass_failed=_maybe_int(last.get("failed")),
        backlog=_maybe_int(raw.get("backlog")),
        most_overdue_seconds=float(overdue) if isinstance(overdue, int | float) else 0.0,
        failing_files=_maybe_int(raw.get("failing_files")),
        live_files=_maybe_int(raw.get("live_files")),
        purged_total=_maybe_int(raw.get("purged_total")) or 0,
        raw=raw,
    )


class DownloadStream:
    """One download in progress (from :meth:`AsyncClient.open`). After
    ``async with`` has entered it: ``file`` (the metadata, from the
    headers), ``offset`` and ``length`` (the bytes it yields); after the
    last chunk, ``verified`` (True if a whole file matched its SHA-256)."""

    file: FileInfo
    offset: int
    length: int

    def __init__(self, client: AsyncClient, target: str, offset: int, length: int | None) -> None:
        self._client = client
        self._url, self._file_id, self._auth = client._file_url(target)
        self._range = _range_header(offset, length)
        self._asked = (offset, length)
        self._response: aiohttp.ClientResponse | None = None
        self._chunks: AsyncGenerator[bytes, None] | None = None
        self._etag: str | None = None
        self.verified = False

    @property
    def _what(self) -> str:
        return f"the download of {self._file_id}"

    async def _get(self, range_header: str | None) -> aiohttp.ClientResponse:
        headers: dict[str, str] = {}
        if range_header is not None:
            headers["Range"] = range_header
            if self._etag is not None:
                headers["If-Range"] = self._etag
        return await self._client._send(
            "GET", self._url, what=self._what, auth=self._auth, headers=headers, idempotent=True
        )

    @staticmethod
    def _span(response: aiohttp.ClientResponse) -> tuple[int, int]:
        """The first position and the file's size, as the answer tells."""
        if response.status == 206:
            first, _last, size = _content_range(response.headers.get("Content-Range"))
            return first, size
        if response.status == 200:
            try:
                return 0, int(response.headers.get("Content-Length", ""))
            except ValueError:
                raise ServerError("the server's answer lacks Content-Length") from None
        raise ServerError(f"unexpected answer {response.status} to a download")

    async def __aenter__(self) -> Self:
        response = self._response = await self._get(self._range)
        _start, size = self._span(response)
        self._etag = response.headers.get("ETag")
        self.file = _info_from_headers(self._file_id, response.headers, size)
        offset, length = self._asked
        if offset < 0:
            offset = max(0, size + offset)
            length = None
        end = size if length is None else min(size, offset + length)
        self.offset, self.length = offset, max(0, end - offset)
        self._chunks = self._body(response, offset, end, whole=offset == 0 and end == size)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._chunks is not None:
            await self._chunks.aclose()
        if self._response is not None:
            self._response.release()

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._chunks is None:
            raise RuntimeError("use the download as 'async with client.open(…) as stream'")
        return self._chunks

    async def _body(
        self, response: aiohttp.ClientResponse, pos: int, end: int, *, whole: bool
    ) -> AsyncGenerator[bytes, None]:
        """Bytes ``pos`` to ``end - 1``, resuming a lost connection."""
        digest = hashlib.sha256() if whole else None
        at, size = self._span(response)
        retry = self._client.retry
        attempt = 1
        while True:
            try:
                async for chunk in response.content.iter_chunked(CHUNK):
                    if at < pos:  # an answer that starts earlier than wanted
                        skip = min(len(chunk), pos - at)
                        chunk, at = chunk[skip:], at + skip
                    piece = chunk[: end - pos]
                    at += len(chunk)
                    if piece:
                        pos += len(piece)
                        if digest is not None:
                            digest.update(piece)
                        yield piece
                    if pos >= end:
                        break
                if pos < end:
                    raise aiohttp.ClientPayloadError("the body ended early")
                break
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
                response.release()
                if attempt >= retry.attempts:
                    raise ConnectionFailedError(
                        f"{self._what} was cut off at byte {pos} of {end}"
                    ) from exc
                await self._client._wait(attempt, None, self._what, "the connection was lost")
                attempt += 1
                response = self._response = await self._get(f"bytes={pos}-{end - 1}")
                at, new_size = self._span(response)
                if new_size != size:
                    raise ServerError(f"{self._what}: the file's size changed") from exc
        response.release()
        if digest is not None:
            ours = digest.hexdigest()
            if ours != self.file.sha256:
                raise ChecksumMismatchError(
                    f"{self._what}: the bytes have SHA-256 {ours}, the server's is "
                    f"{self.file.sha256}"
                )
            self.verified = True
