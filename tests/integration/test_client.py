"""filestore.client against a real gateway on a loopback port.

The gateway is the in-process one (``running_gateway``: a real aiohttp
server, SQLite, local disk), so link and file expiry are driven by its
ManualClock. Retries are tested against a small real aiohttp server put in
front of it (:class:`Flaky`), which answers 503, drops the connection, cuts
a body short, corrupts it or answers 500 for its first N requests and then
proxies — the client itself is never mocked. Waits between retries go
through the policy's ``sleep``, which these tests replace with one that
records the delay and returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from filestore.client import (
    AsyncClient,
    AuthError,
    BadRequestError,
    ChecksumMismatchError,
    Client,
    ClientError,
    ConflictError,
    ConnectionFailedError,
    ForbiddenError,
    GoneError,
    NotFoundError,
    RangeNotSatisfiableError,
    ReceiptVerificationError,
    RetryPolicy,
    ServerError,
    TooLargeError,
    UnavailableError,
)
from filestore.crypto.signing import public_key_pem
from filestore.metadata.base import Role
from tests.support.gateway import Gateway, running_gateway
from tests.support.instances import free_port

MiB = 1 << 20


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    # SQLite only: the client's behaviour does not depend on the database,
    # and the PostgreSQL runs of the API suites cover the server.
    async with running_gateway(tmp_path, max_ttl=7200.0) as gateway:
        yield gateway


def base_url(gw: Gateway) -> str:
    return str(gw.client.make_url("/"))


@dataclass
class Sleeps:
    """A policy's ``sleep`` that records the delay and does not wait."""

    delays: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def policy(sleeps: Sleeps, attempts: int = 4) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, base_delay=0.2, max_delay=1.0, sleep=sleeps)


# ------------------------------------------------------------ the proxy
@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]


class Flaky:
    """A real aiohttp server in front of ``upstream``. Its first ``fail``
    requests get ``mode`` — ``503`` (problem+json, ``Retry-After``),
    ``drop`` (the connection closed with no answer), ``lose`` (the request
    proxied, its answer thrown away and the connection closed), ``cut`` (the answer's
    headers and half its body, then the connection aborted), ``corrupt``
    (the answer with one byte of its body flipped) or ``500`` — and every
    request after them is proxied as is."""

    HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})

    def __init__(
        self, upstream: str, *, fail: int, mode: str, retry_after: str | None = "0"
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.fail = fail
        self.mode = mode
        self.retry_after = retry_after
        self.seen: list[Seen] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Flaky:
        app = web.Application(client_max_size=64 * MiB)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        self._session = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None and self._runner is not None
        await self._session.close()
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        n = len(self.seen)
        self.seen.append(
            Seen(request.method, request.path, request.query_string, dict(request.headers))
        )
        body = await request.read()
        failing = n < self.fail
        if failing and self.mode == "503":
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            return web.json_response(
                {
                    "type": "urn:filestore:problem:unavailable",
                    "title": "Service unavailable",
                    "status": 503,
                    "detail": "the flaky proxy says so",
                    "request_id": f"flaky{n}",
                },
                status=503,
                content_type="application/problem+json",
                headers=headers,
            )
        if failing and self.mode == "500":
            return web.json_response(
                {
                    "type": "urn:filestore:problem:internal",
                    "title": "Internal server error",
                    "status": 500,
                    "detail": "see the server log for request flaky",
                    "request_id": "flaky",
                },
                status=500,
                content_type="application/problem+json",
            )
        if failing and self.mode == "drop":
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=204)
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in self.HOP}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
        ) as up:
            if failing and self.mode == "lose":
                await up.read()
                assert request.transport is not None
                request.transport.abort()
                return web.Response(status=204)
            out_headers = {k: v for k, v in up.headers.items() if k.lower() not in self.HOP}
            response = web.StreamResponse(status=up.status, headers=out_headers)
            if up.content_length is not None:
                response.content_length = up.content_length
            await response.prepare(request)
            if request.method == "HEAD":
                return response
            data = await up.read()
            if failing and self.mode == "cut":
                await response.write(data[: len(data) // 2])
                assert request.transport is not None
                request.transport.abort()
                return response
            if failing and self.mode == "corrupt" and data:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            await response.write(data)
            await response.write_eof()
            return response


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


# --------------------------------------------------------- transfers
async def test_multi_mib_upload_and_download_from_and_to_paths(gw: Gateway, tmp_path: Path) -> None:
    data = os.urandom(6 * MiB + 123)
    source = tmp_path / "report.pdf"
    source.write_bytes(data)
    seen: list[tuple[int, int | None]] = []
    async with AsyncClient(base_url(gw), await gw.key()) as fs:
        info = await fs.upload(
            source, ttl="30m", progress=lambda done, total: seen.append((done, total))
        )
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        assert info.size == len(data)
        assert info.filename == "report.pdf" and info.content_type == "application/pdf"
        assert (info.expires_at - info.created_at).total_seconds() == 1800
        assert seen[-1] == (len(data), len(data))

        out = tmp_path / "downloads" / "copy.pdf"
        out.parent.mkdir()
        result = await fs.download(info.id, out)
        assert out.read_bytes() == data
        assert result.verified and result.offset == 0 and result.length == len(data)
        assert result.file.sha256 == info.sha256 and result.file.filename == "report.pdf"
        assert oct(out.stat().st_mode & 0o777) == "0o600"
        assert leftovers(out.parent) == []

        # The same file, streamed chunk by chunk.
        digest = hashlib.sha256()
        async with fs.open(info.id) as stream:
            assert stream.file.size == len(data) and stream.length == len(data)
            async for chunk in stream:
                digest.update(chunk)
        assert digest.hexdigest() == info.sha256 and stream.verified


async def test_upload_from_an_async_iterator_and_from_bytes(gw: Gateway) -> None:
    pieces = [os.urandom(64 * 1024) for _ in range(40)]

    async def produce() -> AsyncIterator[bytes]:
        for piece in pieces:
            await asyncio.sleep(0)
            yield piece

    async with AsyncClient(base_url(gw), await gw.key()) as fs:
        info = await fs.upload(produce(), filename="résumé d'été.txt", content_type="text/plain")
        whole = b"".join(pieces)
        assert info.sha256 == hashlib.sha256(whole).hexdigest()
        assert info.filename == "résumé d'été.txt"
        assert await fs.read(info.id) == whole
        head = await fs.info(info.id)
        assert (head.id, head.size, head.sha256) == (info.id, info.size, info.sha256)
        assert head.filename == "résumé d'été.txt" and head.content_type == "text/plain"
        assert head.expires_at == info.expires_at

        small = await fs.upload(b"", filename="empty")
        assert small.size == 0 and await fs.read(small.id) == b""
        limited = await fs.upload(b"once", max_downloads=1)
        assert limited.max_downloads == 1
        assert await fs.read(limited.id) == b"once"
        with pytest.raises(GoneError):
            await fs.read(limited.id)


async def test_ranges(gw: Gateway, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    async with AsyncClient(base_url(gw), await gw.key()) as fs:
        info = await fs.upload(data)
        assert await fs.read(info.id, offset=10, length=5) == data[10:15]
        assert await fs.read(info.id, offset=2 * MiB) == data[2 * MiB :]
        assert await fs.read(info.id, offset=-100) == data[-100:]
        assert await fs.read(info.id, offset=len(data) - 3, length=50) == data[-3:]
        chunks = [c async for c in fs.iter_bytes(info.id, offset=MiB, length=MiB)]
        assert b"".join(chunks) == data[MiB : 2 * MiB]

        part = await fs.download(info.id, tmp_path / "part.bin", offset=1000, length=1 * MiB)
        assert (tmp_path / "part.bin").read_bytes() == data[1000 : 1000 + MiB]
        assert (part.offset, part.length, part.verified) == (1000, MiB, False)

        with pytest.raises(RangeNotSatisfiableError) as caught:
            await fs.read(info.id, offset=len(data))
        assert caught.value.status == 416 and caught.value.size == len(data)
        assert caught.value.type == "urn:filestore:problem:range-not-satisfiable"
        assert isinstance(caught.value, BadRequestError)


async def test_signed_links_expire_on_the_servers_clock(gw: Gateway, tmp_path: Path) -> None:
    async with AsyncClient(base_url(gw), await gw.key()) as fs:
        info = await fs.upload(b"for a downstream service", ttl=600)
        link = await fs.link(info.id, ttl=60)
        assert (link.expires_at - info.created_at).total_seconds() == 60
        capped = await fs.link(info.id, ttl="2h")
        assert capped.expires_at == info.expires_at

    # Whoever holds the link needs no key.
    async with AsyncClient(base_url(gw)) as anyone:
        assert await anyone.read(link.url) == b"for a downstream service"
        assert (await anyone.info(link.url)).size == info.size
        saved = await anyone.download(link.url, tmp_path / "via-link.txt")
        assert saved.verified
        with pytest.raises(AuthError):
            await anyone.read(info.id)  # no key, no link: refused here

        gw.clock.advance(61)
        with pytest.raises(NotFoundError) as caught:
            await anyone.read(link.url)
        assert caught.value.status == 404 and not isinstance(caught.value, GoneError)
        assert "signature" not in str(caught.value)

    async with AsyncClient(base_url(gw), await gw.key()) as fs:
        gw.clock.advance(600)
        with pytest.raises(GoneError):
            await fs.read(info.id)


# ------------------------------------------------------------ errors
async def test_every_error_class(gw: Gateway, tmp_path: Path) -> None:
    url = base_url(gw)
    async with AsyncClient(url, await gw.key()) as fs:
        mine = await fs.upload(b"mine")

        async with AsyncClient(url, "fs_000000000000_" + "A" * 43) as stranger:
            with pytest.raises(AuthError) as auth:
                await stranger.read(mine.id)
        assert type(auth.value) is AuthError and auth.value.status == 401
        assert auth.value.type == "urn:filestore:problem:unauthorized"
        assert auth.value.title == "Unauthorized" and auth.value.detail
        assert auth.value.request_id and auth.value.request_id in str(auth.value)

        with pytest.raises(ForbiddenError) as forbidden:
            await fs.purge_status()
        assert forbidden.value.status == 403 and isinstance(forbidden.value, AuthError)
        async with AsyncClient(url, await gw.key(role=Role.OPERATOR)) as operator:
            with pytest.raises(ForbiddenError):
                await operator.upload(b"operators do not upload")

        with pytest.raises(NotFoundError) as missing:
            await fs.read("A" * 22)
        assert missing.value.status == 404 and missing.value.type == (
            "urn:filestore:problem:not-found"
        )
        async with AsyncClient(url, await gw.key("other")) as other:
            with pytest.raises(NotFoundError) as theirs:
                await other.info(mine.id)  # another tenant's: 404, never 403
        assert theirs.value.status == 404 and theirs.value.request_id

        with pytest.raises(BadRequestError) as bad:
            await fs.upload(b"x", ttl="forever")
        assert bad.value.status == 400 and "ttl" in (bad.value.detail or "")
        with pytest.raises(BadRequestError):
            await fs.upload(b"x", ttl="3h")  # over this server's max TTL
        with pytest.raises(ValueError):
            await fs.upload(b"x", ttl=-5)

        with pytest.raises(ConflictError) as early:
            await fs.receipt(mine.id)
        assert early.value.status == 409 and "not deleted" in (early.value.detail or "")

        async def lying() -> AsyncIterator[bytes]:
            yield b"these are not the bytes you promised"

        with pytest.raises(ChecksumMismatchError) as mismatch:
            await fs.upload(lying(), sha256="0" * 64)
        assert mismatch.value.status == 422
        assert mismatch.value.type == "urn:filestore:problem:checksum-mismatch"
        with pytest.raises(ChecksumMismatchError) as local:
            await fs.upload(b"hello", sha256="0" * 64)
        assert local.value.status is None  # caught before anything was sent

        await fs.delete(mine.id)
        with pytest.raises(GoneError) as gone:
            await fs.read(mine.id)
        assert gone.value.status == 410 and isinstance(gone.value, NotFoundError)
        with pytest.raises(GoneError):
            await fs.info(mine.id)  # HEAD: the status alone, no body
        again = await fs.delete(mine.id)  # idempotent: gone is done
        assert again.completed and again.already_gone
        with pytest.raises(NotFoundError):
            await fs.delete("A" * 22)

    async with AsyncClient(url) as keyless:
        with pytest.raises(AuthError) as nokey:
            await keyless.upload(b"x")
        assert nokey.value.status is None

    closed = free_port()
    async with AsyncClient(f"http://127.0.0.1:{closed}", "fs_x", retry=policy(Sleeps())) as down:
        with pytest.raises(ConnectionFailedError) as refused:
            await down.info("A" * 22)
    assert isinstance(refused.value, UnavailableError) and refused.value.status is None

    for mode, expected, status in (("503", UnavailableError, 503), ("500", ServerError, 500)):
        async with Flaky(url, fail=99, mode=mode) as flaky:
            sleeps = Sleeps()
            async with AsyncClient(flaky.url, await gw.key(), retry=policy(sleeps)) as fs:
                with pytest.raises(expected) as caught:
                    await fs.read("A" * 22)
        assert type(caught.value) is expected and caught.value.status == status
        assert caught.value.detail and caught.value.request_id
        assert caught.value.title and caught.value.type


async def test_too_large(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, max_file_size=MiB) as small:
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(MiB + 1))

        async def stream() -> AsyncIterator[bytes]:
            for _ in range(8):
                yield os.urandom(256 * 1024)

        async with AsyncClient(base_url(small), await small.key()) as fs:
            with pytest.raises(TooLargeError) as declared:
                await fs.upload(big)  # refused at Expect: 100-continue
            assert declared.value.status == 413 and declared.value.type == (
                "urn:filestore:problem:too-large"
            )
            with pytest.raises(TooLargeError):
                await fs.upload(stream())  # chunked: cut off at the limit
            assert (await fs.upload(b"fits")).size == 4


# ------------------------------------------------------------ retries
async def test_idempotent_calls_retry_503_honouring_retry_after(gw: Gateway) -> None:
    async with AsyncClient(base_url(gw), await gw.key()) as direct:
        info = await direct.upload(b"retry me")
    for call in ("info", "read", "link", "delete"):
        async with Flaky(base_url(gw), fail=2, mode="503", retry_after="7") as flaky:
            sleeps = Sleeps()
            async with AsyncClient(flaky.url, await gw.key(), retry=policy(sleeps)) as fs:
                if call == "info":
                    assert (await fs.info(info.id)).size == 8
                elif call == "read":
                    assert await fs.read(info.id) == b"retry me"
                elif call == "link":
                    assert "signature=" in (await fs.link(info.id)).url
                else:
                    assert (await fs.delete(info.id)).completed
        assert sleeps.delays == [7.0, 7.0], call
        assert len(flaky.seen) == 3, call


async def test_backoff_without_retry_after_is_bounded(gw: Gateway) -> None:
    async with AsyncClient(base_url(gw), await gw.key()) as direct:
        info = await direct.upload(b"x")
    async with Flaky(base_url(gw), fail=99, mode="503", retry_after=None) as flaky:
        sleeps = Sleeps()
        retry = RetryPolicy(attempts=5, base_delay=0.5, max_delay=2.0, sleep=sleeps)
        async with AsyncClient(flaky.url, await gw.key(), retry=retry) as fs:
            with pytest.raises(UnavailableError):
                await fs.info(info.id)
    assert len(flaky.seen) == 5 and len(sleeps.delays) == 4
    ceilings = [0.5, 1.0, 2.0, 2.0]  # doubling, then capped; jitter in the upper half
    assert all(c / 2 <= d <= c for d, c in zip(sleeps.delays, ceilings, strict=True))

    # A Retry-After past the policy's bound is cut to it.
    async with Flaky(base_url(gw), fail=1, mode="503", retry_after="3600") as flaky:
        sleeps = Sleeps()
        retry = RetryPolicy(max_retry_after=30.0, sleep=sleeps)
        async with AsyncClient(flaky.url, await gw.key(), retry=retry) as fs:
            await fs.info(info.id)
    assert sleeps.delays == [30.0]


async def test_dropped_connections_are_retried_for_idempotent_calls(gw: Gateway) -> None:
    async with AsyncClient(base_url(gw), await gw.key()) as direct:
        info = await direct.upload(b"dropped twice")
    async with Flaky(base_url(gw), fail=2, mode="drop") as flaky:
        sleeps = Sleeps()
        async with AsyncClient(flaky.url, await gw.key(), retry=policy(sleeps)) as fs:
            assert await fs.read(info.id) == b"dropped twice"
    # aiohttp itself re-sends an idempotent request once when its connection
    # is closed under it, without waiting; the policy's waits come on top.
    assert len(flaky.seen) == 3 and 1 <= len(sleeps.delays) <= 2

    sleeps = Sleeps()
    async with (
        Flaky(base_url(gw), fail=99, mode="drop") as flaky,
        AsyncClient(flaky.url, await gw.key(), retry=policy(sleeps, 3)) as fs,
    ):
        with pytest.raises(ConnectionFailedError):
            await fs.info(info.id)
    assert sleeps.delays and len(sleeps.delays) == 2 and 3 <= len(flaky.seen) <= 6


async def test_a_delete_whose_answer_was_lost_is_done(gw: Gateway) -> None:
    """The first DELETE reaches the server, which deletes the file, but the
    answer is lost on the way back: the DELETE is sent again and finds the
    file gone, which is the deletion done."""
    async with AsyncClient(base_url(gw), await gw.key()) as direct:
        info = await direct.upload(b"delete me once")
    async with (
        Flaky(base_url(gw), fail=1, mode="lose") as flaky,
        AsyncClient(flaky.url, await gw.key(), retry=policy(Sleeps())) as fs,
    ):
        result = await fs.delete(info.id)
        with pytest.raises(GoneError):
            await fs.read(info.id)
    assert result.completed and result.already_gone
    assert [s.method for s in flaky.seen][:2] == ["DELETE", "DELETE"]


async def test_uploads_are_not_retried_once_they_may_have_reached_the_server(
    gw: Gateway, tmp_path: Path
) -> None:
    for mode, error in (("503", UnavailableError), ("drop", ConnectionFailedError)):
        async with Flaky(base_url(gw), fail=1, mode=mode) as flaky:
            sleeps = Sleeps()
            async with AsyncClient(flaky.url, await gw.key(), retry=policy(sleeps)) as fs:
                with pytest.raises(error):
                    await fs.upload(b"sent once")
        assert len(flaky.seen) == 1 and sleeps.delays == [], mode

    # Nothing can have arrived when the connection could not be made: bytes
    # and files are sent again, a stream never.
    closed = f"http://127.0.0.1:{free_port()}"
    source = tmp_path / "f.bin"
    source.write_bytes(b"replayable")
    for replayable in (b"replayable", source):
        sleeps = Sleeps()
        async with AsyncClient(closed, await gw.key(), retry=policy(sleeps, 3)) as fs:
            with pytest.raises(ConnectionFailedError):
                await fs.upload(replayable)
        assert len(sleeps.delays) == 2

    async def stream() -> AsyncIterator[bytes]:
        yield b"not replayable"

    sleeps = Sleeps()
    async with AsyncClient(closed, await gw.key(), retry=policy(sleeps, 3)) as fs:
        with pytest.raises(ConnectionFailedError):
            await fs.upload(stream())
    assert sleeps.delays == []


async def test_a_cut_download_resumes_with_a_range(gw: Gateway, tmp_path: Path) -> None:
    data = os.urandom(2 * MiB + 7)
    async with AsyncClient(base_url(gw), await gw.key()) as direct:
        info = await direct.upload(data)
    async with (
        Flaky(base_url(gw), fail=1, mode="cut") as flaky,
        AsyncClient(flaky.url, await gw.key(), retry=policy(Sleeps())) as fs,
    ):
        result = await fs.download(info.id, tmp_path / "resumed.bin")
    assert (tmp_path / "resumed.bin").read_bytes() == data and result.verified
    first, second = flaky.seen
    assert "Range" not in first.headers
    start = int(second.headers["Range"].removeprefix("bytes=").split("-")[0])
    assert 0 < start < len(data) and second.headers["Range"] == f"bytes={start}-{len(data) - 1}"
    assert second.headers["If-Range"] == f'"{info.id}"'


async def test_a_failed_download_leaves_nothing(gw: Gateway, tmp_path: Path) -> None:
    data = os.urandom(MiB)
    async with AsyncClient(base_url(gw), await gw.key()) as direct:
        info = await direct.upload(data)
    dest = tmp_path / "kept.bin"
    dest.write_bytes(b"what was there before")

    async with (
        Flaky(base_url(gw), fail=99, mode="cut") as flaky,
        AsyncClient(flaky.url, await gw.key(), retry=policy(Sleeps(), 2)) as fs,
    ):
        with pytest.raises(ConnectionFailedError):
            await fs.download(info.id, dest)
        with pytest.raises(ConnectionFailedError):
            await fs.download(info.id, tmp_path / "new.bin")
    async with (
        Flaky(base_url(gw), fail=99, mode="corrupt") as flaky,
        AsyncClient(flaky.url, await gw.key(), retry=policy(Sleeps())) as fs,
    ):
        with pytest.raises(ChecksumMismatchError) as corrupt:
            await fs.download(info.id, dest)
    assert corrupt.value.status is None and info.sha256 in str(corrupt.value)
    assert dest.read_bytes() == b"what was there before"
    assert not (tmp_path / "new.bin").exists() and leftovers(tmp_path) == []

    async with AsyncClient(base_url(gw), await gw.key()) as fs:
        with pytest.raises(FileExistsError):
            await fs.download(info.id, dest, overwrite=False)
        assert dest.read_bytes() == b"what was there before"
        with pytest.raises(NotFoundError):
            await fs.download("A" * 22, tmp_path / "never.bin")
        await fs.download(info.id, dest)
        assert dest.read_bytes() == data and leftovers(tmp_path) == []

    # A download interrupted by its caller cleans up too.
    async with AsyncClient(base_url(gw), await gw.key()) as fs:

        def stop(done: int, _total: int | None) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            await fs.download(info.id, tmp_path / "interrupted.bin", progress=stop)
    assert not (tmp_path / "interrupted.bin").exists() and leftovers(tmp_path) == []


# ----------------------------------------------------- receipts, status
async def test_receipts_are_verified_against_a_pinned_key(gw: Gateway, tmp_path: Path) -> None:
    pinned = public_key_pem(gw.services.signing_key)
    async with AsyncClient(base_url(gw), await gw.key()) as fs:
        info = await fs.upload(b"to be deleted")
        other = await fs.upload(b"another")
        assert (await fs.delete(info.id)).completed
        assert (await fs.delete(other.id)).completed
        with pytest.raises(ConflictError):
            await fs.receipt(info.id)  # not yet under a checkpoint
        run = await gw.client.post("/v1/purge/run", headers=await gw.auth(role=Role.OPERATOR))
        assert run.status == 200

        assert await fs.audit_public_key() == pinned.decode()
        unverified = await fs.receipt(info.id)
        assert not unverified.verified and unverified.record.file_id == info.id
        receipt = await fs.receipt(info.id, public_key=pinned)
        assert receipt.verified and receipt.file_id == info.id
        assert receipt.record.reason == "client_request" and receipt.record.tenant == "acme"
        assert receipt.tree_size >= receipt.record.seq
        assert receipt.text.startswith("c2sp.org/tlog-proof@v1\n")

        forged = Ed25519PrivateKey.generate().public_key()
        with pytest.raises(ReceiptVerificationError):
            await fs.receipt(info.id, public_key=forged)

    # A server that hands out another file's (valid) receipt is caught.
    swapped = receipt.text.encode()

    async def swap(request: web.Request) -> web.Response:
        return web.Response(body=swapped, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/v1/files/{id}/receipt", swap)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with AsyncClient(f"http://127.0.0.1:{port}", await gw.key()) as fs:
            with pytest.raises(ReceiptVerificationError, match="another file"):
                await fs.receipt(other.id, public_key=pinned)
    finally:
        await runner.cleanup()


async def test_purge_status_for_operators(gw: Gateway) -> None:
    async with AsyncClient(base_url(gw), await gw.key(role=Role.OPERATOR)) as ops:
        status = await ops.purge_status()
    assert status.health.get("database") == "ok" and status.health.get("storage") == "ok"
    assert status.backlog == 0 and status.live_files == 0
    assert status.raw["scheduler"]["running"] is False and not status.scheduler_running


# ------------------------------------------------------ the sync client
async def test_the_blocking_client_is_the_same_api(gw: Gateway, tmp_path: Path) -> None:
    url, key = base_url(gw), await gw.key()
    source = tmp_path / "in.bin"
    data = os.urandom(MiB + 5)
    source.write_bytes(data)

    def work() -> None:
        with Client(url, key) as fs:
            assert key not in repr(fs)
            info = fs.upload(source, ttl=300)
            assert info.sha256 == hashlib.sha256(data).hexdigest()
            fs.download(info.id, tmp_path / "out.bin")
            assert (tmp_path / "out.bin").read_bytes() == data
            assert b"".join(fs.iter_bytes(info.id, offset=5, length=10)) == data[5:15]
            with contextlib.closing(fs.iter_bytes(info.id)) as chunks:
                first = next(chunks)  # left early: closing() ends the download
                assert first and data.startswith(first)
            assert fs.read(fs.upload([b"a", b"b", b"c"]).id) == b"abc"
            assert fs.read(fs.upload(io.BytesIO(b"from a file object")).id) == (
                b"from a file object"
            )
            assert fs.info(info.id).size == len(data)
            assert fs.link(info.id, ttl=30).url.startswith(url.rstrip("/"))
            assert fs.delete(info.id).completed
            with pytest.raises(GoneError):
                fs.read(info.id)
            with pytest.raises(ConflictError):
                fs.receipt(info.id)
        with pytest.raises(RuntimeError):
            fs.info(info.id)  # closed

    await asyncio.to_thread(work)


# ------------------------------------------------------------- hygiene
async def test_the_key_stays_in_the_authorization_header(gw: Gateway) -> None:
    key = await gw.key()
    async with AsyncClient(base_url(gw), key) as direct:
        info = await direct.upload(b"x")
        link = await direct.link(info.id)
    errors: list[ClientError] = []
    async with (
        Flaky(base_url(gw), fail=1, mode="503") as flaky,
        AsyncClient(flaky.url, key, retry=policy(Sleeps())) as fs,
    ):
        assert key not in repr(fs)
        await fs.info(info.id)
        await fs.read(info.id)
        proxied = link.url.replace(base_url(gw).rstrip("/"), flaky.url)
        await fs.read(proxied)  # a link: never with the key
        for bad in ("A" * 22, "B" * 22):
            try:
                await fs.read(bad)
            except ClientError as exc:
                errors.append(exc)
    for seen in flaky.seen:
        assert key not in seen.path and key not in seen.query
        on_link = "signature=" in seen.query
        assert ("Authorization" in seen.headers) is not on_link
        if not on_link:
            assert seen.headers["Authorization"] == f"Bearer {key}"
    assert len(errors) == 2 and all(key not in str(e) and key not in repr(e) for e in errors)


def test_the_client_loads_no_server_module() -> None:
    """What ``import filestore.client`` (and its CLI) loads: aiohttp's client
    but never aiohttp.web, and nothing of the server."""
    code = (
        "import sys, filestore.client, filestore.client.cli\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        ).stdout.split()
    )
    assert "aiohttp" in loaded and "filestore.audit" in loaded
    forbidden = ("aiohttp.web", "sqlalchemy", "boto3", "apscheduler", "scheduler", "asyncpg")
    server = ("filestore.api", "filestore.metadata", "filestore.storage", "filestore.services")
    bad = sorted(
        m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden + server)
    )
    assert bad == []
