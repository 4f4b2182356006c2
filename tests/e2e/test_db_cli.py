"""``filestore db upgrade`` and ``filestore db current`` as real processes,
on each metadata backend."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from filestore.metadata.migrate import head_revision
from tests.support.db import MetadataBackend


def _run(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILESTORE_")}
    env.update(FILESTORE_DATA_DIR=str(tmp_path / "data"), FILESTORE_DATABASE_URL=url)
    return subprocess.run(
        [sys.executable, "-m", "filestore", "db", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_db_upgrade_then_current(tmp_path: Path, metadata_backend: MetadataBackend) -> None:
    head = head_revision()
    before = _run(tmp_path, metadata_backend.url, "current")
    assert before.returncode == 1, before.stderr
    assert "(none)" in before.stdout
    upgraded = _run(tmp_path, metadata_backend.url, "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"upgraded from (none) to {head}" in upgraded.stdout
    again = _run(tmp_path, metadata_backend.url, "upgrade")
    assert f"already at revision {head}" in again.stdout
    now = _run(tmp_path, metadata_backend.url, "current")
    assert now.returncode == 0 and f"revision {head}" in now.stdout
    # The database URL (a password, for PostgreSQL) never reaches the output.
    assert metadata_backend.url not in upgraded.stdout + upgraded.stderr


def test_unreachable_database_exits_75(tmp_path: Path) -> None:
    result = _run(tmp_path, "postgresql://filestore:s3cret@127.0.0.1:1/none", "upgrade")
    assert result.returncode == 75, result.stderr
    assert "s3cret" not in result.stdout + result.stderr
