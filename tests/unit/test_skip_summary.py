"""A test that skips because its real server is missing says so in the
terminal summary, in one process and under pytest-xdist alike."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.postgres import NOT_FOUND

ROOT = Path(__file__).resolve().parents[2]

SKIPPING = f"""
import pytest

def test_needs_postgres():
    pytest.skip({NOT_FOUND!r} + "\\nsearched: PATH")

def test_needs_seaweed():
    pytest.skip("SeaweedFS cannot start: weed exited\\nits log")

def test_skips_for_its_own_reason():
    pytest.skip("not on this platform")
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_skips_for_missing_servers_are_named(tmp_path: Path, workers: list[str]) -> None:
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    plugins = ["-p", "tests.support.postgres", "-p", "tests.support.s3_fixtures"]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *plugins,
            *workers,
            "test_skipping.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert f"PostgreSQL tests SKIPPED: {NOT_FOUND}" in lines
    assert "S3 tests SKIPPED: SeaweedFS cannot start: weed exited" in lines
    assert not [line for line in lines if "platform" in line and "SKIPPED:" in line]
