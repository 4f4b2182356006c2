"""Reading an upload: options from the query and headers, and the body as a
stream of bytes, whether raw or ``multipart/form-data``.

The body is never buffered whole. Stalls are cut off after the read timeout
and a client that disconnects mid-body surfaces as ClientGone, kept apart
from storage failures (tusd's body reader does the same).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
from aiohttp import BodyPartReader, HttpVersion11, MultipartReader, hdrs, web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    ContentEncodingError,
    HttpProcessingError,
    PayloadEncodingError,
    TransferEncodingError,
)
from aiohttp.multipart import (
    BadContentDispositionHeader,
    BadContentDispositionParam,
    content_disposition_filename,
    parse_content_disposition,
)
from aiohttp.web_protocol import RequestPayloadError

from filestore.api.params import parse_ttl, query_params
from filestore.errors import BadRequest, ClientGone, FilestoreError
from filestore.lifecycle import UploadOptions

T = TypeVar("T")

#: C0, DEL and C1 (U+0080-U+009F, NEL among them): Unicode's control characters.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MIME_RE = re.compile(
    r"^[\w!#$&^.+-]+/[\w!#$&^.+-]+(\s*;\s*[\w!#$&^.+-]+=(\"[^\"]*\"|[\w!#$&^.+-]+))*$"
)
_HEX64_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_DIGEST_RE = re.compile(r"(?:^|,)\s*sha-256=:([A-Za-z0-9+/=]+):", re.IGNORECASE)
READ_SIZE = 256 * 1024
#: Form fields a client may send after the file part (they are discarded),
#: and likewise before it: a form of thousands of tiny fields would keep the
#: server parsing without storing anything.
MAX_TRAILING_PARTS = 32


def _strict_disposition(parse: Callable[[], T]) -> T:
    """Run a Content-Disposition parse with aiohttp's "bad header" warnings
    turned into a 400: the client tried to name the file and got the header
    wrong, and silently dropping the name would store it nameless."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", BadContentDispositionHeader)
        warnings.simplefilter("error", BadContentDispositionParam)
        try:
            return parse()
        except (BadContentDispositionHeader, BadContentDispositionParam) as exc:
            raise BadRequest("the Content-Disposition header is malformed") from exc


def _part_filename(part: BodyPartReader) -> str | None:
    if len(part.headers.getall(hdrs.CONTENT_DISPOSITION, [])) > 1:
        raise BadRequest("a part has more than one Content-Disposition header")
    return _strict_disposition(lambda: part.filename)


def validate_filename(name: str) -> str:
    """A file name is a label, never a path: no separators, no control
    characters, no '.'/'..', at most 255 bytes of UTF-8."""
    if not name or name in (".", ".."):
        raise BadRequest("filename must not be empty, '.' or '..'")
    if "/" in name or "\\" in name:
        raise BadRequest("filename must not contain path separators")
    if _CONTROL_RE.search(name):
        raise BadRequest("filename must not contain control characters")
    if len(name.encode("utf-8", "surrogatepass")) > 255:
        raise BadRequest("filename may be at most 255 bytes")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRequest("filename must be valid UTF-8") from exc
    return name


def _content_type(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value or value.lower() in ("application/octet-stream",):
        return value or None
    if len(value) > 255 or not _MIME_RE.match(value):
        raise BadRequest("Content-Type is not a valid media type")
    return value


def _expected_checksum(request: web.Request) -> bytes | None:
    digest_header = request.headers.get("Content-Digest")
    hex_header = request.headers.get("X-Checksum-SHA256")
    found: bytes | None = None
    if digest_header is not None:
        match = _DIGEST_RE.search(digest_header)
        if not match:
            raise BadRequest("Content-Digest must carry sha-256=:BASE64: (RFC 9530)")
        try:
            found = base64.b64decode(match.group(1), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest("Content-Digest sha-256 value is not valid base64") from exc
        if len(found) != 32:
            raise BadRequest("Content-Digest sha-256 value must be 32 bytes")
    if hex_header is not None:
        if not _HEX64_RE.match(hex_header.strip()):
            raise BadRequest("X-Checksum-SHA256 must be 64 hexadecimal characters")
        value = bytes.fromhex(hex_header.strip())
        if found is not None and found != value:
            raise BadRequest("Content-Digest and X-Checksum-SHA256 disagree")
        found = value
    return found


def parse_options(request: web.Request) -> UploadOptions:
    """Upload options from the query string (``ttl``, ``filename``,
    ``max_downloads``) and the headers (``Content-Type``,
    ``Content-Disposition``, the checksum headers)."""
    query = query_params(request, ("ttl", "filename", "max_downloads"))
    ttl = parse_ttl(query["ttl"]) if "ttl" in query else None
    max_downloads: int | None = None
    if "max_downloads" in query:
        raw = query["max_downloads"]
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
            raise BadRequest("max_downloads must be a positive whole number")
        max_downloads = int(raw)
    filename = query.get("filename")
    if len(request.headers.getall(hdrs.CONTENT_DISPOSITION, [])) > 1:
        raise BadRequest("send at most one Content-Disposition header")
    if filename is None and "Content-Disposition" in request.headers:
        header = request.headers["Content-Disposition"]
        _kind, params = _strict_disposition(lambda: parse_content_disposition(header))
        if not _kind:
            raise BadRequest("the Content-Disposition header is malformed")
        filename = _strict_disposition(lambda: content_disposition_filename(params, "filename"))
    if filename is not None:
        validate_filename(filename)
    content_type = None
    if request.content_type != "multipart/form-data":
        content_type = _content_type(request.headers.get("Content-Type"))
    return UploadOptions(
        ttl=ttl,
        filename=filename,
        content_type=content_type,
        expected_sha256=_expected_checksum(request),
        max_downloads=max_downloads,
    )


@dataclass
class Body:
    """The stream of file bytes plus what the multipart part told us."""

    chunks: AsyncIterator[bytes]
    filename: str | None = None
    content_type: str | None = None


def _body_error(exc: BaseException) -> FilestoreError:
    """Translate a failure to read the body: a client that went away or
    stalled (408) is kept apart from a body that cannot be decoded (400)."""
    if isinstance(exc, TimeoutError):
        return ClientGone("the client stopped sending the body")
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ContentEncodingError):
            return BadRequest("the body's Content-Encoding could not be decoded")
        if isinstance(cause, TransferEncodingError):
            return BadRequest("the body's chunked framing is malformed")
        if isinstance(cause, BadHttpMessage) and not isinstance(cause, PayloadEncodingError):
            # The HTTP layer only parses a part's headers; a bad one is the
            # client's form, not a lost connection.
            return BadRequest("a part's headers are malformed")
        cause = cause.__cause__
    return ClientGone("the connection was lost before the body was complete")


#: What reading a request body raises when the client or its bytes fail.
_READ_ERRORS = (
    TimeoutError,
    ConnectionError,
    aiohttp.ClientError,
    HttpProcessingError,
    RequestPayloadError,
    aiohttp.EofStream,
)


async def _raw_chunks(request: web.Request, idle_timeout: float) -> AsyncIterator[bytes]:
    """The body as aiohttp received it, one buffered piece at a time.

    ``readchunk``, not ``readany``: once the loop falls behind the socket,
    ``readany`` joins every piece buffered meanwhile into a new ``bytes``,
    a copy of most of the body that the upload then copies again into its
    batch (a tenth of the loop's time in a 1 GiB upload's profile).
    """
    # With a Content-Encoding, Content-Length counts the encoded bytes and
    # aiohttp checks it itself; the decoded size is another number.
    expected = None if request.headers.get("Content-Encoding") else request.content_length
    received = 0
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                data, chunk_end = await request.content.readchunk()
        except _READ_ERRORS as exc:
            raise _body_error(exc) from exc
        if not data:
            if chunk_end and not request.content.at_eof():
                continue  # the end of one HTTP chunk, not of the body
            # The end. An empty body's reader is aiohttp's one shared
            # EMPTY_PAYLOAD, which answers (b"", True) forever once any
            # request has read it: without the at_eof check the second
            # empty upload in a process spun the loop.
            break
        received += len(data)
        yield data
    if expected is not None and received != expected:
        raise ClientGone("the body ended before Content-Length bytes arrived")


async def _part_chunks(
    reader: MultipartReader, part: BodyPartReader, idle_timeout: float
) -> AsyncIterator[bytes]:
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                data = await part.read_chunk(READ_SIZE)
        except _READ_ERRORS as exc:
            raise _body_error(exc) from exc
        except (ValueError, AssertionError, RuntimeError) as exc:
            raise BadRequest("the multipart body is malformed") from exc
        if not data:
            break
        yield data
    await _read_to_closing_boundary(reader, idle_timeout)


async def _read_to_closing_boundary(reader: MultipartReader, idle_timeout: float) -> None:
    """The file part ended at a boundary; the form must end at its closing
    one. A body cut after a part boundary would otherwise pass for a whole
    file (the part's bytes look complete), so the rest of the form is read —
    a bounded number of further parts, discarded — and must close cleanly,
    before the upload is committed."""
    try:
        # One more read than fields allowed: the last sees the closing boundary.
        for _ in range(MAX_TRAILING_PARTS + 1):
            async with asyncio.timeout(idle_timeout):
                extra = await reader.next()
                if extra is None:
                    break
                _refuse_second_file(extra)
                await extra.release()
        else:
            raise BadRequest(f"the form has more than {MAX_TRAILING_PARTS} parts after the file")
    except _READ_ERRORS as exc:
        raise _body_error(exc) from exc
    except (ValueError, AssertionError, RuntimeError, KeyError) as exc:
        raise BadRequest("the multipart body ended before its closing boundary") from exc
    if not reader.at_eof():
        raise BadRequest("the multipart body ended before its closing boundary")


_NESTED = "nested multipart parts are not accepted: send one file part"


def _refuse_second_file(part: MultipartReader | BodyPartReader) -> None:
    """A form carries one file. A second file part, or a nested multipart
    (which holds files of its own), would otherwise be dropped unseen while
    the client believes it was stored."""
    if isinstance(part, MultipartReader):
        raise BadRequest(_NESTED)
    if _part_filename(part) is not None:
        raise BadRequest("the form has more than one file part")


def _check_framing(request: web.Request) -> None:
    """Only ``chunked`` is decoded. aiohttp passes any other transfer coding
    (``gzip, chunked``) through undecoded, which would store the coded bytes
    as the file; and HTTP/1.0 has no Transfer-Encoding at all (RFC 9112
    §6.1: such framing is faulty)."""
    coding = request.headers.get(hdrs.TRANSFER_ENCODING)
    if coding is None:
        return
    if request.version < HttpVersion11:
        raise BadRequest("Transfer-Encoding is not allowed in an HTTP/1.0 request")
    if coding.strip().lower() != "chunked":
        raise BadRequest("the only Transfer-Encoding accepted is chunked")


async def open_body(request: web.Request, idle_timeout: float) -> Body:
    """The file's bytes: the raw body, or the first file part of a form."""
    _check_framing(request)
    if request.content_type != "multipart/form-data":
        return Body(_raw_chunks(request, idle_timeout))
    try:
        async with asyncio.timeout(idle_timeout):
            reader = await request.multipart()
            for _ in range(MAX_TRAILING_PARTS + 1):
                part = await reader.next()
                if part is None:
                    raise BadRequest("the form has no file part")
                if isinstance(part, MultipartReader):
                    raise BadRequest(_NESTED)
                if _part_filename(part) is not None:
                    break
                # A non-file field before the file: drain it, bounded.
                await part.release()
            else:
                raise BadRequest(
                    f"the form has more than {MAX_TRAILING_PARTS} parts before the file"
                )
    except _READ_ERRORS as exc:
        raise _body_error(exc) from exc
    except (BadContentDispositionHeader, BadContentDispositionParam) as exc:
        # Raised only where warnings are errors; elsewhere aiohttp just warns
        # and _part_filename() refuses the header instead.
        raise BadRequest("a part's Content-Disposition header is malformed") from exc
    except (ValueError, AssertionError, RuntimeError, KeyError) as exc:
        raise BadRequest("the multipart body is malformed") from exc
    filename = validate_filename(_part_filename(part) or "")
    content_type = _content_type(part.headers.get("Content-Type"))
    return Body(
        _part_chunks(reader, part, idle_timeout), filename=filename, content_type=content_type
    )
