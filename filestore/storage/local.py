"""Local-disk blob store: the embedded default backend.

Layout under ``root`` (directories 0700, files 0600)::

    blobs/<name[0:2]>/<name>         committed blobs, in 256 shard directories
                                     made (and fsync'd) when the store opens
    tmp/<name>.<random hex>.part     uploads in progress, or left by a crash

One level of 256 shards, made up front: a lazily made second level (65,536
directories) cost a fresh store a ``mkdir`` and an extra directory fsync for
nearly every small upload, and allocating an inode is the dearest step of a
4 KiB upload on ext4 (a mkdir cost as much as the file's own create; 256
shards of 390,000 names each still hold 100 million live files, and ext4's
hashed directories look names up in a few blocks however many there are).
A store written by a build with the two-level layout still reads, deletes
and lists the blobs under ``blobs/<ab>/<cd>/``: each open removes those
directories that are empty, and only while one is left does the store look
there. Finding them costs a ``stat`` a shard (a directory's link count is 2
plus its subdirectories on ext4, XFS, tmpfs and ZFS), and on a file system that
does not count them (btrfs says 1), 256 ``rmdir`` attempts a shard.

``tmp`` sits on the same filesystem as ``blobs``, so publishing a streamed
blob is one atomic rename: a reader sees the old blob or the whole new one,
never a prefix. Commit goes the litestream way (fsync the file, rename it into
place, fsync the directory), so a committed blob survives power loss. A crash
before that leaves only a ``.part`` file, which
:meth:`LocalBlobStore.list_blobs` reports under its blob name and
:meth:`LocalBlobStore.delete` removes together with the blob. A whole blob
handed over at once (:meth:`LocalBlobStore.put`, a small upload) is written
straight under its new name instead, in half the system calls; a crash
part-way through leaves a blob that no row names, which the orphan sweep
removes.

That whole-blob write is five system calls (create, write, close, and the
shard's open and fsync) and, from Python, each one gives the GIL up and has
to take it back from the busy event loop. Where the optional C helper
``filestore.storage._syncwrite`` was built (setup.py), the five run under
one release of the GIL instead: the same calls, flags and clean-up, a third
fewer context switches per small upload. Without it (no C compiler, or
``FILESTORE_NO_EXTENSIONS=1`` at install) the Python path below does the
same work; :data:`NATIVE_WRITE` tells which one a store uses.

Threads: every call that can block (open, write, fsync, rename, unlink, stat,
scandir, pread, close) runs in the store's own bounded ``ThreadPoolExecutor``.
Not aiofiles: it shares the loop's default executor with everything else, has
no ``pread`` or directory fsync, and costs one thread hop per call where a
commit needs six calls in one hop; an executor of our own is also something
:meth:`LocalBlobStore.close` can drain. Thread work is awaited through
:func:`asyncio.shield`, so cancelling a caller never cancels a call half-way,
and every job that closes a descriptor first waits for the job that used it:
no descriptor is closed (and its number reused) under a running write or
pread. A job only waits for one submitted before it and the pool's queue is
FIFO, so the waiting cannot deadlock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import re
import secrets
import stat
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar

from filestore.crypto.entropy import random_hex
from filestore.errors import NotFound, StorageFull, StorageUnavailable, out_of_space
from filestore.lanes import Lane
from filestore.storage._jobs import after
from filestore.storage.base import BlobWriter, StoredBlob

T = TypeVar("T")

#: Largest piece :meth:`LocalBlobStore.read` yields.
PIECE_SIZE = 1 << 20
#: A streamed blob starts an ``fdatasync`` each time this much more has been
#: written (one at a time), so the commit's fsync finds little left to do.
FLUSH_EVERY = 16 << 20
#: Largest piece handed to one ``write`` call. A 1 MiB batch written in one
#: call cost the kernel 0.4-1.7 s a GiB in copying it into the page cache
#: (``copy_folio_from_iter_atomic``), the same bytes in 256 KiB calls 0.2 s,
#: in alternated runs of a 1 GiB write on this machine; in the server, about
#: 0.2 s of CPU less per GiB uploaded.
WRITE_PIECE = 256 << 10
#: Blobs :meth:`LocalBlobStore.list_blobs` fetches per thread hop.
LIST_BATCH = 1024
#: Thread jobs a batch deletion is split into, and the fewest names per job.
DELETE_JOBS = 8
DELETE_CHUNK = 16

_NAME = re.compile(r"[0-9a-f]{32}")
_PART = re.compile(r"([0-9a-f]{32})\.[0-9a-f]+\.part")
_SHARD = re.compile(r"[0-9a-f]{2}")
_SHARD_NAMES = tuple(f"{i:02x}" for i in range(256))
_DIR_MODE = 0o700
_FILE_MODE = 0o600
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class _WriteNew(Protocol):
    """``write_new(directory, name, data, mode)``: see :func:`_write_new`."""

    def __call__(
        self, directory: str, name: str, data: bytes | bytearray, mode: int, /
    ) -> None: ...


def _native_write() -> _WriteNew | None:
    try:
        from filestore.storage import _syncwrite
    except ImportError:
        return None
    return _syncwrite.write_new


#: The C helper's ``write_new`` where it was built, else None: what a store
#: opened from now on writes whole blobs with (``LocalBlobStore(native=)``
#: overrides it).
NATIVE_WRITE: _WriteNew | None = _native_write()


def _check_name(name: str) -> None:
    if _NAME.fullmatch(name) is None:
        raise ValueError("a blob name is 32 lowercase hex characters")


async def _settle(what: str, job: Future[T]) -> T:
    """Await a thread job without ever cancelling it; OSError → StorageUnavailable
    (StorageFull when the disk is full or over quota)."""
    try:
        return await asyncio.shield(asyncio.wrap_future(job))
    except OSError as exc:
        if out_of_space(exc):
            raise StorageFull(f"local storage is out of space: could not {what}") from exc
        raise StorageUnavailable(f"local storage failed to {what}") from exc


def _storage_error(exc: OSError) -> StorageUnavailable:
    """The per-blob error of a batch deletion (the OSError as its cause)."""
    error = StorageUnavailable("local storage failed to delete a blob")
    error.__cause__ = exc
    return error


# ----------------------------------------------------- run in worker threads
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remake_shard(shard: Path) -> bool:
    """Make ``shard`` again if it went missing under the running store (and
    fsync ``blobs``); False if it is there, so something else was missing."""
    if shard.is_dir():
        return False
    with contextlib.suppress(FileExistsError):
        os.mkdir(shard, _DIR_MODE)
    _fsync_dir(shard.parent)
    return True


def _write_new(directory: str, name: str, data: bytes | bytearray, mode: int, /) -> None:
    """What the C helper's ``write_new`` does, in Python: create ``name`` in
    ``directory`` (FileExistsError if it is there), write ``data`` with
    ``O_SYNC``, close, fsync the directory; unlink it again if any step
    after the create fails."""
    path = os.path.join(directory, name)
    fd = os.open(path, _NEW_FILE | os.O_SYNC, mode)
    try:
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        _fsync_dir(Path(directory))
    except BaseException:
        _unlink_quietly(Path(path))
        raise


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:WRITE_PIECE]) :]


def _first_failure(jobs: Sequence[Future[None] | None]) -> BaseException | None:
    """The exception of the first finished job in ``jobs`` that failed."""
    for job in jobs:
        if job is not None and job.done() and job.exception() is not None:
            return job.exception()
    return None


def _unlink(path: Path) -> bool:
    """Remove ``path``; False if it was already gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _open_blob(paths: Sequence[Path]) -> int:
    """Open the first of ``paths`` that exists; NotFound if none does."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    raise NotFound("no such blob")


def _read_whole(paths: Sequence[Path], limit: int) -> bytes:
    """Up to ``limit`` bytes from the start of the first of ``paths`` found."""
    fd = _open_blob(paths)
    try:
        pieces = []
        while limit > 0 and (piece := os.read(fd, limit)):
            pieces.append(piece)
            limit -= len(piece)
        return b"".join(pieces)
    finally:
        os.close(fd)


def _stat_size(paths: Sequence[Path]) -> int | None:
    """Size of the first of ``paths`` that exists, or None."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            return os.stat(path).st_size
    return None


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _close_opened(opening: Future[int], part: Path | None = None) -> None:
    """Clean up after an open whose caller was cancelled before it got the fd."""
    with contextlib.suppress(Exception):
        _close_quietly(opening.result())
    if part is not None:
        _unlink(part)


def _scan(path: Path | str) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            yield from entries
    except FileNotFoundError:  # removed while we walked: nothing in it to list
        return


def _stored(name: str, entry: os.DirEntry[str]) -> StoredBlob | None:
    try:
        return StoredBlob(name, entry.stat(follow_symlinks=False).st_mtime)
    except FileNotFoundError:  # committed or deleted since it was listed
        return None


def _shards(path: Path | str) -> Iterator[os.DirEntry[str]]:
    for entry in _scan(path):
        if _SHARD.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
            yield entry


def _blobs_in(path: Path | str, prefix: str) -> Iterator[StoredBlob]:
    """The blobs in one shard directory: files named as blobs that begin
    with the shard's ``prefix``."""
    for entry in _scan(path):
        name = entry.name
        if (
            _NAME.fullmatch(name)
            and name.startswith(prefix)
            and entry.is_file(follow_symlinks=False)
            and (blob := _stored(name, entry))
        ):
            yield blob


def _take(walk: Iterator[StoredBlob], count: int) -> list[StoredBlob]:
    return list(itertools.islice(walk, count))


class LocalBlobStore:
    """:class:`~filestore.storage.base.BlobStore` (and ``ListableBlobStore``) on
    a local directory. Open with :meth:`open`; methods raise StorageUnavailable
    for any I/O failure, ValueError for a malformed name, RuntimeError once
    closed.

    Overwriting: committing a name that exists replaces the blob atomically
    (the last commit wins); a read already streaming keeps the old bytes.
    """

    name = "local"

    def __init__(self, root: Path, *, max_workers: int = 8, native: bool | None = None) -> None:
        """``native``: write whole blobs with the C helper (True: it must have
        been built), with the Python path (False), or with the helper if it
        was built (None)."""
        if native and NATIVE_WRITE is None:
            raise RuntimeError("the C helper filestore.storage._syncwrite was not built")
        chosen = None if native is False else NATIVE_WRITE
        self._write_new: _WriteNew = chosen or _write_new
        #: Whether whole blobs go through the C helper.
        self.native = chosen is not None
        self._root = Path(root)
        self._blobs = self._root / "blobs"
        self._tmp = self._root / "tmp"
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="filestore-local")
        self._writers: set[_LocalWriter] = set()
        #: Blobs may still sit in the two-level layout of earlier builds.
        self._legacy = False
        self._closed = False

    @classmethod
    async def open(
        cls, root: Path, *, max_workers: int = 8, native: bool | None = None
    ) -> LocalBlobStore:
        """Create ``root``, ``root/blobs``, its shards and ``root/tmp`` (0700)
        if missing, and remove the empty directories of the old layout."""
        store = cls(root, max_workers=max_workers, native=native)
        try:
            await store._run("prepare its directory", store._prepare)
        except BaseException:
            await store.close()
            raise
        return store

    @property
    def root(self) -> Path:
        return self._root

    # ---------------------------------------------------------------- plumbing
    def _submit(self, fn: Callable[[], T]) -> Future[T]:
        if self._closed:
            raise RuntimeError("the blob store is closed")
        return self._executor.submit(fn)

    async def _run(self, what: str, fn: Callable[[], T]) -> T:
        return await _settle(what, self._submit(fn))

    def _path(self, name: str) -> Path:
        return self._blobs / name[0:2] / name

    def _paths(self, name: str) -> tuple[Path, ...]:
        """Where blob ``name`` may be: its path, and its legacy one if any."""
        if self._legacy:
            return (self._path(name), self._blobs / name[0:2] / name[2:4] / name)
        return (self._path(name),)

    def _part_path(self, name: str) -> Path:
        """A fresh temporary name for a blob being written."""
        return self._tmp / f"{name}.{random_hex(8)}.part"

    def _prepare(self) -> None:
        for path in (self._root, self._blobs, self._tmp):
            with contextlib.suppress(FileExistsError):
                path.mkdir(_DIR_MODE, parents=path is self._root)
                _fsync_dir(path.parent)
            if not path.is_dir():
                raise NotADirectoryError(f"{path.name} is not a directory")
        present = {entry.name for entry in _shards(self._blobs)}
        for shard in _SHARD_NAMES:
            if shard not in present:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(self._blobs / shard, _DIR_MODE)
        # Always, not only when a shard was made here: a crash may have come
        # between an earlier open's mkdir and its fsync.
        _fsync_dir(self._blobs)
        self._legacy = not self._prune_legacy(present)

    def _prune_legacy(self, shards: set[str]) -> bool:
        """Remove the empty second-level directories of the two-level layout
        under ``shards``; True if none is left. 256 ``rmdir`` calls at most a
        shard, never a listing: a shard may already hold many new blobs."""
        left = False
        for shard in sorted(shards):
            if os.stat(self._blobs / shard).st_nlink == 2:
                continue  # no subdirectory at all
            removed = False
            for sub in _SHARD_NAMES:
                try:
                    os.rmdir(self._blobs / shard / sub)
                except FileNotFoundError:
                    continue
                except OSError:  # not empty (or not a directory): blobs to keep reading
                    left = True
                else:
                    removed = True
            if removed:
                _fsync_dir(self._blobs / shard)
        return not left

    def _rename_into(self, part: Path, final: Path) -> None:
        """Rename ``part`` to ``final``; if its shard went missing under the
        running store, make it again and retry once."""
        try:
            os.replace(part, final)
        except FileNotFoundError:
            if not _remake_shard(final.parent):
                raise  # the part file is what is gone
            os.replace(part, final)

    def _publish(self, fd: int, part: Path, final: Path) -> None:
        """fsync + close the part file, rename it to ``final``, fsync the shard."""
        published = False
        try:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._rename_into(part, final)
            published = True
            _fsync_dir(final.parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(final if published else part)
            raise

    def _remove_all(self, name: str) -> None:
        for path in self._paths(name):
            if _unlink(path):
                _fsync_dir(path.parent)
        removed = False
        for entry in _scan(self._tmp):
            if entry.name.startswith(name + ".") and entry.name.endswith(".part"):
                removed |= _unlink(Path(entry.path))
        if removed:
            _fsync_dir(self._tmp)

    def _remove_many(self, names: Sequence[str]) -> dict[str, OSError | None]:
        """:meth:`_remove_all` for a batch in one thread hop: every unlink
        first, then one fsync per directory changed and one ``tmp`` scan for
        the whole batch, then a stat per name must find nothing. An fsync of
        a directory makes every earlier unlink in it durable, so one per
        directory is as durable as one per file (a batch of a thousand still
        touches most of the 256 shards, and each fsync waits for a device
        flush: hence several jobs side by side). A name
        whose unlink, directory fsync or stat failed gets that error; the
        others are gone."""
        wanted = dict.fromkeys(names)
        outcome: dict[str, OSError | None] = dict.fromkeys(wanted)
        changed: dict[Path, list[str]] = {}
        for name in wanted:
            for path in self._paths(name):
                try:
                    if _unlink(path):
                        changed.setdefault(path.parent, []).append(name)
                except OSError as exc:
                    outcome[name] = exc
        parts: list[str] = []
        for entry in _scan(self._tmp):
            match = _PART.fullmatch(entry.name)
            if match and match.group(1) in wanted:
                try:
                    if _unlink(Path(entry.path)):
                        parts.append(match.group(1))
                except OSError as exc:
                    outcome[match.group(1)] = exc
        if parts:
            changed.setdefault(self._tmp, []).extend(parts)
        for directory, members in changed.items():
            try:
                _fsync_dir(directory)
            except OSError as exc:
                for name in members:
                    outcome[name] = outcome[name] or exc
        for name in wanted:
            if outcome[name] is None:
                try:
                    if _stat_size(self._paths(name)) is not None:
                        outcome[name] = FileExistsError("the blob is still present")
                except OSError as exc:
                    outcome[name] = exc
        return outcome

    def _probe(self) -> None:
        if not stat.S_ISDIR(os.stat(self._blobs).st_mode):
            raise NotADirectoryError("blobs is not a directory")
        path = self._tmp / f"check.{secrets.token_hex(8)}.probe"
        fd = os.open(path, _NEW_FILE, _FILE_MODE)
        try:
            _write_all(fd, b"filestore storage check\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(path)

    def _walk(self) -> Generator[StoredBlob, None, None]:
        for entry in _scan(self._tmp):
            match = _PART.fullmatch(entry.name)
            if match and (blob := _stored(match.group(1), entry)):
                yield blob
        for top in _shards(self._blobs):
            yield from _blobs_in(top.path, top.name)
            if self._legacy:  # a second listing of the shard, only until it is pruned
                for sub in _shards(top.path):
                    yield from _blobs_in(sub.path, top.name + sub.name)

    # ------------------------------------------------------------------ public
    async def create(self, name: str) -> BlobWriter:
        """Start a blob; nothing is visible under ``name`` until commit."""
        _check_name(name)
        part = self._part_path(name)
        opening = self._submit(functools.partial(os.open, part, _NEW_FILE, _FILE_MODE))
        try:
            fd = await _settle("create a blob", opening)
        except asyncio.CancelledError:
            self._submit(functools.partial(_close_opened, opening, part))
            raise
        writer = _LocalWriter(self, fd, part, self._path(name))
        self._writers.add(writer)
        return writer

    async def put(self, name: str, data: bytes | bytearray) -> None:
        """Write a whole blob in one thread job, straight under its name:
        create it (``O_EXCL``), write it with ``O_SYNC`` (the write returns
        once data and inode are on disk, the work of an fsync), close it and
        fsync the shard. Four system calls where a ``.part`` file renamed
        into place takes eight, and each of them gives up the GIL and waits
        to take it back from the busy event loop: those hand-offs, not the
        disk, were most of a small upload's cost in the store's threads.

        The blob is visible under its name while it is written. That is safe
        because nothing looks a blob up before ``put`` returns (the file's
        row, which names it, is written after), and a crash part-way leaves
        a blob no row claims, which the orphan sweep removes, as it removes
        a crashed upload's ``.part``. A name that already exists is replaced
        atomically instead (through a ``.part`` and a rename), since a reader
        may be reading it."""
        _check_name(name)
        final = self._path(name)
        job = self._submit(functools.partial(self._put, final, data))
        try:
            await _settle("write a blob", job)
        except asyncio.CancelledError:
            # Not raised before the blob is gone again: a cancelled upload's
            # cleanup then never races the rename.
            undo = self._submit(after(job, functools.partial(self._unput, job, final)))
            with contextlib.suppress(Exception):
                await _settle("remove a blob", undo)
            raise

    def _put(self, final: Path, data: bytes | bytearray) -> None:
        shard = final.parent
        try:
            try:
                self._write_new(str(shard), final.name, data, _FILE_MODE)
            except FileNotFoundError:
                if not _remake_shard(shard):
                    raise
                self._write_new(str(shard), final.name, data, _FILE_MODE)
        except FileExistsError:
            self._replace(final, data)

    def _replace(self, final: Path, data: bytes | bytearray) -> None:
        """:meth:`put` over an existing blob: a ``.part`` renamed over it."""
        part = self._part_path(final.name)
        fd = os.open(part, _NEW_FILE, _FILE_MODE)
        try:
            _write_all(fd, data)
        except BaseException:
            _close_quietly(fd)
            _unlink(part)
            raise
        self._publish(fd, part, final)

    def _unput(self, job: Future[None], final: Path) -> None:
        """After a cancelled :meth:`put`: take back what it published."""
        if job.exception() is None and _unlink(final):
            _fsync_dir(final.parent)

    async def read(
        self,
        name: str,
        offset: int = 0,
        length: int | None = None,
        *,
        piece_size: int = PIECE_SIZE,
    ) -> AsyncGenerator[bytes, None]:
        """Yield the bytes ``offset .. offset+length`` in pieces of at most
        :data:`PIECE_SIZE` (or ``piece_size``); stops early at the end of the blob. NotFound if the
        blob is not committed. The next piece is read while the caller handles
        this one (at most two pieces in memory). The one descriptor is closed
        when the generator finishes or is closed (``aclose()``; a dropped
        generator is closed later, by the event loop's async-generator hook).
        """
        _check_name(name)
        if offset < 0 or (length is not None and length < 0) or piece_size < 1:
            raise ValueError("offset and length must not be negative, piece_size positive")
        opening = self._submit(functools.partial(_open_blob, self._paths(name)))
        try:
            fd = await _settle("open a blob", opening)
        except asyncio.CancelledError:
            self._submit(functools.partial(_close_opened, opening))
            raise
        end = None if length is None else offset + length

        def fetch(at: int) -> Future[bytes] | None:
            size = piece_size if end is None else min(piece_size, end - at)
            return self._submit(functools.partial(os.pread, fd, size, at)) if size > 0 else None

        job: Future[bytes] | None = None
        try:
            job = fetch(offset)
            while job is not None:
                piece = await _settle("read a blob", job)
                if not piece:
                    return
                offset += len(piece)
                job = fetch(offset)  # read ahead while the caller uses this piece
                yield piece
        finally:
            if self._closed:  # the pool is drained; closing a read fd does no I/O
                _close_quietly(fd)
            else:
                await _settle("close a blob", self._submit(after(job, lambda: os.close(fd))))

    async def get(self, name: str, size: int) -> bytes:
        """Open, read up to ``size + 1`` bytes and close in one thread job."""
        _check_name(name)
        if size < 0:
            raise ValueError("size must not be negative")
        job = functools.partial(_read_whole, self._paths(name), size + 1)
        return await self._run("read a blob", job)

    async def size(self, name: str) -> int | None:
        """Size of the committed blob, or None; partial uploads do not count."""
        _check_name(name)
        return await self._run("stat a blob", functools.partial(_stat_size, self._paths(name)))

    async def exists(self, name: str) -> bool:
        """Whether a committed blob ``name`` exists (an error is not "no")."""
        return await self.size(name) is not None

    async def delete(self, name: str) -> None:
        """Unlink the blob and every ``tmp/<name>.*.part`` left by unfinished
        or crashed uploads (so the orphan sweep removes all of a name in one
        call), fsync'ing each directory changed. Missing files are fine. An
        upload still writing to a removed part file fails at its commit.
        """
        _check_name(name)
        await self._run("delete a blob", functools.partial(self._remove_all, name))

    async def delete_many(self, names: Sequence[str]) -> dict[str, StorageUnavailable | None]:
        """:meth:`delete` and verification for a batch: split into at most
        :data:`DELETE_JOBS` thread jobs of :meth:`_remove_many`, so the
        directory fsyncs of one job overlap the unlinks of another."""
        for name in names:
            _check_name(name)
        unique = list(dict.fromkeys(names))
        size = max(DELETE_CHUNK, -(-len(unique) // DELETE_JOBS))
        chunks = [unique[i : i + size] for i in range(0, len(unique), size)]
        jobs = [self._submit(functools.partial(self._remove_many, c)) for c in chunks]
        outcome: dict[str, StorageUnavailable | None] = {}
        for chunk, job in zip(chunks, jobs, strict=True):
            try:
                errors = await _settle("delete blobs", job)
            except StorageUnavailable as exc:  # the job itself failed: none verified
                outcome.update(dict.fromkeys(chunk, exc))
                continue
            for name, error in errors.items():
                outcome[name] = None if error is None else _storage_error(error)
        return outcome

    async def check(self) -> None:
        """Write, fsync and remove a probe file in ``tmp``; StorageUnavailable
        if any step fails."""
        await self._run("write its health probe", self._probe)

    async def list_blobs(self) -> AsyncGenerator[StoredBlob, None]:
        """Yield committed blobs and partial uploads (by their blob name, so a
        name may appear twice), fetched :data:`LIST_BATCH` at a time per thread
        hop, never the whole listing at once. Entries added or removed meanwhile
        may or may not appear; files that do not fit the layout are skipped.
        """
        walk = self._walk()
        job: Future[list[StoredBlob]] | None = None
        try:
            while True:
                job = self._submit(functools.partial(_take, walk, LIST_BATCH))
                batch = await _settle("list blobs", job)
                if not batch:
                    return
                for blob in batch:
                    yield blob
        finally:
            if self._closed:
                walk.close()  # only closes directory handles
            else:
                await _settle("list blobs", self._submit(after(job, walk.close)))

    async def close(self) -> None:
        """Drain the pool and close the files of writers never committed or
        aborted; their ``.part`` files stay for the sweep, as after a crash.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        fds = [fd for writer in self._writers if (fd := writer._detach()) is not None]
        self._writers.clear()

        def shut_down() -> None:
            self._executor.shutdown(wait=True)
            for fd in fds:
                _close_quietly(fd)

        await asyncio.shield(asyncio.to_thread(shut_down))


class _LocalWriter:
    """:class:`~filestore.storage.base.BlobWriter` for one ``.part`` file.

    Up to two writes are in flight: :meth:`write` queues ``data`` in the
    writer's :class:`~filestore.lanes.Lane` (in order, on the store's pool)
    and returns, waiting only for the write before the last one; so the
    caller prepares the next batch while the last two are written, and a
    slow write or a late wake-up of the loop does not stall the upload at
    once. ``data`` must not change until two more writes or the commit
    have been called. Use from one task at a time. A failed or interrupted write fails
    every later write and commit with StorageUnavailable; only :meth:`abort`
    remains.

    Every :data:`FLUSH_EVERY` bytes, an ``fdatasync`` of the part file starts
    on another thread beside the writes (never more than one). The disk,
    and on a virtual machine the host behind it, then writes the blob while
    the rest of the body is still arriving: with the whole gigabyte left to
    the commit's fsync, that fsync was 1.2 s of a 2.7 s upload, because the
    kernel does not write dirty pages back on its own until they are old or
    a large share of memory. A flush that fails fails the upload like a
    failed write: after an fsync error the kernel may have dropped the dirty
    pages, so a later fsync succeeding proves nothing.
    """

    def __init__(self, store: LocalBlobStore, fd: int, part: Path, final: Path) -> None:
        self._store = store
        self._fd: int | None = fd
        self._part = part
        self._final = final
        #: The last write (or the commit's job) and the write before it.
        #: Writes run in order in a lane of their own, so the last one being
        #: done means they all are, and one failing fails those after it.
        self._job: Future[None] | None = None
        self._older: Future[None] | None = None
        self._lane = Lane(store._executor)
        self._flush: Future[None] | None = None
        self._written = 0  # bytes handed to write jobs
        self._flushed = 0  # of which the flush in flight (or last) covers
        self._failure: BaseException | None = None
        self._state = "open"  # → committing → committed, or → aborted / closed

    def _require_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"the blob writer is {self._state}")
        if self._failure is None:
            # Any job that already failed fails this call, without waiting
            # for the ones still in flight.
            for job in (self._flush, self._older, self._job):
                if job is not None and job.done() and not job.cancelled() and job.exception():
                    self._failure = job.exception()
                    break
        failure = self._failure
        if failure is not None:
            # A full disk stays a full disk (507) however the failure is seen
            # again: raw from a job, or as the StorageFull _settle made of it.
            if isinstance(failure, StorageFull) or out_of_space(failure):
                full = "local storage is out of space: could not write a blob"
                raise StorageFull(full) from failure
            raise StorageUnavailable("an earlier write to this blob failed") from failure

    async def _drain_older(self) -> None:
        """Wait for the write before the last one."""
        if self._older is None:
            return
        try:
            await _settle("write a blob", self._older)
        except BaseException as exc:
            self._failure = exc
            raise
        self._older = None

    async def write(self, data: bytes | bytearray) -> None:
        """Queue ``data`` behind the write in flight; waits only while two
        are (the caller's buffer is held until two more writes or the
        commit)."""
        self._require_open()
        await self._drain_older()
        if data and self._fd is not None:
            if self._store._closed:
                raise RuntimeError("the blob store is closed")
            job = self._lane.submit(functools.partial(_write_all, self._fd, data))
            self._older, self._job = self._job, job
            self._written += len(data)
            self._start_flush(self._fd)

    def _start_flush(self, fd: int) -> None:
        """Start an fdatasync once :data:`FLUSH_EVERY` more bytes are written
        and the last one is done; it runs beside the next writes."""
        if self._written - self._flushed < FLUSH_EVERY:
            return
        if self._flush is not None and not self._flush.done():
            return
        self._flushed = self._written
        self._flush = self._store._submit(functools.partial(os.fdatasync, fd))

    async def commit(self) -> None:
        """Finish the last write, fsync, rename into place, fsync the shard
        directory. On failure nothing of the blob remains."""
        self._require_open()
        fd, self._fd = self._fd, None
        assert fd is not None
        self._state = "committing"
        # The publish follows the write in flight in the same worker job
        # rather than after a round trip through the loop: a small upload's
        # only write and its commit then cost the loop one wake-up, not two.
        # A write that failed fails the commit with it, as _drain would.
        writing, self._job, self._older = self._job, None, None
        flush, self._flush = self._flush, None
        self._job = self._store._submit(
            after(
                writing,
                after(flush, functools.partial(self._publish_after, (writing, flush), fd)),
            )
        )
        try:
            await _settle("commit a blob", self._job)
        except BaseException:
            failed = _first_failure((writing, flush))
            if failed is not None and self._job.done():
                # Nothing was published: back to a failed open writer (the
                # failure sticks; abort removes the part).
                self._failure, self._state, self._job = failed, "open", None
            raise
        self._job = None
        self._state = "committed"
        self._store._writers.discard(self)

    def _publish_after(self, jobs: tuple[Future[None] | None, ...], fd: int) -> None:
        """In a worker thread, once ``jobs`` (the last write, the last flush)
        are done: publish, unless one failed (then close the descriptor and
        raise that failure; abort removes the part)."""
        failed = _first_failure(jobs)
        if failed is not None:
            _close_quietly(fd)
            raise failed
        self._store._publish(fd, self._part, self._final)

    async def abort(self) -> None:
        """Wait for the write in flight, close and remove the part file.

        A no-op after a commit that returned (delete the blob instead) and once
        the store is closed; after a commit that was interrupted, removes the
        blob if the rename had happened, since the caller never saw success.
        Raises StorageUnavailable only if a file exists and cannot be removed
        (the orphan sweep tries again later).
        """
        if self._state in ("committed", "aborted", "closed"):
            return
        published = self._final if self._state == "committing" else None
        self._state = "aborted"
        self._store._writers.discard(self)
        fd, self._fd = self._fd, None
        job, self._job, self._older = self._job, None, None
        flush, self._flush = self._flush, None

        def discard() -> None:
            if fd is not None:
                _close_quietly(fd)
            _unlink(self._part)
            if published and job and job.exception() is None and _unlink(published):
                _fsync_dir(published.parent)

        await _settle("discard a blob", self._store._submit(after(job, after(flush, discard))))

    def _detach(self) -> int | None:
        """The store is closing: give up the descriptor (still open)."""
        self._state = "closed"
        fd, self._fd = self._fd, None
        return fd
