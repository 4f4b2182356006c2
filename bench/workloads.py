"""The workloads, each run on every target able to, with the targets
alternated run by run (and the order rotated each round) so that drift in
the machine's speed falls on all of them alike.

* transfers of one size (1 MiB, 64 MiB, 1 GiB): upload then download, MB/s,
  with the server tree's CPU and peak RSS sampled from ``/proc`` during each;
* small files: N uploads of 4 KiB with C in flight on keep-alive
  connections, then N downloads of them: req/s, p50, p99, server CPU µs per
  request;
* purge: N files seeded expired (:mod:`bench.seed`), then one pass through
  the running server (``POST /v1/purge/run``): files/s; on S3 also boto3's
  ``delete_object`` on 16 threads and ``delete_objects`` in batches of 1,000
  on the same server; and a pass over N live files with none expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from bench.procs import Sampler
from bench.seed import put_objects, seed
from bench.targets import MIB, FilestoreTarget, Payload, Target

GIB = 1 << 30
#: Bytes the client buffers per connection before it stops reading.
READ_BUFSIZE = 4 * MIB


@dataclass
class Result:
    """The runs of one target on one workload, one direction."""

    target: str
    workload: str
    direction: str
    unit: str
    runs: list[float]
    extra: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.runs) if self.runs else float("nan")

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "median": self.median}


@dataclass
class Results:
    items: list[Result] = field(default_factory=list)

    def add(self, result: Result) -> Result:
        self.items.append(result)
        return result

    def get(self, target: str, workload: str, direction: str) -> Result | None:
        for item in self.items:
            if (item.target, item.workload, item.direction) == (target, workload, direction):
                return item
        return None


#: Called around one target's runs of one workload (py-spy, when asked).
Hook = Callable[[Target, str], contextlib.AbstractContextManager[None]]


def no_hook(_target: Target, _workload: str) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def rounds(
    targets: list[Target], repeat: int, settle: Callable[[], None] = os.sync
) -> Iterator[tuple[int, Target]]:
    """(round, target) with the order rotated each round: A B C, B C A, ...

    ``settle`` (``sync``) runs before each, untimed: a target that does not
    fsync (plain aiohttp, nginx, tus) leaves its writes to the kernel's
    writeback, and without it that flush lands in whichever target runs
    next, charging a durable server for another's deferred writes (seen as
    one slow round in three in the large uploads and on PostgreSQL)."""
    for r in range(repeat):
        print(f"  round {r + 1}/{repeat}", file=sys.stderr, flush=True)
        shift = r % len(targets) if targets else 0
        for target in targets[shift:] + targets[:shift]:
            settle()
            yield r, target


def _session(limit: int = 1) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, force_close=False),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=600),
        auto_decompress=False,
        # A deeper buffer than the 64 KiB default: fewer pauses of the socket
        # and fewer, larger reads, so the client keeps up with sendfile.
        read_bufsize=READ_BUFSIZE,
    )


def _sampler(target: Target) -> contextlib.AbstractContextManager[Any]:
    return Sampler(target.pid) if target.pid else contextlib.nullcontext(None)


@dataclass
class Transfer:
    """Upload and download of one size."""

    name: str
    size: int

    def run(
        self,
        loop: asyncio.Runner,
        targets: list[Target],
        repeat: int,
        results: Results,
        hook: Hook = no_hook,
    ) -> None:
        able = [t for t in targets if "transfer" in t.abilities]
        payload = Payload.make(self.size)
        ups: dict[str, list[float]] = {t.name: [] for t in able}
        downs: dict[str, list[float]] = {t.name: [] for t in able}
        cpu_up: dict[str, float] = dict.fromkeys(ups, 0.0)
        cpu_down: dict[str, float] = dict.fromkeys(ups, 0.0)
        peak: dict[str, int] = dict.fromkeys(ups, 0)
        with contextlib.ExitStack() as hooks:
            for t in able:
                hooks.enter_context(hook(t, self.name))
            for _round, target in rounds(able, repeat):
                up, down, cu, cd, rss = loop.run(self._once(target, payload))
                ups[target.name].append(self.size / up / 1e6)
                cpu_up[target.name] += cu
                if down is not None:
                    downs[target.name].append(self.size / down / 1e6)
                    cpu_down[target.name] += cd
                peak[target.name] = max(peak[target.name], rss)
        for t in able:
            gib = self.size * len(ups[t.name]) / GIB
            extra = {"peak_rss_mib": peak[t.name] / MIB, "idle_rss_mib": t.idle_rss / MIB}
            if t.pid:
                extra["cpu_s_per_gib"] = cpu_up[t.name] / gib
            results.add(Result(t.name, self.name, "upload", "MB/s", ups[t.name], dict(extra)))
            if downs[t.name]:
                if t.pid:
                    extra["cpu_s_per_gib"] = cpu_down[t.name] / gib
                results.add(Result(t.name, self.name, "download", "MB/s", downs[t.name], extra))

    async def _once(
        self, target: Target, payload: Payload
    ) -> tuple[float, float | None, float, float, int]:
        await target.prepare(payload)
        async with _session() as session:
            with _sampler(target) as s_up:
                start = time.perf_counter()
                handle = await target.upload(session, payload)
                up = time.perf_counter() - start
            down = None
            rss = s_up.peak_rss if s_up else 0
            cpu_down = 0.0
            if target.can_download():
                with _sampler(target) as s_down:
                    start = time.perf_counter()
                    got = await target.download(session, handle)
                    down = time.perf_counter() - start
                if got != payload.size:
                    raise RuntimeError(f"{target.name}: downloaded {got} of {payload.size} bytes")
                if s_down:
                    rss, cpu_down = max(rss, s_down.peak_rss), s_down.cpu
            await target.delete(session, handle)
        return up, down, s_up.cpu if s_up else 0.0, cpu_down, rss


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class _Phase:
    """One timed phase of :class:`Small` (per request: CPU of the server's
    tree, of its main threads alone, and context switches of its threads)."""

    rate: float
    latencies: list[float]
    cpu_us: float
    main_cpu_us: float
    switches: float


@dataclass
class Small:
    """``count`` uploads of ``size`` bytes, ``concurrency`` in flight on
    keep-alive connections, then the same files downloaded."""

    name: str
    count: int
    size: int = 4096
    concurrency: int = 32
    #: At most this many rounds, whatever ``--repeat`` says (``--quick``).
    max_repeat: int | None = None

    def run(
        self,
        loop: asyncio.Runner,
        targets: list[Target],
        repeat: int,
        results: Results,
        hook: Hook = no_hook,
    ) -> None:
        able = [t for t in targets if "small" in t.abilities]
        repeat = min(repeat, self.max_repeat or repeat)
        payload = Payload.make(self.size)
        figures: dict[tuple[str, str], list[_Phase]] = {}
        with contextlib.ExitStack() as hooks:
            for t in able:
                hooks.enter_context(hook(t, self.name))
            for _round, target in rounds(able, repeat):
                for direction, got in loop.run(self._once(target, payload)).items():
                    figures.setdefault((target.name, direction), []).append(got)
        for (name, direction), runs in figures.items():
            latencies = [lat for run in runs for lat in run.latencies]
            results.add(
                Result(
                    name,
                    self.name,
                    direction,
                    "req/s",
                    [run.rate for run in runs],
                    {
                        "p50_ms": _percentile(latencies, 0.50) * 1000,
                        "p99_ms": _percentile(latencies, 0.99) * 1000,
                        "cpu_us_per_request": statistics.median(r.cpu_us for r in runs),
                        "main_thread_cpu_us_per_request": statistics.median(
                            r.main_cpu_us for r in runs
                        ),
                        "switches_per_request": statistics.median(r.switches for r in runs),
                        "requests": float(self.count),
                        "concurrency": float(self.concurrency),
                    },
                )
            )

    async def _phase(
        self, target: Target, jobs: list[Callable[[], Any]]
    ) -> tuple[_Phase, list[Any]]:
        latencies: list[float] = []
        out: list[Any] = [None] * len(jobs)
        queue = iter(range(len(jobs)))

        async def worker() -> None:
            for i in queue:
                start = time.perf_counter()
                out[i] = await jobs[i]()
                latencies.append(time.perf_counter() - start)

        with _sampler(target) as sampler:
            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
            elapsed = time.perf_counter() - start
        n = len(jobs)
        if sampler is None:
            return _Phase(n / elapsed, latencies, 0.0, 0.0, 0.0), out
        return (
            _Phase(
                n / elapsed,
                latencies,
                sampler.cpu / n * 1e6,
                sampler.main_cpu / n * 1e6,
                sampler.switches / n,
            ),
            out,
        )

    async def _once(
        self, target: Target, payload: Payload
    ) -> dict[str, _Phase]:
        async with _session(self.concurrency) as session:
            # Open the keep-alive connections before the clock starts.
            warm = await asyncio.gather(
                *(target.upload(session, payload) for _ in range(self.concurrency))
            )
            for handle in warm:
                await target.delete(session, handle)

            def up() -> Any:
                return target.upload(session, payload)

            uploads, handles = await self._phase(target, [up] * self.count)
            got = {"upload": uploads}

            def fetch(handle: Any) -> Callable[[], Any]:
                return lambda: target.download(session, handle)

            downloads, sizes = await self._phase(target, [fetch(h) for h in handles])
            if any(size != payload.size for size in sizes):
                raise RuntimeError(f"{target.name}: a small download came back short")
            got["download"] = downloads
        # The files stay: a few MiB per round, gone with the run's directory.
        return got


@dataclass
class Purge:
    """One pass through the running server over ``count`` seeded files,
    expired (``live=False``: files/s) or all live (``live=True``: seconds of
    a pass that finds nothing to do). ``s3_count`` caps the count on S3,
    where seeding goes at the server's PUT rate."""

    name: str
    count: int
    live: bool = False
    s3_count: int | None = None

    def run(
        self,
        loop: asyncio.Runner,
        targets: list[Target],
        repeat: int,
        results: Results,
        hook: Hook = no_hook,
    ) -> None:
        del repeat  # one pass each: seeding dominates and a pass consumes its files
        able = [t for t in targets if isinstance(t, FilestoreTarget) and "purge" in t.abilities]
        for target in able:
            count = self.count
            if target.s3 is not None and self.s3_count is not None:
                count = min(count, self.s3_count)
            loop.run(self._prime(target))
            loop.run(seed(target, count, 86_000.0 if self.live else -10.0))
            with hook(target, self.name), _sampler(target) as sampler:
                report, wall = loop.run(self._pass(target))
            note = ""
            if not self.live and report["purged"] != count:
                note = f"purged {report['purged']} of {count}, failed {report['failed']}"
            extra = {
                "files": float(count),
                "server_seconds": float(report["duration_seconds"]),
                "wall_seconds": wall,
                "cpu_s": sampler.cpu if sampler else 0.0,
            }
            if self.live:
                results.add(Result(target.name, self.name, "pass", "s", [wall], extra, note))
            else:
                results.add(
                    Result(target.name, self.name, "pass", "files/s", [count / wall], extra, note)
                )
                if target.s3 is not None:
                    self._s3_baselines(target, count, results)

    async def _prime(self, target: FilestoreTarget) -> None:
        """One real upload, so the database holds a file under the live KEK
        (the seeded rows copy it), and one pass to start from a clean state."""
        async with _session() as session:
            await target.upload(session, Payload.make(1000))
            await target.purge_pass(session)

    async def _pass(self, target: FilestoreTarget) -> tuple[dict[str, Any], float]:
        async with _session() as session:
            start = time.perf_counter()
            report = await target.purge_pass(session)
            return report, time.perf_counter() - start

    def _s3_baselines(self, target: FilestoreTarget, count: int, results: Results) -> None:
        """The same number of objects deleted by boto3 on the same server."""
        assert target.s3 is not None
        client, bucket, _prefix = target.s3
        keys = [f"baseline/{i:08d}" for i in range(count)]

        put_objects(client, bucket, keys)
        start = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda key: client.delete_object(Bucket=bucket, Key=key), keys))
        wall = time.perf_counter() - start
        results.add(
            Result(
                "boto3-delete_object",
                self.name,
                "pass",
                "files/s",
                [count / wall],
                {"files": float(count), "threads": 16.0},
                note="boto3 delete_object on 16 threads, same SeaweedFS",
            )
        )

        put_objects(client, bucket, keys)
        start = time.perf_counter()
        for i in range(0, count, 1000):
            batch = [{"Key": key} for key in keys[i : i + 1000]]
            client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        wall = time.perf_counter() - start
        results.add(
            Result(
                "boto3-delete_objects",
                self.name,
                "pass",
                "files/s",
                [count / wall],
                {"files": float(count), "batch": 1000.0},
                note="boto3 delete_objects in batches of 1,000, same SeaweedFS",
            )
        )


Workload = Transfer | Small | Purge

#: Every workload by name, in the order a run takes them.
ALL: dict[str, Workload] = {
    w.name: w
    for w in (
        Transfer("1MiB", MIB),
        Transfer("64MiB", 64 * MIB),
        Transfer("1GiB", 1024 * MIB),
        Small("4KiB", 1000),
        Purge("purge-10k", 10_000),
        Purge("purge-100k", 100_000),
        Purge("live-100k", 100_000, live=True),
    )
}
#: What ``--quick`` runs (no 1 GiB, no 100k purges; S3 purge of 2,000).
QUICK = ("1MiB", "64MiB", "4KiB", "purge-10k")
QUICK_S3_PURGE = 2000
#: Rounds of the 4 KiB workload with ``--quick``.
QUICK_SMALL_ROUNDS = 2


def workload(name: str, *, quick: bool = False) -> Workload:
    if name not in ALL:
        raise KeyError(f"no workload {name!r} (choose from {', '.join(ALL)})")
    chosen = ALL[name]
    if quick and isinstance(chosen, Purge):
        return Purge(chosen.name, chosen.count, chosen.live, QUICK_S3_PURGE)
    if quick and isinstance(chosen, Small):
        return Small(chosen.name, chosen.count, chosen.size, chosen.concurrency, QUICK_SMALL_ROUNDS)
    return chosen


def sized(name: str, size: int) -> Transfer:
    """A transfer workload of another size (the test's tiny runs)."""
    return Transfer(name, size)


def small(name: str, count: int, size: int = 4096, concurrency: int = 32) -> Small:
    return Small(name, count, size, concurrency)
