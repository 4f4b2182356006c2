"""SQLite writes queued together commit together (one transaction, one
fsync), yet each succeeds or fails on its own."""

from __future__ import annotations

import asyncio
import collections
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from filestore.errors import MetadataUnavailable
from filestore.metadata.database import SQLiteDatabase

QUEUED = 12


async def _hold_the_thread(db: SQLiteDatabase) -> tuple[asyncio.Future[None], threading.Event]:
    """Start a write that keeps the database thread busy until released."""
    started, release = threading.Event(), threading.Event()

    def blocker(conn: sa.Connection) -> None:
        started.set()
        release.wait(60)

    first = asyncio.ensure_future(db.run(blocker))
    assert await asyncio.to_thread(started.wait, 60)
    return first, release


async def _queued_behind_a_blocker(
    db: SQLiteDatabase, writes: list[object]
) -> list[object | BaseException]:
    """Run ``writes`` as one group: a first write holds the database thread
    until all of them are queued, so the next group takes them all."""
    first, release = await _hold_the_thread(db)
    pending = [asyncio.ensure_future(db.run(fn)) for fn in writes]  # type: ignore[arg-type]
    for _ in range(1000):
        if len(db._writes) == len(writes):
            break
        await asyncio.sleep(0)
    assert len(db._writes) == len(writes)
    release.set()
    await first
    return await asyncio.gather(*pending, return_exceptions=True)


async def test_a_failing_write_is_rolled_back_alone(tmp_path: Path) -> None:
    db = await SQLiteDatabase.open(tmp_path / "g.db")
    try:
        await db.run(lambda c: c.exec_driver_sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
        await db.run(lambda c: c.exec_driver_sql("INSERT INTO t VALUES (1000)"))

        def insert(k: int, then: str = "") -> object:
            def fn(conn: sa.Connection) -> int:
                conn.exec_driver_sql(f"INSERT INTO t VALUES ({k})")
                if then == "raise":
                    raise ValueError("changed its mind")
                if then == "duplicate":
                    conn.exec_driver_sql("INSERT INTO t VALUES (1000)")
                return k

            return fn

        writes = [insert(k) for k in range(QUEUED)]
        writes[3] = insert(3, "raise")
        writes[7] = insert(7, "duplicate")
        results = await _queued_behind_a_blocker(db, writes)

        assert isinstance(results[3], ValueError)
        assert isinstance(results[7], MetadataUnavailable)
        assert [r for i, r in enumerate(results) if i not in (3, 7)] == [
            k for k in range(QUEUED) if k not in (3, 7)
        ]
        rows = await db.run(
            lambda c: [r[0] for r in c.exec_driver_sql("SELECT k FROM t ORDER BY k")],
            write=False,
        )
        assert rows == [k for k in range(QUEUED) if k not in (3, 7)] + [1000]
    finally:
        await db.close()


async def test_a_write_after_close_is_refused(tmp_path: Path) -> None:
    db = await SQLiteDatabase.open(tmp_path / "g.db")
    await db.close()
    with pytest.raises(MetadataUnavailable):
        await db.run(lambda c: None)


async def test_a_group_runs_each_write_once_in_one_commit(tmp_path: Path) -> None:
    """No write of a group that succeeds is run twice (the savepoint-free
    first attempt is the only one), and the whole group is one commit."""
    db = await SQLiteDatabase.open(tmp_path / "g.db")
    try:
        await db.run(lambda c: c.exec_driver_sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
        commits: list[None] = []
        sa.event.listen(db.engine, "commit", lambda _conn: commits.append(None))
        calls: collections.Counter[int] = collections.Counter()

        def insert(k: int) -> object:
            def fn(conn: sa.Connection) -> int:
                calls[k] += 1
                conn.exec_driver_sql(f"INSERT INTO t VALUES ({k})")
                return k

            return fn

        results = await _queued_behind_a_blocker(db, [insert(k) for k in range(QUEUED)])
        assert results == list(range(QUEUED))
        assert calls == {k: 1 for k in range(QUEUED)}
        assert len(commits) == 2  # the blocker's, then the group's
    finally:
        await db.close()


async def test_a_read_waits_for_at_most_one_group(tmp_path: Path) -> None:
    """Writes that keep arriving do not hold back a read: the drain that
    takes them is queued behind the read, not ahead of it."""
    db = await SQLiteDatabase.open(tmp_path / "g.db")
    try:
        await db.run(lambda c: c.exec_driver_sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
        first, release = await _hold_the_thread(db)
        writes = [
            asyncio.ensure_future(
                db.run(lambda c, k=k: c.exec_driver_sql(f"INSERT INTO t VALUES ({k})"))
            )
            for k in range(QUEUED)
        ]
        read = asyncio.ensure_future(
            db.run(lambda c: c.exec_driver_sql("SELECT count(*) FROM t").scalar(), write=False)
        )
        await asyncio.sleep(0)
        release.set()
        await first
        assert await read == 0  # it ran before the group queued ahead of it committed
        await asyncio.gather(*writes)
        count = await db.run(lambda c: c.exec_driver_sql("SELECT count(*) FROM t").scalar())
        assert count == QUEUED
    finally:
        await db.close()
