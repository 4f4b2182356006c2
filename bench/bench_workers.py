"""Small-file uploads against ``filestore serve`` with ONE and with TWO
workers (``--workers 2``), alternated in one run, as a ratio.

    PYTHONPATH=. .venv/bin/python bench/bench_workers.py            # 5 rounds, 2,000 uploads each
    PYTHONPATH=. .venv/bin/python bench/bench_workers.py --quick    # 1 round, 500 uploads
    PYTHONPATH=. .venv/bin/python bench/bench_workers.py --backends sqlite

Why this shape: the claim of ``--workers`` is that a second process uses a
second core; the only honest test is real processes started the way an
operator starts them (``tests/support/standalone.py``: the embedded SQLite
or a real PostgreSQL, the keyring, local disk) against the same workload, with
the two setups alternated round by round (1, 2, 2, 1, 1, 2, …) so drift in
the machine's load hits both alike. Each round gets a fresh data directory
(and database), so none inherits another's files.

The load comes from a separate client process (``--client``, started by this
script): aiohttp with ``CONCURRENCY`` kept-alive connections, each sending
4 KiB uploads back to back (``POST /v1/files``, 1 h TTL) until ``COUNT``
are done. Per round it reports req/s, p50 and p99 latency, the statuses
seen (anything but 201 is a failure), and CPU seconds of the server's
process tree (supervisor and workers) and of the client, per request. On a
2-core machine the client's own CPU competes with the two workers: its
figure says how much of the machine was left for them.

The ratio is the median req/s with two workers over the median with one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._proc import descendants, proc_cpu

SIZE = 4096
CONCURRENCY = 32


# ------------------------------------------------------------------ client
async def _drive(url: str, key: str, count: int, concurrency: int, size: int) -> dict[str, Any]:
    import aiohttp

    body = os.urandom(size)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/octet-stream"}
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    todo = iter(range(count))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        # One warm-up request per connection: connections and the server's
        # first-request work are not counted.
        async def one() -> int:
            async with session.post(
                f"{url}/v1/files?filename=b.bin&ttl=1h", data=body, headers=headers
            ) as resp:
                await resp.read()
                return resp.status

        await asyncio.gather(*(one() for _ in range(concurrency)))

        async def worker() -> None:
            for _ in todo:
                began = time.perf_counter()
                try:
                    status = await one()
                except aiohttp.ClientError:
                    status = 0
                latencies.append(time.perf_counter() - began)
                statuses[status] += 1

        cpu0 = time.process_time()
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - began
        cpu = time.process_time() - cpu0
    latencies.sort()
    return {
        "wall": wall,
        "req_s": count / wall,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "statuses": {str(k): v for k, v in statuses.items()},
        "client_cpu": cpu,
    }


def client_main(argv: list[str]) -> None:
    url, key, count, concurrency, size = argv
    result = asyncio.run(_drive(url, key, int(count), int(concurrency), int(size)))
    print(json.dumps(result), flush=True)


def run_client(url: str, key: str, count: int, concurrency: int, size: int) -> dict[str, Any]:
    """The client in a process of its own; its JSON result."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    sizes = (count, concurrency, size)
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_workers", "--client", url, key, *map(str, sizes)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the client failed:\n{done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# ------------------------------------------------------------------ server
def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of ``root`` and every process below it (the supervisor
    counts its reaped workers; live workers are read one by one)."""
    total = 0.0
    for pid in descendants(root):
        got = proc_cpu(pid, reaped=True)
        if got is not None:
            total += got[1]
    return total


@dataclass
class Round:
    backend: str
    workers: int
    result: dict[str, Any]
    server_cpu: float

    @property
    def failures(self) -> int:
        return sum(v for k, v in self.result["statuses"].items() if k != "201")


@contextlib.asynccontextmanager
async def _database(backend: str, pg: Any) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield ""
        return
    name = await pg.create_database()
    try:
        yield pg.url(name)
    finally:
        await pg.drop_database(name)


async def one_round(backend: str, workers: int, pg: Any, count: int) -> Round:
    from tests.support.standalone import standalone_server

    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        async with _database(backend, pg) as url, standalone_server(
            Path(tmp), database_url=url, workers=workers
        ) as server:
            cpu0 = tree_cpu_seconds(server.pid)
            result = await asyncio.to_thread(
                run_client, server.url, server.client_key, count, CONCURRENCY, SIZE
            )
            cpu = tree_cpu_seconds(server.pid) - cpu0
    return Round(backend, workers, result, cpu)


def _order(rounds: int) -> list[int]:
    """1, 2, 2, 1, 1, 2, …: each setup goes first as often as the other."""
    out: list[int] = []
    for n in range(rounds):
        out += [1, 2] if n % 2 == 0 else [2, 1]
    return out


def report(rounds: list[Round], count: int, load_before: float) -> str:
    lines = [
        f"{count} x {SIZE // 1024} KiB uploads per round, concurrency {CONCURRENCY}, "
        f"load average (1 min) before: {load_before:.2f}, after: {os.getloadavg()[0]:.2f}",
        "",
        "| backend | workers | req/s (rounds) | median req/s | p50 ms | p99 ms "
        "| server CPU µs/req | client CPU µs/req | failures |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    ratios: list[str] = []
    for backend in dict.fromkeys(r.backend for r in rounds):
        medians: dict[int, float] = {}
        for workers in (1, 2):
            mine = [r for r in rounds if r.backend == backend and r.workers == workers]
            if not mine:
                continue
            rates = [r.result["req_s"] for r in mine]
            medians[workers] = statistics.median(rates)
            p50 = statistics.median(r.result["p50_ms"] for r in mine)
            p99 = statistics.median(r.result["p99_ms"] for r in mine)
            server = statistics.median(1e6 * r.server_cpu / count for r in mine)
            client = statistics.median(1e6 * r.result["client_cpu"] / count for r in mine)
            lines.append(
                f"| {backend} | {workers} | {', '.join(f'{x:.0f}' for x in rates)} "
                f"| {medians[workers]:.0f} | {p50:.1f} | {p99:.1f} | {server:.0f} "
                f"| {client:.0f} | {sum(r.failures for r in mine)} |"
            )
        if len(medians) == 2:
            ratios.append(f"{backend}: 2 workers / 1 = **{medians[2] / medians[1]:.2f}x**")
    return "\n".join([*lines, "", *ratios])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 500 uploads")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    rounds_n, count = (1, 500) if args.quick else (args.rounds, args.count)
    backends = [b for b in args.backends.split(",") if b]
    load_before = os.getloadavg()[0]
    pg = None
    if "postgresql" in backends:
        from tests.support.postgres import PostgresServer

        pg = await asyncio.to_thread(PostgresServer.start)
    rounds: list[Round] = []
    try:
        for backend in backends:
            for workers in _order(rounds_n):
                done = await one_round(backend, workers, pg, count)
                print(
                    f"{backend} workers={workers}: {done.result['req_s']:.0f} req/s, "
                    f"statuses {done.result['statuses']}",
                    flush=True,
                )
                rounds.append(done)
    finally:
        if pg is not None:
            await asyncio.to_thread(pg.stop)
    print()
    print(report(rounds, count, load_before))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2:])
    else:
        asyncio.run(main())
