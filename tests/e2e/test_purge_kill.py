"""SIGKILL a real ``filestore purge`` mid-batch; the next pass finishes the
job: every expired file purged exactly once, no blob left, the log verifies."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from filestore.audit import verify_export
from filestore.auditlog import export
from filestore.clock import ManualClock
from filestore.config import Settings
from filestore.services import open_services
from scheduler.purge import purge_pass
from tests.support.files import make_file

FILES = 400


def _purged(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT count(*) FROM files WHERE state = 'purged'").fetchone()[0])
    finally:
        conn.close()


async def test_sigkill_mid_pass_then_next_pass_finishes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = Settings.load(env={}, data_dir=data_dir)
    # Files created two hours ago with a one-minute TTL: expired by the real clock.
    clock = ManualClock(time.time() - 7200)
    async with open_services(settings, clock) as svc:
        made = [await make_file(svc, ttl=60, size=100) for _ in range(FILES)]

    env = {k: v for k, v in os.environ.items() if not k.startswith("FILESTORE_")}
    env.update(
        FILESTORE_DATA_DIR=str(data_dir),
        FILESTORE_PURGE_BATCH_SIZE="5",
        FILESTORE_LOG_LEVEL="WARNING",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "filestore", "purge"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed_at = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            done = _purged(settings.database_path)
            if done >= 10:
                proc.send_signal(signal.SIGKILL)
                killed_at = done
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    assert killed_at is not None, "the purge finished before it could be killed"
    assert _purged(settings.database_path) < FILES, "killed too late to be mid-pass"

    # The next pass, once the dead process's leases have lapsed.
    clock = ManualClock(time.time() + settings.purge_interval + 1)
    async with open_services(settings, clock) as svc:
        report = await purge_pass(svc.metadata, svc.lifecycle.eraser, interval=60)
        assert report.failed == 0
        assert _purged(settings.database_path) == FILES
        blobs = [p for p in settings.storage_dir.rglob("*") if p.is_file()]
        assert blobs == []
        records = await svc.metadata.audit_range(0, 10 * FILES)
        assert sorted(r.file_id for r in records) == sorted(f.id_text for f in made)
        lines = [
            line
            async for chunk in export(
                svc.metadata, svc.signing_key, settings.audit_origin, clock.now()
            )
            for line in chunk.splitlines()
        ]
        result = verify_export(lines, svc.signing_key.public_key(), now=clock.now())
        assert result.records == FILES and result.complete
