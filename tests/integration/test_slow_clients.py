"""Slow and stalled clients against a real ``filestore serve`` process.

The in-process gateway (``tests/integration/test_api_faults.py``,
``test_stalled_client_gets_408_and_leaves_nothing``) already shows that a
stalled body gets a 408 and leaves nothing, on both databases. What only the
real server shows is here: the site ``serve`` builds
(:class:`filestore.api.connections.GuardedSite`), its header deadline, its
keep-alive timeout, and a separate process whose event loop the test's
sockets do not share.

* a body that stops arriving is cut once it has been silent for
  ``READ_TIMEOUT`` (small here), and its temp file and row are gone;
* a head that trickles in (slowloris) or never starts is cut at
  ``HEADER_TIMEOUT`` from the connection's start, however many bytes keep
  coming, while an idle kept-alive connection is left alone;
* 200 such connections at once do not keep a normal client from uploading
  and downloading, and are all cut afterwards.

Every wait is bounded (:data:`WAIT` beyond the timeout under test); every
socket is closed; the server is stopped by its PID. No assertion is on
speed: only lower bounds (the server waited at least its timeout) and hang
guards.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from tests.integration.test_api_faults import check_problem, partial_upload, read_response
from tests.support import db
from tests.support.standalone import Standalone, standalone_server

#: One server for the module (a start costs seconds on a busy machine).
pytestmark = pytest.mark.asyncio(loop_scope="module")

#: Beyond the timeout under test: reaching it means a hang.
WAIT = 10.0
READ_TIMEOUT = 1.0
#: Long enough that opening 200 connections and serving a normal client
#: fits inside it, even on a busy machine.
HEADER_TIMEOUT = 5.0
SLOWLORIS = 200
#: Seconds between two trickled bytes on one connection.
TRICKLE_STEP = 0.1
TRICKLE_HEAD = (
    b"POST /v1/files HTTP/1.1\r\nHost: filestore.test\r\nContent-Type: application/octet-stream\r\n"
    + b"".join(b"X-Slow-%d: %s\r\n" % (n, b"x" * 40) for n in range(100))
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def srv(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Standalone]:
    root = tmp_path_factory.mktemp("slow-clients")
    async with standalone_server(
        root, read_timeout=READ_TIMEOUT, header_timeout=HEADER_TIMEOUT
    ) as server:
        yield server
        assert not server_errors(server), server_errors(server)
    assert server.instance.proc.returncode == 0, server.instance.lines[-20:]


@contextlib.asynccontextmanager
async def raw_stream(
    srv: Standalone,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def stored_state(srv: Standalone) -> dict[str, object]:
    """Rows, key rows and stored files: what an upload can leave behind."""
    async with srv.store() as store:
        files = sorted(await db.rows(store, "SELECT id, state FROM files"))
        keys = await db.scalar(store, "SELECT count(*) FROM file_keys")
    return {"stored": srv.stored_files(), "files": files, "file_keys": keys}


async def round_trip(srv: Standalone, data: bytes) -> None:
    """A normal client: upload ``data``, download it whole, compare."""
    headers = {"Authorization": f"Bearer {srv.client_key}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT * 3)) as session:
        async with session.post(f"{srv.url}/v1/files", data=data, headers=headers) as resp:
            assert resp.status == 201, await resp.text()
            file_id = (await resp.json())["id"]
        async with session.get(f"{srv.url}/v1/files/{file_id}", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            got = await resp.read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def server_errors(srv: Standalone) -> list[str]:
    return [line for line in srv.instance.lines if "Traceback" in line or " ERROR " in line]


# ------------------------------------------------------------ body stalls
async def test_body_stall_is_cut_after_read_timeout_and_leaves_nothing(srv: Standalone) -> None:
    """Three uploads stall at once: headers and part of a raw body, headers
    and none of it, a form cut inside its file part. Each gets its 408 no
    sooner than READ_TIMEOUT after its last byte (the head was complete, so
    the header deadline plays no part), and nothing is left of any of them."""
    before = await stored_state(srv)

    async def stall(kind: str, sent: int) -> float:
        async with raw_stream(srv) as (reader, writer):
            # Timed from before the last byte leaves: the server cannot
            # have read it any earlier.
            last_byte = time.monotonic()
            writer.write(partial_upload(kind, srv.client_key, declared=100_000, sent=sent))
            await writer.drain()
            # ... and nothing more: the server must give up on its own.
            resp = await read_response(reader)
            waited = time.monotonic() - last_byte
        check_problem(resp.status, resp.headers, resp.body, 408, "request-timeout")
        return waited

    waits = await asyncio.gather(stall("raw", 30_000), stall("raw", 0), stall("multipart", 30_000))
    assert min(waits) >= READ_TIMEOUT, waits
    # The 408 leaves only after the failed upload was cleaned up.
    assert await stored_state(srv) == before
    await round_trip(srv, os.urandom(10_000))


# ----------------------------------------------------------- header stalls
def _peek(sock: socket.socket) -> bytes | None:
    """What the server sent so far without consuming it: None while it has
    sent nothing and the connection is open; b"" once it closed."""
    try:
        return sock.recv(1 << 16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except ConnectionError:
        return b""


async def _connect(srv: Standalone) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (srv.host, srv.port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _until_closed(sock: socket.socket, limit: float) -> bytes:
    """Everything the server sends until it closes, within ``limit`` s."""
    loop = asyncio.get_running_loop()
    got = b""
    async with asyncio.timeout(limit):
        while True:
            try:
                chunk = await loop.sock_recv(sock, 1 << 16)
            except ConnectionError:
                return got
            if not chunk:
                return got
            got += chunk


async def _trickle(socks: list[socket.socket], stop: asyncio.Event) -> int:
    """One byte of :data:`TRICKLE_HEAD` to each socket every TRICKLE_STEP,
    until ``stop`` (bounded: the head is never finished, the loop by its
    length); a socket the server closed is dropped. Returns the most bytes
    any one socket was sent."""
    live = list(socks)
    sent = 0
    for offset in range(len(TRICKLE_HEAD)):
        if stop.is_set() or not live:
            break
        for sock in list(live):
            try:
                sock.send(TRICKLE_HEAD[offset : offset + 1])
            except (BlockingIOError, ConnectionError):
                live.remove(sock)
        sent = offset + 1
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TRICKLE_STEP):
                await stop.wait()
    return sent


def _is_408(raw: bytes) -> bool:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.startswith(b"HTTP/1.1 408 ") and b"urn:filestore:problem:request-timeout" in body


async def _ping(sock: socket.socket) -> None:
    """One whole request on ``sock``, answered 200 (kept alive)."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, b"GET /healthz HTTP/1.1\r\nHost: filestore.test\r\n\r\n")
    async with asyncio.timeout(WAIT):
        answer = await loop.sock_recv(sock, 1 << 16)
    assert answer.startswith(b"HTTP/1.1 200 "), answer


async def test_header_stall_is_cut_at_the_header_deadline(srv: Standalone) -> None:
    """One connection trickles a head a byte at a time, one connects and sends
    nothing, one trickles its second head after a first request: all are cut
    no sooner than HEADER_TIMEOUT from their start (the second-request one
    from its first trickled byte) and long before the keep-alive timeout
    (75 s); only the first, which never had an answer, gets a 408. One more,
    kept alive and idle after a request, is not cut and serves another
    request afterwards."""
    stop = asyncio.Event()
    trickler = silent = second = idle = None
    trickling: asyncio.Task[int] | None = None
    try:
        idle, second = await _connect(srv), await _connect(srv)
        await _ping(idle)
        await _ping(second)

        started = time.monotonic()
        trickler, silent = await _connect(srv), await _connect(srv)
        trickling = asyncio.create_task(_trickle([trickler, second], stop))
        limit = HEADER_TIMEOUT + WAIT
        cut_trickler, cut_silent, cut_second = await asyncio.gather(
            _until_closed(trickler, limit),
            _until_closed(silent, limit),
            _until_closed(second, limit),
        )
        waited = time.monotonic() - started
        assert _is_408(cut_trickler), cut_trickler
        assert cut_silent == b""
        assert cut_second == b""
        assert waited >= HEADER_TIMEOUT, waited
        stop.set()
        # Bytes kept coming after the first one: the deadline did not move.
        assert await trickling > 1

        # The idle kept-alive connection outlived every deadline.
        assert _peek(idle) is None
        await _ping(idle)
    finally:
        stop.set()
        if trickling is not None:
            await trickling
        for sock in (trickler, silent, second, idle):
            if sock is not None:
                sock.close()


async def test_200_slowloris_connections_do_not_keep_a_normal_client_out(
    srv: Standalone,
) -> None:
    """Half of 200 connections trickle heads, half send nothing. While all of
    them are open, a normal client uploads and downloads a file; then every
    one of the 200 is cut by the header deadline (the tricklers with a 408),
    and the server is still serving."""
    stop = asyncio.Event()
    socks: list[socket.socket] = []
    trickling: asyncio.Task[int] | None = None
    try:
        for _ in range(SLOWLORIS):
            socks.append(await _connect(srv))
        tricklers = socks[: SLOWLORIS // 2]
        trickling = asyncio.create_task(_trickle(tricklers, stop))

        await round_trip(srv, os.urandom(256 * 1024))
        # They were all still held open while the normal client was served.
        early = [i for i, s in enumerate(socks) if _peek(s) is not None]
        assert not early, (
            f"{len(early)} slow connections were cut before the normal client finished: "
            f"the run took longer than HEADER_TIMEOUT={HEADER_TIMEOUT}s"
        )

        limit = HEADER_TIMEOUT + WAIT
        cuts = await asyncio.gather(*(_until_closed(s, limit) for s in socks))
        assert all(_is_408(cut) for cut in cuts[: SLOWLORIS // 2]), cuts[0]
        assert all(cut == b"" for cut in cuts[SLOWLORIS // 2 :])
    finally:
        stop.set()
        if trickling is not None:
            await trickling
        for sock in socks:
            sock.close()
    # Still serving once they are gone.
    await round_trip(srv, os.urandom(10_000))
    assert not server_errors(srv), server_errors(srv)
