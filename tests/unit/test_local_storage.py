"""LocalBlobStore specifics: layout, modes, crash leftovers, failures, threads.

The backend-neutral behaviour is in ``tests/integration/test_blobstore_contract.py``.
Everything here runs on real files under ``tmp_path``; faults are injected by
wrapping ``os`` functions (the module calls them through ``os``, so patching
``os.write`` reaches it) for calls made on the store's worker threads only.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import shutil
import stat
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from filestore.errors import NotFound, StorageUnavailable
from filestore.storage import local
from filestore.storage.base import StoredBlob
from filestore.storage.local import LocalBlobStore

NAME = "0123456789abcdef0123456789abcdef"
OTHER = "0123456789abcdef0123456789abcdee"  # same shard, one digit apart
MiB = 1 << 20


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalBlobStore]:
    opened = await LocalBlobStore.open(tmp_path / "store")
    try:
        yield opened
    finally:
        await opened.close()


def _in_store_thread() -> bool:
    return threading.current_thread().name.startswith("filestore-local")


def _fail_in_store(
    monkeypatch: pytest.MonkeyPatch, fn: str, when: Callable[..., bool] = lambda *a: True
) -> None:
    """Make ``os.<fn>`` raise EIO/ENOSPC when the store calls it and ``when`` holds."""
    real = getattr(os, fn)

    def failing(*args: Any) -> Any:
        if _in_store_thread() and when(*args):
            raise OSError(errno.ENOSPC if fn == "write" else errno.EIO, "injected")
        return real(*args)

    monkeypatch.setattr(os, fn, failing)


def _gate(monkeypatch: pytest.MonkeyPatch, fn: str) -> tuple[threading.Event, threading.Event]:
    """Hold the store's ``os.<fn>`` calls until ``release`` is set."""
    real, entered, release = getattr(os, fn), threading.Event(), threading.Event()

    def held(*args: Any) -> Any:
        if _in_store_thread():
            entered.set()
            release.wait(30)
        return real(*args)

    monkeypatch.setattr(os, fn, held)
    return entered, release


def _target(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _fds_under(root: Path) -> list[str]:
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith(f"{root}/"):
            held.append(target)
    return held


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _parts(store: LocalBlobStore) -> list[Path]:
    return sorted((store.root / "tmp").glob("*.part"))


async def _put(store: LocalBlobStore, name: str, data: bytes) -> None:
    writer = await store.create(name)
    await writer.write(data)
    await writer.commit()


async def _listed(store: LocalBlobStore) -> list[StoredBlob]:
    return [blob async for blob in store.list_blobs()]


# ------------------------------------------------------------------- layout
async def test_sharded_layout(store: LocalBlobStore) -> None:
    await _put(store, NAME, b"ciphertext")
    path = store.root / "blobs" / "01" / NAME
    assert _files(store.root) == [path]
    assert path.read_bytes() == b"ciphertext"


def _old_layout(root: Path, blobs: dict[str, bytes], empty: tuple[str, ...] = ()) -> None:
    """A store as the two-level layout's builds left it: ``blobs/ab/cd/<name>``."""
    (root / "tmp").mkdir(parents=True)
    for name, data in blobs.items():
        shard = root / "blobs" / name[0:2] / name[2:4]
        shard.mkdir(parents=True, exist_ok=True)
        (shard / name).write_bytes(data)
    for shard in empty:
        (root / "blobs" / shard).mkdir(parents=True)


async def test_a_store_in_the_old_layout_is_read_listed_and_emptied(tmp_path: Path) -> None:
    root = tmp_path / "store"
    kept = "ab" * 16
    _old_layout(root, {NAME: b"old blob", kept: b"kept"}, empty=("fe/dc", "01/99"))
    store = await LocalBlobStore.open(root)
    assert not (root / "blobs/fe/dc").exists()  # empty: removed when the store opened
    assert not (root / "blobs/01/99").exists()
    assert b"".join([p async for p in store.read(NAME, 4)]) == b"blob"
    assert await store.size(NAME) == len(b"old blob")
    await _put(store, OTHER, b"new blob")  # the same first shard, in the new layout
    assert (root / "blobs/01" / OTHER).read_bytes() == b"new blob"
    assert sorted(blob.name for blob in await _listed(store)) == sorted([NAME, OTHER, kept])
    await store.delete(NAME)
    assert await store.exists(NAME) is False
    assert await store.delete_many([kept, OTHER]) == {kept: None, OTHER: None}
    assert _files(root) == []
    await store.close()
    assert (root / "blobs/01/23").is_dir() and (root / "blobs/ab/ab").is_dir()
    store = await LocalBlobStore.open(root)  # nothing left in the old layout: pruned
    assert not (root / "blobs/01/23").exists() and not (root / "blobs/ab/ab").exists()
    (root / "blobs/01/23").mkdir()  # from now on the store does not look there
    (root / "blobs/01/23" / NAME).write_bytes(b"stray")
    assert await store.exists(NAME) is False
    assert await _listed(store) == []
    await store.close()


async def test_old_layout_found_where_directories_do_not_count_subdirectories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """btrfs gives every directory a link count of 1: the store must still
    find the old layout's directories (by trying to remove them)."""
    root = tmp_path / "store"
    _old_layout(root, {NAME: b"old"}, empty=("fe/dc",))
    real_stat = os.stat

    def stat_like_btrfs(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        result = real_stat(path, *args, **kwargs)
        if stat.S_ISDIR(result.st_mode):
            fields = list(result)
            fields[stat.ST_NLINK] = 1
            return os.stat_result(fields)
        return result

    monkeypatch.setattr(os, "stat", stat_like_btrfs)
    store = await LocalBlobStore.open(root)
    assert not (root / "blobs/fe/dc").exists()
    assert [blob.name for blob in await _listed(store)] == [NAME]
    assert b"".join([p async for p in store.read(NAME)]) == b"old"
    await store.close()


async def test_a_shard_removed_under_the_store_is_made_again(store: LocalBlobStore) -> None:
    shutil.rmtree(store.root / "blobs/01")
    await _put(store, NAME, b"streamed")
    await store.put(OTHER, b"small")
    assert _files(store.root) == [store.root / "blobs/01" / n for n in sorted([OTHER, NAME])]


async def test_modes(tmp_path: Path) -> None:
    old = os.umask(0)  # the store's own modes must hold, not the umask's
    try:
        store = await LocalBlobStore.open(tmp_path / "store")
        writer = await store.create(NAME)
        await writer.write(b"x")
        [part] = _parts(store)
        assert stat.S_IMODE(part.stat().st_mode) == 0o600
        await writer.commit()
        await store.close()
    finally:
        os.umask(old)
    root = tmp_path / "store"
    shards = [root / "blobs" / f"{i:02x}" for i in range(256)]
    for directory in (root, root / "blobs", root / "tmp", *shards):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert stat.S_IMODE((root / "blobs/01" / NAME).stat().st_mode) == 0o600


async def test_commit_fsyncs_file_then_renames_then_fsyncs_directories(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    blobs = store.root / "blobs"
    final = blobs / "01" / NAME
    writer = await store.create(NAME)
    await writer.write(b"data")
    [part] = _parts(store)
    await writer.commit()
    assert events == [  # the shard was made and made durable when the store opened
        ("fsync", str(part)),
        ("replace", str(final)),
        ("fsync", str(blobs / "01")),
    ]


# ------------------------------------------------------------ names, misuse
@pytest.mark.parametrize(
    "name",
    ["", "0" * 31, "0" * 33, NAME.upper(), "g" * 32, "../" + "0" * 29, NAME + "\n", "0" * 16],
)
async def test_invalid_names_raise_value_error(store: LocalBlobStore, name: str) -> None:
    with pytest.raises(ValueError):
        await store.create(name)
    with pytest.raises(ValueError):
        await anext(store.read(name))
    for op in (store.size, store.exists, store.delete):
        with pytest.raises(ValueError):
            await op(name)
    assert _files(store.root) == []


async def test_negative_range_raises_value_error(store: LocalBlobStore) -> None:
    await _put(store, NAME, b"abc")
    with pytest.raises(ValueError):
        await anext(store.read(NAME, -1))
    with pytest.raises(ValueError):
        await anext(store.read(NAME, 0, -1))


async def test_commit_is_final(store: LocalBlobStore) -> None:
    writer = await store.create(NAME)
    await writer.write(b"kept")
    await writer.commit()
    await writer.abort()  # no-op after a commit that returned
    assert (store.root / "blobs/01" / NAME).read_bytes() == b"kept"
    with pytest.raises(RuntimeError):
        await writer.write(b"more")
    with pytest.raises(RuntimeError):
        await writer.commit()


# ------------------------------------------------------- crashes, leftovers
async def test_crash_leaves_a_part_that_list_reports_and_delete_removes(
    store: LocalBlobStore,
) -> None:
    await _put(store, NAME, b"committed earlier")
    writer = await store.create(NAME)
    await writer.write(b"half an upload")
    await (await store.create(OTHER)).write(b"another crashed upload")
    del writer  # neither committed nor aborted: what a crash leaves
    assert len(_parts(store)) == 2
    listed = await _listed(store)
    assert sorted(blob.name for blob in listed) == sorted([NAME, NAME, OTHER])
    await store.delete(NAME)
    assert [p.name.split(".")[0] for p in _parts(store)] == [OTHER]
    assert [blob.name for blob in await _listed(store)] == [OTHER]
    assert await store.exists(NAME) is False


async def test_close_releases_abandoned_writers_and_keeps_their_parts(tmp_path: Path) -> None:
    store = await LocalBlobStore.open(tmp_path / "store")
    await (await store.create(NAME)).write(b"abandoned")
    assert _fds_under(store.root)
    await store.close()
    assert _fds_under(store.root) == []
    assert [p.read_bytes() for p in _parts(store)] == [b"abandoned"]
    with pytest.raises(RuntimeError):
        await store.create(NAME)


async def test_list_skips_files_outside_the_layout(store: LocalBlobStore) -> None:
    await _put(store, NAME, b"real")
    blobs, tmp = store.root / "blobs", store.root / "tmp"
    (blobs / "zz").mkdir()
    (blobs / "zz" / "file").write_bytes(b"")
    (blobs / "01/README").write_bytes(b"")
    (blobs / "ff" / NAME).write_bytes(b"wrong shard")
    (blobs / "01/23").mkdir()  # the old layout's, made after this store opened
    (blobs / "01/23" / OTHER).write_bytes(b"not looked for")
    (tmp / "check.0a.probe").write_bytes(b"")
    (tmp / f"{NAME}.part").write_bytes(b"")
    assert [blob.name for blob in await _listed(store)] == [NAME]


async def test_list_works_in_batches(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = {f"{i:02x}" * 16 for i in range(5)}
    for name in names:
        await _put(store, name, b"x")
    await (await store.create(NAME)).write(b"partial")
    batches: list[int] = []
    real_take = local._take

    def take(walk: Iterator[StoredBlob], count: int) -> list[StoredBlob]:
        batch = real_take(walk, count)
        batches.append(len(batch))
        return batch

    monkeypatch.setattr(local, "LIST_BATCH", 2)
    monkeypatch.setattr(local, "_take", take)
    assert {blob.name for blob in await _listed(store)} == names | {NAME}
    assert batches == [2, 2, 2, 0]


async def test_list_closed_early_releases_directories(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "LIST_BATCH", 1)
    for i in range(3):
        await _put(store, f"{i:02x}" * 16, b"x")
    listing = store.list_blobs()
    await anext(listing)
    assert _fds_under(store.root)  # a directory is being scanned
    await listing.aclose()
    assert _fds_under(store.root) == []


# ------------------------------------------------------------------- reads
async def test_dropped_read_is_closed_by_the_loop(store: LocalBlobStore) -> None:
    await _put(store, NAME, bytes(3 * MiB))
    stream = store.read(NAME)
    assert len(await anext(stream)) == MiB
    assert _fds_under(store.root)
    del stream
    gc.collect()
    for _ in range(500):  # the finaliser runs aclose() as a task; no deadline asserted
        if not _fds_under(store.root):
            break
        await asyncio.sleep(0.01)
    assert _fds_under(store.root) == []


async def test_read_of_a_directory_is_storage_unavailable(store: LocalBlobStore) -> None:
    (store.root / "blobs/01" / NAME).mkdir(parents=True)
    with pytest.raises(StorageUnavailable):
        await anext(store.read(NAME))
    assert _fds_under(store.root) == []


# ---------------------------------------------------------------- failures
async def test_unusable_root_fails_open(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    for root in (tmp_path / "file" / "store", tmp_path / "file"):
        with pytest.raises(StorageUnavailable) as info:
            await LocalBlobStore.open(root)
        assert str(tmp_path) not in str(info.value)
    assert not [t for t in threading.enumerate() if t.name.startswith("filestore-local")]


async def test_root_replaced_by_a_file(store: LocalBlobStore) -> None:
    await _put(store, NAME, b"x")
    shutil.rmtree(store.root)
    store.root.write_text("not a directory")
    with pytest.raises(StorageUnavailable) as info:
        await store.check()
    assert str(store.root) not in str(info.value)
    with pytest.raises(StorageUnavailable):
        await store.create(OTHER)
    with pytest.raises(StorageUnavailable):  # an error, not "missing"
        await store.exists(NAME)
    with pytest.raises(StorageUnavailable):
        await anext(store.read(NAME))
    with pytest.raises(StorageUnavailable):
        await store.delete(NAME)


async def test_check_fails_without_tmp(store: LocalBlobStore) -> None:
    await store.check()
    (store.root / "tmp").rmdir()
    with pytest.raises(StorageUnavailable):
        await store.check()


@pytest.mark.parametrize("surfaces_at", ["write", "commit"])
async def test_write_failure_surfaces_and_abort_cleans_up(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch, surfaces_at: str
) -> None:
    _fail_in_store(monkeypatch, "write")
    writer = await store.create(NAME)
    await writer.write(b"x" * 100)  # returns while the failing write is in flight
    with pytest.raises(StorageUnavailable) as info:
        if surfaces_at == "write":
            # Two writes may be in flight: the second one after the failing
            # write waits for it, if the first did not already see it fail.
            await writer.write(b"more")
            await writer.write(b"again")
        else:
            await writer.commit()
    cause = info.value.__cause__
    assert isinstance(cause, OSError) and cause.errno == errno.ENOSPC
    with pytest.raises(StorageUnavailable):  # the failure sticks
        await writer.commit()
    assert len(_parts(store)) == 1
    await writer.abort()
    assert _files(store.root) == []
    assert _fds_under(store.root) == []
    assert await store.exists(NAME) is False


@pytest.mark.parametrize("step", ["fsync-file", "replace", "fsync-shard"])
async def test_commit_failure_leaves_nothing(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    shard = str(store.root / "blobs/01")
    await _put(store, OTHER, b"makes the shard directory exist")
    if step == "replace":
        _fail_in_store(monkeypatch, "replace")
    elif step == "fsync-file":
        _fail_in_store(monkeypatch, "fsync", lambda fd: _target(fd).endswith(".part"))
    else:  # after the rename: the blob is complete but not yet durable
        _fail_in_store(monkeypatch, "fsync", lambda fd: _target(fd) == shard)
    writer = await store.create(NAME)
    await writer.write(b"doomed")
    with pytest.raises(StorageUnavailable):
        await writer.commit()
    await writer.abort()
    assert _files(store.root) == [store.root / "blobs/01" / OTHER]
    assert _fds_under(store.root) == []


@pytest.mark.parametrize("max_workers", [1, 8])
async def test_abort_waits_for_the_write_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_workers: int
) -> None:
    store = await LocalBlobStore.open(tmp_path / "store", max_workers=max_workers)
    entered, release = _gate(monkeypatch, "write")
    try:
        writer = await store.create(NAME)
        await writer.write(b"first")  # returns although the write is held
        assert await asyncio.to_thread(entered.wait, 30)
        [part] = _parts(store)
        assert part.stat().st_size == 0
        await writer.write(b"second")  # queued behind it
        third = asyncio.create_task(writer.write(b"third"))
        await asyncio.sleep(0.05)
        assert not third.done()  # two are in flight: it waits for the first
        third.cancel()
        with pytest.raises(asyncio.CancelledError):
            await third
        with pytest.raises(StorageUnavailable):  # an interrupted write is a failure
            await writer.commit()
        aborting = asyncio.create_task(writer.abort())
        await asyncio.sleep(0.05)
        assert not aborting.done()  # the held write still owns the descriptor
        assert str(part) in _fds_under(store.root)
        release.set()
        await aborting
        assert _files(store.root) == []
        assert _fds_under(store.root) == []
    finally:
        release.set()
        await store.close()


async def test_abort_after_an_interrupted_commit_removes_the_blob(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = _gate(monkeypatch, "replace")
    writer = await store.create(NAME)
    await writer.write(b"never confirmed")
    committing = asyncio.create_task(writer.commit())
    assert await asyncio.to_thread(entered.wait, 30)
    committing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await committing
    aborting = asyncio.create_task(writer.abort())
    release.set()
    await aborting
    assert _files(store.root) == []
    with pytest.raises(NotFound):
        await anext(store.read(NAME))


# ------------------------------------------------------------------ threads
async def test_blocking_calls_run_on_the_store_threads(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "old/blobs/ab/cd").mkdir(parents=True)  # opening it prunes the old layout
    functions = ["open", "write", "pread", "fsync", "replace", "unlink", "stat", "scandir",
                 "mkdir", "rmdir", "close"]  # fmt: skip
    threads: dict[str, set[str]] = {fn: set() for fn in functions}
    for fn in functions:
        real = getattr(os, fn)

        def spy(*args: Any, _fn: str = fn, _real: Any = real, **kwargs: Any) -> Any:
            threads[_fn].add(threading.current_thread().name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(os, fn, spy)
    await _put(store, NAME, b"x" * (2 * MiB))
    assert [piece async for piece in store.read(NAME, 5)]
    await store.size(NAME)
    await store.check()
    assert await _listed(store)
    await store.delete(NAME)
    writer = await store.create(OTHER)
    await writer.write(b"y")
    await writer.abort()
    await (await LocalBlobStore.open(tmp_path / "old")).close()
    monkeypatch.undo()
    assert threading.current_thread() is threading.main_thread()
    for fn, names in threads.items():
        assert names, f"os.{fn} was never called"
        assert all(name.startswith("filestore-local") for name in names), (fn, names)


# ------------------------------------------------- flushing while writing
def _record_flushes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Spy on ``os.fdatasync``: (thread name, file) of every call, real call after."""
    calls: list[tuple[str, str]] = []
    real = os.fdatasync

    def spy(fd: int) -> None:
        calls.append((threading.current_thread().name, _target(fd)))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", spy)
    return calls


async def test_a_streamed_blob_is_flushed_while_it_is_written(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "FLUSH_EVERY", 64 << 10)
    calls = _record_flushes(monkeypatch)
    pieces = [os.urandom(64 << 10) for _ in range(6)]
    writer = await store.create(NAME)
    for piece in pieces:
        await writer.write(piece)
    [part] = _parts(store)
    await writer.commit()
    assert 1 <= len(calls) <= len(pieces)
    assert all(thread.startswith("filestore-local") for thread, _ in calls)
    assert {target for _, target in calls} == {str(part)}
    assert b"".join([piece async for piece in store.read(NAME)]) == b"".join(pieces)


async def test_a_blob_smaller_than_the_flush_interval_is_not_flushed_early(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _record_flushes(monkeypatch)
    writer = await store.create(NAME)
    for _ in range(3):
        await writer.write(b"z" * MiB)
    await writer.commit()
    assert 3 * MiB < local.FLUSH_EVERY
    assert calls == []  # only the commit's fsync, as before


@pytest.mark.parametrize("fails", ["before the commit", "during the commit"])
async def test_a_failed_flush_fails_the_commit_and_leaves_nothing(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch, fails: str
) -> None:
    monkeypatch.setattr(local, "FLUSH_EVERY", 64 << 10)
    # After an fsync error the kernel may have dropped the dirty pages, so the
    # commit's own fsync succeeding later must not publish the blob.
    entered, release = threading.Event(), threading.Event()

    def failing(fd: int) -> None:
        entered.set()
        release.wait(30)
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(os, "fdatasync", failing)
    writer = await store.create(NAME)
    await writer.write(b"a" * (64 << 10))  # starts the doomed flush
    assert await asyncio.to_thread(entered.wait, 30)
    if fails == "before the commit":
        release.set()
        await asyncio.sleep(0.05)
    committing = asyncio.create_task(writer.commit())
    await asyncio.sleep(0.05)
    release.set()
    with pytest.raises(StorageUnavailable) as info:
        await committing
    cause = info.value.__cause__
    assert isinstance(cause, OSError) and cause.errno == errno.EIO
    with pytest.raises(StorageUnavailable):  # the failure sticks
        await writer.write(b"more")
    await writer.abort()
    assert _files(store.root) == []
    assert _fds_under(store.root) == []
    assert await store.exists(NAME) is False


@pytest.mark.parametrize("end", ["commit", "abort"])
async def test_commit_and_abort_wait_for_the_flush_in_flight(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    monkeypatch.setattr(local, "FLUSH_EVERY", 64 << 10)
    entered, release = _gate(monkeypatch, "fdatasync")
    try:
        writer = await store.create(NAME)
        await writer.write(b"b" * (64 << 10))
        assert await asyncio.to_thread(entered.wait, 30)
        await writer.write(b"c" * 10)  # writes go on beside the held flush
        [part] = _parts(store)
        ending = asyncio.create_task(writer.commit() if end == "commit" else writer.abort())
        await asyncio.sleep(0.05)
        assert not ending.done()  # the held flush still owns the descriptor
        assert str(part) in _fds_under(store.root)
        assert part.stat().st_size == (64 << 10) + 10
        release.set()
        await ending
    finally:
        release.set()
    assert _fds_under(store.root) == []
    assert await store.exists(NAME) is (end == "commit")
