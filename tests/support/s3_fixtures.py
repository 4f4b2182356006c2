"""Pytest fixtures for a real S3 server: one SeaweedFS per session (see
``tests.support.seaweed``), a fresh bucket per test. Registered for every
suite by ``pytest_plugins`` in tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.seaweed import SeaweedServer, SeaweedUnavailable
from tests.support.skips import skip_reasons


# --- S3: one real SeaweedFS per session (tests/support/seaweed.py) -------------
@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """SeaweedFS on free loopback ports, started once per session and stopped
    by its PID; the S3 tests skip, saying why, if it cannot start."""
    try:
        server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
        server.start()
    except SeaweedUnavailable as exc:
        pytest.skip(f"SeaweedFS cannot start: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> SeaweedServer:
    """The server, running (a fault test may have stopped it), with its
    credentials in this test's environment for the boto3 chain."""
    seaweed.start()
    for name, value in seaweed.aws_env().items():
        monkeypatch.setenv(name, value)
    return seaweed


@pytest.fixture
def s3_bucket(s3_env: SeaweedServer) -> Iterator[str]:
    """A fresh bucket for one test, removed after it."""
    with s3_env.bucket() as name:
        yield name


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for reason in skip_reasons(terminalreporter, "SeaweedFS cannot start", "versioned-bucket"):
        terminalreporter.write_line(f"S3 tests SKIPPED: {reason}")
