"""Where transactions run: one SQLite file, or a PostgreSQL pool.

Every store method is a plain synchronous function over a SQLAlchemy Core
``Connection`` (see :mod:`filestore.metadata.sql`); this module decides where
it runs and in what transaction, so the store is written once:

* **SQLite**: one connection owned by one thread. A method is one hop to
  that thread and one ``BEGIN IMMEDIATE`` transaction (reads: autocommit),
  so the event loop never blocks and SQLite's single writer is never fought
  over inside the process. Writes waiting there together commit as one
  group (one commit, one WAL fsync; each write keeps its own outcome).
  Between processes (``serve --workers``, the CLI beside a server) writers
  queue on a file lock (:class:`_WriteLock`) rather than SQLite's busy
  handler. WAL mode, ``secure_delete=ON``, ``synchronous=FULL``.
* **PostgreSQL**: an asyncpg pool under SQLAlchemy's asyncio engine; the same
  function runs through ``AsyncConnection.run_sync``, so every statement is
  awaited on the loop, nothing blocks.

Both translate driver errors into :class:`~filestore.errors.MetadataUnavailable`
at this boundary, with no driver text (it can hold a host name or a value).
The dialect-specific duties live here too: the lock that serialises audit
appends across instances, and reclaiming erased key bytes from the files.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import fcntl
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import sqlalchemy as sa
import sqlalchemy.exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from filestore.errors import ConfigError, MetadataFull, MetadataUnavailable, out_of_space
from filestore.metadata.base import ReclaimReport

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Key of the PostgreSQL advisory lock that serialises audit appends: one
#: writer at a time across every instance, so one chain with no fork or gap.
AUDIT_LOCK = 0x66737461  # "fsta"
#: Key of the advisory lock held while migrations run.
MIGRATION_LOCK = 0x66736D67  # "fsmg"
#: How long the SQLite WAL truncation may keep trying, in short attempts that
#: never hold the database thread.
RECLAIM_ATTEMPTS = 5
RECLAIM_PAUSE = 0.05

#: A VACUUM of the key table already done this recently serves the next
#: caller too (a burst of DELETEs costs one, not one each).
VACUUM_COALESCE = 1.0
#: The most writes one commit takes: SQLite's groups, PostgreSQL's batched
#: inserts of new files (a bound on how long the writes of one group wait
#: for each other, and on a group's transaction).
GROUP_COMMIT_MAX = 64

_FAILURES: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.DBAPIError,
    sqlalchemy.exc.TimeoutError,
    sqlite3.Error,
    OSError,  # also asyncio.TimeoutError on 3.11
)


def _out_of_space(exc: BaseException) -> bool:
    """SQLite could not grow the file (SQLITE_FULL: the disk is full or the
    page limit reached), or an OS call found the disk full or over quota."""
    orig: BaseException = exc
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None:
        orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        return getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return out_of_space(orig)


def _unavailable(exc: BaseException) -> MetadataUnavailable:
    if _out_of_space(exc):
        return MetadataFull("the metadata database is out of space")
    if isinstance(exc, sqlalchemy.exc.IntegrityError):
        return MetadataUnavailable("the metadata database refused a write")
    return MetadataUnavailable("the metadata database is unavailable")


class Database(Protocol):
    """Runs store functions in transactions on one database: what the store
    needs of :class:`SQLiteDatabase` and :class:`PostgresDatabase`."""

    dialect: str

    async def run(
        self, fn: Callable[[sa.Connection], T], *, write: bool = True, single: bool = False
    ) -> T:
        """Run ``fn`` in one transaction; commit if it returns. ``single``:
        ``fn`` makes one statement, atomic on its own, so PostgreSQL runs it
        in autocommit (one round trip instead of BEGIN, statement, COMMIT);
        SQLite runs it as any write, in its commit group."""
        ...

    def lock_audit(self, conn: sa.Connection) -> None:
        """Serialise audit appends for the rest of ``conn``'s transaction."""
        ...

    async def reclaim(self) -> ReclaimReport:
        """Drop erased bytes from the database's files as far as it allows."""
        ...

    async def close(self) -> None: ...


# ------------------------------------------------------------------- SQLite
@dataclasses.dataclass(frozen=True)
class _Write:
    """A write waiting for its group commit, and where its outcome goes."""

    fn: Callable[[sa.Connection], Any]
    loop: asyncio.AbstractEventLoop
    waiter: asyncio.Future[Any]


def _deliver(group: list[_Write], outcomes: list[tuple[bool, Any]]) -> None:
    """From the database thread: settle each write's future on its loop, in
    one callback per loop for the whole group."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Write, tuple[bool, Any]]]] = {}
    for write, outcome in zip(group, outcomes, strict=True):
        by_loop.setdefault(write.loop, []).append((write, outcome))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
            loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list[tuple[_Write, tuple[bool, Any]]]) -> None:
    """On the loop: give each write its outcome (a cancelled caller's is dropped)."""
    for write, (ok, value) in settled:
        if write.waiter.done():
            continue
        if ok:
            write.waiter.set_result(value)
        else:
            write.waiter.set_exception(value)


class SQLiteDatabase(Database):
    """One file, one connection, one thread."""

    dialect = "sqlite"

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="filestore-sqlite")
        self.engine = sa.create_engine(
            f"sqlite:///{path}",
            poolclass=sa.pool.StaticPool,
            connect_args={"check_same_thread": False},
            # A statement's parameters (wrapped keys among them) never reach
            # an error message or a log.
            hide_parameters=True,
        )
        self._conn: sa.Connection | None = None
        self._closed = False
        #: Writes waiting for the next group commit (see _drain_writes), each
        #: with the loop and future its caller awaits.
        self._writes: collections.deque[_Write] = collections.deque()
        #: Whether a drain is queued or running; it queues the next itself.
        self._draining = False
        self._drain_lock = threading.Lock()
        self._write_lock = _WriteLock(path.with_name(path.name + ".write-lock"), busy_timeout)
        sa.event.listen(self.engine, "connect", self._on_connect)
        sa.event.listen(self.engine, "begin", _sqlite_begin)

    def _on_connect(self, dbapi_conn: Any, _record: Any) -> None:
        # SQLAlchemy leaves transactions to us: pysqlite's own BEGIN would be
        # DEFERRED, and a deferred writer can fail to upgrade its lock.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @classmethod
    async def open(cls, path: Path) -> SQLiteDatabase:
        db = cls(path)
        try:
            await db._call(db._connect)
        except BaseException:
            await db.close()  # its threads and engine, not only its file
            raise
        return db

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600)
            os.close(fd)
        self.path.chmod(0o600)
        conn = self.engine.connect()
        try:
            from filestore.metadata.migrate import upgrade

            with _file_lock(self.path.with_name(self.path.name + ".migrate-lock")):
                upgrade(conn)
            # Now, not at the first write: a running store keeps working if
            # the directory later turns read-only, as the open file does.
            self._write_lock.open()
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def _call(self, fn: Callable[[], T], executor: ThreadPoolExecutor | None = None) -> T:
        loop = asyncio.get_running_loop()
        try:
            pending = loop.run_in_executor(executor or self._executor, fn)
        except RuntimeError as exc:  # the executor is shut down: the store is closed
            raise MetadataUnavailable("the metadata store is closed") from exc
        try:
            return await pending
        except _FAILURES as exc:
            raise _unavailable(exc) from exc

    async def run(
        self, fn: Callable[[sa.Connection], T], *, write: bool = True, single: bool = False
    ) -> T:
        if write:
            return await self._run_write(fn)

        def in_thread() -> T:
            conn = self._conn
            if conn is None:
                raise MetadataUnavailable("the metadata store is closed")
            # Reads run without BEGIN/COMMIT, each statement on its own
            # snapshot, as on PostgreSQL (AUTOCOMMIT): two statements fewer
            # for a single SELECT, and the store is written for it.
            conn.info["write"] = None
            with conn.begin():
                return fn(conn)

        return await self._call(in_thread)

    async def _run_write(self, fn: Callable[[sa.Connection], T]) -> T:
        """Queue ``fn`` for the next group commit and wait for its outcome.

        Only a write that finds no drain queued or running queues one. A
        drain takes every write waiting by then and, if more arrived while it
        committed, queues the next drain behind whatever else waits for the
        database thread, so a stream of writes does not starve the reads.
        The outcomes of a group reach the loop in one callback. A group of N
        writes thus costs the database thread one wake-up and the loop one;
        a drain queued per write (most of them then finding the queue
        already taken) cost N of each, and under concurrent small uploads
        those hand-offs, not the SQL, were most of the thread's time.
        """
        loop = asyncio.get_running_loop()
        write = _Write(fn, loop, loop.create_future())
        self._writes.append(write)
        with self._drain_lock:
            start, self._draining = not self._draining, True
        if start:
            try:
                self._executor.submit(self._drain_writes)
            except RuntimeError as exc:  # the executor is shut down: the store is closed
                with self._drain_lock:
                    self._draining = False
                self._writes.remove(write)
                raise MetadataUnavailable("the metadata store is closed") from exc
        try:
            return cast(T, await write.waiter)
        except _FAILURES as exc:
            raise _unavailable(exc) from exc

    def _drain_writes(self) -> None:
        """Commit the waiting writes as one group, hand their outcomes to
        their loops, and queue the next drain if more are waiting."""
        group: list[_Write] = []
        while self._writes and len(group) < GROUP_COMMIT_MAX:
            group.append(self._writes.popleft())
        try:
            _deliver(group, self._commit_group(group))
        finally:
            with self._drain_lock:
                again = self._draining = bool(self._writes)
            if again:
                try:
                    self._executor.submit(self._drain_writes)
                except RuntimeError:  # shutting down: what is left cannot run
                    with self._drain_lock:
                        self._draining = False
                        left = list(self._writes)
                        self._writes.clear()
                    closed = MetadataUnavailable("the metadata store is closed")
                    _deliver(left, [(False, closed)] * len(left))

    def _commit_group(self, group: list[_Write]) -> list[tuple[bool, Any]]:
        """Run ``group`` in one transaction (group commit): each write's
        outcome, as (True, value) or (False, exception).

        A commit with ``synchronous=FULL`` costs an fsync of the WAL, and it
        is the same fsync for one write as for fifty: under concurrent
        uploads, writes queue up while one commit waits on the disk, and the
        next commit makes all of them durable at once. The writes run in the
        order they were queued, an order SQLite's single writer could have
        chosen. If the commit itself fails, every write of the group fails.

        A write that raises must fail alone, as if it had had its own
        transaction. The group first runs without savepoints: two statements
        a write fewer, and each statement gives up the GIL and waits to take
        it back from the loop, which was most of this thread's time under
        concurrent small uploads. If a write raises, that whole attempt is
        rolled back and the group runs again with a savepoint around each
        write, rolling back only the one that fails. Running a write again
        is safe because a write is a function of the connection alone.
        """
        conn = self._conn
        if conn is None:
            return [(False, MetadataUnavailable("the metadata store is closed"))] * len(group)
        conn.info["write"] = True
        values: list[Any] = []
        try:
            with self._write_lock, conn.begin() as transaction:
                for write in group:
                    try:
                        values.append(write.fn(conn))
                    except Exception as exc:
                        if len(group) == 1:
                            return [(False, exc)]
                        transaction.rollback()
                        break
        except BaseException as exc:
            return [(False, exc)] * len(group)
        if len(values) == len(group):
            return [(True, value) for value in values]
        return self._commit_isolated(conn, group)

    def _commit_isolated(self, conn: sa.Connection, group: list[_Write]) -> list[tuple[bool, Any]]:
        """:meth:`_commit_group` again, each write in a savepoint of its own."""
        outcomes: list[tuple[bool, Any]] = []
        try:
            with self._write_lock, conn.begin():
                # Savepoints straight on the driver: SQLAlchemy's own nested
                # transactions cost more than the statements they guard.
                raw = conn.connection.dbapi_connection
                assert raw is not None
                for write in group:
                    raw.execute("SAVEPOINT group_write")
                    try:
                        value = write.fn(conn)
                    except BaseException as exc:
                        raw.execute("ROLLBACK TO group_write")
                        raw.execute("RELEASE group_write")
                        outcomes.append((False, exc))
                    else:
                        raw.execute("RELEASE group_write")
                        outcomes.append((True, value))
        except BaseException as exc:
            return [(False, exc)] * len(group)
        return outcomes

    def lock_audit(self, conn: sa.Connection) -> None:
        """Nothing to do: every write transaction is BEGIN IMMEDIATE, which
        holds SQLite's single write lock (processes sharing the file too)."""

    async def reclaim(self) -> ReclaimReport:
        """Checkpoint and truncate the WAL, where deleted key cells linger in
        old frames. Tries a few times without waiting on readers; a reader
        that keeps the WAL pinned (a backup, a ``sqlite3`` shell) is reported,
        not waited for.

        It runs on the database thread, between transactions: filestore's own
        reads then never pin the WAL against it (on a thread of its own it
        lost to them under load, paid the pauses on every DELETE and blamed
        "a reader outside filestore"), and with no busy timeout a pinned WAL
        costs one failed attempt, not a wait."""
        for attempt in range(RECLAIM_ATTEMPTS):
            if attempt:
                await asyncio.sleep(RECLAIM_PAUSE * attempt)
            if await self._call(self._truncate_wal):
                return ReclaimReport(complete=True)
        log.warning("the SQLite WAL could not be truncated: a reader outside filestore holds it")
        return ReclaimReport(complete=False, blocked_by="wal_busy")

    def _truncate_wal(self) -> bool:
        if self._conn is None:
            return False
        raw = self._conn.connection.dbapi_connection
        assert raw is not None
        # As a writer: another process's write cannot start meanwhile (and
        # make this attempt fail) — only a reader can keep the WAL.
        with self._write_lock:
            raw.execute("PRAGMA busy_timeout=0")
            try:
                busy, _log, _done = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                return bool(busy == 0)
            except sqlite3.Error:
                return False
            finally:
                raw.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")

    async def close(self) -> None:
        """Close the connection and stop the threads; safe to call twice."""
        if self._closed:
            return
        self._closed = True

        def fn() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self.engine.dispose()
            self._write_lock.close()

        await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        self._executor.shutdown(wait=True)


def _sqlite_begin(conn: sa.Connection) -> None:
    """Open the driver's transaction: IMMEDIATE for writes (takes the write
    lock up front), none for reads (``write`` is None: autocommit)."""
    write = conn.info.get("write", True)
    if write is not None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class _WriteLock:
    """An exclusive ``flock`` held around every write transaction, so the
    processes sharing one SQLite file take turns as writers in the kernel's
    wake-up order.

    Without it a process that finds the write lock taken waits in SQLite's
    busy handler, which sleeps in growing steps (up to 100 ms) and retries:
    with two busy writers the one sleeping kept losing to the one that just
    committed, and uploads through ``serve --workers 2`` waited up to a
    second behind each other. A blocked ``flock`` is woken the moment the
    holder releases it.

    The wait is bounded by ``timeout`` (the store's busy timeout), as
    SQLite's own would be: a holder that never lets go (a process stopped
    mid-transaction, a stuck disk) fails this process's writes with
    "database is locked" (503) instead of hanging its database thread, and
    with it every read queued behind. A blocking ``flock`` cannot time out,
    so a contended wait happens on a description of the lock file of its
    own (``flock`` locks belong to the open file description) in a daemon
    thread, which the database thread waits for with a timeout; a grant
    that comes after its waiter gave up is let go at once. Opened when the
    store opens; the descriptors are not inherited by child processes."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._fd: int | None = None
        #: The descriptor holding the lock now: ``_fd``, or a waiter's.
        self._held: int | None = None
        self._waits: queue.SimpleQueue[_LockWait] = queue.SimpleQueue()
        self._waiter: threading.Thread | None = None

    def open(self) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)

    def __enter__(self) -> None:
        self.open()
        assert self._fd is not None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._held = self._fd
            return
        except BlockingIOError:
            pass
        # Read-only is enough for flock, and works if the directory turned
        # read-only under the running store.
        wait = _LockWait(os.open(self.path, os.O_RDONLY | os.O_CLOEXEC))
        if self._waiter is None:
            self._waiter = threading.Thread(
                target=_wait_for_locks,
                args=(self._waits,),
                name="filestore-sqlite-lock",
                daemon=True,  # may sit in a flock that never returns
            )
            self._waiter.start()
        self._waits.put(wait)
        if not wait.granted(self.timeout):
            raise sqlite3.OperationalError("database is locked")
        self._held = wait.fd

    def __exit__(self, *exc: object) -> None:
        held, self._held = self._held, None
        assert held is not None
        fcntl.flock(held, fcntl.LOCK_UN)
        if held != self._fd:
            os.close(held)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._waiter is not None:
            self._waits.put(_LockWait(-1))  # ends the thread once it is free
            self._waiter = None


class _LockWait:
    """One contended acquisition, between the database thread, which gives
    up after its timeout, and the waiter thread, which may be granted the
    lock after that and must then let it go. Whichever side is last owns
    the descriptor and closes it (unless the lock was granted in time)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._state = threading.Lock()
        self._done = threading.Event()
        self._ok = False
        self._abandoned = False

    def wait(self) -> None:
        """In the waiter thread: block until granted, or failed."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            ok = True
        except OSError:
            ok = False
        with self._state:
            if not self._abandoned:
                self._ok = ok
                self._done.set()
                return
        os.close(self.fd)  # granted too late (or failed): let it go at once

    def granted(self, timeout: float) -> bool:
        """In the database thread: whether the lock came within ``timeout``."""
        self._done.wait(timeout)
        with self._state:
            if not self._done.is_set():
                self._abandoned = True  # the waiter closes the descriptor
                return False
        if not self._ok:
            os.close(self.fd)
        return self._ok


def _wait_for_locks(waits: queue.SimpleQueue[_LockWait]) -> None:
    while (wait := waits.get()).fd >= 0:
        wait.wait()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Processes opening one SQLite file at once migrate it one at a time."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------- PostgreSQL
class PostgresDatabase(Database):
    """A pool of asyncpg connections shared by every request of a process."""

    dialect = "postgresql"

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Reads run without BEGIN/COMMIT: two round trips fewer for a single
        # SELECT, on the same pool.
        self._reader = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._closed = False
        self._vacuum: asyncio.Task[ReclaimReport] | None = None
        self._vacuumed_at = float("-inf")

    @classmethod
    async def open(cls, url: str, *, pool_size: int = 10) -> PostgresDatabase:
        target, connect_args = asyncpg_url(url)
        engine = create_async_engine(
            target,
            # A fixed pool: a request beyond it waits for a connection (up
            # to pool_timeout) rather than opening an overflow connection
            # that is closed again on return. Under 32 concurrent small
            # uploads that churn was a fifth of the loop's time (connect,
            # an SSL probe, authentication, per burst).
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=10,
            # No ping per checkout (a round trip each): a connection found
            # dead fails one request (503) and SQLAlchemy then recycles the
            # whole pool, so a database restart costs one retry, not many.
            pool_recycle=1800,
            # The claims, leases and audit lock are written for READ
            # COMMITTED, whatever the server's default says.
            isolation_level="READ COMMITTED",
            hide_parameters=True,
            # A statement that hangs (a lock held by a stuck session) fails
            # the request rather than holding it forever.
            connect_args={"command_timeout": 30, "timeout": 10, **connect_args},
        )
        db = cls(engine)
        try:
            async with engine.connect() as conn:
                await conn.run_sync(_migrate_postgres)
                await conn.commit()
        except _FAILURES as exc:
            await engine.dispose()
            raise _unavailable(exc) from exc
        except BaseException:
            await engine.dispose()
            raise
        return db

    async def run(
        self, fn: Callable[[sa.Connection], T], *, write: bool = True, single: bool = False
    ) -> T:
        if self._closed:  # a disposed engine would quietly open a new pool
            raise MetadataUnavailable("the metadata store is closed")
        try:
            if not write or single:
                async with self._reader.connect() as conn:
                    return await conn.run_sync(fn)
            async with self.engine.begin() as conn:
                return await conn.run_sync(fn)
        except _FAILURES as exc:
            raise _unavailable(exc) from exc

    def lock_audit(self, conn: sa.Connection) -> None:
        """A transaction-scoped advisory lock: released at commit or
        rollback, so a crashed instance never holds it."""
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK})

    async def reclaim(self) -> ReclaimReport:
        """Vacuum the narrow key table so the dead tuples of erased keys are
        pruned now rather than whenever autovacuum comes by. ``SKIP_LOCKED``:
        if another instance is vacuuming it, that one does the work. Callers
        at the same moment share one vacuum, and one finished within
        :data:`VACUUM_COALESCE` seconds serves too."""
        if self._closed:
            return ReclaimReport(complete=False, blocked_by="closed")
        loop = asyncio.get_running_loop()
        if self._vacuum is None:
            if loop.time() - self._vacuumed_at < VACUUM_COALESCE:
                return ReclaimReport(complete=True)
            self._vacuum = asyncio.ensure_future(self._vacuum_keys())
        task = self._vacuum
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._vacuum is task:
                self._vacuum = None
                self._vacuumed_at = loop.time()

    async def _vacuum_keys(self) -> ReclaimReport:
        try:
            async with self.engine.connect() as conn:
                auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
                # INDEX_CLEANUP ON: by default (AUTO) PostgreSQL skips the
                # index pass when few pages hold dead rows — the usual case
                # for one batch among many live keys — and then does not
                # mark their space reusable, so erased key bytes would sit
                # in the heap indefinitely (bench/bench_pg_residue.py).
                await auto.exec_driver_sql("VACUUM (INDEX_CLEANUP ON, SKIP_LOCKED) file_keys")
        except _FAILURES as exc:
            log.warning("could not vacuum file_keys (%s)", type(exc).__name__)
            return ReclaimReport(complete=False, blocked_by="vacuum_failed")
        return ReclaimReport(complete=True)

    async def close(self) -> None:
        self._closed = True
        await self.engine.dispose()


#: libpq's names for the TLS modes, which asyncpg's ``ssl`` also takes.
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def asyncpg_url(url: str) -> tuple[URL, dict[str, Any]]:
    """``postgresql://…`` as SQLAlchemy's asyncpg URL and the connection
    arguments its libpq-style parameters mean (``sslmode``,
    ``connect_timeout``, ``application_name``). ConfigError — never quoting
    the URL, which may hold a password — for anything else."""
    try:
        parsed = make_url(url.replace("postgres://", "postgresql://", 1))
        parsed.port  # noqa: B018 - parses the port: ValueError if it is not a number
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise ConfigError("FILESTORE_DATABASE_URL is not a valid database URL") from None
    args: dict[str, Any] = {}
    for name, value in parsed.query.items():
        text = value if isinstance(value, str) else value[-1]
        if name == "sslmode":
            if text not in _SSL_MODES:
                modes = ", ".join(_SSL_MODES)
                raise ConfigError(f"FILESTORE_DATABASE_URL: sslmode must be one of {modes}")
            args["ssl"] = text
        elif name == "connect_timeout":
            try:
                args["timeout"] = float(text)
            except ValueError:
                raise ConfigError("FILESTORE_DATABASE_URL: connect_timeout is seconds") from None
        elif name == "application_name":
            args["server_settings"] = {"application_name": text}
        else:
            raise ConfigError(
                f"FILESTORE_DATABASE_URL: parameter {name!r} is not supported (sslmode, "
                "connect_timeout and application_name are)"
            )
    return parsed.set(drivername="postgresql+asyncpg", query={}), args


def _migrate_postgres(conn: sa.Connection) -> None:
    from filestore.metadata.migrate import upgrade

    # Instances starting together migrate one at a time; the session lock is
    # released even if the migration fails.
    conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
    try:
        upgrade(conn)
    finally:
        # A failed migration leaves the transaction aborted: roll back first,
        # or the unlock itself fails and hides the real error.
        conn.rollback()
        conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
        conn.commit()


async def schema_revision(url: str, sqlite_path: Path) -> str | None:
    """The schema revision a database is at, read without migrating it
    (None for an empty database, or a SQLite file from before Alembic)."""
    from filestore.metadata.migrate import current_revision

    if not url or url.startswith("sqlite"):

        def read() -> str | None:
            if not sqlite_path.exists():
                return None
            engine = sa.create_engine(f"sqlite:///{sqlite_path}")
            try:
                with engine.connect() as conn:
                    return current_revision(conn)
            finally:
                engine.dispose()

        try:
            return await asyncio.to_thread(read)
        except _FAILURES as exc:
            raise _unavailable(exc) from exc
    target, connect_args = asyncpg_url(url)
    engine = create_async_engine(
        target,
        poolclass=sa.pool.NullPool,
        hide_parameters=True,
        connect_args={"timeout": 10, **connect_args},
    )
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(current_revision)
    except _FAILURES as exc:
        raise _unavailable(exc) from exc
    finally:
        await engine.dispose()


async def open_database(url: str, sqlite_path: Path, pool_size: int = 10) -> Database:
    """The database a ``FILESTORE_DATABASE_URL`` names (SQLite if empty)."""
    if not url or url.startswith("sqlite"):
        return await SQLiteDatabase.open(sqlite_path)
    return await PostgresDatabase.open(url, pool_size=pool_size)
