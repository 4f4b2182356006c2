"""Faults on the way in and out: slow and vanishing clients, storage and
database outages, oversize bodies (docs/architecture.md, "The HTTP API").

Everything runs against a real gateway on a loopback port. Clients that
misbehave at the TCP level speak raw HTTP/1.1 over ``asyncio.open_connection``.
Storage faults are injected where the local store meets the kernel: the
``os`` module seen by :mod:`filestore.storage.local` is swapped for a proxy
that raises ``OSError`` for chosen calls (:class:`FaultyOS`), and small blobs
take the store's Python path so that their calls go through it too; the
rest of the store is the real one. Every wait is bounded; no test sleeps for time to pass,
and the network timeout is exercised with a tiny ``read_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import filestore.storage.local as local_storage
from filestore import ids
from filestore.clock import ManualClock
from filestore.config import Settings
from filestore.crypto import CHUNK_SIZE, ENC_CHUNK_SIZE, PREFIX_SIZE, chunk_span
from filestore.errors import MetadataUnavailable
from filestore.metadata.base import Role
from filestore.reads import READ_BATCHES
from filestore.services import open_services
from tests.support import db, hostile
from tests.support.db import MetadataBackend
from tests.support.gateway import Gateway, running_gateway
from tests.support.postgres import PostgresServer, PostgresUnavailable

PROBLEM = "application/problem+json"
#: Upper bound for any single wait on the server; far above what a healthy
#: run needs, so reaching it means a hang, not a slow machine.
WAIT = 10.0


# ------------------------------------------------------------------ helpers
def check_problem(
    status: int, headers: Any, body: bytes, expected: int, slug: str
) -> dict[str, Any]:
    """The answer is an RFC 9457 problem of ``expected`` status and ``slug``."""
    assert status == expected, (status, body[:500])
    assert headers.get("Content-Type", "").split(";")[0].strip() == PROBLEM, headers
    doc = json.loads(body)
    assert doc["type"] == f"urn:filestore:problem:{slug}", doc
    assert doc["status"] == expected, doc
    assert isinstance(doc["title"], str) and doc["title"], doc
    return doc  # type: ignore[no-any-return]


async def assert_problem(resp: aiohttp.ClientResponse, status: int, slug: str) -> dict[str, Any]:
    return check_problem(resp.status, resp.headers, await resp.read(), status, slug)


def assert_retry_after(headers: Any) -> None:
    value = headers.get("Retry-After")
    assert value is not None and value.isdigit() and int(value) > 0, dict(headers)


async def db_state(gw: Gateway) -> dict[str, Any]:
    """Rows of ``files`` (hex id → state) and the number of ``file_keys``."""
    rows = {fid.hex(): state for fid, state in (await db.file_states(gw.services)).items()}
    keys = await db.scalar(gw.services, "SELECT count(*) FROM file_keys")
    return {"files": rows, "file_keys": keys}


def stored_files(gw: Gateway) -> list[str]:
    """Every regular file under the storage root (``blobs/`` and ``tmp/``)."""
    root = gw.settings.storage_dir
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def leftovers(gw: Gateway) -> dict[str, Any]:
    return {"stored": stored_files(gw), **(await db_state(gw))}


async def _is_clean(gw: Gateway) -> bool:
    return await leftovers(gw) == NOTHING


NOTHING = {"stored": [], "files": {}, "file_keys": 0}


async def eventually(
    predicate: Callable[[], Awaitable[bool]], what: str, *, limit: float = 5.0, step: float = 0.02
) -> None:
    """Poll ``predicate`` until it holds, for at most ``limit`` seconds."""
    for _ in range(int(limit / step)):
        if await predicate():
            return
        await asyncio.sleep(step)
    assert await predicate(), f"still not true after {limit} s: {what}"


def text_id(hex_id: str) -> str:
    return ids.to_text(bytes.fromhex(hex_id))


def blob_path(gw: Gateway, file_id: str) -> Path:
    name = ids.blob_name(ids.from_text(file_id))
    path = gw.settings.storage_dir / "blobs" / name[:2] / name
    assert path.is_file(), stored_files(gw)
    return path


class FaultyOS:
    """Stands in for the ``os`` module inside ``filestore.storage.local``.

    Every attribute is the real ``os`` one, except calls named in
    :meth:`fail`: those raise ``OSError(code)`` whenever ``when(*args)`` is
    true. ``fired`` counts the faults raised, so a test can tell that its
    fault really happened.
    """

    def __init__(self) -> None:
        self.faults: dict[str, tuple[int, Callable[..., bool]]] = {}
        self.fired: Counter[str] = Counter()

    def fail(self, name: str, code: int, when: Callable[..., bool] = lambda *a: True) -> None:
        self.faults[name] = (code, when)

    def heal(self) -> None:
        self.faults.clear()

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if name not in self.faults:
            return real
        code, when = self.faults[name]

        def faulty(*args: Any, **kwargs: Any) -> Any:
            if when(*args):
                self.fired[name] += 1
                raise OSError(code, os.strerror(code))
            return real(*args, **kwargs)

        return faulty


@pytest.fixture
def faulty_os(monkeypatch: pytest.MonkeyPatch) -> FaultyOS:
    """The proxy in place; stores opened from now on write whole blobs with
    the Python path, whose calls go through it (the C helper's cannot be
    intercepted: its own failure tests are in tests/unit/test_syncwrite.py)."""
    fake = FaultyOS()
    monkeypatch.setattr(local_storage, "os", fake)
    monkeypatch.setattr(local_storage, "NATIVE_WRITE", None)
    return fake


# ------------------------------------------------------------- raw HTTP/1.1
@contextlib.asynccontextmanager
async def raw_connection(
    gw: Gateway,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    server = gw.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        yield reader, writer
    finally:
        if not writer.is_closing():
            writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader) -> hostile.Answer:
    """One HTTP/1.1 response, read within a bounded wait."""
    resp = await hostile.read_answer(reader)
    assert resp is not None, "the server closed the connection without an answer"
    return resp


def upload_head(key: str, *, content_type: str, length: int | None) -> bytes:
    """Request line and headers of a POST /v1/files; chunked if no length."""
    lines = [
        "POST /v1/files HTTP/1.1",
        "Host: filestore.test",
        f"Authorization: Bearer {key}",
        f"Content-Type: {content_type}",
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


BOUNDARY = "fault-boundary-7d1c"


def partial_upload(kind: str, key: str, declared: int, sent: int) -> bytes:
    """Headers promising ``declared`` body bytes, then only ``sent`` bytes of
    the file (raw, or inside the file part of a form)."""
    data = os.urandom(sent)
    if kind == "raw":
        return upload_head(key, content_type="application/octet-stream", length=declared) + data
    part = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    form_type = f"multipart/form-data; boundary={BOUNDARY}"
    return upload_head(key, content_type=form_type, length=declared) + part + data


async def upload_in_progress(gw: Gateway) -> bool:
    """A row is ``uploading`` and its part file exists: the server is
    streaming the body (both come once a first batch has arrived)."""
    tmp = gw.settings.storage_dir / "tmp"
    return "uploading" in (await db_state(gw))["files"].values() and any(tmp.glob("*.part"))


# ---------------------------------------------------------- slow clients
@pytest.mark.parametrize(("kind", "sent"), [("raw", 30_000), ("raw", 0), ("multipart", 30_000)])
async def test_stalled_client_gets_408_and_leaves_nothing(
    tmp_path: Path, kind: str, sent: int, metadata_backend: MetadataBackend
) -> None:
    async with running_gateway(tmp_path, database_url=metadata_backend.url, read_timeout=0.3) as gw:
        key = await gw.key()
        async with raw_connection(gw) as (reader, writer):
            writer.write(partial_upload(kind, key, declared=100_000, sent=sent))
            await writer.drain()
            # ... and nothing more: the server must give up on its own.
            resp = await read_response(reader)
        check_problem(resp.status, resp.headers, resp.body, 408, "request-timeout")
        # The 408 leaves only after the failed upload was cleaned up.
        assert await leftovers(gw) == NOTHING
        assert (await gw.upload(b"after the stall"))["size"] == 15


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("kind", ["raw", "multipart"])
async def test_client_disconnect_mid_upload_leaves_nothing(
    tmp_path: Path, kind: str, how: str, metadata_backend: MetadataBackend
) -> None:
    async with running_gateway(tmp_path, database_url=metadata_backend.url) as gw:
        key = await gw.key()
        async with raw_connection(gw) as (_reader, writer):
            writer.write(partial_upload(kind, key, declared=5_000_000, sent=2_000_000))
            await writer.drain()
            # Go away only once the server is busy with the body, or the test
            # could pass before the upload even began.
            await eventually(lambda: upload_in_progress(gw), "the upload to start")
            if how == "reset":
                writer.transport.abort()
            else:
                writer.close()
        await eventually(lambda: _is_clean(gw), "the upload to be cleaned up")
        assert (await gw.upload(b"after the disconnect"))["size"] == 20


# ------------------------------------------------------------ oversize bodies
async def test_oversize_chunked_body_is_cut_with_413(
    tmp_path: Path, metadata_backend: MetadataBackend
) -> None:
    limit = 100_000
    async with running_gateway(
        tmp_path, database_url=metadata_backend.url, max_file_size=limit
    ) as gw:

        async def body() -> AsyncIterator[bytes]:
            for _ in range(200):  # 20 times the limit, with no Content-Length
                yield os.urandom(10_000)

        resp = await gw.client.post("/v1/files", data=body(), headers=await gw.auth())
        assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
        doc = await assert_problem(resp, 413, "too-large")
        assert str(limit) in doc.get("detail", "")
        assert await leftovers(gw) == NOTHING
        # Exactly the limit is still accepted.
        assert (await gw.upload(os.urandom(limit)))["size"] == limit


async def test_content_length_over_the_limit_is_413(
    tmp_path: Path, metadata_backend: MetadataBackend
) -> None:
    limit = 64 * 1024
    declared = 4 * limit
    async with running_gateway(
        tmp_path, database_url=metadata_backend.url, max_file_size=limit
    ) as gw:
        key = await gw.key()
        async with raw_connection(gw) as (reader, writer):
            writer.write(upload_head(key, content_type="application/octet-stream", length=declared))

            async def send_body() -> None:
                # The whole declared body, piece by piece, until the server
                # answers: this passes whether the server refuses on the
                # header alone or cuts the stream at the limit.
                for _ in range(declared // 8192):
                    writer.write(os.urandom(8192))
                    await writer.drain()

            sender = asyncio.create_task(send_body())
            try:
                resp = await read_response(reader)
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await sender
        check_problem(resp.status, resp.headers, resp.body, 413, "too-large")
        assert await leftovers(gw) == NOTHING


# ------------------------------------------------------ storage: uploads
@pytest.mark.parametrize(
    ("call", "code"),
    [("write", errno.EIO), ("fsync", errno.EIO)],
    ids=["write-EIO", "fsync-EIO"],
)
# 4 KiB arrives whole in its first batch and is stored by one put; 3 MiB
# streams through a writer.
@pytest.mark.parametrize("size", [4096, 3 << 20], ids=["small", "streamed"])
async def test_storage_failure_during_upload_is_503_and_leaves_nothing(
    tmp_path: Path,
    faulty_os: FaultyOS,
    call: str,
    code: int,
    size: int,
    metadata_backend: MetadataBackend,
) -> None:
    async with running_gateway(tmp_path, database_url=metadata_backend.url) as gw:
        auth = await gw.auth()
        faulty_os.fail(call, code)
        resp = await gw.client.post("/v1/files", data=io.BytesIO(os.urandom(size)), headers=auth)
        await assert_problem(resp, 503, "unavailable")
        assert_retry_after(resp.headers)
        assert faulty_os.fired[call] > 0
        faulty_os.heal()
        # The store could still remove what it wrote, so nothing is left.
        assert await leftovers(gw) == NOTHING
        assert (await gw.upload(b"after the outage"))["size"] == 16


async def test_unusable_tmp_dir_is_503_and_nothing_readable(
    tmp_path: Path, metadata_backend: MetadataBackend
) -> None:
    async with running_gateway(tmp_path, database_url=metadata_backend.url) as gw:
        auth = await gw.auth()
        tmp = gw.settings.storage_dir / "tmp"
        tmp.rmdir()
        tmp.write_bytes(b"not a directory")  # the medium is broken
        # Streamed (more than a first batch): a file that arrives whole is
        # written straight into its shard and never touches tmp.
        body = os.urandom(2 * gw.settings.batch_size + 1)
        resp = await gw.client.post("/v1/files", data=io.BytesIO(body), headers=auth)
        await assert_problem(resp, 503, "unavailable")
        assert_retry_after(resp.headers)
        ready = await gw.client.get("/readyz")
        assert ready.status == 503
        assert (await ready.json())["checks"]["storage"] == "failing"
        # Cleanup cannot reach storage either; any row left must be a
        # never-readable 'uploading' one (for the sweep), never 'active'.
        state = await db_state(gw)
        assert set(state["files"].values()) <= {"uploading"}, state
        for hex_id in state["files"]:
            await assert_problem(await gw.get(text_id(hex_id)), 404, "not-found")
        tmp.unlink()
        tmp.mkdir(mode=0o700)
        assert stored_files(gw) == []
        # Readiness reuses a probe for a few seconds; a new one sees the fix.
        assert gw.services.storage_probe is not None
        gw.services.storage_probe.forget()
        assert (await gw.client.get("/readyz")).status == 200


# ------------------------------------------------------ storage: disk full
class DiskFills:
    """``when`` for :meth:`FaultyOS.fail`: ``write`` calls go through until
    ``room`` bytes are written, then every write fails, as on a disk that
    fills up in the middle of a file."""

    def __init__(self, room: int) -> None:
        self.room = room

    def __call__(self, _fd: int, data: Any) -> bool:
        if len(data) > self.room:
            return True
        self.room -= len(data)
        return False


def assert_insufficient_storage(status: int, headers: Any, body: bytes, where: str) -> None:
    """A 507 problem whose detail says which store ran out of space."""
    doc = check_problem(status, headers, body, 507, "insufficient-storage")
    assert doc["title"] == "Insufficient Storage", doc
    assert doc.get("detail", "").startswith(f"{where} is out of space"), doc
    assert_retry_after(headers)


@pytest.mark.parametrize(
    ("call", "code", "room"),
    [
        ("write", errno.ENOSPC, 1 << 20),
        ("write", errno.EDQUOT, 1 << 20),
        ("fsync", errno.ENOSPC, 0),
    ],
    ids=["write-ENOSPC-after-1MiB", "write-EDQUOT-after-1MiB", "fsync-ENOSPC"],
)
async def test_disk_full_during_upload_is_507_and_leaves_nothing(
    tmp_path: Path,
    faulty_os: FaultyOS,
    call: str,
    code: int,
    room: int,
    metadata_backend: MetadataBackend,
) -> None:
    """ENOSPC/EDQUOT where the real local store meets the kernel (the fault
    is raised in place of the store's own ``os.write``/``os.fsync``, after
    ``room`` bytes reached the part file): 507 Insufficient Storage, not 503,
    and neither the part file nor the row nor the key survives."""
    async with running_gateway(tmp_path, database_url=metadata_backend.url) as gw:
        auth = await gw.auth()
        faulty_os.fail(call, code, DiskFills(room) if call == "write" else lambda *_: True)
        resp = await gw.client.post("/v1/files", data=io.BytesIO(os.urandom(3 << 20)), headers=auth)
        assert_insufficient_storage(resp.status, resp.headers, await resp.read(), "local storage")
        assert faulty_os.fired[call] > 0
        assert await leftovers(gw) == NOTHING
        faulty_os.heal()
        assert (await gw.upload(b"after the disk was freed"))["size"] == 24


TMPFS_SIZE = 1 << 20


@contextlib.contextmanager
def small_tmpfs(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted at ``path``: a real disk that fills.
    Needs root and a kernel that lets this process mount; skips otherwise."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs a tmpfs mount, which needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (a container?): {done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


async def test_disk_full_on_a_real_tmpfs_is_507_and_frees_the_space(tmp_path: Path) -> None:
    """The same on a filesystem that really fills: the kernel's own ENOSPC.
    The space the partial upload took is given back, so a file that fits is
    accepted at once."""
    with small_tmpfs(tmp_path / "data" / "storage", TMPFS_SIZE) as storage:
        async with running_gateway(tmp_path) as gw:
            assert gw.settings.storage_dir == storage
            auth = await gw.auth()
            free = free_bytes(storage)
            resp = await gw.client.post(
                "/v1/files", data=io.BytesIO(os.urandom(3 * TMPFS_SIZE)), headers=auth
            )
            assert_insufficient_storage(
                resp.status, resp.headers, await resp.read(), "local storage"
            )
            assert await leftovers(gw) == NOTHING
            assert free_bytes(storage) == free
            data = os.urandom(TMPFS_SIZE // 2)
            meta = await gw.upload(data)
            assert await (await gw.get(meta["id"])).read() == data


async def test_sqlite_full_is_507_and_leaves_nothing(tmp_path: Path) -> None:
    """The database's disk is full: SQLite cannot grow the file and says
    SQLITE_FULL (produced here with the connection's ``max_page_count``, the
    same error SQLite gives when a write hits ENOSPC). The upload that met it
    answers 507 and leaves no row, key or blob; reads go on meanwhile, and
    once there is room again uploads work without a restart."""
    async with running_gateway(tmp_path) as gw:
        auth = await gw.auth()
        kept = await gw.upload(b"written before the disk filled")
        pages = await db.scalar(gw.services, "PRAGMA page_count")
        assert await db.scalar(gw.services, f"PRAGMA max_page_count = {pages}") == pages
        uploaded = 0
        resp = None
        for _ in range(500):  # a page holds a few rows: this fills within dozens
            resp = await gw.client.post("/v1/files", data=os.urandom(1000), headers=auth)
            if resp.status != 201:
                break
            uploaded += 1
        assert resp is not None
        assert_insufficient_storage(
            resp.status, resp.headers, await resp.read(), "the metadata database"
        )
        # Nothing of the failed upload is left: only the files that made it.
        state = await db_state(gw)
        assert list(state["files"].values()) == ["active"] * (uploaded + 1), state
        assert state["file_keys"] == uploaded + 1
        assert len(stored_files(gw)) == uploaded + 1
        assert await (await gw.get(kept["id"])).read() == b"written before the disk filled"
        await db.scalar(gw.services, "PRAGMA max_page_count = 1073741823")
        assert (await gw.upload(b"after the disk was freed"))["size"] == 24


# ------------------------------------------------------ storage: downloads
@pytest.mark.parametrize("fault", ["blob-removed", "blobs-dir-replaced"])
async def test_storage_outage_during_download_is_503(
    tmp_path: Path, fault: str, metadata_backend: MetadataBackend
) -> None:
    """The row says the file is active and its key is there, but storage
    cannot produce the blob. That is not the client's mistake (a 404 would
    claim the file does not exist, which the metadata contradicts) and not
    tampering (500 ``integrity`` is for bytes that fail authentication): the
    store is failing, so StorageUnavailable → 503 with Retry-After, and the
    same request succeeds once storage is back. A download limit is not spent
    on the failed attempt."""
    async with running_gateway(tmp_path, database_url=metadata_backend.url) as gw:
        data = os.urandom(70_000)
        meta = await gw.upload(data, params={"max_downloads": "1"})
        blob = blob_path(gw, meta["id"])
        blobs = gw.settings.storage_dir / "blobs"
        aside = tmp_path / "aside"
        if fault == "blob-removed":
            blob.rename(aside)
        else:
            blobs.rename(aside)
            blobs.write_bytes(b"not a directory")
        resp = await gw.get(meta["id"])
        await assert_problem(resp, 503, "unavailable")
        assert_retry_after(resp.headers)
        if fault == "blob-removed":
            aside.rename(blob)
        else:
            blobs.unlink()
            aside.rename(blobs)
        again = await gw.get(meta["id"])
        assert again.status == 200
        assert await again.read() == data
        await assert_problem(await gw.get(meta["id"]), 410, "gone")


async def test_storage_failure_mid_download_aborts_the_body(
    tmp_path: Path, faulty_os: FaultyOS, metadata_backend: MetadataBackend
) -> None:
    """Once 200 and its headers are out, a read error can no longer become an
    error answer: the connection must be cut so the client sees a broken
    body, never a body that ends cleanly with bytes missing or foreign."""
    async with running_gateway(tmp_path, database_url=metadata_backend.url) as gw:
        # The store is read READ_BATCHES batches a piece: three pieces' worth.
        piece = READ_BATCHES * gw.settings.batch_size
        size = 2 * piece + (1 << 20) + 5
        data = os.urandom(size)
        meta = await gw.upload(data)
        first_piece_end = PREFIX_SIZE + piece // CHUNK_SIZE * ENC_CHUNK_SIZE
        last_chunk_at, _ = chunk_span(size, size // CHUNK_SIZE, size // CHUNK_SIZE)
        assert first_piece_end < last_chunk_at
        # Reads of the prefix, the final chunk (both checked before headers)
        # and the first piece work; every read after the first piece fails.
        faulty_os.fail(
            "pread", errno.EIO, lambda _fd, _n, offset: first_piece_end <= offset < last_chunk_at
        )
        resp = await gw.get(meta["id"])
        assert resp.status == 200
        got = bytearray()
        outcome = "ended cleanly"
        try:
            # A healthy server cuts the connection at once; 3 s means a hang.
            async with asyncio.timeout(3):
                async for piece in resp.content.iter_any():
                    got += piece
        except aiohttp.ClientPayloadError:
            outcome = "was aborted"
        except TimeoutError:
            outcome = "hung"
        assert faulty_os.fired["pread"] > 0
        assert bytes(got) == data[: len(got)], (
            f"the body holds bytes that are not the file's: {bytes(got[len(got) - 200 :])!r}"
        )
        assert outcome == "was aborted", f"the body {outcome} after {len(got)} of {size} bytes"


# ------------------------------------------------------ storage: deletion
async def test_delete_with_failing_blob_removal_erases_then_resumes(
    tmp_path: Path, faulty_os: FaultyOS, metadata_backend: MetadataBackend
) -> None:
    async with running_gateway(tmp_path, database_url=metadata_backend.url) as gw:
        auth = await gw.auth()
        meta = await gw.upload(os.urandom(40_000))
        url = f"/v1/files/{meta['id']}"
        blob = blob_path(gw, meta["id"])
        faulty_os.fail("unlink", errno.EIO, lambda path, *_: Path(path) == blob)

        first = await gw.client.delete(url, headers=auth)
        await assert_problem(first, 503, "unavailable")
        assert_retry_after(first.headers)
        assert faulty_os.fired["unlink"] > 0
        assert blob.exists()  # the fault held: the ciphertext is still there,
        state = await db_state(gw)
        assert state["file_keys"] == 0  # but its key is gone (crypto-erased)
        assert list(state["files"].values()) == ["purging"]
        await assert_problem(await gw.get(meta["id"]), 410, "gone")
        assert (await gw.client.head(url, headers=auth)).status == 410

        faulty_os.heal()
        # The lease is still this instance's, so a second DELETE resumes it.
        second = await gw.client.delete(url, headers=auth)
        assert second.status == 204, await second.text()
        assert not blob.exists()
        assert stored_files(gw) == []
        row = await db.rows(gw.services, "SELECT state, delete_reason, sealed FROM files")
        records = await db.scalar(
            gw.services,
            "SELECT count(*) FROM audit_log WHERE file_id = :id AND event = 'file_deleted'",
            id=meta["id"],
        )
        assert row == [("purged", "client_request", None)]
        assert records == 1
        await assert_problem(await gw.client.delete(url, headers=auth), 410, "gone")
        await assert_problem(await gw.get(meta["id"]), 410, "gone")


# ------------------------------------------------------------------ database
async def test_database_outage_is_503_not_500(
    tmp_path: Path, metadata_backend: MetadataBackend
) -> None:
    async with running_gateway(tmp_path, database_url=metadata_backend.url) as gw:
        auth = await gw.auth()
        meta = await gw.upload(b"kept")
        url = f"/v1/files/{meta['id']}"
        await gw.services.metadata.close()  # the database is gone

        requests = {
            "upload": ("POST", "/v1/files", b"new"),
            "download": ("GET", url, None),
            "head": ("HEAD", url, None),
            "delete": ("DELETE", url, None),
            "link": ("POST", f"{url}/links", None),
        }
        answers: dict[str, tuple[int, dict[str, str], bytes]] = {}
        for name, (method, path, data) in requests.items():
            resp = await gw.client.request(method, path, data=data, headers=auth)
            answers[name] = (resp.status, dict(resp.headers), await resp.read())
        summary = {k: (v[0], v[1].get("Retry-After")) for k, v in answers.items()}
        assert all(s == 503 and (r or "").isdigit() for s, r in summary.values()), summary
        for name, (_status, headers, body) in answers.items():
            assert headers["Content-Type"].startswith(PROBLEM), (name, headers)
            if name != "head":  # a HEAD answer has no body
                check_problem(503, headers, body, 503, "unavailable")

        ready = await gw.client.get("/readyz")
        assert ready.status == 503, await ready.text()
        assert (await ready.json())["checks"] == {
            "database": "failing",
            "storage": "ok",
            "keys": "ok",
            "clock": "unknown" if metadata_backend.name == "postgresql" else "ok",
        }
        assert_retry_after(ready.headers)
        # Liveness is not readiness: the process still serves.
        assert (await gw.client.get("/healthz")).status == 200


# ------------------------------------------------ database: locked, stopped, cut
#: Every route that reads or writes the database, in an order where the
#: delete comes last; the expected answer once the database is back.
ROUTES: dict[str, tuple[str, str, Role, int]] = {
    "upload": ("POST", "/v1/files", Role.CLIENT, 201),
    "download": ("GET", "/v1/files/{id}", Role.CLIENT, 200),
    "head": ("HEAD", "/v1/files/{id}", Role.CLIENT, 200),
    "purge-status": ("GET", "/v1/purge/status", Role.OPERATOR, 200),
    "delete": ("DELETE", "/v1/files/{id}", Role.CLIENT, 204),
}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def call_routes(
    gw: Gateway, file_id: str, names: Iterable[str] = ROUTES
) -> dict[str, Answer]:
    """One request per route (keys must exist already: the database may be
    down); every answer is read in full."""
    answers = {}
    for name in names:
        method, path, role, _ok = ROUTES[name]
        resp = await gw.client.request(
            method,
            path.format(id=file_id),
            data=b"uploaded during the fault" if method == "POST" else None,
            headers=await gw.auth(role=role),
        )
        answers[name] = Answer(resp.status, dict(resp.headers), await resp.read())
    return answers


def assert_unavailable(answer: Answer, what: str) -> None:
    """503 problem+json with Retry-After (a HEAD answer has no body)."""
    assert answer.status == 503, (what, answer.status, answer.body[:300])
    assert_retry_after(answer.headers)
    assert answer.headers["Content-Type"].startswith(PROBLEM), (what, answer.headers)
    if answer.body:
        check_problem(503, answer.headers, answer.body, 503, "unavailable")


async def assert_routes_recover(gw: Gateway, *, retries: int = 0) -> None:
    """Every route answers as usual again (on the file the upload made);
    ``retries`` answers in all may still be 503 (a pool meeting its dead
    connections), never anything else."""
    file_id = ""
    unavailable = []
    for name, (_m, _p, _r, ok) in ROUTES.items():
        for _ in range(retries + 1):
            answer = (await call_routes(gw, file_id, [name]))[name]
            if answer.status != 503:
                break
            assert_unavailable(answer, name)
            unavailable.append(name)
        assert answer.status == ok, (name, answer.status, answer.body[:300])
        if name == "upload":
            file_id = json.loads(answer.body)["id"]
    assert len(unavailable) <= retries, unavailable
    ready = await gw.client.get("/readyz")
    assert ready.status == 200, await ready.text()


async def test_sqlite_locked_by_another_process_is_503_then_recovers(tmp_path: Path) -> None:
    """Another process holds SQLite's write lock for longer than the busy
    timeout (5 s): every write (upload, delete, a counted download) answers
    503 with Retry-After once the timeout is spent, and leaves nothing.
    Reads go on (WAL readers never wait for the writer). When the lock goes,
    everything works again without a restart."""
    async with running_gateway(tmp_path) as gw:
        await gw.auth(role=Role.OPERATOR)
        plain = await gw.upload(b"plain")
        limited = await gw.upload(b"limited", params={"max_downloads": "3"})
        before = await db_state(gw)
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(gw.settings.database_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
            writes = await call_routes(gw, plain["id"], ["upload", "delete"])
            writes["counted download"] = (await call_routes(gw, limited["id"], ["download"]))[
                "download"
            ]
            reads = await call_routes(gw, plain["id"], ["download", "head", "purge-status"])
        finally:
            locker.communicate(timeout=WAIT)  # closes its stdin: it rolls back and exits
        for name, answer in writes.items():
            assert_unavailable(answer, name)
        assert {name: a.status for name, a in reads.items()} == {
            "download": 200,
            "head": 200,
            "purge-status": 200,
        }
        assert reads["download"].body == b"plain"
        assert await db_state(gw) == before
        assert len(stored_files(gw)) == 2
        await assert_routes_recover(gw)
        assert await (await gw.get(limited["id"])).read() == b"limited"


#: A process that takes SQLite's write lock and keeps it until its stdin closes.
LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""


async def test_sqlite_on_a_read_only_disk_refuses_to_start(tmp_path: Path) -> None:
    """An open SQLite connection keeps writing through its descriptors
    whatever happens to the file's permissions (Linux even refuses to remount
    a filesystem read-only while a file on it is open for writing), so an
    unwritable database shows at the next start: that is refused with
    MetadataUnavailable (``filestore serve`` exits 75), not a traceback."""
    settings = Settings.load(env={}, data_dir=tmp_path / "data")
    async with open_services(settings, ManualClock()):
        pass
    if os.geteuid() != 0:
        pytest.skip("a read-only mount needs root (root ignores file modes)")
    where = str(settings.database_path.parent)
    done = subprocess.run(["mount", "--bind", "-o", "ro", where, where], check=False)
    if done.returncode != 0:
        pytest.skip("cannot make a read-only bind mount here")
    try:
        with pytest.raises(MetadataUnavailable, match="unavailable"):
            async with open_services(settings, ManualClock()):
                pass
    finally:
        subprocess.run(["umount", where], check=False)


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server of this test's own, which it may stop
    and start (the session's server is shared by every test). Commits are
    synchronous: an immediate shutdown must not lose what was committed."""
    try:
        server = PostgresServer.start(settings={"synchronous_commit": "on"})
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL cannot start: {str(exc).splitlines()[0]}")
    try:
        yield server
    finally:
        server.stop()


async def test_postgres_stopped_is_503_on_every_route_then_recovers(
    tmp_path: Path, own_postgres: PostgresServer
) -> None:
    async with own_postgres.database() as url, running_gateway(tmp_path, database_url=url) as gw:
        await gw.auth(role=Role.OPERATOR)
        meta = await gw.upload(b"kept through the outage")
        before = await db_state(gw)
        own_postgres.halt()
        try:
            answers = await call_routes(gw, meta["id"])
            ready = await gw.client.get("/readyz")
            assert ready.status == 503
            assert (await ready.json())["checks"]["database"] == "failing"
        finally:
            own_postgres.resume()
        for name, answer in answers.items():
            assert_unavailable(answer, name)
        assert await db_state(gw) == before
        assert len(stored_files(gw)) == 1
        # The requests during the outage found the pool's connections dead
        # and dropped them: nothing stale is left to fail after the restart.
        await assert_routes_recover(gw)
        assert await (await gw.get(meta["id"])).read() == b"kept through the outage"


async def test_postgres_connections_terminated_then_recovers(
    tmp_path: Path, postgres: PostgresServer, pg_database_url: str
) -> None:
    """The server ends every session of the gateway (pg_terminate_backend, as
    a failover or an administrator does): a request that meets a dead
    connection answers 503, never 500, and the pool reconnects by itself."""
    async with running_gateway(tmp_path, database_url=pg_database_url) as gw:
        await gw.auth(role=Role.OPERATOR)
        meta = await gw.upload(b"kept")
        # Several connections in the pool, so more than one is cut (held at
        # once here: concurrent requests would share one batched read).
        engine = gw.services.metadata.db.engine
        async with contextlib.AsyncExitStack() as held:
            for _ in range(4):
                conn = await held.enter_async_context(engine.connect())
                await conn.exec_driver_sql("SELECT 1")
        database = pg_database_url.rsplit("/", 1)[1]
        ended = await pg_scalar(
            postgres,
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
        assert ended >= 2
        await assert_routes_recover(gw, retries=1)
        assert await (await gw.get(meta["id"])).read() == b"kept"


async def pg_scalar(server: PostgresServer, sql: str, *args: Any) -> Any:
    conn = await server.connect()
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def test_failed_early_delete_is_retried_by_the_purge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metadata_backend: MetadataBackend
) -> None:
    """A DELETE whose blob removal fails is counted as failing at once and
    finished by a purge pass after one interval, long before the file's own
    expiry."""
    from filestore.errors import StorageUnavailable
    from scheduler.runner import PurgeScheduler

    async with running_gateway(tmp_path, database_url=metadata_backend.url) as gw:
        svc = gw.services
        meta = await gw.upload(b"delete me", params={"ttl": "10h"})
        real_delete = svc.blobs.delete

        async def broken(name: str) -> None:
            raise StorageUnavailable("injected")

        monkeypatch.setattr(svc.blobs, "delete", broken)
        resp = await gw.client.delete(f"/v1/files/{meta['id']}", headers=await gw.auth())
        assert resp.status == 503
        assert (await gw.get(meta["id"])).status == 410
        stats = await svc.metadata.files.purge_stats(gw.clock.now())
        assert stats.failing == 1
        monkeypatch.setattr(svc.blobs, "delete", real_delete)
        gw.clock.advance(svc.settings.purge_interval)
        report = await PurgeScheduler(svc).run_pass()
        assert report.purged == 1
        records = await svc.metadata.audit.records(0, 10)
        assert [(r.file_id, r.reason) for r in records] == [(meta["id"], "client_request")]
