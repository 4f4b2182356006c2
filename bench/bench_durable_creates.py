"""How many small files a second this disk can make durable, with no server.

    PYTHONPATH=. .venv/bin/python bench/bench_durable_creates.py
    PYTHONPATH=. .venv/bin/python bench/bench_durable_creates.py --threads 1,8,32 --python

Why: small uploads run at about 1,500 a second here, for filestore and for
the durable aiohttp baseline alike. Before blaming the code (or hoping a
second worker doubles it), this asks whether that is simply the disk's rate
of durable creates. Each thread makes 4 KiB files in the 256 shards of a
fresh directory exactly as the local store makes a small blob (create with
``O_EXCL`` and ``O_SYNC``, write, close, fsync the shard), through the C
helper or, with ``--python``, the store's Python path, for ``--seconds``,
and the script prints files a second and the process's CPU per file at
each thread count. The directory is ``$BENCH_DIR`` (default the system's
temporary directory), on the disk being asked about, and is removed after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time

from filestore.storage import local

SIZE = 4096 + 60  # a 4 KiB file's blob: header, one sealed chunk, final chunk


def measure(root: str, threads: int, seconds: float, write: local._WriteNew) -> tuple[float, float]:
    """(files a second, CPU µs a file) for ``threads`` writers on ``root``."""
    shutil.rmtree(root, ignore_errors=True)
    os.mkdir(root, 0o700)
    for shard in range(256):
        os.mkdir(os.path.join(root, f"{shard:02x}"), 0o700)
    data = os.urandom(SIZE)
    made = [0] * threads
    deadline = time.perf_counter() + seconds

    def work(k: int) -> None:
        n = 0
        while time.perf_counter() < deadline:
            write(os.path.join(root, f"{(k * 7 + n) % 256:02x}"), f"{k}-{n}", data, 0o600)
            n += 1
        made[k] = n

    cpu = time.process_time()
    start = time.perf_counter()
    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - start
    total = sum(made)
    return total / wall, (time.process_time() - cpu) / max(total, 1) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2,4,8,16,32")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--python", action="store_true", help="the store's Python path")
    args = parser.parse_args()
    write = local._write_new if args.python else local.NATIVE_WRITE
    if write is None:
        parser.error("the C helper was not built; pass --python")
    base = tempfile.mkdtemp(prefix="durable-creates-", dir=os.environ.get("BENCH_DIR"))
    try:
        path = "Python path" if args.python else "C helper"
        print(f"{path}, {args.seconds:g} s each, in {base}")
        for count in (int(t) for t in args.threads.split(",")):
            rate, cpu = measure(os.path.join(base, "shards"), count, args.seconds, write)
            print(f"{count:3d} threads: {rate:8,.0f} files/s, {cpu:5.0f} µs of CPU a file")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
