"""What the metadata layer costs a small-file upload, on SQLite and PostgreSQL.

    PYTHONPATH=. .venv/bin/python bench/bench_metadata.py            # full
    PYTHONPATH=. .venv/bin/python bench/bench_metadata.py --quick    # a minute

Why: for a 4 KiB file the blob is cheap and the database is most of the
work, so the store's overhead (SQLAlchemy Core, the hop to SQLite's thread,
the pool) decides the small-file rate. A number on its own means little on
a noisy 2-core machine, so every figure is compared with something measured
in the same run, alternately:

1. **Store level.** Per upload, the metadata work a real upload does:
   ``api_keys.get`` (authentication), ``files.create_upload`` (row + key, one
   write transaction), ``files.activate`` (one write transaction). N uploads
   one after another, then N with 32 concurrent tasks, against

   * filestore's ``SQLMetadataStore`` on SQLite, and the strongest
     hand-written SQLite code a user would write: plain ``sqlite3`` on one
     dedicated thread, the same statements in the same transactions
     (``BEGIN`` for the read, ``BEGIN IMMEDIATE`` for writes), the same
     PRAGMAs (WAL, ``synchronous=FULL``, ``secure_delete=ON``,
     ``foreign_keys=ON``), the module's statement cache;
   * filestore's store on PostgreSQL, and a hand-written ``asyncpg`` pool
     (as many connections as filestore's pool may open) running the same
     statements in the same transactions (as filestore runs them: the key
     lookup in autocommit, each write in one READ COMMITTED transaction),
     each prepared once per connection by asyncpg's statement cache.

   Both sides of a pair use the same schema (made by filestore's
   migrations) in a fresh database per run. Reported: wall µs per upload
   (median of R), the ratio filestore/baseline, CPU µs per upload of this
   process (``time.process_time``: the event loop and the threads share it)
   and, for PostgreSQL, of the server's processes.

2. **Gateway level.** ``python -m filestore serve`` on SQLite and on
   PostgreSQL (fresh data directories, loopback), 1000 x 4 KiB uploads with
   32 concurrent aiohttp requests each round, rounds alternated, median of 3:
   req/s, p50/p99 latency, CPU per request of the gateway and of PostgreSQL,
   and the ratio PG/SQLite.

PostgreSQL runs a throwaway cluster (tests/support/postgres.py) with
``fsync``, ``synchronous_commit`` and ``full_page_writes`` on, so a commit is
as durable as SQLite's ``synchronous=FULL``; without that the comparison of
the two databases would be between a durable and a non-durable one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp
import asyncpg

from bench._proc import cpu_delta, proc_cpu, tree_cpu
from bench._report import command_line
from filestore.crypto.sealed import seal_fields
from filestore.crypto.wrapping import WRAPPED_SIZE
from filestore.metadata.base import ApiKeyRecord, FileKey, FileRecord, FileState, Role
from filestore.metadata.sql import SQLMetadataStore
from tests.support.postgres import PostgresServer

T = TypeVar("T")

#: As durable as SQLite's synchronous=FULL (the test helper turns these off).
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
#: filestore's pool: database_pool_size (10) plus as many overflow connections.
POOL_SIZE = 10
POOL_MAX = 2 * POOL_SIZE
CONCURRENCY = 32
KEY_ID = "0123456789ab"
TENANT = "default"
#: A sealed-fields blob as an upload writes it (no name, no type, a digest).
SEALED_SIZE = len(
    seal_fields(bytes(32), bytes(16), {"filename": None, "content_type": None, "sha256": "0" * 64})
)

# The statements SQLAlchemy emits for the three calls, written out by hand.
SQL_KEY = (
    "SELECT key_id, secret_hash, role, tenant, label, created_at, revoked_at "
    "FROM api_keys WHERE key_id = {0}"
)
SQL_FILE = (
    "INSERT INTO files (id, tenant, state, kek_id, created_at, expires_at, max_downloads) "
    "VALUES ({0}, {1}, 'uploading', {2}, {3}, {4}, {5})"
)
SQL_FILE_KEY = "INSERT INTO file_keys (file_id, kek_id, wrapped_dek) VALUES ({0}, {1}, {2})"
SQL_ACTIVATE = (
    "UPDATE files SET state = 'active', size = {0}, sealed = {1} "
    "WHERE id = {2} AND state = 'uploading'"
)


def qmarks(sql: str) -> str:
    return sql.format(*["?"] * 8)


def dollars(sql: str) -> str:
    return sql.format(*[f"${i}" for i in range(1, 9)])


# ------------------------------------------------------------------ uploads
@dataclass(frozen=True)
class Upload:
    """The inputs of one upload, made before the clock starts."""

    record: FileRecord
    key: FileKey
    size: int
    sealed: bytes


def make_uploads(count: int) -> list[Upload]:
    now = time.time()
    out = []
    for _ in range(count):
        file_id = secrets.token_bytes(16)
        record = FileRecord(file_id, TENANT, FileState.UPLOADING, 1, now, now + 3600)
        key = FileKey(file_id, 1, secrets.token_bytes(WRAPPED_SIZE))
        out.append(Upload(record, key, 4096, secrets.token_bytes(SEALED_SIZE)))
    return out


class Target(Protocol):
    """One way of doing an upload's metadata work."""

    async def authenticate(self) -> None: ...
    async def create_upload(self, up: Upload) -> None: ...
    async def activate(self, up: Upload) -> None: ...
    async def close(self) -> None: ...


API_KEY = ApiKeyRecord(KEY_ID, bytes(32), Role.CLIENT, TENANT, 1.0, "bench")


class FilestoreTarget:
    """filestore's own store, called as the gateway calls it."""

    def __init__(self, store: SQLMetadataStore) -> None:
        self.store = store

    async def authenticate(self) -> None:
        record = await self.store.api_keys.get(KEY_ID)
        assert record is not None

    async def create_upload(self, up: Upload) -> None:
        await self.store.files.create_upload(up.record, up.key)

    async def activate(self, up: Upload) -> None:
        await self.store.files.activate(up.record.id, up.size, up.sealed)

    async def close(self) -> None:
        await self.store.close()


class SqliteBaseline:
    """Plain ``sqlite3``: one connection on one dedicated thread, one hop
    per transaction, exactly as filestore's SQLite database does it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baseline-sqlite")
        self._conn: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, path: Path) -> SqliteBaseline:
        self = cls(path)
        await self._call(self._connect)
        return self

    def _connect(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in (
            "busy_timeout=5000",
            "journal_mode=WAL",
            "secure_delete=ON",
            "foreign_keys=ON",
            "synchronous=FULL",
        ):
            conn.execute(f"PRAGMA {pragma}")
        self._conn = conn

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _transaction(self, begin: str, work: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        assert conn is not None
        conn.execute(begin)
        try:
            result = work(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def authenticate(self) -> None:
        def work(conn: sqlite3.Connection) -> Any:
            return conn.execute(qmarks(SQL_KEY), (KEY_ID,)).fetchone()

        row = await self._call(self._transaction, "BEGIN", work)
        assert row is not None

    async def create_upload(self, up: Upload) -> None:
        r, k = up.record, up.key

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                qmarks(SQL_FILE),
                (r.id, r.tenant, r.kek_id, r.created_at, r.expires_at, r.max_downloads),
            )
            conn.execute(qmarks(SQL_FILE_KEY), (k.file_id, k.kek_id, k.wrapped))

        await self._call(self._transaction, "BEGIN IMMEDIATE", work)

    async def activate(self, up: Upload) -> None:
        def work(conn: sqlite3.Connection) -> int:
            return conn.execute(qmarks(SQL_ACTIVATE), (up.size, up.sealed, up.record.id)).rowcount

        done = await self._call(self._transaction, "BEGIN IMMEDIATE", work)
        assert done == 1

    async def close(self) -> None:
        def fn() -> None:
            if self._conn is not None:
                self._conn.close()

        await self._call(fn)
        self._thread.shutdown(wait=True)


class AsyncpgBaseline:
    """A plain asyncpg pool: a connection per transaction, as filestore's
    pool hands them out; asyncpg prepares each statement once per connection."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, url: str) -> AsyncpgBaseline:
        pool = await asyncpg.create_pool(
            url, min_size=POOL_SIZE, max_size=POOL_MAX, command_timeout=30
        )
        return cls(pool)

    async def authenticate(self) -> None:
        # In autocommit, as filestore's PostgreSQL reads run (no BEGIN/COMMIT).
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(dollars(SQL_KEY), KEY_ID)
        assert row is not None

    async def create_upload(self, up: Upload) -> None:
        r, k = up.record, up.key
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                dollars(SQL_FILE),
                r.id,
                r.tenant,
                r.kek_id,
                r.created_at,
                r.expires_at,
                r.max_downloads,
            )
            await conn.execute(dollars(SQL_FILE_KEY), k.file_id, k.kek_id, k.wrapped)

    async def activate(self, up: Upload) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(dollars(SQL_ACTIVATE), up.size, up.sealed, up.record.id)
        assert status == "UPDATE 1", status

    async def close(self) -> None:
        await self.pool.close()


async def upload(target: Target, up: Upload) -> None:
    await target.authenticate()
    await target.create_upload(up)
    await target.activate(up)


async def drive(target: Target, uploads: Sequence[Upload], concurrency: int) -> None:
    """All ``uploads`` through ``concurrency`` tasks pulling from one queue."""
    todo: Iterator[Upload] = iter(uploads)

    async def worker() -> None:
        for up in todo:
            await upload(target, up)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# ------------------------------------------------------------ store targets
async def settle(pg: PostgresServer | None) -> None:
    """Flush what setup wrote (CREATE DATABASE, migrations, the last run's
    DROP DATABASE, blobs) so its write-back does not land in the next timed
    run: a PostgreSQL checkpoint, then sync(2)."""
    if pg is not None:
        conn = await pg.connect()
        try:
            await conn.execute("CHECKPOINT")
        finally:
            await conn.close()
    await asyncio.to_thread(os.sync)


@dataclass
class Place:
    """Where a target's fresh database lives, and how to make one."""

    tmp: Path
    pg: PostgresServer | None
    made: int = 0
    databases: list[str] = field(default_factory=list)

    async def fresh(self, dialect: str) -> tuple[str, Path]:
        """(url, sqlite path) of a new database with filestore's schema and
        the bench's API key in it."""
        self.made += 1
        path = self.tmp / f"store-{self.made}" / "filestore.db"
        url = ""
        if dialect == "postgresql":
            assert self.pg is not None
            name = await self.pg.create_database()
            self.databases.append(name)
            url = self.pg.url(name)
        store = await SQLMetadataStore.open(url, path, pool_size=POOL_SIZE)
        try:
            await store.api_keys.add(API_KEY)
        finally:
            await store.close()
        return url, path

    async def settle(self) -> None:
        await settle(self.pg)

    async def drop(self) -> None:
        while self.pg is not None and self.databases:
            await self.pg.drop_database(self.databases.pop())


async def open_target(place: Place, name: str) -> Target:
    dialect = "postgresql" if name.startswith("pg") else "sqlite"
    url, path = await place.fresh(dialect)
    if name in ("sqlite/filestore", "pg/filestore"):
        return FilestoreTarget(await SQLMetadataStore.open(url, path, pool_size=POOL_SIZE))
    if name == "sqlite/baseline":
        return await SqliteBaseline.open(path)
    return await AsyncpgBaseline.open(url)


@dataclass(frozen=True)
class StoreRun:
    wall: float
    cpu: float
    server_cpu: float


async def store_run(place: Place, name: str, count: int, concurrency: int) -> StoreRun:
    """One timed run of ``count`` uploads on a fresh database (after a short
    warm-up that opens the pool's connections and prepares the statements)."""
    target = await open_target(place, name)
    try:
        await drive(target, make_uploads(2 * concurrency), concurrency)
        uploads = make_uploads(count)
        await place.settle()
        pg_pid = place.pg.pid if place.pg and name.startswith("pg") else None
        server0 = tree_cpu(pg_pid) if pg_pid else {}
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await drive(target, uploads, concurrency)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        server = cpu_delta(server0, tree_cpu(pg_pid)) if pg_pid else 0.0
    finally:
        await target.close()
        await place.drop()
    return StoreRun(wall / count, cpu / count, server / count)


async def store_level(
    place: Place, names: list[str], count: int, repeat: int
) -> dict[tuple[str, int], list[StoreRun]]:
    """Every run per (target, concurrency), in repeat order; the order of
    the targets rotates every repeat, so drift in the machine's speed hits
    each alike."""
    runs: dict[tuple[str, int], list[StoreRun]] = {}
    for rep in range(repeat):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for conc in (1, CONCURRENCY):
            for name in order:
                run = await store_run(place, name, count, conc)
                runs.setdefault((name, conc), []).append(run)
                print(
                    f"  repeat {rep + 1}/{repeat} c={conc:<2} {name:<17} "
                    f"{run.wall * 1e6:8.0f} µs/upload",
                    flush=True,
                )
    return runs


def median_of(runs: Sequence[Any], attr: str) -> float:
    return float(statistics.median(getattr(r, attr) for r in runs))


def paired(top: Sequence[Any], bottom: Sequence[Any], attr: str) -> str:
    """Median and range of the ratios of runs made in the same repeat: on a
    noisy machine a ratio of neighbours is steadier than one of medians."""
    ratios = sorted(getattr(a, attr) / getattr(b, attr) for a, b in zip(top, bottom, strict=True))
    return f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})"


# ------------------------------------------------------------------ gateway
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gateway:
    """``python -m filestore serve`` on a free loopback port, its output in a
    file (a pipe nobody reads would fill and stall it), stopped by its PID."""

    def __init__(self, tmp: Path, name: str, database_url: str) -> None:
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.log = tmp / f"{name}-{port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FILESTORE_")}
        env.update(
            FILESTORE_PORT=str(port),
            FILESTORE_HOST="127.0.0.1",
            FILESTORE_DATA_DIR=str(tmp / f"{name}-{port}"),
            FILESTORE_LOG_LEVEL="WARNING",
            FILESTORE_DATABASE_URL=database_url,
        )
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "filestore", "serve"],
                env=env,
                cwd=tmp,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.key = ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text()
            for line in text.splitlines():
                if line.startswith("API key: "):
                    self.key = line.split(": ", 1)[1].strip()
            if "listening" in text and self.key:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"filestore exited during start:\n{text}")
            time.sleep(0.05)
        raise RuntimeError(f"filestore did not start in {timeout:g} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass(frozen=True)
class Round:
    rate: float
    p50: float
    p99: float
    cpu: float
    pg_cpu: float


async def gateway_round(
    gw: Gateway, files: int, concurrency: int, body: bytes, pg: PostgresServer, on_pg: bool
) -> Round:
    pg_pid = pg.pid if on_pg else None
    headers = {"Authorization": f"Bearer {gw.key}", "Content-Type": "application/octet-stream"}
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post() -> None:
            start = time.perf_counter()
            async with session.post(f"{gw.base}/v1/files", data=body, headers=headers) as resp:
                if resp.status != 201:
                    raise RuntimeError(f"upload answered {resp.status}: {await resp.text()}")
                await resp.read()
            latencies.append(time.perf_counter() - start)

        async def run(count: int) -> None:
            todo = iter(range(count))

            async def worker() -> None:
                for _ in todo:
                    await post()

            await asyncio.gather(*(worker() for _ in range(concurrency)))

        await run(concurrency)  # warm: open the client's connections
        latencies.clear()
        await settle(pg)
        cpu0 = proc_cpu(gw.proc.pid)
        pg0 = tree_cpu(pg_pid) if pg_pid else {}
        start = time.perf_counter()
        await run(files)
        wall = time.perf_counter() - start
        cpu1 = proc_cpu(gw.proc.pid)
        pg_cpu = cpu_delta(pg0, tree_cpu(pg_pid)) if pg_pid else 0.0
    assert cpu0 is not None and cpu1 is not None
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return Round(files / wall, cuts[49], cuts[98], (cpu1[1] - cpu0[1]) / files, pg_cpu / files)


async def gateway_level(
    tmp: Path, pg: PostgresServer, files: int, repeat: int
) -> dict[str, list[Round]]:
    """Every round per database; the two alternate, first one then the
    other leading."""
    body = os.urandom(4096)
    gateways: dict[str, Gateway] = {}
    database = await pg.create_database()
    try:
        gateways["sqlite"] = Gateway(tmp, "gw-sqlite", "")
        gateways["postgresql"] = Gateway(tmp, "gw-pg", pg.url(database))
        for gw in gateways.values():
            gw.wait_ready()
        rounds: dict[str, list[Round]] = {n: [] for n in gateways}
        names = list(gateways)
        for rep in range(repeat):
            for name in names if rep % 2 == 0 else names[::-1]:
                on_pg = name == "postgresql"
                got = await gateway_round(gateways[name], files, CONCURRENCY, body, pg, on_pg)
                rounds[name].append(got)
                print(
                    f"  round {rep + 1}/{repeat} {name:<10} {got.rate:7.0f} req/s "
                    f"p50 {got.p50 * 1e3:6.1f} ms  p99 {got.p99 * 1e3:6.1f} ms",
                    flush=True,
                )
    finally:
        for gw in gateways.values():
            gw.stop()
        await pg.drop_database(database)
    return rounds


# ------------------------------------------------------------------ report
def store_table(
    results: dict[tuple[str, int], list[StoreRun]], count: int, repeat: int
) -> list[str]:
    lines = [
        f"Store level: {count} uploads (api_keys.get + create_upload + activate), "
        f"median of {repeat}; ratios: median (min-max) of the {repeat} same-repeat ratios",
        "",
        "| database | concurrency | target | µs/upload | filestore/baseline "
        "| client CPU µs/upload | CPU filestore/baseline | PG server CPU µs/upload |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for db in ("sqlite", "pg"):
        for conc in (1, CONCURRENCY):
            if (f"{db}/filestore", conc) not in results:
                continue
            base = results[(f"{db}/baseline", conc)]
            for who in ("baseline", "filestore"):
                runs = results[(f"{db}/{who}", conc)]
                mine = who == "filestore"
                ratio = paired(runs, base, "wall") if mine else ""
                cpu_ratio = paired(runs, base, "cpu") if mine else ""
                server = f"{median_of(runs, 'server_cpu') * 1e6:.0f}" if db == "pg" else "-"
                label = {"sqlite": "SQLite", "pg": "PostgreSQL"}[db]
                lines.append(
                    f"| {label} | {conc} | {who} | {median_of(runs, 'wall') * 1e6:.0f} | {ratio} "
                    f"| {median_of(runs, 'cpu') * 1e6:.0f} | {cpu_ratio} | {server} |"
                )
    return lines


def gateway_table(results: dict[str, list[Round]], files: int, repeat: int) -> list[str]:
    lines = [
        f"Gateway level: {files} x 4 KiB uploads, {CONCURRENCY} concurrent, median of {repeat}; "
        f"ratios: median (min-max) of the {repeat} same-round ratios",
        "",
        "| database | req/s | p50 ms | p99 ms | gateway CPU µs/req | PG CPU µs/req |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, rounds in results.items():
        pg_cpu = f"{median_of(rounds, 'pg_cpu') * 1e6:.0f}" if name == "postgresql" else "-"
        lines.append(
            f"| {name} | {median_of(rounds, 'rate'):.0f} | {median_of(rounds, 'p50') * 1e3:.1f} "
            f"| {median_of(rounds, 'p99') * 1e3:.1f} | {median_of(rounds, 'cpu') * 1e6:.0f} "
            f"| {pg_cpu} |"
        )
    s, p = results["sqlite"], results["postgresql"]
    lines.append(
        f"| ratio PG/SQLite | {paired(p, s, 'rate')} | {paired(p, s, 'p50')} "
        f"| {paired(p, s, 'p99')} | {paired(p, s, 'cpu')} | |"
    )
    return lines


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="N=200, 2 repeats, 200 files, 2 gateway rounds"
    )
    parser.add_argument("--uploads", type=int, help="store-level uploads per run (default 2000)")
    parser.add_argument("--repeat", type=int, help="store-level repeats (median; default 5)")
    parser.add_argument("--files", type=int, help="gateway uploads per round (default 1000)")
    parser.add_argument("--rounds", type=int, help="gateway rounds per database (default 3)")
    parser.add_argument("--skip", choices=("store", "gateway"), action="append", default=[])
    args = parser.parse_args()
    count = args.uploads or (200 if args.quick else 2000)
    repeat = args.repeat or (2 if args.quick else 5)
    files = args.files or (200 if args.quick else 1000)
    rounds = args.rounds or (2 if args.quick else 3)

    load0 = os.getloadavg()[0]
    pg = PostgresServer.start(settings=DURABLE)
    try:
        version = await _pg_version(pg)
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp_name:
            tmp = Path(tmp_name)
            store: dict[tuple[str, int], list[StoreRun]] = {}
            gateway: dict[str, list[Round]] = {}
            if "store" not in args.skip:
                print("store level:", flush=True)
                place = Place(tmp, pg)
                names = ["sqlite/filestore", "sqlite/baseline", "pg/filestore", "pg/baseline"]
                store = await store_level(place, names, count, repeat)
            if "gateway" not in args.skip:
                print("gateway level:", flush=True)
                gateway = await gateway_level(tmp, pg, files, rounds)
    finally:
        pg.stop()

    print()
    print(f"`{command_line()}`")
    print()
    print(
        f"{os.cpu_count()} CPUs, load average {load0:.1f} -> {os.getloadavg()[0]:.1f}; "
        f"{version}; PostgreSQL with "
        + ", ".join(f"{k}={v}" for k, v in DURABLE.items())
        + "; SQLite WAL, synchronous=FULL, secure_delete=ON"
    )
    if store:
        print()
        print("\n".join(store_table(store, count, repeat)))
    if gateway:
        print()
        print("\n".join(gateway_table(gateway, files, rounds)))


async def _pg_version(pg: PostgresServer) -> str:
    conn = await pg.connect()
    try:
        return str(await conn.fetchval("SELECT version()")).split(" on ")[0]
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
