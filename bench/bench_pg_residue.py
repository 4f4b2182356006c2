"""How long a crypto-erased key's bytes survive in PostgreSQL's own files.

    PYTHONPATH=. .venv/bin/python bench/bench_pg_residue.py    # 5 scenarios, 8-15 min
    PYTHONPATH=. .venv/bin/python bench/bench_pg_residue.py --keys 200 --max-seconds 120 \\
        --scenarios default,control,small-wal,small-wal-control

Why: crypto-erase deletes a file's wrapped key row, but PostgreSQL keeps the
old bytes until something overwrites them: the dead tuple in the key table's
heap until vacuum frees its space and a new row lands there, the copies in
the WAL until their segment is recycled *and* overwritten (a recycled
segment is renamed, not wiped). The purge runs ``VACUUM (SKIP_LOCKED)
file_keys`` to shorten the first; nothing filestore does shortens the second
(KEK destruction is what covers the WAL, its archives and replicas). This
measures both by searching the files, on a cluster with production
durability (``fsync``, ``full_page_writes``, ``synchronous_commit`` on,
everything else default), and a run with ``min_wal_size=32MB
max_wal_size=64MB`` to show WAL recycling at work.

Each scenario, on a fresh cluster: 2K uploads through filestore's store
(K to erase interleaved with K that stay live, as expiring and live files
are in real pages), then the K erased the way the purge does
(``files.begin_delete``, ``files.crypto_erase``, ``files.reclaim()`` =
``VACUUM (SKIP_LOCKED) file_keys``; the control skips the reclaim and leaves
it to autovacuum), then ordinary traffic (new uploads through the store, 32
at a time, as fast as they go). Every few seconds of traffic the traffic
pauses, the server CHECKPOINTs and the bench searches (a) the heap file of
``file_keys``, (b) all of ``base/``, (c) ``pg_wal/`` for the erased wrapped
keys. Reported per place: how many of the K are found right after the purge,
and the traffic seconds, wall seconds, new uploads and WAL bytes
(``pg_current_wal_lsn`` deltas) until none is found, or what was reached
when the bound (``--max-seconds`` of traffic) was hit.

The ``big-table`` scenarios put 50,000 live keys in the table first, as a
real deployment has: then the K dead tuples sit on under 2% of its pages,
and VACUUM's default ``INDEX_CLEANUP AUTO`` skips index vacuuming ("index
scan bypassed" in VACUUM VERBOSE) and, with it, recording the pruned pages'
free space in the free space map, so new keys are not written over the
erased ones. ``big-table-index-cleanup`` runs ``VACUUM (INDEX_CLEANUP ON,
SKIP_LOCKED) file_keys`` instead of the store's reclaim, to show what that
would buy.

Caveats, printed too: a plain byte search misses a key whose WAL record
crosses an 8 KiB WAL page boundary (the page header splits it), so the WAL
is searched with the page headers cut out and the plain count is shown
beside it; the CHECKPOINT every few seconds makes more full-page images and
recycles segments sooner than a server left to ``checkpoint_timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from bench._report import command_line
from filestore.crypto.sealed import seal_fields
from filestore.crypto.wrapping import WRAPPED_SIZE
from filestore.metadata.base import DeleteReason, FileKey, FileRecord, FileState
from filestore.metadata.sql import SQLMetadataStore
from tests.support.postgres import PostgresServer

#: Production durability; the test helper's defaults turn these off.
PRODUCTION = {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"}
SMALL_WAL = {"min_wal_size": "32MB", "max_wal_size": "64MB"}
#: A sealed-fields blob as an upload writes it (no name, no type, a digest).
SEALED_SIZE = len(
    seal_fields(bytes(32), bytes(16), {"filename": None, "content_type": None, "sha256": "0" * 64})
)
CONCURRENCY = 32
MIB = 1 << 20
#: Traffic seconds of the first checks (finer early, where the heap clears);
#: then one every --interval seconds.
EARLY_CHECKS = (0.5, 1.0, 2.0, 4.0)
#: XLogPageHeaderData and XLogLongPageHeaderData, MAXALIGNed (PostgreSQL 10+).
SHORT_PAGE_HEADER = 24
LONG_PAGE_HEADER = 40
XLP_LONG_HEADER = 0x0002


@dataclass(frozen=True)
class Scenario:
    name: str
    settings: dict[str, str]
    vacuum: bool
    #: Live keys already in the table (written in bulk) before the 2K uploads.
    live: int = 0
    #: Run this instead of the store's reclaim (what a fix would do).
    vacuum_sql: str = ""


SCENARIOS = {
    "default": Scenario("default WAL sizes, purge with VACUUM", {}, True),
    "control": Scenario("default WAL sizes, no VACUUM (control)", {}, False),
    "small-wal": Scenario(
        "min_wal_size=32MB max_wal_size=64MB, purge with VACUUM", SMALL_WAL, True
    ),
    "small-wal-control": Scenario(
        "min_wal_size=32MB max_wal_size=64MB, no VACUUM", SMALL_WAL, False
    ),
    "big-table": Scenario(
        "default WAL sizes, 50,000 live keys first, purge with VACUUM", {}, True, live=50_000
    ),
    # VACUUM's default INDEX_CLEANUP AUTO skips index vacuuming when under 2%
    # of the table's pages have dead items, and then does not record the
    # pruned pages' free space in the FSM, so new rows never land there.
    "big-table-index-cleanup": Scenario(
        "default WAL sizes, 50,000 live keys first, VACUUM (INDEX_CLEANUP ON) instead",
        {},
        True,
        live=50_000,
        vacuum_sql="VACUUM (INDEX_CLEANUP ON, SKIP_LOCKED) file_keys",
    ),
}
#: Live rows in bulk: ids and 60-byte keys from md5 (setup, not what is measured).
POPULATE = (
    "INSERT INTO files (id, tenant, state, kek_id, created_at, expires_at, size) "
    "SELECT decode(md5(g::text || 'f'), 'hex'), 'default', 'active', 1, "
    "CAST(:now AS float8), CAST(:now AS float8) + 86000, 4096 "
    "FROM generate_series(1, CAST(:n AS integer)) g",
    "INSERT INTO file_keys (file_id, kek_id, wrapped_dek) "
    "SELECT decode(md5(g::text || 'f'), 'hex'), 1, substring(decode(md5(g::text) || "
    "md5(g::text || 'a') || md5(g::text || 'b') || md5(g::text || 'c'), 'hex') from 1 for 60) "
    "FROM generate_series(1, CAST(:n AS integer)) g",
)
PLACES = ("heap", "base", "wal")
WAL_POSITION = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"
AUTOVACUUMS = "SELECT autovacuum_count FROM pg_stat_user_tables WHERE relname = 'file_keys'"


# ----------------------------------------------------------------- searching
def _unwrap_wal(data: bytes, page: int) -> bytes:
    """A WAL segment's payload with every page header cut out, so a record
    split over a page boundary is one run of bytes again."""
    parts = []
    for start in range(0, len(data), page):
        info = int.from_bytes(data[start + 2 : start + 4], "little")
        header = LONG_PAGE_HEADER if info & XLP_LONG_HEADER else SHORT_PAGE_HEADER
        parts.append(data[start + header : start + page])
    return b"".join(parts)


def search_file(path: str, needles: Sequence[bytes], wal_page: int) -> tuple[set[int], set[int]]:
    """Indexes of ``needles`` found in the file: (plain search, search with
    WAL page headers removed; the same as plain for a data file). Runs in a
    worker process; a file that vanished (a recycled segment) finds nothing."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return set(), set()
    plain = {i for i, n in enumerate(needles) if n in data}
    if wal_page == 0:
        return plain, plain
    unwrapped = _unwrap_wal(data, wal_page)
    return plain, plain | {i for i, n in enumerate(needles) if i not in plain and n in unwrapped}


class Searcher:
    """Searches the cluster's files in worker processes. A file whose size
    and mtime have not changed since the last search is not read again,
    unless it was modified less than a second before it was searched (an
    mtime is only as fine as the kernel's coarse clock)."""

    def __init__(self, data_dir: Path, heap: Path, needles: Sequence[bytes], wal_page: int):
        self.data_dir, self.heap, self.needles, self.wal_page = data_dir, heap, needles, wal_page
        self._pool = ProcessPoolExecutor(max_workers=2)
        self._cache: dict[str, tuple[tuple[int, int], tuple[set[int], set[int]]]] = {}

    def _files(self) -> tuple[list[Path], list[Path]]:
        base = [p for p in (self.data_dir / "base").rglob("*") if p.is_file()]
        wal = [p for p in (self.data_dir / "pg_wal").iterdir() if p.is_file() and len(p.name) == 24]
        return base, wal

    async def search(self) -> dict[str, tuple[int, int]]:
        """Per place, (found by plain search, found with WAL page headers cut)."""
        base, wal = self._files()
        loop = asyncio.get_running_loop()
        jobs: dict[str, asyncio.Future[tuple[set[int], set[int]]]] = {}
        stamps: dict[str, tuple[int, int]] = {}
        fresh_after = time.time_ns() - 1_000_000_000
        for path, page in [(p, 0) for p in base] + [(p, self.wal_page) for p in wal]:
            key = str(path)
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            stamps[key] = (st.st_size, st.st_mtime_ns)
            cached = self._cache.get(key)
            if cached is None or cached[0] != stamps[key] or st.st_mtime_ns > fresh_after:
                jobs[key] = loop.run_in_executor(self._pool, search_file, key, self.needles, page)
        for key, job in jobs.items():
            self._cache[key] = (stamps[key], await job)
        for key in set(self._cache) - set(stamps):
            del self._cache[key]

        def union(paths: Iterable[Path], which: int) -> int:
            found: set[int] = set()
            for p in paths:
                if (hit := self._cache.get(str(p))) is not None:
                    found |= hit[1][which]
            return len(found)

        return {
            "heap": (union([self.heap], 0), union([self.heap], 1)),
            "base": (union(base, 0), union(base, 1)),
            "wal": (union(wal, 0), union(wal, 1)),
        }

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------ traffic
def new_upload(now: float) -> tuple[FileRecord, FileKey, bytes]:
    file_id = secrets.token_bytes(16)
    record = FileRecord(file_id, "default", FileState.UPLOADING, 1, now, now + 86_000)
    return record, FileKey(file_id, 1, secrets.token_bytes(WRAPPED_SIZE)), os.urandom(SEALED_SIZE)


async def do_upload(store: SQLMetadataStore) -> bytes:
    record, key, sealed = new_upload(time.time())
    await store.files.create_upload(record, key)
    await store.files.activate(record.id, 4096, sealed)
    return key.wrapped


class Traffic:
    """Uploads through the store, ``CONCURRENCY`` at a time, paused while
    the bench checkpoints and searches, so each search sees one moment."""

    def __init__(self, store: SQLMetadataStore) -> None:
        self.store = store
        self.uploads = 0
        self.running_time = 0.0
        self._resumed_at: float | None = None
        self._go = asyncio.Event()
        self._stop = False
        self._inflight = 0
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(CONCURRENCY)]

    async def _worker(self) -> None:
        while True:
            await self._go.wait()
            if self._stop:
                return
            self._inflight += 1
            try:
                await do_upload(self.store)
                self.uploads += 1
            finally:
                self._inflight -= 1

    def resume(self) -> None:
        self._resumed_at = time.perf_counter()
        self._go.set()

    def elapsed(self) -> float:
        now = time.perf_counter()
        return self.running_time + (now - self._resumed_at if self._resumed_at else 0.0)

    async def pause(self) -> None:
        self._go.clear()
        deadline = time.monotonic() + 60
        while self._inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if self._resumed_at is not None:
            self.running_time += time.perf_counter() - self._resumed_at
            self._resumed_at = None

    def check(self) -> None:
        """Raise what made an upload fail (a worker that failed is done)."""
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError("an upload of the traffic failed") from task.exception()

    async def stop(self) -> None:
        self._stop = True
        self._go.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# ----------------------------------------------------------------- scenario
@dataclass
class Cleared:
    """When a place was first found free of every erased key."""

    traffic_s: float
    wall_s: float
    uploads: int
    wal_bytes: int


@dataclass
class Outcome:
    scenario: Scenario
    keys: int
    before: dict[str, tuple[int, int]] = field(default_factory=dict)
    after_purge: dict[str, tuple[int, int]] = field(default_factory=dict)
    cleared: dict[str, Cleared] = field(default_factory=dict)
    last: dict[str, tuple[int, int]] = field(default_factory=dict)
    reappeared: set[str] = field(default_factory=set)
    end: Cleared | None = None
    autovacuum_wall_s: float | None = None
    wal_segments_max: int = 0
    purge_s: float = 0.0


async def sql_value(store: SQLMetadataStore, sql: str) -> object:
    """One value, through the store's own pool."""

    def fn(conn: sa.Connection) -> object:
        return conn.execute(sa.text(sql)).scalar()

    return await store.db.run(fn)


async def sql_int(store: SQLMetadataStore, sql: str) -> int:
    return int(str(await sql_value(store, sql)))


async def run_scenario(
    scenario: Scenario, keys: int, max_seconds: float, interval: float
) -> Outcome:
    outcome = Outcome(scenario, keys)
    pg = PostgresServer.start(settings={**PRODUCTION, **scenario.settings})
    try:
        assert pg.data_dir is not None
        database = await pg.create_database()
        store = await SQLMetadataStore.open(pg.url(database))
        try:
            await _scenario(pg, database, store, outcome, max_seconds, interval)
        finally:
            await store.close()
    finally:
        pg.stop()
    return outcome


async def vacuum(pg: PostgresServer, database: str, sql: str) -> None:
    """Run ``sql`` (a VACUUM: outside a transaction) on ``database``."""
    conn = await pg.connect(database)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _checkpoint(pg: PostgresServer) -> None:
    conn = await pg.connect()
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def _scenario(
    pg: PostgresServer,
    database: str,
    store: SQLMetadataStore,
    out: Outcome,
    max_seconds: float,
    interval: float,
) -> None:
    assert pg.data_dir is not None
    keys = out.keys
    heap = pg.data_dir / str(await sql_value(store, "SELECT pg_relation_filepath('file_keys')"))
    wal_page = await sql_int(store, "SHOW wal_block_size")

    if out.scenario.live:

        def populate(conn: sa.Connection) -> None:
            for sql in POPULATE:
                conn.execute(sa.text(sql), {"now": time.time(), "n": out.scenario.live})

        await store.db.run(populate)
        await vacuum(
            pg, database, "VACUUM (ANALYZE) files, file_keys"
        )  # a table in its steady state

    # 2K uploads, every other one to be erased.
    erase_ids: list[bytes] = []
    needles: list[bytes] = []
    now = time.time()
    for i in range(2 * keys):
        record, key, sealed = new_upload(now)
        await store.files.create_upload(record, key)
        await store.files.activate(record.id, 4096, sealed)
        if i % 2 == 0:
            erase_ids.append(record.id)
            needles.append(key.wrapped)
    searcher = Searcher(pg.data_dir, heap, needles, wal_page)
    try:
        await _checkpoint(pg)
        out.before = await searcher.search()

        # The purge's three steps (its batch is up to 500 files).
        start = time.perf_counter()
        for file_id in erase_ids:
            got = await store.files.begin_delete(
                file_id, DeleteReason.EXPIRED, "bench", now, now + 600
            )
            assert got is not None
        await store.files.crypto_erase(erase_ids)
        if out.scenario.vacuum_sql:
            await vacuum(pg, database, out.scenario.vacuum_sql)
        elif out.scenario.vacuum:
            report = await store.files.reclaim()
            assert report.complete, report
        out.purge_s = time.perf_counter() - start
        lsn0 = await sql_int(store, WAL_POSITION)
        vacuums0 = await sql_int(store, AUTOVACUUMS)
        wall0 = time.perf_counter()
        await _checkpoint(pg)
        out.after_purge = await searcher.search()
        print("    after purge: " + _counts(out.after_purge, keys), flush=True)

        traffic = Traffic(store)
        try:
            schedule = [*EARLY_CHECKS]
            while schedule[-1] < max_seconds:
                schedule.append(min(max_seconds, schedule[-1] + interval))
            for target in schedule:
                traffic.resume()
                while traffic.elapsed() < target:
                    await asyncio.sleep(min(0.05, max(0.0, target - traffic.elapsed())))
                await traffic.pause()
                traffic.check()
                await _checkpoint(pg)
                wal = await sql_int(store, WAL_POSITION) - lsn0
                vac = await sql_int(store, AUTOVACUUMS)
                point = Cleared(
                    traffic.running_time, time.perf_counter() - wall0, traffic.uploads, wal
                )
                if vac > vacuums0 and out.autovacuum_wall_s is None:
                    out.autovacuum_wall_s = point.wall_s
                found = await searcher.search()
                segments = sum(
                    1
                    for p in (pg.data_dir / "pg_wal").iterdir()
                    if p.is_file() and len(p.name) == 24
                )
                out.wal_segments_max = max(out.wal_segments_max, segments)
                for place in PLACES:
                    if found[place][1] == 0 and place not in out.cleared:
                        out.cleared[place] = point
                    elif found[place][1] and place in out.cleared:
                        out.reappeared.add(place)
                out.last, out.end = found, point
                print(
                    f"    t={point.traffic_s:6.1f}s wall={point.wall_s:6.1f}s "
                    f"uploads={point.uploads:6d} wal={wal / MIB:7.1f} MiB "
                    f"segments={segments:3d}  " + _counts(found, keys),
                    flush=True,
                )
                if all(found[p][1] == 0 for p in PLACES):
                    break
        finally:
            await traffic.stop()
    finally:
        searcher.close()


def _counts(found: dict[str, tuple[int, int]], keys: int) -> str:
    return "  ".join(f"{p} {found[p][1]:3d}/{keys}" for p in PLACES)


# ------------------------------------------------------------------ report
def report(outcomes: list[Outcome], max_seconds: float) -> list[str]:
    lines = [
        "| scenario | place | found before purge | found right after purge "
        "| none found after (traffic s / wall s / uploads / WAL MiB) |",
        "|---|---|---:|---:|---|",
    ]
    for o in outcomes:
        for place in PLACES:
            before = o.before[place][1]
            plain, cut = o.after_purge[place]
            after = f"{cut}/{o.keys}" + (f" (plain search {plain})" if place == "wal" else "")
            if place in o.cleared:
                c = o.cleared[place]
                when = (
                    f"{c.traffic_s:.1f} s / {c.wall_s:.1f} s / {c.uploads} / "
                    f"{c.wal_bytes / MIB:.1f}"
                )
                if c.uploads == 0:
                    when = "at once (before new traffic)"
                if place in o.reappeared:
                    when += " (found again later)"
            else:
                e = o.end
                assert e is not None
                left = o.last[place][1]
                when = (
                    f"**still {left}/{o.keys} present** after {e.traffic_s:.0f} s of traffic "
                    f"({e.wall_s:.0f} s wall) / {e.uploads} uploads / "
                    f"{e.wal_bytes / MIB:.0f} MiB of WAL"
                )
            lines.append(f"| {o.scenario.name} | {place} | {before}/{o.keys} | {after} | {when} |")
    lines.append("")
    for o in outcomes:
        auto = (
            "not within the run"
            if o.autovacuum_wall_s is None
            else f"by {o.autovacuum_wall_s:.0f} s wall after the purge"
        )
        lines.append(
            f"- {o.scenario.name}: purge {o.purge_s * 1e3:.0f} ms; "
            f"autovacuum of file_keys {auto}; up to {o.wal_segments_max} WAL segment "
            "files in pg_wal"
        )
    lines += [
        "- heap = the file_keys heap file (pg_relation_filepath), base = every file under "
        "base/ (heap, indexes, FSM/VM, other databases), wal = pg_wal/ segments.",
        "- A plain byte search misses a key whose WAL record crosses an 8 KiB WAL page "
        "boundary (the page header splits it): the WAL counts above are from the "
        "segments with page headers cut out; the plain count is shown beside them.",
        "- CHECKPOINT every few seconds of traffic (to make the data files current) means "
        "more full-page images and earlier segment recycling than a server left to "
        "checkpoint_timeout: the WAL figures are a lower bound for such a server.",
        f"- Bound: {max_seconds:g} s of traffic per scenario.",
    ]
    return lines


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=200, help="erased keys K")
    parser.add_argument(
        "--max-seconds", type=float, default=120.0, help="bound on traffic seconds per scenario"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=5.0,
        help="traffic seconds between checks (after the first few)",
    )
    parser.add_argument(
        "--scenarios",
        default="default,control,small-wal,big-table,big-table-index-cleanup",
        help=f"comma-separated, from {','.join(SCENARIOS)}",
    )
    args = parser.parse_args()
    chosen = [SCENARIOS[name] for name in args.scenarios.split(",")]
    load0 = os.getloadavg()[0]
    outcomes = []
    for scenario in chosen:
        print(f"{scenario.name}:", flush=True)
        outcomes.append(await run_scenario(scenario, args.keys, args.max_seconds, args.interval))
    print()
    print(f"`{command_line()}`")
    print()
    rates = [o.end.uploads / o.end.traffic_s for o in outcomes if o.end and o.end.traffic_s]
    print(
        f"{os.cpu_count()} CPUs, load average {load0:.1f} -> {os.getloadavg()[0]:.1f}; "
        + ", ".join(f"{k}={v}" for k, v in PRODUCTION.items())
        + f"; K={args.keys} erased keys ({WRAPPED_SIZE} bytes each) among {2 * args.keys} "
        + (
            f"uploads; traffic {statistics.median(rates):.0f} uploads/s (median)"
            if rates
            else "uploads"
        )
    )
    print()
    print("\n".join(report(outcomes, args.max_seconds)))


if __name__ == "__main__":
    asyncio.run(main())
