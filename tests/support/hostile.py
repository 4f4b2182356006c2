"""Shared by the hostile-input battery (tests/integration/test_hostile_*.py):
one gateway per module and backend, raw HTTP/1.1 exchanges, the check that an
answer is a clean 4xx problem, and an inventory of everything a refused
request could leave behind.

The battery sends a few hundred requests. A gateway per request would spend
most of the run starting gateways (a start costs a quarter of a second on a
busy machine, more on PostgreSQL), so each module holds one per backend
(:func:`module_gateway`, parametrised like ``metadata_backend``) and every
case compares the inventory before and after itself instead of with an
empty store. No case moves the shared clock.

"Behind" means: rows in ``files`` and ``file_keys`` (through
:mod:`tests.support.db`, so the same check holds on SQLite and PostgreSQL),
blobs and part files under the storage directory, and files in the
process's temporary directory, which :func:`scratch_tempdir` points at a
directory of the test's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from tests.support import db
from tests.support.gateway import Gateway, running_gateway

PROBLEM = "application/problem+json"
#: Bound on any single wait: far above what a healthy answer needs, so
#: reaching it means a hang, not a slow machine.
WAIT = 10.0


@dataclass
class Answer:
    """One raw HTTP/1.1 response."""

    status: int
    headers: CIMultiDict[str]
    body: bytes
    raw_head: bytes = b""


@dataclass
class Inventory:
    """What the gateway holds: file rows (hex id → state), key rows, blobs,
    uploads in progress, and temporary files."""

    files: dict[str, str]
    file_keys: int
    blobs: list[str]
    parts: list[str]
    temp: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def module_gateway(
    request: pytest.FixtureRequest, root: Path, **overrides: Any
) -> AsyncIterator[Gateway]:
    """A running gateway on the backend ``request.param`` names (``sqlite``
    or ``postgresql``, a fresh database on the session's server, skipped
    where PostgreSQL cannot run), its data under ``root``."""
    if request.param == "sqlite":
        async with running_gateway(root, **overrides) as gw:
            yield gw
        return
    server = request.getfixturevalue("postgres")
    async with server.database() as url, running_gateway(root, database_url=url, **overrides) as gw:
        yield gw


@contextlib.contextmanager
def scratch_tempdir(path: Path) -> Iterator[Path]:
    """Point :mod:`tempfile` at ``path`` for the test, so a temporary file
    made anywhere in the process (aiohttp spools form fields that way) is
    seen by :func:`inventory`."""
    path.mkdir(parents=True, exist_ok=True)
    saved = tempfile.tempdir
    tempfile.tempdir = str(path)
    try:
        yield path
    finally:
        tempfile.tempdir = saved


async def inventory(gw: Gateway, temp: Path | None = None) -> Inventory:
    states = await db.file_states(gw.services)
    keys = await db.scalar(gw.services, "SELECT count(*) FROM file_keys")
    root = gw.settings.storage_dir
    blobs = sorted(p.name for p in (root / "blobs").rglob("*") if p.is_file())
    parts = sorted(p.name for p in (root / "tmp").glob("*"))
    return Inventory(
        files={fid.hex(): state for fid, state in states.items()},
        file_keys=int(keys),
        blobs=blobs,
        parts=parts,
        temp=sorted(p.name for p in temp.rglob("*")) if temp is not None else [],
    )


async def eventually(
    predicate: Callable[[], Awaitable[bool]], what: str, *, limit: float = WAIT
) -> None:
    """Poll ``predicate`` until it holds, for at most ``limit`` seconds: for
    cleanup that runs on after an answer the test cannot wait on (the HTTP
    parser answers for itself while the handler still cleans up)."""
    step = 0.02
    for _ in range(int(limit / step)):
        if await predicate():
            return
        await asyncio.sleep(step)
    assert await predicate(), f"still not true after {limit} s: {what}"


def check_problem(
    status: int,
    headers: Any,
    body: bytes,
    expected: int | None = None,
    *,
    head: bool = False,
    where: str = "",
) -> dict[str, Any]:
    """A 4xx ``application/problem+json`` whose ``status`` is the HTTP
    status (and ``expected``, if given). A HEAD answer has no body to read."""
    label = f"{where}: {status} {body[:300]!r}"
    assert 400 <= status < 500, label
    if expected is not None:
        assert status == expected, label
    content_type = headers.get("Content-Type", "")
    assert content_type.split(";")[0].strip() == PROBLEM, f"{label} as {content_type!r}"
    if head:
        return {}
    doc = json.loads(body)
    assert isinstance(doc, dict), label
    assert isinstance(doc.get("type"), str) and doc["type"].startswith("urn:filestore:problem:")
    assert isinstance(doc.get("title"), str) and doc["title"], label
    assert doc.get("status") == status, label
    return doc


#: Where to connect: a gateway's test server, or a (host, port).
Peer = Gateway | tuple[str, int]


@contextlib.asynccontextmanager
async def connection(to: Peer) -> Any:
    if isinstance(to, Gateway):
        host, port = to.client.server.host, to.client.server.port
    else:
        host, port = to
    reader, writer = await asyncio.open_connection(host, port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def read_answer(reader: asyncio.StreamReader, *, head: bool = False) -> Answer | None:
    """One response (to a HEAD if ``head``: no body), or None if the server
    closed without one; bounded."""
    async with asyncio.timeout(WAIT):
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return None
            raise
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers.add(name.strip(), value.strip())
        status = int(status_line.split()[1])
        if head or status in (204, 304):
            body = b""
        elif "Content-Length" in headers:
            body = await reader.readexactly(int(headers["Content-Length"]))
        elif headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                body += await reader.readexactly(size)
                await reader.readexactly(2)
            await reader.readuntil(b"\r\n")
        else:
            body = await reader.read()
    return Answer(status, headers, body, raw)


async def exchange(
    to: Peer, raw: bytes, *, half_close: bool = False, head: bool = False
) -> Answer | None:
    """Send ``raw`` as it is on a new connection and read one answer (None if
    the server closed the connection without one). ``half_close`` shuts the
    sending side after the bytes, as a client that has nothing more to say."""
    async with connection(to) as (reader, writer):
        writer.write(raw)
        await writer.drain()
        if half_close:
            writer.write_eof()
        try:
            return await read_answer(reader, head=head)
        except ConnectionResetError:
            return None


def request_head(
    method: str, target: str, headers: list[tuple[str, str]], *, version: str = "1.1"
) -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: filestore.test"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
