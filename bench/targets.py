"""What the suite measures: each target is a way of storing and fetching the
same bytes, with the operations the workloads call on it.

HTTP targets are real server processes (``filestore serve``, the aiohttp
baseline, nginx, the tus peer) driven by this process's aiohttp client; the
S3 baselines are boto3 calls from this process to the same SeaweedFS the
filestore S3 target uses; the ceilings run in this process (no server).
:mod:`bench.lab` starts them.
"""

from __future__ import annotations

import abc
import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from filestore.crypto._chunked import CHUNK_SIZE

MIB = 1 << 20
#: Bytes handed to the client's socket per write when streaming an upload.
PIECE = MIB


@dataclass
class Payload:
    """``size`` bytes of random data, made once per size and reused by every
    target (the same bytes for all). Large sizes repeat one random block, so
    the client holds at most 64 MiB whatever the size."""

    size: int
    block: bytes
    #: The bytes on disk, for the clients that upload a file (boto3's transfer).
    path: Path | None = None

    @classmethod
    def make(cls, size: int) -> Payload:
        return cls(size, os.urandom(min(size, 64 * MIB)))

    def pieces(self, piece: int = PIECE) -> Iterator[memoryview]:
        view = memoryview(self.block)
        sent = 0
        while sent < self.size:
            start = sent % len(self.block)
            n = min(piece, self.size - sent, len(self.block) - start)
            yield view[start : start + n]
            sent += n

    async def stream(self) -> AsyncIterator[memoryview]:
        for piece in self.pieces():
            yield piece

    def body(self) -> Any:
        """What aiohttp is given as ``data``: the bytes themselves up to one
        :data:`PIECE`, else the stream of pieces.

        Not the whole block in one write: asyncio sends what the socket takes
        and copies the rest into the transport's buffer, which it then sends
        and shrinks piece by piece. Measured with ``getrusage`` around 64 MiB
        uploads to the plain aiohttp server, that cost this process 1.6-2.1 s
        of CPU a GiB (most of it system time) at 500-610 MB/s, against
        0.2-0.4 s at 2,500-2,700 MB/s for the same bytes in 1 MiB writes:
        CPU taken from the servers being measured, on the cores they share."""
        return self.block if self.size <= PIECE else self.stream()

    def on_disk(self, directory: Path) -> Path:
        if self.path is None:
            self.path = directory / f"payload-{self.size}.bin"
            with self.path.open("wb") as out:
                for piece in self.pieces(16 * MIB):
                    out.write(piece)
        return self.path


async def drain(resp: aiohttp.ClientResponse) -> int:
    """Read a response body to its end, keeping nothing; returns its length."""
    got = 0
    while chunk := await resp.content.readany():
        got += len(chunk)
    return got


@dataclass
class Target(abc.ABC):
    """One row of the tables. ``pid`` is the root of the server process tree
    whose CPU and memory are charged to it (None: runs in this process)."""

    name: str
    description: str
    group: str
    pid: int | None = None
    #: What it is able to do: "transfer" (sizes), "small" (4 KiB), "purge".
    abilities: frozenset[str] = frozenset({"transfer", "small"})
    idle_rss: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    async def prepare(self, payload: Payload) -> None:
        """Whatever the client must have ready before the clock starts (a
        file on disk, one contiguous body); nothing by default."""
        del payload

    @abc.abstractmethod
    async def upload(self, session: aiohttp.ClientSession, payload: Payload) -> Any:
        """Store the payload; returns what :meth:`download` needs."""

    @abc.abstractmethod
    async def download(self, session: aiohttp.ClientSession, handle: Any) -> int:
        """Fetch a stored payload to the end; returns its length."""

    @abc.abstractmethod
    async def delete(self, session: aiohttp.ClientSession, handle: Any) -> None:
        """Remove a stored payload (untimed clean-up)."""

    def can_download(self) -> bool:
        return True


def _expect(resp: aiohttp.ClientResponse, *codes: int) -> None:
    if resp.status not in codes:
        raise RuntimeError(f"{resp.method} {resp.url}: HTTP {resp.status}")


@dataclass
class FilestoreTarget(Target):
    """``filestore serve``: POST /v1/files, GET and DELETE /v1/files/{id}."""

    base: str = ""
    client_key: str = ""
    operator_key: str = ""
    database_url: str = ""
    data_dir: Path = Path()
    #: (bucket, prefix) when the blobs go to S3.
    s3: tuple[Any, str, str] | None = None

    def _auth(self, operator: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.operator_key if operator else self.client_key}"}

    async def upload(self, session: aiohttp.ClientSession, payload: Payload) -> Any:
        headers = {**self._auth(), "Content-Length": str(payload.size)}
        async with session.post(
            f"{self.base}/v1/files", data=payload.body(), headers=headers
        ) as resp:
            if resp.status != 201:
                raise RuntimeError(f"upload: HTTP {resp.status}: {(await resp.text())[:300]}")
            return (await resp.json())["id"]

    async def download(self, session: aiohttp.ClientSession, handle: Any) -> int:
        async with session.get(f"{self.base}/v1/files/{handle}", headers=self._auth()) as resp:
            _expect(resp, 200)
            return await drain(resp)

    async def delete(self, session: aiohttp.ClientSession, handle: Any) -> None:
        async with session.delete(f"{self.base}/v1/files/{handle}", headers=self._auth()) as resp:
            _expect(resp, 204, 404)

    async def purge_pass(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        """One pass through the running server (``POST /v1/purge/run``)."""
        async with session.post(f"{self.base}/v1/purge/run", headers=self._auth(True)) as resp:
            _expect(resp, 200)
            report: dict[str, Any] = (await resp.json())["pass"]
            return report


@dataclass
class PlainTarget(Target):
    """The aiohttp baseline (:mod:`bench.peers.plain_server`)."""

    base: str = ""

    async def upload(self, session: aiohttp.ClientSession, payload: Payload) -> Any:
        headers = {"Content-Length": str(payload.size)}
        async with session.post(f"{self.base}/files", data=payload.body(), headers=headers) as r:
            _expect(r, 201)
            return (await r.json())["id"]

    async def download(self, session: aiohttp.ClientSession, handle: Any) -> int:
        async with session.get(f"{self.base}/files/{handle}") as resp:
            _expect(resp, 200)
            return await drain(resp)

    async def delete(self, session: aiohttp.ClientSession, handle: Any) -> None:
        async with session.delete(f"{self.base}/files/{handle}") as resp:
            _expect(resp, 204, 404)


@dataclass
class NginxTarget(Target):
    """nginx's WebDAV ``PUT`` (body to a temporary file, renamed into place)
    and its static ``GET`` (sendfile)."""

    base: str = ""

    async def upload(self, session: aiohttp.ClientSession, payload: Payload) -> Any:
        name = secrets.token_hex(16)
        headers = {"Content-Length": str(payload.size)}
        async with session.put(
            f"{self.base}/files/{name}", data=payload.body(), headers=headers
        ) as r:
            _expect(r, 201, 204)
        return name

    async def download(self, session: aiohttp.ClientSession, handle: Any) -> int:
        async with session.get(f"{self.base}/files/{handle}") as resp:
            _expect(resp, 200)
            return await drain(resp)

    async def delete(self, session: aiohttp.ClientSession, handle: Any) -> None:
        async with session.delete(f"{self.base}/files/{handle}") as resp:
            _expect(resp, 204, 404)


TUS = {"Tus-Resumable": "1.0.0"}


@dataclass
class TusTarget(Target):
    """``@tus/server`` with ``@tus/file-store``: one creation-with-upload
    request carries the whole body (a PATCH follows only if the server took
    less); downloads through the server's GET."""

    base: str = ""

    async def upload(self, session: aiohttp.ClientSession, payload: Payload) -> Any:
        headers = {
            **TUS,
            "Upload-Length": str(payload.size),
            "Content-Type": "application/offset+octet-stream",
            "Content-Length": str(payload.size),
        }
        async with session.post(f"{self.base}/files", data=payload.body(), headers=headers) as r:
            _expect(r, 201)
            location = r.headers["Location"]
            offset = int(r.headers.get("Upload-Offset", "0"))
        url = location if location.startswith("http") else f"{self.base}{location}"
        if offset != payload.size:
            raise RuntimeError(f"tus took {offset} of {payload.size} bytes in the creation request")
        return url

    async def download(self, session: aiohttp.ClientSession, handle: Any) -> int:
        async with session.get(handle, headers=TUS) as resp:
            _expect(resp, 200)
            return await drain(resp)

    async def delete(self, session: aiohttp.ClientSession, handle: Any) -> None:
        async with session.delete(handle, headers=TUS) as resp:
            _expect(resp, 204, 404)


@dataclass
class Boto3Target(Target):
    """boto3 straight to the S3 server: ``put_object``/``get_object``
    (``mode="object"``) or the transfer manager's ``upload_file``/
    ``download_file`` (``mode="transfer"``, from and to a file on disk)."""

    client: Any = None
    bucket: str = ""
    mode: str = "object"
    scratch: Path = Path()

    _body: bytes = field(default=b"", repr=False)

    async def prepare(self, payload: Payload) -> None:
        if self.mode == "transfer":
            payload.on_disk(self.scratch)
        elif len(self._body) != payload.size:
            self._body = (
                payload.block
                if payload.size == len(payload.block)
                else b"".join(payload.pieces(16 * MIB))
            )

    async def upload(self, session: aiohttp.ClientSession, payload: Payload) -> Any:
        key = f"bench/{secrets.token_hex(16)}"
        if self.mode == "object":
            await asyncio.to_thread(
                self.client.put_object, Bucket=self.bucket, Key=key, Body=self._body
            )
        else:
            path = payload.on_disk(self.scratch)
            await asyncio.to_thread(self.client.upload_file, str(path), self.bucket, key)
        return key

    async def download(self, session: aiohttp.ClientSession, handle: Any) -> int:
        if self.mode == "object":

            def get() -> int:
                body = self.client.get_object(Bucket=self.bucket, Key=handle)["Body"]
                got = 0
                while chunk := body.read(MIB):
                    got += len(chunk)
                return got

            return await asyncio.to_thread(get)
        dest = self.scratch / "boto3-download.bin"
        await asyncio.to_thread(self.client.download_file, self.bucket, handle, str(dest))
        size = dest.stat().st_size
        dest.unlink()
        return size

    async def delete(self, session: aiohttp.ClientSession, handle: Any) -> None:
        await asyncio.to_thread(self.client.delete_object, Bucket=self.bucket, Key=handle)


@dataclass
class CopyCeiling(Target):
    """The disk's ceiling: this process writes the same bytes to a file on
    the same disk with plain writes, fsyncs it and its directory. No
    network, no server; there is no download figure."""

    directory: Path = Path()

    def _write(self, payload: Payload) -> Path:
        path = self.directory / secrets.token_hex(16)
        with path.open("wb") as out:
            for piece in payload.pieces():
                out.write(piece)
            out.flush()
            os.fsync(out.fileno())
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return path

    async def upload(self, session: aiohttp.ClientSession, payload: Payload) -> Any:
        return self._write(payload)

    def can_download(self) -> bool:
        return False

    async def download(self, session: aiohttp.ClientSession, handle: Any) -> int:
        raise RuntimeError(f"{self.name} has no download figure (can_download is False)")

    async def delete(self, session: aiohttp.ClientSession, handle: Any) -> None:
        Path(handle).unlink()


@dataclass
class AesCeiling(Target):
    """The cryptography's ceiling: AES-256-GCM of the same bytes on one core,
    in the chunk size of filestore's format (``filestore.crypto``), with
    ``cryptography``'s AESGCM. "Upload" encrypts, "download" decrypts."""

    chunk: int = CHUNK_SIZE

    def __post_init__(self) -> None:
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))

    async def upload(self, session: aiohttp.ClientSession, payload: Payload) -> Any:
        # Every chunk is encrypted; only the first 64 are kept, for download
        # to decrypt in turn (the same work per byte, without holding it all).
        sealed: list[bytes] = []
        nonce_base = int.from_bytes(os.urandom(12), "big")
        k = 0
        for piece in payload.pieces(self.chunk):
            nonce = (nonce_base ^ k).to_bytes(12, "big")
            ct = self._aead.encrypt(nonce, piece, None)
            if len(sealed) < 64:
                sealed.append(nonce + ct)
            k += 1
        return (sealed, k, payload.size)

    async def download(self, session: aiohttp.ClientSession, handle: Any) -> int:
        sealed, count, size = handle
        for k in range(count):
            item = sealed[k % len(sealed)]
            self._aead.decrypt(item[:12], item[12:], None)
        return int(size)

    async def delete(self, session: aiohttp.ClientSession, handle: Any) -> None:
        return None
