"""The pieces of ``serve --workers`` that need no process: the restart
backoff, the worker count, the reserved port, the worker command line, the
worker's name on log records, and the SQLite write lock between processes."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import multiprocessing
import os
import socket
from multiprocessing.synchronize import Event
from pathlib import Path
from types import SimpleNamespace

import pytest

from filestore import logs
from filestore.config import Settings
from filestore.errors import ConfigError
from filestore.metadata.database import SQLiteDatabase, _WriteLock
from filestore.workers import Backoff, Supervisor, reserve_port, worker_count


def test_backoff_doubles_to_its_cap_and_gives_up_after_max_crashes() -> None:
    policy = Backoff(first=0.5, cap=3.0, stable_after=60.0, max_crashes=4)
    crashes, waits = 0, []
    for _ in range(4):
        crashes, wait = policy.next(crashes, lived=1.0)
        waits.append(wait)
    assert waits == [0.5, 1.0, 2.0, 3.0]
    assert policy.next(crashes, lived=1.0) == (5, None)


def test_backoff_forgets_crashes_after_a_stable_run() -> None:
    policy = Backoff(first=0.5, stable_after=60.0, max_crashes=2)
    assert policy.next(2, lived=59.0) == (3, None)
    assert policy.next(2, lived=60.0) == (1, 0.5)


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "many"])
def test_worker_count_refuses_anything_but_a_whole_number_from_one(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        worker_count(text)


def test_worker_count_setting() -> None:
    assert Settings.load(env={}).workers == 1
    assert Settings.load(env={"FILESTORE_WORKERS": "3"}).workers == 3
    with pytest.raises(ConfigError, match="FILESTORE_WORKERS"):
        Settings.load(env={"FILESTORE_WORKERS": "0"})


def test_the_reserved_port_takes_no_connection_but_lets_workers_share_it() -> None:
    with reserve_port("127.0.0.1", 0) as placeholder:
        port = placeholder.getsockname()[1]
        assert port != 0
        with socket.socket() as plain, pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))  # the port is this service's
        listeners = []
        try:
            for _ in range(2):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(("127.0.0.1", port))
                sock.listen()
                sock.settimeout(5)
                listeners.append(sock)
            accepted = 0
            for _ in range(20):
                with socket.create_connection(("127.0.0.1", port), timeout=5):
                    pass
            for sock in listeners:
                sock.setblocking(False)
                while True:
                    try:
                        conn, _ = sock.accept()
                    except BlockingIOError:
                        break
                    conn.close()
                    accepted += 1
            assert accepted == 20  # every connection reached a listener
        finally:
            for sock in listeners:
                sock.close()


def test_reserving_a_port_bound_without_reuseport_fails() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            reserve_port("127.0.0.1", taken.getsockname()[1])


async def test_worker_one_alone_runs_the_purge(tmp_path: Path) -> None:
    settings = Settings.load(env={}, data_dir=str(tmp_path / "d"))
    supervisor = Supervisor(settings, 3, config_file="/etc/f.toml", python="py")
    commands = [supervisor.command(slot, 8123) for slot in supervisor.slots]
    assert ["--no-scheduler" in argv for argv in commands] == [False, True, True]
    first = commands[0]
    assert first[:5] == ["py", "-m", "filestore", "--config", "/etc/f.toml"]
    assert first[first.index("--port") + 1] == "8123"
    assert first[first.index("--worker") + 1] == f"{supervisor.name}-w1"
    assert first[first.index("--data-dir") + 1] == str(tmp_path / "d")
    quiet = Supervisor(settings, 2, run_scheduler=False)
    assert all("--no-scheduler" in quiet.command(s, 1) for s in quiet.slots)


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_worker_name_is_on_every_log_line(log_format: str) -> None:
    out = io.StringIO()
    try:
        logs.configure("INFO", log_format, out, fields={"worker": "gw-1234abcd-w2"})
        logging.getLogger("filestore.some.module").info("hello %d", 5)
    finally:
        logs.configure("WARNING", "text")
    line = out.getvalue().strip()
    if log_format == "json":
        record = json.loads(line)
        assert record["worker"] == "gw-1234abcd-w2"
        assert record["message"] == "hello 5"
    else:
        assert "INFO worker=gw-1234abcd-w2 filestore.some.module: hello 5" in line


def _hold(path: str, held: Event, release: Event) -> None:
    """In another process: hold the write lock until told to let go."""
    lock = _WriteLock(Path(path), timeout=60.0)
    with lock:
        held.set()
        release.wait(60)
    lock.close()


async def test_a_writer_in_another_process_is_waited_for(tmp_path: Path) -> None:
    db = await SQLiteDatabase.open(tmp_path / "f.db")
    ctx = multiprocessing.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold, args=(str(db._write_lock.path), held, release))
    other.start()
    try:
        assert held.wait(60)
        pending = asyncio.ensure_future(db.run(lambda conn: 1))
        # However long we look, it cannot finish while the other holds the lock.
        done, _ = await asyncio.wait({pending}, timeout=0.3)
        assert not done
        release.set()
        assert await asyncio.wait_for(pending, 30) == 1
    finally:
        release.set()
        other.join(30)
        await db.close()


async def test_a_worker_announcing_itself_before_its_spawn_returns_is_seen(
    tmp_path: Path,
) -> None:
    """A fast worker can write its line before the supervisor has its
    process object: the line waits for the pid instead of being dropped."""
    supervisor = Supervisor(Settings.load(env={}, data_dir=str(tmp_path)), 2)
    slot = supervisor.slots[1]
    try:
        os.write(supervisor._ready_w, f"{slot.name} 4242\n{supervisor.slots[0].name} 1".encode())
        supervisor._read_ready()
        assert not slot.ready.is_set()
        slot.proc = SimpleNamespace(pid=4243)  # type: ignore[assignment]
        supervisor._check_ready(slot)
        assert not slot.ready.is_set()  # another process's line
        slot.proc = SimpleNamespace(pid=4242)  # type: ignore[assignment]
        supervisor._check_ready(slot)
        assert slot.ready.is_set()
        assert not supervisor.slots[0].ready.is_set()  # its line is not complete yet
    finally:
        os.close(supervisor._ready_r)
        os.close(supervisor._ready_w)
