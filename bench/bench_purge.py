"""Cost of a purge pass, on local disk + SQLite and on S3 (SeaweedFS) + SQLite.

    PYTHONPATH=. .venv/bin/python bench/bench_purge.py                # 2,000 and 10,000
    PYTHONPATH=. .venv/bin/python bench/bench_purge.py --counts 2000 --targets s3
    PYTHONPATH=. .venv/bin/python bench/bench_purge.py --live 100000  # + the idle pass

Reports, for each count N of expired files, the files/s of one purge pass —
every step real: claim, crypto-erase with WAL truncation, blob removal and
verification, one audit record per file, ``purged`` — on

* local disk (unlink + directory fsync, then a stat must find nothing);
* S3 on a SeaweedFS started here, and in the same run, against the same
  server and bucket, the strongest plain-boto3 deletions of N objects of the
  same size: ``delete_object`` on 16 threads and ``delete_objects`` in
  batches of 1,000 (no verification, no database). Targets alternate run by
  run; the ratios are filestore / batched and filestore / threaded.

``--s3-live L`` leaves L live objects in the bucket besides the expired
ones, to show what a dense bucket costs the listing that verifies a batch.
``--live L`` adds the old second table: a pass with L live files and none
expired against one on an empty store (near 1.0 means it does not grow).

Setup writes rows, keys and blobs directly (rows in one transaction, blob
files then one ``sync``, objects through boto3 on 16 threads), so only the
pass is timed.
``BENCH_DIR`` chooses where the temporary files go.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # for tests.support.seaweed

from bench._report import command_line  # noqa: E402
from filestore.clock import ManualClock  # noqa: E402
from filestore.config import Settings  # noqa: E402
from filestore.services import open_services  # noqa: E402
from scheduler.purge import purge_pass  # noqa: E402
from scheduler.runner import PurgeScheduler  # noqa: E402

NOW = 1_900_000_000.0
#: Ciphertext of a 1,000-byte file: header, one chunk and its tag.
BLOB_SIZE = 1000 + 88 + 16
THREADS = 16
DELETE_BATCH = 1000


def insert_rows(settings: Settings, fids: list[bytes], expires_at: float, kek_id: int) -> None:
    """``fids`` as active files with key rows, in one transaction."""
    rows = [(f, "bench", kek_id, NOW - 100, expires_at, 1000, os.urandom(96)) for f in fids]
    keys = [(f, kek_id, os.urandom(60)) for f in fids]
    conn = sqlite3.connect(settings.database_path)
    with conn:
        conn.executemany(
            "INSERT INTO files (id, tenant, state, kek_id, created_at, expires_at, size, sealed) "
            "VALUES (?, ?, 'active', ?, ?, ?, ?, ?)",
            rows,
        )
        conn.executemany(
            "INSERT INTO file_keys (file_id, kek_id, wrapped_dek) VALUES (?, ?, ?)", keys
        )
    conn.close()


def populate(settings: Settings, count: int, expires_at: float, kek_id: int) -> None:
    """``count`` active files with keys and small blob files on local disk."""
    fids = [secrets.token_bytes(16) for _ in range(count)]
    blobs = settings.storage_dir / "blobs"
    for fid in fids:
        name = fid.hex()
        shard = blobs / name[0:2]
        shard.mkdir(parents=True, exist_ok=True)
        (shard / name).write_bytes(os.urandom(BLOB_SIZE))
    os.sync()  # as committed blobs are: unlinking unwritten ones would cost less
    insert_rows(settings, fids, expires_at, kek_id)


def put_objects(client: Any, bucket: str, keys: list[str]) -> None:
    body = os.urandom(BLOB_SIZE)
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=body), keys))


def populate_s3(
    settings: Settings, client: Any, count: int, expires_at: float, kek_id: int
) -> None:
    """``count`` active files whose blobs are objects in the bucket."""
    fids = [secrets.token_bytes(16) for _ in range(count)]
    put_objects(client, settings.s3_bucket, [settings.s3_prefix + f.hex() for f in fids])
    insert_rows(settings, fids, expires_at, kek_id)


async def fresh(root: Path, name: str, **overrides: Any) -> tuple[Settings, int]:
    settings = Settings.load(env={}, data_dir=root / name, **overrides)
    async with open_services(settings, ManualClock(NOW)) as svc:
        kek = svc.keyring.active_id
    return settings, kek


async def one_pass(settings: Settings, expected: int) -> float:
    """Seconds of one purge pass that must purge ``expected`` files."""
    async with open_services(settings, ManualClock(NOW)) as svc:
        start = time.perf_counter()
        report = await purge_pass(svc.metadata.files, svc.lifecycle.eraser)
        elapsed = time.perf_counter() - start
    if report.purged != expected or report.failed:
        raise RuntimeError(f"the pass purged {report.purged} of {expected}: {report}")
    return elapsed


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def boto3_single(client: Any, bucket: str, keys: list[str]) -> float:
    """Seconds to delete ``keys`` with ``delete_object`` on 16 threads."""
    with ThreadPoolExecutor(THREADS) as pool:
        return timed(
            lambda: list(pool.map(lambda key: client.delete_object(Bucket=bucket, Key=key), keys))
        )


def boto3_batched(client: Any, bucket: str, keys: list[str]) -> float:
    """Seconds to delete ``keys`` with ``delete_objects``, 1,000 a request,
    every reply's ``Errors`` checked."""

    def run() -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            part = keys[start : start + DELETE_BATCH]
            reply = client.delete_objects(
                Bucket=bucket,
                Delete={"Objects": [{"Key": k} for k in part], "Quiet": True},
            )
            if reply.get("Errors"):
                raise RuntimeError(f"delete_objects refused {len(reply['Errors'])} keys")

    return timed(run)


@contextmanager
def seaweed(root: Path) -> Iterator[Any]:
    from tests.support.seaweed import SeaweedServer

    server = SeaweedServer(root / "seaweed")
    server.start()
    saved = {name: os.environ.get(name) for name in server.aws_env()}
    os.environ.update(server.aws_env())  # the blob store reads the boto3 chain
    try:
        yield server
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


async def bench_local(root: Path, count: int, run: int) -> float:
    settings, kek = await fresh(root, f"local-{count}-{run}")
    populate(settings, count, NOW - 10, kek)
    return count / await one_pass(settings, count)


async def bench_s3(
    root: Path, server: Any, count: int, live: int, runs: int
) -> dict[str, list[float]]:
    """files/s of filestore and of both boto3 baselines, alternated run by run."""
    client = server.client(timeout=30.0)
    rates: dict[str, list[float]] = {"filestore": [], "delete_object": [], "delete_objects": []}
    for run in range(runs):
        bucket = server.create_bucket()
        if live:
            put_objects(client, bucket, [f"blobs/{secrets.token_hex(16)}" for _ in range(live)])
        settings, kek = await fresh(root, f"s3-{count}-{run}", **server.settings(bucket))
        populate_s3(settings, client, count, NOW - 10, kek)
        single = [f"base-single/{secrets.token_hex(16)}" for _ in range(count)]
        batched = [f"base-batched/{secrets.token_hex(16)}" for _ in range(count)]
        put_objects(client, bucket, single + batched)

        async def ours(settings: Settings = settings) -> None:
            rates["filestore"].append(count / await one_pass(settings, count))

        async def one(bucket: str = bucket, single: list[str] = single) -> None:
            elapsed = await asyncio.to_thread(boto3_single, client, bucket, single)
            rates["delete_object"].append(count / elapsed)

        async def many(bucket: str = bucket, batched: list[str] = batched) -> None:
            elapsed = await asyncio.to_thread(boto3_batched, client, bucket, batched)
            rates["delete_objects"].append(count / elapsed)

        order = [ours, one, many]
        shift = run % len(order)
        for step in order[shift:] + order[:shift]:
            await step()
        server.delete_bucket(bucket)
    return rates


async def idle_pass(settings: Settings, runs: int) -> tuple[float, float]:
    """Median seconds of the bare purge pass and of the scheduler's full run
    (pass + stuck-upload sweep + key epochs + checkpoint)."""
    clock = ManualClock(NOW)
    async with open_services(settings, clock) as svc:
        scheduler = PurgeScheduler(svc)
        await scheduler.run_pass()  # warm up; includes the first orphan listing
        bare, full = [], []
        for _ in range(runs):
            start = time.perf_counter()
            await purge_pass(svc.metadata.files, svc.lifecycle.eraser)
            bare.append(time.perf_counter() - start)
            start = time.perf_counter()
            await scheduler.run_pass()
            full.append(time.perf_counter() - start)
    return statistics.median(bare), statistics.median(full)


async def bench_idle(root: Path, live_count: int, runs: int) -> None:
    empty, _ = await fresh(root, "empty")
    base_bare, base_full = await idle_pass(empty, runs)
    live, kek = await fresh(root, "live")
    populate(live, live_count, NOW + 86_000, kek)
    bare, full = await idle_pass(live, runs)
    print(f"\npass with none expired, median of {runs} (purge_pass, full run):")
    print(f"  empty store   {base_bare * 1000:7.2f} ms   {base_full * 1000:7.2f} ms")
    print(f"  {live_count:>7} live {bare * 1000:7.2f} ms   {full * 1000:7.2f} ms")
    print(f"  ratio         {bare / base_bare:7.2f}x    {full / base_full:7.2f}x")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 10_000])
    parser.add_argument("--targets", nargs="+", choices=["local", "s3"], default=["local", "s3"])
    parser.add_argument("--runs", type=int, default=3, help="runs per count (median)")
    parser.add_argument("--s3-live", type=int, default=0)
    parser.add_argument("--live", type=int, default=0)
    args = parser.parse_args()
    # The throwaway buckets have no lifecycle rules; that warning is not news.
    logging.getLogger("filestore.storage.s3").setLevel(logging.ERROR)
    print(command_line())
    print(f"load average {os.getloadavg()[0]:.2f}; median of {args.runs} runs, files/s\n")
    print(
        "| expired | local disk | S3 filestore | boto3 delete_object x16 | "
        "boto3 delete_objects x1000 | S3 / batched | S3 / threaded |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        with seaweed(root) if "s3" in args.targets else _nothing() as server:
            for count in args.counts:
                cells = [f"{count:,}"]
                if "local" in args.targets:
                    local = [await bench_local(root, count, run) for run in range(args.runs)]
                    cells.append(f"{statistics.median(local):,.0f}")
                else:
                    cells.append("")
                if server is not None:
                    rates = await bench_s3(root, server, count, args.s3_live, args.runs)
                    ours, one, many = (
                        statistics.median(rates[k])
                        for k in ("filestore", "delete_object", "delete_objects")
                    )
                    cells += [f"{ours:,.0f}", f"{one:,.0f}", f"{many:,.0f}",
                              f"{ours / many:.2f}x", f"{ours / one:.2f}x"]  # fmt: skip
                else:
                    cells += [""] * 5
                print("| " + " | ".join(cells) + " |", flush=True)
        if args.s3_live:
            print(f"\n(S3 bucket also holds {args.s3_live:,} live objects)")
        if args.live:
            await bench_idle(root, args.live, args.runs)


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


if __name__ == "__main__":
    asyncio.run(main())
