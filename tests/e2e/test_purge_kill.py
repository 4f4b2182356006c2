"""SIGKILL a real ``filestore purge`` mid-batch; the next pass finishes the
job: every expired file purged exactly once, no blob left, the log verifies."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from filestore.audit import verify_export
from filestore.auditlog import export
from filestore.clock import ManualClock
from filestore.config import Settings
from filestore.services import Services, open_services
from scheduler.purge import purge_pass
from tests.support import db
from tests.support.db import MetadataBackend
from tests.support.files import make_file

FILES = 400


async def _purged(svc: Services) -> int:
    return int(await db.scalar(svc, "SELECT count(*) FROM files WHERE state = 'purged'"))


async def test_sigkill_mid_pass_then_next_pass_finishes(
    tmp_path: Path, metadata_backend: MetadataBackend
) -> None:
    data_dir = tmp_path / "data"
    settings = Settings.load(env={}, data_dir=data_dir, database_url=metadata_backend.url)
    # Files created two hours ago with a one-minute TTL: expired by the real clock.
    clock = ManualClock(time.time() - 7200)
    async with open_services(settings, clock) as svc:
        made = [await make_file(svc, ttl=60, size=100) for _ in range(FILES)]

    env = {k: v for k, v in os.environ.items() if not k.startswith("FILESTORE_")}
    env.update(
        FILESTORE_DATA_DIR=str(data_dir),
        FILESTORE_DATABASE_URL=metadata_backend.url,
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
    async with open_services(settings, ManualClock()) as watcher:
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                done = await _purged(watcher)
                if done >= 10:
                    proc.send_signal(signal.SIGKILL)
                    killed_at = done
                    break
                await asyncio.sleep(0.005)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        assert killed_at is not None, "the purge finished before it could be killed"
        assert await _purged(watcher) < FILES, "killed too late to be mid-pass"

    # The next pass, once the dead process's leases have lapsed.
    clock = ManualClock(time.time() + settings.purge_interval + 1)
    async with open_services(settings, clock) as svc:
        report = await purge_pass(svc.metadata.files, svc.lifecycle.eraser)
        assert report.failed == 0
        assert await _purged(svc) == FILES
        blobs = [p for p in settings.storage_dir.rglob("*") if p.is_file()]
        assert blobs == []
        records = await svc.metadata.audit.records(0, 10 * FILES)
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
