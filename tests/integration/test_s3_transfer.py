"""How the S3 store moves a blob's bytes, on a real SeaweedFS: the writer's
part buffers (filled without regrowth, reused, bounded in number) and the
signing of requests (blob bodies unsigned with a CRC32 checksum, every
other request with its payload signed). What reaches S3 is observed on the
store's own clients through botocore's ``before-send`` event, and every
blob is read back through a client of the test's own."""

from __future__ import annotations

import contextlib
import random
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import filestore.storage._s3_writer as s3_writer
from filestore.config import Settings
from filestore.storage.s3 import S3BlobStore
from tests.support.seaweed import SeaweedServer

MiB = 1 << 20
PART = 5 * MiB  # S3's least part size
UNSIGNED = "UNSIGNED-PAYLOAD"


@contextlib.asynccontextmanager
async def s3_store(server: SeaweedServer, bucket: str) -> AsyncIterator[S3BlobStore]:
    settings = Settings.load(env={}, **server.settings(bucket, s3_part_size=PART))
    store = await S3BlobStore.open(settings)
    try:
        yield store
    finally:
        await store.close()


def cut(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    """``data`` in pieces of ``sizes``, cycled."""
    pos, turn = 0, 0
    while pos < len(data):
        size = sizes[turn % len(sizes)]
        yield data[pos : pos + size]
        pos, turn = pos + size, turn + 1


def stored(server: SeaweedServer, bucket: str, name: str) -> bytes:
    body = server.admin.get_object(Bucket=bucket, Key=f"filestore/{name}")["Body"]
    return bytes(body.read())


@pytest.mark.parametrize(
    ("size", "sizes"),
    [
        (PART, [PART]),  # exactly one part, in one write
        (PART + 1, [1, PART]),  # a part and one byte, cut off by one
        (3 * PART, [MiB]),  # whole parts only, in the gateway's batch size
        (4 * PART + 12_345, [1, 4095, 0, 65_537, MiB + 3, 300_001, 2]),
        (2 * PART + 7, [s3_writer.SMALL_BUFFER - 1, 1, 1, 3 * PART]),  # across the switch
    ],
    ids=["one-part", "part-plus-one", "whole-parts", "uneven", "small-then-large"],
)
async def test_parts_are_whole_reused_and_bounded(
    s3_env: SeaweedServer,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
    sizes: list[int],
) -> None:
    """Every part but the last is exactly the part size; however many parts
    a blob has, no more than PARTS_IN_FLIGHT + 1 part buffers ever exist
    (filled parts come back for the next); the caller may reuse its buffer
    as soon as write returns; and S3 holds exactly the bytes written."""
    data = random.Random(size).randbytes(size)
    name = secrets.token_hex(16)
    async with s3_store(s3_env, s3_bucket) as store:
        parts: list[tuple[int, int, int]] = []  # number, length, buffer id
        upload_part = store._uploads.upload_part

        async def recorded(key: str, upload_id: str, number: int, body: bytearray) -> str:
            parts.append((number, len(body), id(body)))
            return await upload_part(key, upload_id, number, body)

        monkeypatch.setattr(store._uploads, "upload_part", recorded)
        writer = await store.create(name)
        scratch = bytearray()
        for piece in cut(data, sizes):
            scratch[:] = piece
            await writer.write(scratch)
            scratch[:] = b"\xff" * len(scratch)  # the writer must have copied
            scratch.extend(b"resized")  # and must hold no view of it
        await writer.commit()
        assert stored(s3_env, s3_bucket, name) == data
    count = -(-size // PART)
    assert sorted(number for number, _, _ in parts) == list(range(1, count + 1))
    lengths = [length for _, length, _ in sorted(parts)]
    assert lengths == [PART] * (count - 1) + [size - (count - 1) * PART]
    assert len({buffer for _, _, buffer in parts}) <= s3_writer.PARTS_IN_FLIGHT + 1


async def test_small_blob_is_one_put_that_reserves_no_part(
    s3_env: SeaweedServer, s3_bucket: str
) -> None:
    """A blob below SMALL_BUFFER is appended, never given a whole part's
    buffer, and goes up as one PutObject."""
    name = secrets.token_hex(16)
    async with s3_store(s3_env, s3_bucket) as store:
        writer = await store.create(name)
        for piece in cut(b"x" * 70_001, [4096, 1]):
            await writer.write(piece)
        assert len(writer._buffer) == 70_001  # not the part size
        await writer.commit()
        assert stored(s3_env, s3_bucket, name) == b"x" * 70_001


async def test_blob_bodies_unsigned_with_crc32_other_requests_signed(
    s3_env: SeaweedServer, s3_bucket: str
) -> None:
    """Over this plain-HTTP endpoint the SDK would hash every body byte
    into the signature; the blob bodies (PutObject, UploadPart) go as
    UNSIGNED-PAYLOAD with a CRC32 checksum header instead, which SeaweedFS
    checks and accepts, and every other request (completion, deletion,
    reads) keeps its payload's SHA-256 in the signature."""
    sent: list[tuple[str, str, bool]] = []

    def record(request: Any, **kwargs: Any) -> None:
        operation = kwargs["event_name"].rsplit(".", 1)[1]
        headers = {k.lower(): v for k, v in request.headers.items()}
        payload = headers["x-amz-content-sha256"]
        sent.append((operation, str(payload, "ascii") if isinstance(payload, bytes) else payload,
                     "x-amz-checksum-crc32" in headers))  # fmt: skip

    small, large = secrets.token_hex(16), secrets.token_hex(16)
    data = random.Random(7).randbytes(PART + 99)
    async with s3_store(s3_env, s3_bucket) as store:
        for client in (store._client, store._data_client):
            client.meta.events.register("before-send.s3", record)
        await store.put(small, b"tiny blob")
        writer = await store.create(large)
        await writer.write(data)
        await writer.commit()
        assert b"".join([piece async for piece in store.read(large)]) == data
        await store.delete_many([small, large])
    assert stored_nothing(s3_env, s3_bucket)
    by_operation: dict[str, set[tuple[str, bool]]] = {}
    for operation, payload, crc in sent:
        by_operation.setdefault(operation, set()).add((payload, crc))
    for operation in ("PutObject", "UploadPart"):
        assert by_operation[operation] == {(UNSIGNED, True)}, operation
    for operation in ("CompleteMultipartUpload", "DeleteObjects", "GetObject"):
        assert all(len(p) == 64 and p != UNSIGNED for p, _ in by_operation[operation]), operation


def stored_nothing(server: SeaweedServer, bucket: str) -> bool:
    listed = server.admin.list_objects_v2(Bucket=bucket, Prefix="filestore/")
    return not listed.get("Contents")
