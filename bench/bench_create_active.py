"""CPU a small upload's database write costs the metadata store, in-process.

    PYTHONPATH=. .venv/bin/python bench/bench_create_active.py
    PYTHONPATH=. .venv/bin/python bench/bench_create_active.py --creates 5000 --concurrency 64

Why: a 4 KiB upload ends in ``files.create_active`` (its row and key row,
made durable by SQLite's commit group). Through the gateway its share of an
upload's CPU is too small to tell from the run-to-run spread of the fsyncs,
so this measures it alone: ``--creates`` calls, ``--concurrency`` in flight
as the gateway's uploads are, on a fresh SQLite database under
``$BENCH_DIR``, best of ``--repeat``; it prints µs of process CPU and wall
time a create and creates a second. Compare a change with its parent by
running this on each, alternately, on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from filestore.metadata.base import FileKey, FileRecord, FileState
from filestore.metadata.sql import SQLMetadataStore

NOW = 1_800_000_000.0


def _active() -> tuple[FileRecord, FileKey]:
    record = FileRecord(
        secrets.token_bytes(16), "t", FileState.ACTIVE, 1, NOW, NOW + 60, size=4096, sealed=b"s" * 8
    )
    return record, FileKey(record.id, 1, b"k" * 60)


async def measure(root: Path, creates: int, concurrency: int, repeat: int) -> tuple[float, float]:
    """(CPU µs a create, creates a second), the run with the least CPU."""
    store = await SQLMetadataStore.open(f"sqlite:///{root / 'bench.db'}")
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            await store.files.create_active(*_active())

    try:
        await asyncio.gather(*(one() for _ in range(200)))  # warm: statements, pages
        best: tuple[float, float] | None = None
        for _ in range(repeat):
            cpu, wall = time.process_time(), time.perf_counter()
            await asyncio.gather(*(one() for _ in range(creates)))
            spent, took = time.process_time() - cpu, time.perf_counter() - wall
            got = (spent / creates * 1e6, creates / took)
            best = got if best is None or got[0] < best[0] else best
    finally:
        await store.close()
    assert best is not None
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="create-active-", dir=os.environ.get("BENCH_DIR")))
    try:
        cpu, rate = asyncio.run(measure(root, args.creates, args.concurrency, args.repeat))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{cpu:.0f} µs of CPU a create, {rate:,.0f} creates/s "
          f"({args.creates} at {args.concurrency} in flight, best of {args.repeat})")  # fmt: skip


if __name__ == "__main__":
    main()
