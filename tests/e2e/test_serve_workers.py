"""``filestore serve --workers 2`` as real processes: a supervisor and two
workers sharing one port, on SQLite and on PostgreSQL.

Both workers answer (each under its own instance name), a file uploaded
through one downloads through the other, 200 concurrent small uploads all
succeed (on SQLite: two processes writing one database file), expired files
are purged with exactly one audit record each, SIGTERM ends the supervisor
and every worker, a killed worker is replaced, and a killed supervisor
takes its workers with it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests.support import db
from tests.support.instances import free_port, wait_for
from tests.support.standalone import Standalone, standalone_server

UPLOADS = 200
CONCURRENCY = 50
PURGED = 40
BODY = os.urandom(4096)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return ""
    return str(request.getfixturevalue("pg_database_url"))


def _workers(supervisor: int) -> dict[str, int]:
    """The supervisor's live workers: instance name → pid (from /proc)."""
    found: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == supervisor and stat[0] != "Z" and b"--worker" in argv:
            found[argv[argv.index(b"--worker") + 1].decode()] = int(entry)
    return found


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (dead, waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return True
    return stat[0] == "Z"


def _access_log(server: Standalone) -> dict[str, str]:
    """request id → the worker that answered it, from the JSON access log."""
    served: dict[str, str] = {}
    for line in list(server.instance.lines):
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if record.get("logger") == "filestore.access" and record.get("request_id"):
            served[record["request_id"]] = record["worker"]
    return served


async def _instances_seen(session: aiohttp.ClientSession, server: Standalone) -> set[str]:
    """Instance names answering /v1/purge/status over fresh connections,
    until two are seen (at most 200 requests)."""
    seen: set[str] = set()
    headers = {"Authorization": f"Bearer {server.operator_key}", "Connection": "close"}
    for _ in range(200):
        async with session.get(f"{server.url}/v1/purge/status", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            seen.add((await resp.json())["instance"])
        if len(seen) == 2:
            break
    return seen


async def _upload(
    session: aiohttp.ClientSession, server: Standalone, ttl: str, gate: asyncio.Semaphore
) -> tuple[int, str, str]:
    """(status, file id, request id) of one 4 KiB upload."""
    async with gate, session.post(
        f"{server.url}/v1/files",
        params={"filename": "w.bin", "ttl": ttl},
        data=BODY,
        headers={"Authorization": f"Bearer {server.client_key}"},
    ) as resp:
        body = await resp.read()
        file_id = json.loads(body)["id"] if resp.status == 201 else ""
        return resp.status, file_id, resp.headers["X-Request-Id"]


async def _download(
    session: aiohttp.ClientSession, server: Standalone, file_id: str, gate: asyncio.Semaphore
) -> tuple[int, bytes, str]:
    async with gate, session.get(
        f"{server.url}/v1/files/{file_id}",
        headers={"Authorization": f"Bearer {server.client_key}", "Connection": "close"},
    ) as resp:
        return resp.status, await resp.read(), resp.headers["X-Request-Id"]


async def test_two_workers_are_one_service(tmp_path: Path, database_url: str) -> None:
    async with standalone_server(
        tmp_path,
        database_url=database_url,
        workers=2,
        purge_interval="1s",
        log_level="INFO",
        log_format="json",
    ) as server:
        workers = _workers(server.pid)
        assert len(workers) == 2, server.instance.lines[-20:]
        names = sorted(workers)
        assert re.fullmatch(r"gw-[0-9a-f]{8}-w1", names[0]), names
        assert names[1] == names[0][:-1] + "2"
        lines = server.instance.lines
        assert any("listening on" in line and "(2 workers, " in line for line in lines)

        gate = asyncio.Semaphore(CONCURRENCY)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONCURRENCY),
            timeout=aiohttp.ClientTimeout(total=120),
        ) as session:
            assert await _instances_seen(session, server) == set(names)

            uploads = await asyncio.gather(
                *(_upload(session, server, "1h", gate) for _ in range(UPLOADS))
            )
            statuses = Counter(status for status, _, _ in uploads)
            assert statuses == {201: UPLOADS}, statuses
            downloads = await asyncio.gather(
                *(_download(session, server, file_id, gate) for _, file_id, _ in uploads)
            )
            assert all(status == 200 and body == BODY for status, body, _ in downloads)

            # Which worker took each upload and served each download.
            wanted = {up[2] for up in uploads} | {down[2] for down in downloads}
            assert wait_for(lambda: wanted <= set(_access_log(server)), 30)
            served = _access_log(server)
            pairs = Counter(
                (served[up[2]], served[down[2]])
                for up, down in zip(uploads, downloads, strict=True)
            )
            assert pairs[(names[0], names[1])] and pairs[(names[1], names[0])], pairs
            assert set(Counter(served[up[2]] for up in uploads)) == set(names)

            # Short-lived files: worker 1's scheduler purges them, once each.
            short = await asyncio.gather(
                *(_upload(session, server, "2s", gate) for _ in range(PURGED))
            )
            assert Counter(status for status, _, _ in short) == {201: PURGED}
            short_ids = {file_id for _, file_id, _ in short}

        async with server.store() as store:
            deadline = time.monotonic() + 90
            purged = 0
            while time.monotonic() < deadline:
                purged = await db.scalar(store, "SELECT count(*) FROM files WHERE state = 'purged'")
                if purged >= PURGED:
                    break
                await asyncio.sleep(0.2)
            assert purged == PURGED, server.instance.lines[-20:]
            records = await store.audit.records(0, 100_000)
        deleted = Counter(r.file_id for r in records if r.event == "file_deleted")
        assert set(deleted) == short_ids, (len(deleted), len(short_ids))
        assert set(deleted.values()) == {1}, deleted.most_common(3)
        errors = [line for line in server.instance.lines if '"level":"ERROR"' in line]
        assert not errors, errors[:3]

    # SIGTERM (standalone_server's stop): the supervisor exited 0, no worker is left.
    assert server.instance.proc.returncode == 0, server.instance.lines[-20:]
    assert wait_for(lambda: all(_gone(pid) for pid in workers.values()), 30)
    exits = [line for line in server.instance.lines if "exited with status 0" in line]
    assert len(exits) == 2, server.instance.lines[-20:]


async def test_a_killed_worker_is_replaced_and_a_killed_supervisor_ends_them(
    tmp_path: Path,
) -> None:
    async with standalone_server(tmp_path, workers=2, log_level="INFO") as server:
        before = _workers(server.pid)
        assert len(before) == 2
        victim = sorted(before)[1]
        os.kill(before[victim], signal.SIGKILL)
        assert wait_for(
            lambda: _workers(server.pid).get(victim, before[victim]) != before[victim], 60
        ), server.instance.lines[-20:]
        assert wait_for(
            lambda: any(f"worker {victim} (pid {_workers(server.pid)[victim]}) is listening" in line
                        for line in server.instance.lines),
            60,
        ), server.instance.lines[-20:]
        after = _workers(server.pid)
        assert after[sorted(before)[0]] == before[sorted(before)[0]]
        async with aiohttp.ClientSession() as session:
            assert await _instances_seen(session, server) == set(before)

        # The supervisor dies without a chance to stop them: the kernel
        # tells each worker (PR_SET_PDEATHSIG), and they stop on their own.
        server.instance.kill()
        assert wait_for(lambda: all(_gone(pid) for pid in after.values()), 60)


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FILESTORE_")}
    return subprocess.run(
        [sys.executable, "-m", "filestore", *args],
        cwd=tmp_path,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("count", ["0", "-3", "two"])
def test_a_worker_count_below_one_is_a_usage_error(tmp_path: Path, count: str) -> None:
    done = _run(tmp_path, "serve", "--workers", count)
    assert done.returncode == 2
    assert "--workers" in done.stderr
    assert not (tmp_path / "filestore-data").exists()
    by_env = _run(tmp_path, "serve", FILESTORE_WORKERS=count)
    assert by_env.returncode == 2
    assert "FILESTORE_WORKERS" in by_env.stderr
    assert not (tmp_path / "filestore-data").exists()


def test_help_lists_workers(tmp_path: Path) -> None:
    done = _run(tmp_path, "serve", "--help")
    assert done.returncode == 0
    assert "--workers N" in done.stdout
    assert "--ready-fd" not in done.stdout


def test_a_port_taken_without_reuseport_stops_the_start(tmp_path: Path) -> None:
    import socket

    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = _run(
            tmp_path, "serve", "--workers", "2", "--port", str(port), FILESTORE_LOG_LEVEL="ERROR"
        )
    assert done.returncode == 1
    assert "in use" in done.stderr
    assert "listening on" not in done.stdout
