"""SIGKILL a real ``filestore serve`` again and again while a client
uploads, downloads and deletes and purges run, restarting it each time on
the same data directory and database. After every restart, and at the end:

* **never a readable expired file**: no download sent at or after a file's
  ``expires_at`` (or after its deletion was answered, or after its last
  allowed download) is answered 200. Every download the client makes is
  judged so, and after each restart every expired file is asked for;
* **no lost upload**: every upload answered 201 has its row;
* **no unaudited deletion, no audit without a deletion**: every purged row
  has exactly one ``file_deleted`` record and every record's file is purged;
* **no blob of a purged file** in storage;
* **the chain never broken**: an export verifies after each restart,
  consistent with the checkpoint kept from the round before.

At the end, once every file has expired and a last pass ran: every row is
purged, storage holds no blob or part file at all (so none older than the
upload grace), and the project's own ``filestore audit export`` and
``filestore audit verify`` accept the log, consistent with the checkpoint
kept after the first kill.

``serve`` runs on the real clock (it takes no other), so TTLs, the purge
interval and the upload grace are a few seconds. Kills land at random times
and, by turns, while a deletion holds a lease or while an upload is in
flight. The seed is printed; ``KILL_LOOP_SEED`` replays one. Every loop and
wait is bounded; every process is stopped by its PID in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from filestore import ids
from filestore.audit import verify_export
from filestore.auditlog import export
from filestore.auth import create_key
from filestore.crypto import load_or_create_signing_key
from filestore.crypto.signing import public_key_pem
from filestore.metadata.base import Role
from filestore.metadata.sql import SQLMetadataStore
from tests.support.db import MetadataBackend
from tests.support.instances import Instance, Shared

#: Seconds: the purge runs every second, uploads pending this long are swept.
INTERVAL = 1
UPLOAD_GRACE = 3
TTLS = (1, 2, 3)
#: Longest any single request may take before the client gives up on it.
REQUEST_TIMEOUT = 15.0
#: Upper bound on how long the last passes may take to purge everything.
SETTLE = 60.0
WORKERS = 4
#: Downloads and deletions pick among this many of the newest files.
RECENT = 12
#: Where the kills land, by turns: at a random time, while a deletion holds a
#: lease, while an upload is in flight (a row ``uploading``), or just after a
#: start (during the first pass).
KILL_POINTS = ("random", "lease held", "upload in flight", "at start")


# ------------------------------------------------------------- the client
@dataclass
class Stored:
    """What the client knows of one file it uploaded (201)."""

    id: str
    data: bytes
    expires_at: float
    max_downloads: int | None
    #: When a DELETE of it was answered 204 or 202: unreadable from then on.
    deleted_at: float | None = None
    #: When each 200 to a download of it was received.
    served_at: list[float] = field(default_factory=list)
    #: Seen as purged in the database (no key: it cannot be read again).
    purged: bool = False


def _unix(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Client:
    """Traffic against whichever instance is current, and the judge of every
    answer. Connection errors while the server is dead are expected; an
    answer that breaks a rule is recorded in :attr:`violations`."""

    def __init__(self, rng: random.Random, key: str, operator_key: str) -> None:
        self.rng = rng
        self.url = ""
        self.auth = {"Authorization": f"Bearer {key}"}
        self.operator = {"Authorization": f"Bearer {operator_key}"}
        self.files: dict[str, Stored] = {}
        self.violations: list[str] = []
        self.server_errors: list[tuple[str, int, str]] = []
        self.counts: Counter[str] = Counter()

    def _judge_status(self, what: str, status: int, body: bytes) -> None:
        if status >= 500:
            self.server_errors.append((what, status, body[:200].decode(errors="replace")))

    async def upload(self, session: aiohttp.ClientSession) -> None:
        size = self.rng.choice([0, 1, 1000, 40_000, 300_000, 2_000_000])
        data = os.urandom(size)
        params = {"ttl": str(self.rng.choice(TTLS))}
        if self.rng.random() < 0.3:
            params["max_downloads"] = str(self.rng.choice([1, 2]))
        async with session.post(
            f"{self.url}/v1/files", data=io.BytesIO(data), params=params, headers=self.auth
        ) as resp:
            body = await resp.read()
            self._judge_status("upload", resp.status, body)
            if resp.status == 201:
                meta = json.loads(body)
                limit = int(params["max_downloads"]) if "max_downloads" in params else None
                self.files[meta["id"]] = Stored(meta["id"], data, _unix(meta["expires_at"]), limit)
                self.counts["uploaded"] += 1

    def _served_wrongly(self, stored: Stored, sent_at: float) -> str | None:
        if sent_at >= stored.expires_at:
            return f"expired {sent_at - stored.expires_at:.3f} s before the request"
        if stored.deleted_at is not None and sent_at > stored.deleted_at:
            return "its deletion was answered before the request"
        if stored.max_downloads is not None:
            before = [t for t in stored.served_at if t < sent_at]
            if len(before) >= stored.max_downloads:
                return f"its {stored.max_downloads} downloads were all served before"
        return None

    async def download(self, session: aiohttp.ClientSession, stored: Stored) -> int:
        sent_at = time.time()
        async with session.get(f"{self.url}/v1/files/{stored.id}", headers=self.auth) as resp:
            if resp.status != 200:
                self._judge_status("download", resp.status, await resp.read())
                return resp.status
            wrong = self._served_wrongly(stored, sent_at)
            stored.served_at.append(time.time())
            if wrong:
                self.violations.append(f"file {stored.id} was served (200) although {wrong}")
            got = bytearray()
            with contextlib.suppress(aiohttp.ClientPayloadError):
                async for piece in resp.content.iter_any():
                    got += piece
            if bytes(got) != stored.data[: len(got)]:
                self.violations.append(f"file {stored.id}: the body holds bytes not its own")
            self.counts["downloaded"] += 1
            return 200

    async def delete(self, session: aiohttp.ClientSession, stored: Stored) -> None:
        async with session.delete(f"{self.url}/v1/files/{stored.id}", headers=self.auth) as resp:
            body = await resp.read()
            self._judge_status("delete", resp.status, body)
            if resp.status in (202, 204):
                stored.deleted_at = time.time()
                self.counts["deleted"] += 1

    async def purge(self, session: aiohttp.ClientSession) -> None:
        async with session.post(f"{self.url}/v1/purge/run", headers=self.operator) as resp:
            body = await resp.read()
            self._judge_status("purge run", resp.status, body)
            if resp.status == 200:
                self.counts["purge runs"] += 1

    async def one(self, session: aiohttp.ClientSession) -> None:
        roll = self.rng.random()
        # Mostly the newest files: alive, or expiring about now.
        recent = list(self.files.values())[-RECENT:]
        if roll < 0.4 or not recent:
            await self.upload(session)
        elif roll < 0.8:
            await self.download(session, self.rng.choice(recent))
        elif roll < 0.92:
            await self.delete(session, self.rng.choice(recent))
        else:
            await self.purge(session)

    async def run(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        """Requests back to back until ``stop``; a dead server's refusals
        and cut connections are counted, not judged."""
        while not stop.is_set():
            if not self.url:
                await asyncio.sleep(0.02)
                continue
            try:
                await self.one(session)
            except (aiohttp.ClientError, TimeoutError, ConnectionError):
                self.counts["connection errors"] += 1
                await asyncio.sleep(0.05)

    async def expired_files_unreadable(self, session: aiohttp.ClientSession) -> int:
        """Ask for every expired file not yet seen purged; each must be 404
        or 410. Returns how many were asked."""
        now = time.time()
        due = [f for f in self.files.values() if f.expires_at <= now and not f.purged]
        for stored in due:
            status = await self.download(session, stored)
            if status not in (404, 410):
                self.violations.append(f"expired file {stored.id} answered {status}, not 404/410")
        return len(due)


# ------------------------------------------------------------- the checks
async def audit_counts(store: SQLMetadataStore) -> Counter[str]:
    """file id → number of ``file_deleted`` records."""
    counts: Counter[str] = Counter()
    after = 0
    for _ in range(100_000):
        page = await store.audit.records(after, 1000)
        if not page:
            break
        counts.update(r.file_id for r in page if r.event == "file_deleted" and r.file_id)
        after = page[-1].seq
    return counts


async def read(store: SQLMetadataStore, sql: str) -> list[Any]:
    """Rows of ``sql`` in a read transaction of the store's own connection
    (tests/support/db.py's helpers write-lock SQLite, which would compete
    with the server at every poll)."""

    def fn(conn: sa.Connection) -> list[Any]:
        return [tuple(row) for row in conn.execute(sa.text(sql))]

    return await store.db.run(fn, write=False)


async def file_rows(store: SQLMetadataStore) -> dict[str, str]:
    return {
        ids.to_text(bytes(fid)): str(state)
        for fid, state in await read(store, "SELECT id, state FROM files")
    }


def stored_names(storage: Path) -> list[str]:
    """Blob names of every committed blob and part file under ``storage``."""
    names = [p.name for p in (storage / "blobs").rglob("*") if p.is_file()]
    names += [p.name.split(".", 1)[0] for p in (storage / "tmp").glob("*.part")]
    return names


def newest_note(lines: list[str]) -> str:
    notes = [json.loads(line)["note"] for line in lines if '"type":"checkpoint"' in line]
    assert notes, "an export without a checkpoint"
    return str(notes[-1])


@dataclass
class Checker:
    """The invariants, read through a store of the test's own (never the
    server's files by hand, but for the storage listing)."""

    store: SQLMetadataStore
    storage: Path
    signing_key_path: Path
    origin: str
    trusted: str | None = None
    problems: list[str] = field(default_factory=list)

    async def check(self, client: Client) -> None:
        # Order matters, since the server runs on: records, then rows, then
        # storage, then records again. A record seen first must have a purged
        # row by then; a row purged first must have its record afterwards; a
        # file uploaded first must have a row.
        uploaded = set(client.files)
        first = await audit_counts(self.store)
        rows = await file_rows(self.store)
        purged = {fid for fid, state in rows.items() if state == "purged"}
        names = set(stored_names(self.storage))
        second = await audit_counts(self.store)
        lost = [fid for fid in uploaded if fid not in rows]
        if lost:
            self.problems.append(f"uploads answered 201 have no row: {lost}")
        # A record without any row is an orphan blob's: a file that fit one
        # batch is stored before its row, so a kill between the two leaves a
        # blob (under a key never stored) that the orphan sweep removes.
        unfounded = [fid for fid in first if fid not in purged and fid in rows]
        if unfounded:
            self.problems.append(f"deletions audited but not done: {unfounded}")
        rowless = [fid for fid in first if fid not in rows]
        if rowless and (kept := [f for f in rowless if ids.blob_name(ids.from_text(f)) in names]):
            self.problems.append(f"orphans audited but still stored: {kept}")
        if swept := uploaded & set(rowless):
            self.problems.append(f"uploads answered 201 swept as orphans: {swept}")
        unaudited = [fid for fid in purged if second[fid] != 1]
        if unaudited:
            counts = {fid: second[fid] for fid in unaudited}
            self.problems.append(f"purged files without exactly one record: {counts}")
        leftover = [fid for fid in purged if ids.blob_name(ids.from_text(fid)) in names]
        if leftover:
            self.problems.append(f"blobs of purged files still stored: {leftover}")
        for fid in purged & client.files.keys():
            client.files[fid].purged = True
            client.files[fid].data = b""  # never to be read again: let it go
        await self.verify_chain()

    async def verify_chain(self) -> None:
        key = load_or_create_signing_key(self.signing_key_path)
        now = time.time()
        lines = [
            line
            async for chunk in export(self.store, key, self.origin, now)
            for line in chunk.splitlines()
        ]
        try:
            verify_export(lines, key.public_key(), trusted_checkpoint=self.trusted, now=now)
        except Exception as exc:
            self.problems.append(f"the audit export does not verify: {exc}")
            return
        self.trusted = newest_note(lines)


# ------------------------------------------------------------- processes
class Server:
    """The current ``filestore serve`` of the loop: a new process (and port)
    on the same data directory and database after each kill."""

    def __init__(self, root: Path, shared: Shared) -> None:
        self.root = root
        self.shared = shared
        self.instance: Instance | None = None
        self.starts = 0

    async def start(self) -> Instance:
        instance = Instance("gw", self.root, self.shared, [])
        self.instance = instance
        await asyncio.to_thread(instance.wait_ready)
        self.starts += 1
        return instance

    def kill(self) -> None:
        if self.instance is not None:
            self.instance.kill()
            self.instance.stop()  # reaps it and closes its pipe

    def stop(self) -> int | None:
        """SIGTERM (SIGKILL after a grace); the exit code."""
        instance, self.instance = self.instance, None
        return None if instance is None else instance.stop()


def cli(shared: Shared, data_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "filestore", *argv],
        env=shared.env(data_dir, 0, []),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def wait_for_kill_point(
    kind: str, store: SQLMetadataStore, rng: random.Random, limit: float = 3.0
) -> str:
    """Wait for the moment to kill at; returns what was found (or "timeout")."""
    if kind == "at start":  # the scheduler's first pass runs as the server starts
        await asyncio.sleep(rng.uniform(0, 0.2))
        return kind
    if kind == "random":
        await asyncio.sleep(rng.uniform(0.05, 1.5))
        return kind
    sql = {
        "lease held": "SELECT count(*) FROM files "
        "WHERE state = 'purging' AND lease_owner IS NOT NULL",
        "upload in flight": "SELECT count(*) FROM files WHERE state = 'uploading'",
    }[kind]
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if (await read(store, sql))[0][0]:
            return kind
        await asyncio.sleep(0.003)
    return "timeout"


@contextlib.asynccontextmanager
async def traffic(client: Client) -> AsyncIterator[None]:
    stop = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        workers = [asyncio.ensure_future(client.run(session, stop)) for _ in range(WORKERS)]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*workers)


# ------------------------------------------------------------- the loop
async def kill_loop(tmp_path: Path, database_url: str, kills: int) -> None:
    seed = int(os.environ.get("KILL_LOOP_SEED", str(random.SystemRandom().getrandbits(32))))
    print(f"kill loop: seed {seed}, {kills} kills, {database_url.split(':', 1)[0]}", flush=True)
    rng = random.Random(seed)
    timing = random.Random(seed + 1)  # apart, so the kill points do not follow the traffic
    began = time.monotonic()
    data_dir = tmp_path / "gw"
    if not database_url:
        database_url = f"sqlite:///{data_dir / 'filestore.db'}"
    shared = Shared.create(
        tmp_path,
        database_url,
        {},
        FILESTORE_KEY_SCHEDULE="keyring",
        FILESTORE_PURGE_INTERVAL=f"{INTERVAL}s",
        FILESTORE_UPLOAD_GRACE=f"{UPLOAD_GRACE}s",
        FILESTORE_SWEEP_INTERVAL=f"{INTERVAL}s",
        FILESTORE_PURGE_BATCH_SIZE="4",
        FILESTORE_MAX_TTL="1h",
        FILESTORE_DEFAULT_TTL="2s",
    )
    data_dir.mkdir(mode=0o700)
    store = await SQLMetadataStore.open(database_url)
    server = Server(tmp_path, shared)
    try:
        key, _ = await create_key(store, Role.CLIENT, "default", time.time())
        operator_key, _ = await create_key(store, Role.OPERATOR, "default", time.time())
        client = Client(rng, key, operator_key)
        checker = Checker(
            store,
            data_dir / "storage",
            shared.secrets_dir / "audit-signing.pem",
            "",
        )
        first_trusted: str | None = None
        points: Counter[str] = Counter()
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as checks:
            async with traffic(client):
                client.url = (await server.start()).url
                for number in range(kills):
                    kind = KILL_POINTS[number % len(KILL_POINTS)]
                    found = await wait_for_kill_point(kind, store, timing)
                    points[found] += 1
                    server.kill()
                    client.url = (await server.start()).url
                    asked = await client.expired_files_unreadable(checks)
                    await checker.check(client)
                    print(
                        f"kill {number + 1} ({found}): {asked} expired files refused, "
                        f"{len(client.files)} uploads so far, {time.monotonic() - began:.1f} s",
                        flush=True,
                    )
                    first_trusted = first_trusted or checker.trusted
                    assert not client.violations, client.violations
                    assert not checker.problems, checker.problems
            print(f"kill points: {dict(points)}; traffic: {dict(client.counts)}", flush=True)
            assert client.counts["uploaded"] >= kills, client.counts

            # The end: every file expires, the sweeps' grace passes, the
            # scheduler's passes and a last one asked for purge everything.
            deadline = time.monotonic() + SETTLE
            while time.monotonic() < deadline:
                await asyncio.sleep(INTERVAL)
                rows = await file_rows(store)
                if set(rows.values()) <= {"purged"} and not stored_names(checker.storage):
                    break
            async with checks.post(f"{client.url}/v1/purge/run", headers=client.operator) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["pass"]["claimed"] == 0
            await client.expired_files_unreadable(checks)
        assert server.stop() == 0  # a clean stop after all those kills

        rows = await file_rows(store)
        assert set(rows.values()) <= {"purged"}, Counter(rows.values())
        assert stored_names(checker.storage) == []
        assert set(client.files) <= set(rows)
        counts = await audit_counts(store)
        assert Counter({f: n for f, n in counts.items() if f in rows}) == Counter(
            dict.fromkeys(rows, 1)
        )
        # Orphans of files killed between their blob and their row: one each.
        assert all(n == 1 for f, n in counts.items() if f not in rows), counts
        await checker.check(client)
        assert not checker.problems, checker.problems
        assert not client.violations, client.violations
        assert not client.server_errors, client.server_errors[:20]
    finally:
        server.stop()
        await store.close()

    # The project's own export and offline verification, consistent with
    # the checkpoint kept after the first restart.
    out, public, trusted = tmp_path / "export.jsonl", tmp_path / "public.pem", tmp_path / "cp"
    exported = cli(shared, data_dir, "audit", "export", "-o", str(out))
    assert exported.returncode == 0, exported.stderr
    public.write_bytes(public_key_pem(load_or_create_signing_key(checker.signing_key_path)))
    assert first_trusted is not None
    trusted.write_text(first_trusted)
    verified = cli(
        shared, data_dir, "audit", "verify", str(out),
        "--public-key", str(public), "--trusted-checkpoint", str(trusted),
    )  # fmt: skip
    # Exit 0: sound and complete (a partial export would exit 3).
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f" {sum(counts.values())} records " in verified.stdout, verified.stdout
    assert "consistent with the trusted checkpoint" in verified.stdout, verified.stdout
    print(f"kill loop: {kills} kills, {len(rows)} files, {time.monotonic() - began:.1f} s")


async def test_kill_loop(tmp_path: Path) -> None:
    """About ten kills on SQLite: the default run."""
    await kill_loop(tmp_path, "", kills=10)


@pytest.mark.long
async def test_kill_loop_long(tmp_path: Path, metadata_backend: MetadataBackend) -> None:
    """At least a hundred kills, on each database."""
    await kill_loop(tmp_path, metadata_backend.url, kills=100)
