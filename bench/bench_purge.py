"""Cost of a purge pass on the embedded default (SQLite + local disk).

    .venv/bin/python bench/bench_purge.py                 # 10,000 expired; 100,000 live
    .venv/bin/python bench/bench_purge.py --expired 2000 --live 20000

Reports (1) the time to purge N expired files — every step real: crypto-erase
with WAL truncation, unlink + directory fsync, verification, audit records,
checkpoint — and (2) the time of a pass with L live files and none expired,
against the same pass on an empty store, as a ratio (near 1.0 means the pass
does not grow with live files).

Setup writes rows, keys and blob files directly (one transaction, no fsync)
so it takes seconds; what is timed is only the pass.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from filestore.clock import ManualClock
from filestore.config import Settings
from filestore.services import open_services
from scheduler.purge import purge_pass
from scheduler.runner import PurgeScheduler

NOW = 1_900_000_000.0


def populate(settings: Settings, count: int, expires_at: float, kek_id: int) -> None:
    """Insert ``count`` active files with keys and small blob files."""
    conn = sqlite3.connect(settings.database_path)
    blobs = settings.storage_dir / "blobs"
    rows, keys = [], []
    for _ in range(count):
        fid = secrets.token_bytes(16)
        rows.append((fid, "bench", kek_id, NOW - 100, expires_at, 1000, os.urandom(96)))
        keys.append((fid, kek_id, os.urandom(60)))
        name = fid.hex()
        shard = blobs / name[0:2] / name[2:4]
        shard.mkdir(parents=True, exist_ok=True)
        (shard / name).write_bytes(os.urandom(1000 + 88 + 16))
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


async def timed_pass(settings: Settings, runs: int) -> tuple[float, float]:
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


async def fresh(root: Path, name: str) -> tuple[Settings, int]:
    settings = Settings.load(env={}, data_dir=root / name)
    async with open_services(settings, ManualClock(NOW)) as svc:
        kek = svc.keyring.active_id
    return settings, kek


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--expired", type=int, default=10_000)
    parser.add_argument("--live", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)

        settings, kek = await fresh(root, "expired")
        populate(settings, args.expired, NOW - 10, kek)
        async with open_services(settings, ManualClock(NOW)) as svc:
            start = time.perf_counter()
            report = await purge_pass(svc.metadata.files, svc.lifecycle.eraser)
            elapsed = time.perf_counter() - start
        assert report.purged == args.expired, report
        print(
            f"purge of {args.expired} expired files: {elapsed:.2f} s "
            f"({args.expired / elapsed:.0f} files/s)"
        )

        empty, _ = await fresh(root, "empty")
        base_bare, base_full = await timed_pass(empty, args.runs)
        live, kek = await fresh(root, "live")
        populate(live, args.live, NOW + 86_000, kek)
        bare, full = await timed_pass(live, args.runs)
        print(f"pass with none expired, median of {args.runs}:")
        print(
            f"  empty store      purge_pass {base_bare * 1000:7.2f} ms   "
            f"full run {base_full * 1000:7.2f} ms"
        )
        print(
            f"  {args.live:>7} live    purge_pass {bare * 1000:7.2f} ms   "
            f"full run {full * 1000:7.2f} ms"
        )
        print(
            f"  ratio            purge_pass {bare / base_bare:7.2f}x    "
            f"full run {full / base_full:7.2f}x"
        )


if __name__ == "__main__":
    asyncio.run(main())
