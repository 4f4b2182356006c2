"""A bounded load test of one real ``filestore serve``.

    PYTHONPATH=. .venv/bin/python bench/load.py                       # 64 clients, 180 s, SQLite
    PYTHONPATH=. .venv/bin/python bench/load.py --duration 30         # a quick look
    PYTHONPATH=. .venv/bin/python bench/load.py --postgres            # a throwaway PostgreSQL
    PYTHONPATH=. .venv/bin/python bench/load.py --database-url postgresql://USER@HOST:PORT/DB
    PYTHONPATH=. .venv/bin/python bench/load.py --output docs/load-test-run.md

The server is a real process (``tests/support/standalone.py``: local disk,
SQLite unless a database URL is given, the keyring) with a short purge
interval. ``--clients`` concurrent clients (64) run for ``--duration``
seconds, each in a loop of uploads (sizes up to a few MiB, short TTLs),
whole and ranged downloads, deletes and re-reads of files that expired or
were deleted, and judge every answer against what must be true at the time
the request was sent:

* a file is readable (200/206, the right bytes) until its ``expires_at``
  and never from then on (410); a deleted file is 410;
* any other status, a wrong byte, a client-side timeout (``--request-timeout``,
  a hang guard) or a connection error is an **error**, by class.

Meanwhile two monitors sample, every ``--sample`` seconds, the RSS of the
server's process tree (``/proc/PID/status``) and ``GET /v1/purge/status``
(operator key): the most overdue file, the backlog, the last pass. When the
clients stop, the store is drained: every file expires and the purge must
empty it (bounded wait), then a sample of the expired files is read again
(all must be 410), the blob store must hold no file, and the database must
hold one ``file_deleted`` record per upload and no unpurged row.

Invariants, all checked at the end (the run fails, exit 1, if one breaks):

1. no unexpected answer of any kind (above), none readable past expiry;
2. the most overdue file, sampled and as the scheduler recorded it
   (``max_overdue_seconds_24h``), stays within one purge interval plus a
   stated pass allowance (``--overdue-allowance``, 2 s);
3. RSS is flat: the largest sample of the last quarter of the load is at
   most the largest of the first quarter plus a stated margin
   (``--rss-margin``, 32 MiB);
4. the drain empties the store as above, and the server exits 0 with no
   ERROR line or traceback in its log.

Every loop is bounded by the duration, a cap on iterations, or both. The
short version runs in CI as ``tests/e2e/test_load_short.py`` (same code).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench._proc import cpu_delta, descendants, rss_mib, tree_cpu
from bench._report import command_line
from filestore.clock import parse_time
from tests.support import db
from tests.support.standalone import Standalone, standalone_server

KIB = 1 << 10
MIB = 1 << 20
#: rfc3339 times carry milliseconds, truncated: a time read back may be up to
#: this much before the server's.
TIME_EPSILON = 0.001
#: Files a client keeps choosing from; older ones go to the drain's sample.
FILES_PER_CLIENT = 64
#: What APScheduler logs when a tick comes while the last pass still runs.
SKIPPED_TICK = "skipped: maximum number of running instances reached"
#: How many of the expired files the drain reads again.
EXPIRY_SAMPLE = 300


@dataclass(frozen=True)
class LoadConfig:
    """One run. The defaults are the full run; :data:`SHORT` is CI's."""

    clients: int = 64
    duration: float = 180.0
    purge_interval: float = 5.0
    #: Upload TTLs, uniformly from this range (seconds).
    ttl: tuple[float, float] = (3.0, 20.0)
    #: (weight, smallest, largest) bytes of an upload.
    sizes: tuple[tuple[float, int, int], ...] = (
        (0.55, 1, 16 * KIB),
        (0.30, 16 * KIB, 512 * KIB),
        (0.15, 512 * KIB, 4 * MIB),
    )
    #: Weights of the operations when a client has live files.
    mix: tuple[tuple[str, float], ...] = (
        ("upload", 0.35),
        ("download", 0.30),
        ("range", 0.20),
        ("delete", 0.10),
        ("reread", 0.05),
    )
    database_url: str = ""
    #: What a pass may add to one purge interval (invariant 2).
    overdue_allowance: float = 2.0
    #: How much the last quarter's RSS may exceed the first's (invariant 3).
    rss_margin_mib: float = 32.0
    check_rss: bool = True
    sample_every: float = 1.0
    #: A request not answered in this long is an error (a hang guard).
    request_timeout: float = 60.0
    seed: int = 9

    @property
    def download_grace(self) -> float:
        """The server's DOWNLOAD_GRACE: unset, it follows a short interval."""
        return min(60.0, self.purge_interval)

    @property
    def overdue_bound(self) -> float:
        return self.purge_interval + self.overdue_allowance

    @property
    def drain_limit(self) -> float:
        """Longest wait for the drain: the longest TTL, two passes, the
        allowance, and a generous margin as a hang guard."""
        return self.ttl[1] + 2 * self.purge_interval + self.overdue_allowance + 60.0


#: CI's version (tests/e2e/test_load_short.py): 64 clients, tiny files, 15 s.
SHORT = LoadConfig(
    duration=15.0,
    # Not shorter: at 64 clients on two cores a pass then takes longer than
    # an interval, the scheduler skips the next tick, and files wait ~2 of
    # them (docs/load-test.md).
    purge_interval=4.0,
    ttl=(1.0, 3.0),
    sizes=((1.0, 1, 16 * KIB),),
    check_rss=False,
    request_timeout=30.0,
)


# ------------------------------------------------------------------ state
@dataclass
class Tracked:
    """A file a client uploaded, and how to make its bytes again."""

    id: str
    size: int
    seed: int
    sha256: str
    expires_at: float
    deleted_at: float | None = None

    def data(self) -> bytes:
        return random.Random(self.seed).randbytes(self.size)


@dataclass
class Tally:
    """Every answer, by operation: statuses, outcomes, errors, latencies."""

    statuses: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    outcomes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    errors: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    readable_past_expiry: int = 0
    bytes_up: int = 0
    bytes_down: int = 0

    def ok(self, op: str, outcome: str = "ok") -> None:
        self.outcomes[op][outcome] += 1

    def error(self, op: str, reason: str, detail: str = "") -> None:
        self.outcomes[op]["error"] += 1
        self.errors[f"{op}: {reason}"] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{op}: {reason} {detail}".strip()[:300])


@dataclass
class Sample:
    t: float
    rss_mib: float | None = None
    most_overdue: float | None = None
    backlog: int | None = None
    live_files: int | None = None
    last_pass_seconds: float | None = None


# ------------------------------------------------------------------ client
def _pick_size(rng: random.Random, config: LoadConfig) -> int:
    weights = [w for w, _lo, _hi in config.sizes]
    _w, lo, hi = rng.choices(config.sizes, weights=weights)[0]
    return rng.randint(lo, hi)


class Client:
    """One of the concurrent clients: its own files, its own random stream."""

    def __init__(
        self,
        n: int,
        srv: Standalone,
        session: aiohttp.ClientSession,
        config: LoadConfig,
        tally: Tally,
        retired: list[Tracked],
    ) -> None:
        self.rng = random.Random(config.seed * 1_000_003 + n)
        self.srv = srv
        self.session = session
        self.config = config
        self.tally = tally
        self.retired = retired
        self.files: list[Tracked] = []
        self.auth = {"Authorization": f"Bearer {srv.client_key}"}

    async def run(self, deadline: float) -> None:
        ops, weights = zip(*self.config.mix, strict=True)
        # Bounded twice: by the deadline, and by a cap no real run reaches.
        for _ in range(int(self.config.duration * 1000) + 1):
            if time.monotonic() >= deadline:
                return
            now = time.time()
            live = [f for f in self.files if f.deleted_at is None and f.expires_at > now]
            op = "upload" if not live else self.rng.choices(ops, weights=weights)[0]
            try:
                await self._one(op, live)
            except TimeoutError:
                self.tally.error(op, "timeout", f"after {self.config.request_timeout:g}s")
            except aiohttp.ClientError as exc:
                self.tally.error(op, type(exc).__name__, str(exc))

    async def _one(self, op: str, live: list[Tracked]) -> None:
        if op == "upload":
            await self.upload()
        elif op == "download":
            await self.read(self.rng.choice(live), ranged=False)
        elif op == "range":
            await self.read(self.rng.choice(live), ranged=True)
        elif op == "delete":
            await self.delete(self.rng.choice(live))
        else:
            await self.read(self.rng.choice(self.files), ranged=False, op="reread")

    def _keep(self, tracked: Tracked) -> None:
        self.files.append(tracked)
        if len(self.files) > FILES_PER_CLIENT:
            self.retired.append(self.files.pop(0))

    async def upload(self) -> None:
        size = _pick_size(self.rng, self.config)
        seed = self.rng.getrandbits(64)
        data = random.Random(seed).randbytes(size)
        digest = hashlib.sha256(data).hexdigest()
        ttl = self.rng.uniform(*self.config.ttl)
        headers = {**self.auth, "Content-Type": "application/octet-stream"}
        if self.rng.random() < 0.5:
            headers["X-Checksum-SHA256"] = digest
        started = time.perf_counter()
        async with self.session.post(
            f"{self.srv.url}/v1/files", params={"ttl": f"{ttl:.3f}"}, data=data, headers=headers
        ) as resp:
            body = await resp.read()
        self.tally.latencies["upload"].append(time.perf_counter() - started)
        self.tally.statuses["upload"][str(resp.status)] += 1
        if resp.status != 201:
            self.tally.error("upload", str(resp.status), body[:200].decode(errors="replace"))
            return
        doc = json.loads(body)
        if doc.get("size") != size or doc.get("sha256") != digest:
            self.tally.error("upload", "wrong size or digest", str(doc)[:200])
            return
        self.tally.bytes_up += size
        self.tally.ok("upload")
        self._keep(Tracked(doc["id"], size, seed, digest, parse_time(doc["expires_at"])))

    async def read(self, f: Tracked, *, ranged: bool, op: str | None = None) -> None:
        op = op or ("range" if ranged else "download")
        headers = dict(self.auth)
        first, last = 0, f.size - 1
        if ranged:
            first = self.rng.randrange(f.size)
            last = min(f.size - 1, first + self.rng.randrange(256 * KIB))
            headers["Range"] = f"bytes={first}-{last}"
        sent_at = time.time()
        started = time.perf_counter()
        async with self.session.get(f"{self.srv.url}/v1/files/{f.id}", headers=headers) as resp:
            try:
                body = await resp.read()
            except aiohttp.ClientPayloadError:
                # A stream still running DOWNLOAD_GRACE after expiry is cut
                # on purpose; anything else is an error.
                if time.time() >= f.expires_at + self.config.download_grace:
                    self.tally.ok(op, "cut after expiry + grace")
                    return
                raise
        answered_at = time.time()
        self.tally.latencies[op].append(time.perf_counter() - started)
        self.tally.statuses[op][str(resp.status)] += 1
        readable = resp.status in (200, 206)
        self.tally.bytes_down += len(body) if readable else 0
        gone_for_sure = f.deleted_at is not None and sent_at > f.deleted_at
        expired_for_sure = sent_at >= f.expires_at + TIME_EPSILON
        live_for_sure = not gone_for_sure and answered_at < f.expires_at
        if readable and expired_for_sure:
            self.tally.readable_past_expiry += 1
            self.tally.error(
                op, "readable past expiry", f"{f.id} sent {sent_at - f.expires_at:+.3f}s"
            )
            return
        if readable and gone_for_sure:
            self.tally.error(op, "readable after delete", f.id)
            return
        if readable:
            want_status = 206 if ranged else 200
            if resp.status != want_status:
                self.tally.error(op, f"{resp.status} (wanted {want_status})", f.id)
            elif ranged and resp.headers.get("Content-Range") != f"bytes {first}-{last}/{f.size}":
                self.tally.error(op, "wrong Content-Range", resp.headers.get("Content-Range", ""))
            elif (
                (body != f.data()[first : last + 1])
                if ranged
                else (hashlib.sha256(body).hexdigest() != f.sha256)
            ):
                self.tally.error(op, "wrong bytes", f.id)
            else:
                self.tally.ok(op)
            return
        if resp.status == 410 and not live_for_sure:
            self.tally.ok(op, "410 as expected")
            return
        self.tally.error(op, str(resp.status), body[:200].decode(errors="replace"))

    async def delete(self, f: Tracked) -> None:
        started = time.perf_counter()
        async with self.session.delete(
            f"{self.srv.url}/v1/files/{f.id}", headers=self.auth
        ) as resp:
            body = await resp.read()
        answered_at = time.time()
        self.tally.latencies["delete"].append(time.perf_counter() - started)
        self.tally.statuses["delete"][str(resp.status)] += 1
        before_expiry = answered_at < f.expires_at
        if resp.status == 204:
            self.tally.ok("delete")
        elif resp.status in (202, 410) and not before_expiry:
            # Expired meanwhile: the purge holds it (202) or finished it (410).
            self.tally.ok("delete", f"{resp.status} as expected")
        else:
            self.tally.error("delete", str(resp.status), body[:200].decode(errors="replace"))
            return
        f.deleted_at = answered_at


# ---------------------------------------------------------------- monitors
def tree_rss_mib(root: int) -> float | None:
    """Resident memory of ``root``'s process tree (None once it is gone)."""
    total = 0.0
    for pid in descendants(root):
        with contextlib.suppress(OSError):
            total += rss_mib(pid)
    return total or None


async def _status(session: aiohttp.ClientSession, srv: Standalone) -> dict[str, Any]:
    async with session.get(
        f"{srv.url}/v1/purge/status", headers={"Authorization": f"Bearer {srv.operator_key}"}
    ) as resp:
        if resp.status != 200:
            raise RuntimeError(f"/v1/purge/status answered {resp.status}")
        doc: dict[str, Any] = await resp.json()
        return doc


async def monitor(
    srv: Standalone,
    session: aiohttp.ClientSession,
    config: LoadConfig,
    t0: float,
    until: asyncio.Event,
    samples: list[Sample],
    tally: Tally,
) -> None:
    """Sample RSS and the purge status every ``sample_every`` until ``until``
    (bounded also by a cap well past the longest possible run)."""
    cap = int((config.duration + config.drain_limit) / config.sample_every) + 100
    for _ in range(cap):
        sample = Sample(round(time.monotonic() - t0, 2), rss_mib=tree_rss_mib(srv.pid))
        try:
            doc = await _status(session, srv)
        except (RuntimeError, aiohttp.ClientError, TimeoutError) as exc:
            tally.error("status", type(exc).__name__, str(exc))
        else:
            sample.most_overdue = doc["most_overdue_seconds"]
            sample.backlog = doc["backlog"]
            sample.live_files = doc["live_files"]
            last = doc.get("last_pass") or {}
            sample.last_pass_seconds = last.get("duration_seconds")
        samples.append(sample)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(config.sample_every):
                await until.wait()
        if until.is_set():
            return


# ------------------------------------------------------------------- drain
async def drain(
    srv: Standalone, session: aiohttp.ClientSession, config: LoadConfig
) -> tuple[bool, float]:
    """Wait until no file is live and none is due: (drained, seconds)."""
    started = time.monotonic()
    for _ in range(int(config.drain_limit / 0.25) + 1):
        with contextlib.suppress(RuntimeError, aiohttp.ClientError, TimeoutError):
            doc = await _status(session, srv)
            if doc["live_files"] == 0 and doc["backlog"] == 0:
                return True, time.monotonic() - started
        if time.monotonic() - started > config.drain_limit:
            break
        await asyncio.sleep(0.25)
    return False, time.monotonic() - started


async def reread_expired(
    srv: Standalone, session: aiohttp.ClientSession, files: list[Tracked], seed: int
) -> Counter[str]:
    """Statuses of a sample of the uploaded files read after the drain."""
    sample = random.Random(seed).sample(files, min(EXPIRY_SAMPLE, len(files)))
    statuses: Counter[str] = Counter()
    auth = {"Authorization": f"Bearer {srv.client_key}"}
    for f in sample:
        async with session.get(f"{srv.url}/v1/files/{f.id}", headers=auth) as resp:
            await resp.read()
            statuses[str(resp.status)] += 1
    return statuses


async def database_counts(srv: Standalone) -> dict[str, int]:
    async with srv.store() as store:
        return {
            "files": int(await db.scalar(store, "SELECT count(*) FROM files")),
            "not_purged": int(
                await db.scalar(store, "SELECT count(*) FROM files WHERE state <> 'purged'")
            ),
            "file_keys": int(await db.scalar(store, "SELECT count(*) FROM file_keys")),
            "deletion_records": int(
                await db.scalar(
                    store,
                    "SELECT count(DISTINCT file_id) FROM audit_log WHERE event = 'file_deleted'",
                )
            ),
        }


# ------------------------------------------------------------------ result
def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


@dataclass
class LoadResult:
    config: LoadConfig
    database: str
    elapsed: float
    tally: Tally
    samples: list[Sample]
    load_end: float
    drained: bool
    drain_seconds: float
    reread: Counter[str]
    db_counts: dict[str, int]
    stored_after: list[str]
    scheduler_max_overdue: float | None
    server_exit: int | None
    server_problems: list[str]
    server_warnings: int
    machine: dict[str, Any]
    #: Each kind of warning the server logged (timestamps cut), and how often.
    server_warning_kinds: dict[str, int] = field(default_factory=dict)
    #: Timer ticks APScheduler skipped because the pass before was still running.
    skipped_ticks: int = 0
    violations: list[str] = field(default_factory=list)

    # ---- derived figures
    def rss_quarters(self) -> tuple[float | None, float | None, float | None]:
        """(first-quarter max, last-quarter max, overall max) over the load."""
        load = [s for s in self.samples if s.t <= self.load_end and s.rss_mib is not None]
        values = [s.rss_mib for s in load if s.rss_mib is not None]
        if len(values) < 4:
            return None, None, max(values, default=None)
        quarter = max(1, len(values) // 4)
        return max(values[:quarter]), max(values[-quarter:]), max(values)

    def max_sampled_overdue(self) -> float:
        return max((s.most_overdue or 0.0 for s in self.samples), default=0.0)

    def longest_purge_step(self) -> float:
        """The longest purge step of a pass seen in the samples (the status
        times the purge itself, not the sweeps, key step and checkpoint)."""
        return max((s.last_pass_seconds or 0.0 for s in self.samples), default=0.0)

    def uploads(self) -> int:
        return self.tally.outcomes["upload"]["ok"]

    def check(self) -> list[str]:
        c, v = self.config, []
        if self.tally.errors:
            v.append(
                f"{sum(self.tally.errors.values())} unexpected answers: {dict(self.tally.errors)}"
            )
        if self.tally.readable_past_expiry:
            v.append(f"{self.tally.readable_past_expiry} reads succeeded past expiry")
        if self.max_sampled_overdue() > c.overdue_bound:
            v.append(
                f"most overdue file {self.max_sampled_overdue():.2f}s > bound {c.overdue_bound:g}s"
            )
        if self.scheduler_max_overdue is None or self.scheduler_max_overdue > c.overdue_bound:
            v.append(
                f"scheduler's max overdue {self.scheduler_max_overdue} s > bound "
                f"{c.overdue_bound:g}s"
            )
        first, last, _ = self.rss_quarters()
        if c.check_rss:
            if first is None or last is None:
                v.append("too few RSS samples to judge")
            elif last > first + c.rss_margin_mib:
                v.append(
                    f"RSS grew: last quarter max {last:.1f} MiB > first quarter max "
                    f"{first:.1f} MiB + {c.rss_margin_mib:g} MiB"
                )
        if not self.drained:
            v.append(f"the store did not drain within {c.drain_limit:g}s")
        if set(self.reread) - {"410"}:
            v.append(f"files read after the drain answered {dict(self.reread)} (all must be 410)")
        if self.stored_after:
            v.append(f"{len(self.stored_after)} files left in the blob store after the drain")
        counts = self.db_counts
        if counts.get("not_purged") or counts.get("file_keys"):
            v.append(f"rows left after the drain: {counts}")
        if not counts.get("files") == counts.get("deletion_records") == self.uploads():
            v.append(
                f"{self.uploads()} uploads, {counts.get('files')} rows, "
                f"{counts.get('deletion_records')} deletion records: must be equal"
            )
        if self.server_exit != 0:
            v.append(f"the server exited {self.server_exit}")
        if self.server_problems:
            v.append(f"{len(self.server_problems)} ERROR/traceback lines in the server log")
        return v

    # ---- output
    def to_json(self) -> dict[str, Any]:
        first, last, peak = self.rss_quarters()
        return {
            "config": asdict(self.config),
            "database": self.database,
            "machine": self.machine,
            "elapsed_seconds": round(self.elapsed, 1),
            "load_seconds": round(self.load_end, 1),
            "operations": {
                op: {
                    "requests": sum(self.tally.statuses[op].values()),
                    "statuses": dict(self.tally.statuses[op]),
                    "outcomes": dict(self.tally.outcomes[op]),
                    "p50_ms": _ms(_percentile(self.tally.latencies[op], 50)),
                    "p99_ms": _ms(_percentile(self.tally.latencies[op], 99)),
                    "max_ms": _ms(max(self.tally.latencies[op], default=None)),
                }
                for op in sorted(self.tally.statuses)
            },
            "errors": dict(self.tally.errors),
            "error_examples": self.tally.examples,
            "readable_past_expiry": self.tally.readable_past_expiry,
            "bytes_uploaded": self.tally.bytes_up,
            "bytes_downloaded": self.tally.bytes_down,
            "rss_mib": {
                "first_quarter_max": first,
                "last_quarter_max": last,
                "max": peak,
                "margin": self.config.rss_margin_mib,
            },
            "overdue_seconds": {
                "max_sampled": round(self.max_sampled_overdue(), 3),
                "scheduler_max": self.scheduler_max_overdue,
                "bound": self.config.overdue_bound,
                "longest_purge_step_sampled": round(self.longest_purge_step(), 3),
                "skipped_ticks": self.skipped_ticks,
            },
            "drain": {
                "drained": self.drained,
                "seconds": round(self.drain_seconds, 1),
                "reread_statuses": dict(self.reread),
                "database": self.db_counts,
                "stored_files_left": len(self.stored_after),
            },
            "server": {
                "exit": self.server_exit,
                "error_lines": self.server_problems[:10],
                "warning_lines": self.server_warnings,
                "warning_kinds": self.server_warning_kinds,
            },
            "samples": [asdict(s) for s in self.samples],
            "violations": self.violations,
        }

    def markdown(self, command: str = "") -> str:
        doc = self.to_json()
        c = self.config
        lines = [
            f"### {c.clients} clients, {c.duration:g} s, {self.database} + local disk",
            "",
        ]
        if command:
            lines += ["```", command, "```", ""]
        m = self.machine
        lines += [
            f"Machine: {m['cpus']} CPUs, load average {m['load_before']} before and "
            f"{m['load_after']} after; Python {m['python']}; CPU seconds during the load: "
            f"server {m.get('server_cpu_seconds')}, load generator {m.get('client_cpu_seconds')} "
            f"(of {self.load_end:.0f} s). Purge interval "
            f"{c.purge_interval:g} s, TTLs {c.ttl[0]:g} to {c.ttl[1]:g} s, sizes "
            + ", ".join(f"{w:.0%} {_size(lo)} to {_size(hi)}" for w, lo, hi in c.sizes)
            + f"; {doc['bytes_uploaded'] / MIB:.0f} MiB up, "
            f"{doc['bytes_downloaded'] / MIB:.0f} MiB down.",
            "",
            "| operation | requests | req/s | statuses | errors | p50 ms | p99 ms | max ms |",
            "|---|---:|---:|---|---:|---:|---:|---:|",
        ]
        for op, figures in doc["operations"].items():
            statuses = ", ".join(f"{k}: {v}" for k, v in sorted(figures["statuses"].items()))
            lines.append(
                f"| {op} | {figures['requests']} | {figures['requests'] / self.load_end:.1f} "
                f"| {statuses} | {figures['outcomes'].get('error', 0)} | {figures['p50_ms']} "
                f"| {figures['p99_ms']} | {figures['max_ms']} |"
            )
        rss, overdue, drained = doc["rss_mib"], doc["overdue_seconds"], doc["drain"]
        lines += [
            "",
            f"- **Errors**: {sum(self.tally.errors.values())}"
            + (f" ({doc['errors']})" if doc["errors"] else "")
            + f"; reads that succeeded past expiry: {self.tally.readable_past_expiry}.",
            f"- **Server RSS** (process tree): first-quarter max {_f(rss['first_quarter_max'])} "
            f"MiB, last-quarter max {_f(rss['last_quarter_max'])} MiB, peak "
            f"{_f(rss['max'])} MiB (allowed growth {rss['margin']:g} MiB"
            + ("" if c.check_rss else "; not judged in this run")
            + "). Over time: "
            + _series([(s.t, s.rss_mib) for s in self.samples], "MiB"),
            f"- **Most overdue file**: {overdue['max_sampled']:.2f} s sampled, "
            f"{_f(overdue['scheduler_max'], 2)} s as the scheduler recorded it; bound "
            f"{c.purge_interval:g} s interval + {c.overdue_allowance:g} s pass allowance = "
            f"{c.overdue_bound:g} s. Over time: "
            + _series([(s.t, s.most_overdue) for s in self.samples], "s"),
            f"- **Purge passes**: longest purge step sampled {self.longest_purge_step():.2f} s; "
            f"timer ticks skipped because the pass before was still running: "
            f"{self.skipped_ticks}.",
            f"- **Drain**: {'empty' if drained['drained'] else 'NOT empty'} after "
            f"{drained['seconds']:g} s; {self.uploads()} uploads, database "
            f"{drained['database']}; {sum(self.reread.values())} expired files read again: "
            f"{drained['reread_statuses']}; files left in storage: "
            f"{drained['stored_files_left']}.",
            f"- **Server**: exit {self.server_exit}, {len(self.server_problems)} ERROR/traceback "
            f"lines, {self.server_warnings} warnings"
            + "".join(f"; {n} of `{kind}`" for kind, n in self.server_warning_kinds.items())
            + ".",
            "",
            "**Invariants**: "
            + ("all held." if not self.violations else "BROKEN: " + "; ".join(self.violations)),
            "",
            "<details><summary>JSON</summary>",
            "",
            "```json",
            json.dumps({k: v for k, v in doc.items() if k != "samples"}),
            "```",
            "",
            "</details>",
        ]
        return "\n".join(lines)


def _kinds(lines: list[str], limit: int = 10) -> dict[str, int]:
    """Log lines without their timestamp (the first two words), counted; ids
    and numbers blanked so that one kind of line counts once."""
    kinds: Counter[str] = Counter()
    for line in lines:
        text = " ".join(line.split()[2:])
        kinds[re.sub(r"[0-9a-f]{8,}|\d+(\.\d+)?", "N", text)[:160]] += 1
    return dict(kinds.most_common(limit))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _size(n: int) -> str:
    return (
        f"{n // MIB} MiB"
        if n >= MIB and n % MIB == 0
        else (f"{n // KIB} KiB" if n >= KIB else f"{n} B")
    )


def _series(points: list[tuple[float, float | None]], unit: str, every: int = 12) -> str:
    """About ``every`` evenly spaced points, ``t s: value``."""
    known = [(t, v) for t, v in points if v is not None]
    if not known:
        return "n/a"
    step = max(1, len(known) // every)
    return ", ".join(f"{t:.0f}s {v:.1f}" for t, v in known[::step]) + f" ({unit})"


# ------------------------------------------------------------------- a run
def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


@contextlib.contextmanager
def _workdir(root: Path | None) -> Iterator[Path]:
    if root is not None:
        yield root
        return
    with tempfile.TemporaryDirectory(prefix="filestore-load-") as tmp:
        yield Path(tmp)


async def run_load(config: LoadConfig, root: Path | None = None) -> LoadResult:
    """Start a server under ``root`` (a temporary directory if None), load
    it, drain it, stop it; return the figures with :attr:`LoadResult.violations`."""
    with _workdir(root) as work:
        async with _server(work, config) as srv:
            result = await _drive(srv, config)
        result.server_exit = srv.instance.proc.returncode
        lines = srv.instance.lines
        result.server_problems = [ln for ln in lines if " ERROR " in ln or "Traceback" in ln]
        warnings = [ln for ln in lines if " WARNING " in ln]
        result.server_warnings = len(warnings)
        result.server_warning_kinds = _kinds(warnings)
        result.skipped_ticks = sum(SKIPPED_TICK in ln for ln in warnings)
        result.machine["load_after"] = _loadavg()
        result.violations = result.check()
        return result


@contextlib.asynccontextmanager
async def _server(work: Path, config: LoadConfig) -> AsyncIterator[Standalone]:
    async with standalone_server(
        work,
        database_url=config.database_url,
        purge_interval=config.purge_interval,
        max_file_size=max(hi for _w, _lo, hi in config.sizes),
        log_level="WARNING",
    ) as srv:
        yield srv


async def _drive(srv: Standalone, config: LoadConfig) -> LoadResult:
    machine: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_before": _loadavg(),
        "load_after": None,
    }
    tally = Tally()
    samples: list[Sample] = []
    retired: list[Tracked] = []
    timeout = aiohttp.ClientTimeout(total=config.request_timeout)
    connector = aiohttp.TCPConnector(limit=config.clients)
    stop_monitor = asyncio.Event()
    t0 = time.monotonic()
    cpu0, own0 = tree_cpu(srv.pid), time.process_time()
    async with (
        aiohttp.ClientSession(timeout=timeout, connector=connector) as session,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as side,
    ):
        watcher = asyncio.create_task(monitor(srv, side, config, t0, stop_monitor, samples, tally))
        try:
            clients = [
                Client(n, srv, session, config, tally, retired) for n in range(config.clients)
            ]
            deadline = t0 + config.duration
            await asyncio.gather(*(c.run(deadline) for c in clients))
            load_end = time.monotonic() - t0
            machine["server_cpu_seconds"] = round(cpu_delta(cpu0, tree_cpu(srv.pid)), 1)
            machine["client_cpu_seconds"] = round(time.process_time() - own0, 1)
            drained, drain_seconds = await drain(srv, side, config)
        finally:
            stop_monitor.set()
            await watcher
        files = retired + [f for c in clients for f in c.files]
        reread = await reread_expired(srv, side, files, config.seed)
        final = await _status(side, srv)
    db_counts = await database_counts(srv)
    return LoadResult(
        config=config,
        database=srv.database_url.split(":", 1)[0]
        .replace("postgresql", "PostgreSQL")
        .replace("sqlite", "SQLite"),
        elapsed=time.monotonic() - t0,
        tally=tally,
        samples=samples,
        load_end=load_end,
        drained=drained,
        drain_seconds=drain_seconds,
        reread=reread,
        db_counts=db_counts,
        stored_after=srv.stored_files(),
        scheduler_max_overdue=final.get("max_overdue_seconds_24h"),
        server_exit=None,
        server_problems=[],
        server_warnings=0,
        machine=machine,
    )


# --------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    d = LoadConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=d.clients)
    p.add_argument("--duration", type=float, default=d.duration, help="seconds of load")
    p.add_argument("--purge-interval", type=float, default=d.purge_interval)
    p.add_argument("--ttl", type=float, nargs=2, default=d.ttl, metavar=("MIN", "MAX"))
    p.add_argument("--max-size", type=int, default=4, help="largest upload, MiB")
    p.add_argument("--database-url", default="", help="PostgreSQL URL (default: SQLite)")
    p.add_argument("--postgres", action="store_true", help="start a throwaway PostgreSQL")
    p.add_argument("--overdue-allowance", type=float, default=d.overdue_allowance)
    p.add_argument("--rss-margin", type=float, default=d.rss_margin_mib, help="MiB")
    p.add_argument("--sample", type=float, default=d.sample_every, help="seconds between samples")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--output", type=Path, help="also write the Markdown result here")
    return p


def _config(args: argparse.Namespace, database_url: str) -> LoadConfig:
    d = LoadConfig()
    top = args.max_size * MIB
    sizes = tuple((w, min(lo, top), min(hi, top)) for w, lo, hi in d.sizes if lo < top)
    return LoadConfig(
        clients=args.clients,
        duration=args.duration,
        purge_interval=args.purge_interval,
        ttl=(args.ttl[0], args.ttl[1]),
        sizes=sizes,
        database_url=database_url,
        overdue_allowance=args.overdue_allowance,
        rss_margin_mib=args.rss_margin,
        sample_every=args.sample,
        seed=args.seed,
    )


def main() -> int:
    args = _parser().parse_args()
    pg = None
    url = args.database_url
    if args.postgres:
        from bench.bench_metadata import DURABLE
        from tests.support.postgres import PostgresServer

        pg = PostgresServer.start(settings=DURABLE)
    try:
        if pg is not None:
            url = pg.url(asyncio.run(pg.create_database()))
        result = asyncio.run(run_load(_config(args, url)))
    finally:
        if pg is not None:
            pg.stop()
    text = result.markdown(command_line())
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0 if not result.violations else 1


if __name__ == "__main__":
    sys.exit(main())
