"""Purge throughput of ONE against THREE ``filestore serve`` instances
purging the same data (PostgreSQL + SeaweedFS S3), in one run, as a ratio.

    PYTHONPATH=. .venv/bin/python bench/bench_cluster_purge.py            # 2,000 files, 3 rounds
    PYTHONPATH=. .venv/bin/python bench/bench_cluster_purge.py --quick    # 500 files, 1 round

Why this shape: the scale-out claim is "several gateways share one database
and one bucket and purge together"; the only honest test of it is real
processes (``tests/support/instances.py``) against a real PostgreSQL and a
real S3 service, with the same data purged by 1 and by 3 of them.

Each round gets a fresh database, a fresh bucket and fresh secrets, so no
round inherits another's dead tuples, volumes or keys. Files are made
through ``open_services`` (every step real: DEK, KEK wrap, encrypted upload
to S3) with a clock two hours in the past and a 60 s TTL, so they are all
expired by the real clock before any instance starts. The instances use
the keyring schedule with ONE keyring file shared by all (they run on one
host; the keyring file is locked for every change), made at the real time
before the files so no instance rotates it during the round. All K
instances are launched at once (the keyring needs no join), and each
starts purging as soon as its scheduler starts, a moment before it prints
"listening on".

Three figures per round:

* ``wall``: from the moment the LAST instance is ready until the database
  shows every file ``purged`` (polled every 50 ms); files purged before that
  moment are left out of the rate (they are shown as ``early``).
* ``audit``: from the first to the last ``file_deleted`` record, by the
  instances' own clocks (one host, one clock): start-up excluded. Records
  of one batch share a time, so the rate counts the files after the first
  batch over the span.
* ``overlap`` (3 instances): only the window in which every instance had
  already recorded and had not yet recorded its last, i.e. all were
  purging: staggered start-up and the tail excluded. Coarse: records come
  in clumps of one batch, so with few batches (``--quick``) it is noise.

A second table gives the CPU seconds the gateways, the weed server and
PostgreSQL spent between last-ready and all-purged, and how many cores the
whole machine was busy meanwhile: on a shared host that tells a purge
limited by this stack's CPU from one starved by other work. Instance log
lines at ERROR/WARNING are counted apart for during the purge and after
SIGTERM (a pass in flight at SIGTERM is cancelled and logged; see the
report), and the first one's exception is shown.

After each round: exactly N ``file_deleted`` records for N distinct files
(the ones made), nothing left under the prefix in the bucket, every
instance exited 0. Rounds alternate 1, 3, 1, 3, ... so drift in the
machine's load hits both alike.

PostgreSQL runs with fsync off (``tests/support/postgres.py``): commits are
cheap here, which flatters any design that commits often.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import re
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from filestore.clock import ManualClock
from filestore.config import Settings
from filestore.crypto import Keyring
from filestore.metadata.sql import SQLMetadataStore
from filestore.services import open_services
from tests.support import db
from tests.support.files import make_file
from tests.support.instances import Instance, Shared
from tests.support.postgres import PostgresServer
from tests.support.seaweed import SeaweedServer

PREFIX = "filestore/"
#: Files made at once during preparation (the DB pool is 10, S3 threads 16).
PREP_CONCURRENCY = 32
#: How often the database is asked how many files are purged.
POLL = 0.05
#: Start-up bound per instance: 3 Python processes on 2 busy cores.
READY_TIMEOUT = 120.0


@dataclass
class Round:
    """What one round measured."""

    instances: int
    files: int
    prep_s: float
    #: Files already purged when the last instance was ready.
    early: int
    wall_s: float
    audit_span_s: float
    #: Files recorded after the first batch's time (the audit rate's numerator).
    audit_after_first: int
    overlap_s: float
    overlap_files: int
    #: Files purged by each instance (audit ``actor``), largest first.
    shares: list[int] = field(default_factory=list)
    #: ERROR/WARNING log lines of the instances while they purged, and
    #: after they were sent SIGTERM (APScheduler's skipped-run warnings,
    #: expected with passes longer than the interval, are not counted).
    faults_during: int = 0
    faults_at_stop: int = 0
    #: Per instance, seconds from the first record: (first, last, files).
    timeline: list[tuple[float, float, int]] = field(default_factory=list)
    load_after: float = 0.0
    #: CPU seconds between last-ready and all-purged: the gateways, the weed
    #: server, the PostgreSQL processes, and the whole machine (all cores,
    #: everyone's work: other users of the host included).
    cpu_gateways: float = 0.0
    cpu_weed: float = 0.0
    cpu_postgres: float = 0.0
    cpu_machine: float = 0.0

    @property
    def wall_rate(self) -> float:
        return (self.files - self.early) / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def audit_rate(self) -> float:
        return self.audit_after_first / self.audit_span_s if self.audit_span_s > 0 else float("nan")

    @property
    def overlap_rate(self) -> float:
        return self.overlap_files / self.overlap_s if self.overlap_s > 0 else float("nan")


def storage_env(seaweed: SeaweedServer, bucket: str) -> dict[str, str]:
    """FILESTORE_S3_* and AWS_* variables for an instance (as the e2e test)."""
    return {
        k.upper() if k.startswith("AWS") else "FILESTORE_" + k.upper(): str(v)
        for k, v in {**seaweed.settings(bucket), **seaweed.aws_env()}.items()
    }


def count_objects(seaweed: SeaweedServer, bucket: str) -> int:
    """Objects under the prefix (paged: a listing holds at most 1,000)."""
    total = 0
    pages = seaweed.admin.get_paginator("list_objects_v2")
    for page in pages.paginate(Bucket=bucket, Prefix=PREFIX):
        total += int(page.get("KeyCount", 0))
    return total


async def prepare(
    url: str, seaweed: SeaweedServer, bucket: str, shared: Shared, root: Path, files: int
) -> set[str]:
    """Make ``files`` already-expired files through the real upload path;
    their public ids. The keyring is made first at the real time, so the
    instances find a current KEK and none rotates during the round."""
    keyring_file = Path(shared.extra_env["FILESTORE_KEYRING_FILE"])
    keyring_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    await asyncio.to_thread(Keyring.load_or_create, keyring_file, time.time())
    settings = Settings.load(
        env={},
        data_dir=root / "prep",
        database_url=url,
        key_schedule="keyring",
        keyring_file=str(keyring_file),
        signing_key_file=str(shared.secrets_dir / "audit-signing.pem"),
        link_key_file=str(shared.secrets_dir / "link-signing.key"),
        **seaweed.settings(bucket),
    )
    # Created two hours ago with a one-minute TTL: expired by the real clock.
    clock = ManualClock(time.time() - 7200)
    limit = asyncio.Semaphore(PREP_CONCURRENCY)
    async with open_services(settings, clock) as svc:

        async def one() -> str:
            async with limit:
                info = await make_file(svc, ttl=60, size=random.randint(1024, 4096))
                return info.id_text

        made = await asyncio.gather(*(one() for _ in range(files)))
    return set(made)


def start_instances(root: Path, shared: Shared, count: int) -> list[Instance]:
    """Launch ``count`` instances at once, then wait for every one; on a
    failure the ones already launched are stopped (by PID) before raising."""
    instances: list[Instance] = []
    try:
        for n in range(count):
            instances.append(Instance(f"gw{n + 1}", root, shared, []))
        for instance in instances:
            instance.wait_ready(READY_TIMEOUT)
    except BaseException:
        for instance in instances:
            instance.stop()
        raise
    return instances


#: The asctime prefix of a log line of an instance (local time).
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (ERROR|WARNING|CRITICAL) ")
#: Expected log lines, not faults: APScheduler skipping a run while a pass
#: longer than the 1 s interval goes on, and the S3 store's advice that the
#: throwaway bucket has no lifecycle rules.
EXPECTED = ("maximum number of running instances reached", "no lifecycle rule")


def log_faults(instances: list[Instance], stop_at: float) -> tuple[int, int]:
    """ERROR/WARNING/CRITICAL lines logged before and after ``stop_at`` (the
    SIGTERM), so a fault during the purge is told from noise at shutdown."""
    during = at_stop = 0
    for instance in instances:
        for line in instance.lines:
            match = STAMP.match(line)
            if match is None or any(e in line for e in EXPECTED):
                continue
            when = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S"))
            if when + int(match.group(2)) / 1000 < stop_at:
                during += 1
            else:
                at_stop += 1
    return during, at_stop


def first_error_block(instances: list[Instance], tail: int = 6) -> list[str]:
    """The first unexpected ERROR/WARNING line of any instance and the end of the traceback
    after it (where the exception is named), so a fault is seen, not only
    counted."""
    for instance in instances:
        lines = instance.lines
        for n, line in enumerate(lines):
            if STAMP.match(line) and not any(e in line for e in EXPECTED):
                end = n + 1
                while end < len(lines) and not STAMP.match(lines[end]):
                    end += 1
                block = [line, *lines[max(n + 1, end - tail) : end]]
                return [f"{instance.name}: {x}" for x in block]
    return []


TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> tuple[int, float]:
    """``(parent pid, user + system CPU seconds)`` of a live process, from
    /proc (threads included); ``(-1, 0.0)`` if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1, 0.0
    fields = stat.rpartition(")")[2].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def cpu_snapshot(pids: dict[str, list[int]], postmaster: int) -> dict[str, float]:
    """CPU seconds so far of each group of ``pids``, of the postmaster and
    its backends (a backend that exits in between is lost: the instances
    keep their pooled connections, so few do), and of the machine."""
    out = {name: sum(_proc_cpu(p)[1] for p in group) for name, group in pids.items()}
    postgres = _proc_cpu(postmaster)[1]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent, seconds = _proc_cpu(int(entry.name))
            if parent == postmaster:
                postgres += seconds
    out["postgres"] = postgres
    # First line of /proc/stat: jiffies of all CPUs; idle and iowait are not busy.
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    out["machine"] = (sum(values) - values[3] - values[4]) / TICK
    return out


async def purged(store: SQLMetadataStore) -> int:
    return int(await db.scalar(store, "SELECT count(*) FROM files WHERE state = 'purged'"))


async def wait_purged(store: SQLMetadataStore, files: int, max_seconds: float) -> float:
    """Poll until every file is purged (bounded); the time.time() it was seen."""
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        if await purged(store) >= files:
            return time.time()
        await asyncio.sleep(POLL)
    done = await purged(store)
    raise RuntimeError(f"only {done} of {files} files purged within {max_seconds:g} s")


def audit_figures(
    records: list[tuple[str, float]], instances: int
) -> tuple[float, int, float, int, list[int]]:
    """From ``(actor, recorded_at)`` of the deletions: span, files after the
    first batch, overlap window and files inside it, shares per instance."""
    times = sorted(t for _a, t in records)
    first, last = times[0], times[-1]
    after_first = sum(1 for t in times if t > first)
    by_actor: dict[str, list[float]] = {}
    for actor, t in records:
        by_actor.setdefault(actor, []).append(t)
    shares = sorted((len(v) for v in by_actor.values()), reverse=True)
    if len(by_actor) < instances:
        return last - first, after_first, 0.0, 0, shares
    # Every instance had purged a batch and none had purged its last.
    start = max(min(v) for v in by_actor.values())
    end = min(max(v) for v in by_actor.values())
    inside = sum(1 for t in times if start < t <= end)
    return last - first, after_first, max(0.0, end - start), inside, shares


async def one_round(
    pg: PostgresServer,
    seaweed: SeaweedServer,
    work: Path,
    count: int,
    files: int,
    max_seconds: float,
    index: int,
) -> Round:
    """Fresh database, bucket and secrets; make the files; purge them with
    ``count`` instances; verify; clean up everything the round made."""
    root = work / f"round{index}-{count}"
    root.mkdir()
    name = await pg.create_database()
    url = pg.url(name)
    bucket = seaweed.create_bucket()
    store: SQLMetadataStore | None = None
    instances: list[Instance] = []
    try:
        shared = Shared.create(
            root,
            url,
            storage_env(seaweed, bucket),
            FILESTORE_KEY_SCHEDULE="keyring",
            FILESTORE_KEYRING_FILE=str(root / "shared-keys" / "keyring.json"),
            FILESTORE_PURGE_INTERVAL="1s",
            FILESTORE_DOWNLOAD_GRACE="1s",
            FILESTORE_PURGE_BATCH_SIZE="100",
            FILESTORE_LOG_LEVEL="WARNING",
        )
        started = time.monotonic()
        made = await prepare(url, seaweed, bucket, shared, root, files)
        prep_s = time.monotonic() - started
        if len(made) != files or count_objects(seaweed, bucket) != files:
            raise RuntimeError("preparation did not leave one object per file")
        store = await SQLMetadataStore.open(url)
        instances = await asyncio.to_thread(start_instances, root, shared, count)
        pids = {
            "gateways": [i.proc.pid for i in instances],
            "weed": [seaweed.process.pid] if seaweed.process else [],
        }
        assert pg.pid is not None
        cpu_before = cpu_snapshot(pids, pg.pid)
        ready_at = time.time()
        early = await purged(store)
        done_at = await wait_purged(store, files, max_seconds)
        cpu_after = cpu_snapshot(pids, pg.pid)
        cpu = {k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after}
        stop_at = time.time()
        codes = [instance.stop() for instance in instances]
        if codes != [0] * count:
            raise RuntimeError(f"instance exit codes {codes}")
        during, at_stop = log_faults(instances, stop_at)
        block = first_error_block(instances)
        if during:
            for line in block:
                print(f"  instance log: {line[:300]}", flush=True)
        elif at_stop and block:
            print(f"  after SIGTERM: {block[0][:160]} ... {block[-1][:160]}", flush=True)

        deleted = await db.rows(store, "SELECT file_id FROM audit_log WHERE event = 'file_deleted'")
        ids = [str(r[0]) for r in deleted]
        if len(ids) != files or set(ids) != made:
            raise RuntimeError(
                f"{len(ids)} file_deleted records for {len(set(ids))} files, expected {files}"
            )
        records = [
            (str(r.actor), float(r.recorded_at))
            for r in await store.audit.records(0, 10 * files)
            if r.event == "file_deleted"
        ]
        left = count_objects(seaweed, bucket)
        if left:
            raise RuntimeError(f"{left} objects left under {PREFIX} in the bucket")
        span, after_first, overlap, inside, shares = audit_figures(records, count)
        origin = min(t for _a, t in records)
        per: dict[str, list[float]] = {}
        for actor, t in records:
            per.setdefault(actor, []).append(t - origin)
        timeline = sorted((min(v), max(v), len(v)) for v in per.values())
        return Round(
            instances=count,
            files=files,
            prep_s=prep_s,
            early=early,
            wall_s=done_at - ready_at,
            audit_span_s=span,
            audit_after_first=after_first,
            overlap_s=overlap,
            overlap_files=inside,
            shares=shares,
            faults_during=during,
            faults_at_stop=at_stop,
            timeline=timeline,
            load_after=os.getloadavg()[0],
            cpu_gateways=cpu["gateways"],
            cpu_weed=cpu["weed"],
            cpu_postgres=cpu["postgres"],
            cpu_machine=cpu["machine"],
        )
    finally:
        for instance in instances:
            instance.stop()  # idempotent: a no-op for one already stopped
        if store is not None:
            await store.close()
        seaweed.delete_bucket(bucket)
        with contextlib.suppress(Exception):
            await pg.drop_database(name)
        shutil.rmtree(root, ignore_errors=True)


def median(values: list[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


def report(rounds: list[Round], cpus: int, load_before: tuple[float, float, float]) -> None:
    print()
    print(
        f"{'inst':>4} {'prep s':>7} {'early':>6} {'wall s':>7} {'wall f/s':>9} "
        f"{'audit s':>8} {'audit f/s':>10} {'ovl s':>6} {'ovl f/s':>8} {'load':>5}  shares"
    )
    for r in rounds:
        share = "/".join(str(s) for s in r.shares)
        print(
            f"{r.instances:>4} {r.prep_s:7.1f} {r.early:6d} {r.wall_s:7.2f} {r.wall_rate:9.0f} "
            f"{r.audit_span_s:8.2f} {r.audit_rate:10.0f} {r.overlap_s:6.2f} "
            f"{r.overlap_rate:8.0f} {r.load_after:5.2f}  {share}"
            + f"  log {r.faults_during}/{r.faults_at_stop}"
        )
    print()
    print("CPU seconds from last ready to all purged (cores = CPU s / wall s):")
    print(
        f"{'inst':>4} {'gateways':>9} {'weed':>6} {'postgres':>9} {'ms/file gw':>11} "
        f"{'bench cores':>12} {'machine cores':>14}"
    )
    for r in rounds:
        ours = r.cpu_gateways + r.cpu_weed + r.cpu_postgres
        done = max(1, r.files - r.early)
        print(
            f"{r.instances:>4} {r.cpu_gateways:9.1f} {r.cpu_weed:6.1f} {r.cpu_postgres:9.1f} "
            f"{1000 * r.cpu_gateways / done:11.1f} {ours / r.wall_s:12.2f} "
            f"{r.cpu_machine / r.wall_s:14.2f}"
        )
    by = {k: [r for r in rounds if r.instances == k] for k in (1, 3)}
    print()
    print(f"median of {len(by[1])} round(s) each:")
    medians: dict[str, tuple[float, float]] = {}
    for label, attr in (
        ("wall (after last ready)", "wall_rate"),
        ("audit span (first..last record)", "audit_rate"),
    ):
        one = median([float(getattr(r, attr)) for r in by[1]])
        three = median([float(getattr(r, attr)) for r in by[3]])
        medians[label] = (one, three)
        print(f"  {label:<34} 1: {one:7.0f} f/s   3: {three:7.0f} f/s   3/1 = {three / one:5.2f}")
    ovl = median([r.overlap_rate for r in by[3]])
    one_audit = medians["audit span (first..last record)"][0]
    print(
        f"  {'3 all purging (overlap window)':<34} 3: {ovl:7.0f} f/s   "
        f"vs 1 audit = {ovl / one_audit:5.2f}"
    )
    shares = ["/".join(f"{100 * s / r.files:.0f}%" for s in r.shares) for r in by[3]]
    print(f"  per-instance share with 3: {', '.join(shares)}")
    print()
    print(
        "log d/s: instance ERROR/WARNING lines during the purge / after SIGTERM "
        "(skipped-run and bucket-lifecycle warnings not counted)"
    )
    print(
        f"CPUs: {cpus}; load average before {load_before[0]:.2f} {load_before[1]:.2f} "
        f"{load_before[2]:.2f}, after {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"All instances, PostgreSQL (fsync off) and SeaweedFS share this machine's {cpus} "
        "core(s): the 3-instance figure measures coordination overhead and parallel I/O, "
        "not added hardware."
    )


async def main() -> None:
    # The S3 store's advice about the throwaway buckets' lifecycle rules,
    # once per round from the preparation: not news.
    logging.getLogger("filestore.storage.s3").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=2000, help="expired files per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each instance count")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="bound per purge")
    parser.add_argument("--quick", action="store_true", help="500 files, 1 round each")
    args = parser.parse_args()
    if args.quick:
        args.files, args.rounds = 500, 1
    cpus = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory(
        prefix="bench-cluster-purge-", dir=os.environ.get("BENCH_DIR")
    ) as tmp:
        work = Path(tmp)
        seaweed = SeaweedServer(work / "seaweed")
        pg: PostgresServer | None = None
        saved = {k: os.environ.get(k) for k in seaweed.aws_env()}
        try:
            pg = await asyncio.to_thread(PostgresServer.start)
            seaweed.start()
            # Preparation finds S3 credentials through the boto3 chain, as
            # the instances do.
            os.environ.update(seaweed.aws_env())
            order = [k for _ in range(args.rounds) for k in (1, 3)]
            for index, count in enumerate(order, 1):
                result = await one_round(
                    pg, seaweed, work, count, args.files, args.max_seconds, index
                )
                rounds.append(result)
                print(
                    f"round {index}/{len(order)}: {count} instance(s), {args.files} files: "
                    f"audit {result.audit_rate:.0f} f/s, wall {result.wall_rate:.0f} f/s "
                    f"(prep {result.prep_s:.1f} s); per instance first..last record: "
                    + ", ".join(f"+{a:.2f}..+{b:.2f} s ({n})" for a, b, n in result.timeline),
                    flush=True,
                )
        finally:
            seaweed.stop()
            if pg is not None:
                await asyncio.to_thread(pg.stop)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    report(rounds, cpus, load_before)


if __name__ == "__main__":
    asyncio.run(main())
