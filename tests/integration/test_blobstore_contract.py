"""The BlobStore contract, run against every backend (see ``conftest.py``).

Semantics pinned here that the Protocol leaves implicit:

* committing a name that already exists replaces the blob (the last commit
  wins); an upload that is aborted never disturbs the committed blob;
* a read iterator supports ``aclose()`` and releases what it holds when
  closed early.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import secrets
import time
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import cast

import pytest

from filestore.errors import NotFound
from filestore.storage.base import BlobStore, ListableBlobStore
from filestore.storage.local import LocalBlobStore

MiB = 1 << 20


def _name() -> str:
    return secrets.token_hex(16)


def _data(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _uneven(data: bytes) -> Iterator[bytes]:
    """``data`` cut at irregular sizes, including empty pieces and > 1 MiB."""
    sizes = itertools.cycle([1, 4095, 0, 65_537, MiB + 3, 300_001, 2])
    pos = 0
    while pos < len(data):
        size = next(sizes)
        yield data[pos : pos + size]
        pos += size


async def _put(store: BlobStore, name: str, data: bytes) -> None:
    writer = await store.create(name)
    for piece in _uneven(data):
        await writer.write(piece)
    await writer.commit()


async def _pieces(
    store: BlobStore, name: str, offset: int = 0, length: int | None = None
) -> list[bytes]:
    return [piece async for piece in store.read(name, offset, length)]


async def _get(store: BlobStore, name: str, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join(await _pieces(store, name, offset, length))


async def _listed(store: BlobStore) -> dict[str, float]:
    if not isinstance(store, ListableBlobStore):
        pytest.skip(f"the {store.name} backend cannot list blobs")
    return {blob.name: blob.modified_at async for blob in store.list_blobs()}


async def _assert_gone(store: BlobStore, name: str) -> None:
    assert await store.exists(name) is False
    assert await store.size(name) is None
    with pytest.raises(NotFound):
        await _get(store, name)
    with pytest.raises(NotFound):
        await store.get(name, 100)


def _fds_under(root: Path) -> list[str]:
    """Paths under ``root`` that this process holds open."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # the fd listdir itself used
            continue
        if target.startswith(f"{root}/"):
            held.append(target)
    return held


@pytest.mark.parametrize("size", [0, 1, MiB - 1, MiB, MiB + 1, 5 * MiB + 12_345])
async def test_round_trip(blob_store: BlobStore, size: int) -> None:
    name, data = _name(), _data(size, seed=size)
    await _put(blob_store, name, data)
    pieces = await _pieces(blob_store, name)
    assert b"".join(pieces) == data
    assert max(map(len, pieces), default=0) <= MiB
    assert await blob_store.size(name) == size
    assert await blob_store.exists(name) is True


@pytest.mark.parametrize("size", [0, 1, 4096, MiB + 1])
async def test_put_stores_a_whole_blob(blob_store: BlobStore, size: int) -> None:
    name, data = _name(), _data(size, seed=size + 1)
    await blob_store.put(name, bytearray(data))
    assert await _get(blob_store, name) == data
    assert await blob_store.size(name) == size
    assert set(await _listed(blob_store)) == {name}  # no partial upload left


async def test_put_replaces_and_is_replaced(blob_store: BlobStore) -> None:
    name = _name()
    await _put(blob_store, name, _data(MiB + 9, seed=1))
    await blob_store.put(name, b"second")
    assert await _get(blob_store, name) == b"second"
    await _put(blob_store, name, b"third")
    assert await _get(blob_store, name) == b"third"


async def test_cancelled_put_leaves_nothing(blob_store: BlobStore) -> None:
    """Cancelled as soon as it started, or later: either way the caller never
    saw success, so once the cancelled call has returned nothing stays."""
    for ticks in range(4):
        name = _name()
        task = asyncio.ensure_future(blob_store.put(name, _data(64 * 1024, seed=ticks)))
        for _ in range(ticks):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await _assert_gone(blob_store, name)
    assert await _listed(blob_store) == {}


async def test_empty_writes_make_an_empty_blob(blob_store: BlobStore) -> None:
    name = _name()
    writer = await blob_store.create(name)
    await writer.write(b"")
    await writer.write(b"")
    await writer.commit()
    assert await blob_store.size(name) == 0
    assert await _pieces(blob_store, name) == []


async def test_ranged_reads(blob_store: BlobStore) -> None:
    size = 3 * MiB + 5
    name, data = _name(), _data(size, seed=7)
    await _put(blob_store, name, data)
    cases = [
        (0, 10), (0, None), (0, 0), (17, 0), (MiB - 3, 7), (1, 2 * MiB + 1),
        (size // 2, 1000), (size // 2, None), (size - 5, 5), (size - 5, 100),
        (size - 1, None), (size, 10), (size, None), (size + 100, None), (size + 100, 5),
    ]  # fmt: skip
    for offset, length in cases:
        end = None if length is None else offset + length
        pieces = await _pieces(blob_store, name, offset, length)
        assert b"".join(pieces) == data[offset:end], (offset, length)
        assert max(map(len, pieces), default=0) <= MiB, (offset, length)


@pytest.mark.parametrize("size", [1, 4096, 70_000])
async def test_get_reads_a_small_blob_whole(blob_store: BlobStore, size: int) -> None:
    name, data = _name(), _data(size, seed=size)
    await blob_store.put(name, data)
    assert await blob_store.get(name, size) == data
    # Expecting it shorter or longer than it is: at most one byte past the
    # expected size comes back, so the caller sees the mismatch.
    assert await blob_store.get(name, size - 1) == data
    assert await blob_store.get(name, 0) == data[:1]
    assert await blob_store.get(name, size + 10) == data


async def test_missing_blob(blob_store: BlobStore) -> None:
    await _assert_gone(blob_store, _name())
    with pytest.raises(NotFound):
        await _get(blob_store, _name(), 10, 0)


async def test_uncommitted_blob_is_invisible(blob_store: BlobStore) -> None:
    name = _name()
    writer = await blob_store.create(name)
    await writer.write(_data(2 * MiB))
    await writer.write(b"tail")
    await _assert_gone(blob_store, name)
    await writer.abort()


async def test_abort_leaves_nothing(blob_store: BlobStore) -> None:
    name = _name()
    writer = await blob_store.create(name)
    for piece in _uneven(_data(3 * MiB)):
        await writer.write(piece)
    await writer.abort()
    await _assert_gone(blob_store, name)
    assert name not in await _listed(blob_store)
    await writer.abort()  # a second abort is fine
    await _assert_gone(blob_store, name)


async def test_abort_before_any_write(blob_store: BlobStore) -> None:
    name = _name()
    writer = await blob_store.create(name)
    await writer.abort()
    await writer.abort()
    await _assert_gone(blob_store, name)
    assert name not in await _listed(blob_store)


async def test_aborted_overwrite_keeps_committed_blob(blob_store: BlobStore) -> None:
    name, old = _name(), _data(MiB + 9, seed=1)
    await _put(blob_store, name, old)
    writer = await blob_store.create(name)
    await writer.write(_data(100, seed=2))
    await writer.abort()
    assert await _get(blob_store, name) == old


async def test_overwrite_replaces(blob_store: BlobStore) -> None:
    """Committing an existing name replaces the blob; the last commit wins."""
    name, first, second = _name(), _data(2 * MiB, seed=1), _data(1000, seed=2)
    await _put(blob_store, name, first)
    await _put(blob_store, name, second)
    assert await _get(blob_store, name) == second
    assert await blob_store.size(name) == len(second)


async def test_delete(blob_store: BlobStore) -> None:
    name, other = _name(), _name()
    await _put(blob_store, name, _data(MiB + 1))
    await _put(blob_store, other, b"neighbour")
    await blob_store.delete(name)
    await _assert_gone(blob_store, name)
    assert set(await _listed(blob_store)) == {other}
    assert await _get(blob_store, other) == b"neighbour"
    await blob_store.delete(name)  # already gone
    await blob_store.delete(_name())  # never existed
    await _assert_gone(blob_store, name)


async def test_interleaved_writers(blob_store: BlobStore) -> None:
    a, b = _name(), _name()
    data_a, data_b = _data(2 * MiB + 3, seed=3), _data(MiB + 11, seed=4)
    wa, wb = await blob_store.create(a), await blob_store.create(b)
    for pa, pb in itertools.zip_longest(_uneven(data_a), _uneven(data_b), fillvalue=b""):
        await wa.write(pa)
        await wb.write(pb)
    await wb.commit()
    await wa.commit()
    assert await _get(blob_store, a) == data_a
    assert await _get(blob_store, b) == data_b


async def test_size(blob_store: BlobStore) -> None:
    name = _name()
    assert await blob_store.size(name) is None
    await _put(blob_store, name, _data(123_457))
    assert await blob_store.size(name) == 123_457


async def test_check_passes_and_leaves_no_trace(blob_store: BlobStore) -> None:
    await blob_store.check()
    await blob_store.check()
    assert await _listed(blob_store) == {}


async def test_list_blobs(blob_store: BlobStore) -> None:
    assert await _listed(blob_store) == {}
    before = time.time()
    names = {_name() for _ in range(5)}
    for i, name in enumerate(sorted(names)):
        await _put(blob_store, name, _data(i * 1000))
    after = time.time()
    listed = await _listed(blob_store)
    assert set(listed) == names
    for modified in listed.values():  # slack for coarse backend clocks
        assert before - 2 <= modified <= after + 2


async def test_read_closed_early_releases_the_blob(blob_store: BlobStore) -> None:
    name = _name()
    await _put(blob_store, name, _data(3 * MiB))
    stream = cast(AsyncGenerator[bytes, None], blob_store.read(name))
    first = await anext(stream)
    assert first == _data(3 * MiB)[: len(first)]
    if isinstance(blob_store, LocalBlobStore):
        assert _fds_under(blob_store.root)  # the probe sees a live read
    await stream.aclose()
    if isinstance(blob_store, LocalBlobStore):
        assert _fds_under(blob_store.root) == []
    await blob_store.close()
    await blob_store.close()  # idempotent; the fixture closes once more
