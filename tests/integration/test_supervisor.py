"""The ``serve --workers`` supervisor with stand-in workers (real processes
that speak its readiness protocol and then fail on cue): a worker that
fails during start-up ends the start with its status, and a worker that
keeps crashing ends the service with status 1 after the backoff's limit."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from filestore.config import Settings
from filestore.workers import Backoff, Supervisor

#: A stand-in for ``python -m filestore serve --worker …``: exits at once
#: with status 3 if told to fail early, else announces itself on the
#: readiness pipe, waits until the test says go, and exits with status 4.
FAKE_WORKER = """#!{python}
import os, sys, time
args = sys.argv[1:]
name = args[args.index("--worker") + 1]
fd = int(args[args.index("--ready-fd") + 1])
root = {root!r}
if os.path.exists(os.path.join(root, "fail-early")):
    sys.exit(3)
os.write(fd, f"{{name}} {{os.getpid()}}\\n".encode())
for _ in range(12000):
    if os.path.exists(os.path.join(root, "go")):
        break
    time.sleep(0.01)
sys.exit(4)
"""


def _fake(tmp_path: Path) -> str:
    script = tmp_path / "fake-worker"
    script.write_text(FAKE_WORKER.format(python=sys.executable, root=str(tmp_path)))
    script.chmod(0o700)
    return str(script)


def _settings(tmp_path: Path) -> Settings:
    return Settings.load(env={}, data_dir=str(tmp_path / "data"), port=0)


async def test_a_worker_failing_at_start_ends_the_start_with_its_status(tmp_path: Path) -> None:
    (tmp_path / "fail-early").touch()
    supervisor = Supervisor(_settings(tmp_path), 2, python=_fake(tmp_path))
    assert await asyncio.wait_for(supervisor.run(), 120) == 3
    assert any(s.proc is not None and s.proc.returncode == 3 for s in supervisor.slots)
    assert not supervisor._listening
    # The preparation ran once, before any worker: keys and database exist.
    assert (tmp_path / "data" / "keys" / "keyring.json").exists()
    assert (tmp_path / "data" / "filestore.db").exists()


async def test_a_worker_that_keeps_crashing_ends_the_service(tmp_path: Path) -> None:
    supervisor = Supervisor(
        _settings(tmp_path),
        2,
        python=_fake(tmp_path),
        backoff=Backoff(first=0.01, cap=0.02, stable_after=3600.0, max_crashes=2),
    )
    run = asyncio.ensure_future(supervisor.run())
    for _ in range(12_000):
        if supervisor._listening or run.done():
            break
        await asyncio.sleep(0.01)
    assert supervisor._listening, "the stand-in workers never became ready"
    first_pids = {s.proc.pid for s in supervisor.slots if s.proc is not None}
    (tmp_path / "go").touch()  # every worker now exits with status 4 as soon as it starts
    status = await asyncio.wait_for(run, 240)
    state = [(s.name, s.crashes, s.proc and s.proc.returncode) for s in supervisor.slots]
    assert status == 1, state
    assert max(s.crashes for s in supervisor.slots) == 3, state
    assert all(s.proc is not None and s.proc.returncode is not None for s in supervisor.slots)
    assert {s.proc.pid for s in supervisor.slots if s.proc is not None} != first_pids
