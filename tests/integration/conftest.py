"""Fixtures for the integration suites.

Blob stores: ``blob_store`` runs a test once per backend in
:data:`BLOB_BACKENDS`. To add a backend, add its name there and a branch to
:func:`make_blob_store`. The ``s3`` backend runs on a real SeaweedFS started
once per session (``seaweed``); each test gets a bucket of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from filestore.config import Settings
from filestore.storage.base import BlobStore
from filestore.storage.local import LocalBlobStore
from tests.support.seaweed import SKIP_REASONS, SeaweedServer, SeaweedUnavailable

BLOB_BACKENDS = ["local", "s3"]


@contextlib.asynccontextmanager
async def make_blob_store(
    kind: str, tmp_path: Path, s3: tuple[SeaweedServer, str] | None = None
) -> AsyncIterator[BlobStore]:
    """An opened, empty blob store of backend ``kind``; closed on exit.
    ``s3`` is the server and bucket for the ``s3`` backend."""
    store: BlobStore
    if kind == "local":
        store = await LocalBlobStore.open(tmp_path / "blobstore")
    elif kind == "s3" and s3 is not None:
        from filestore.storage.s3 import S3BlobStore

        server, bucket = s3
        # 5 MiB parts (S3's least), so the contract's larger blobs go multipart.
        settings = Settings.load(env={}, **server.settings(bucket, s3_part_size=5 << 20))
        store = await S3BlobStore.open(settings)
    else:
        raise ValueError(f"no blob store backend called {kind!r}")
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(params=BLOB_BACKENDS)
async def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    # Only the s3 runs ask for the server, so local-only runs never start it.
    s3 = (
        (request.getfixturevalue("s3_env"), request.getfixturevalue("s3_bucket"))
        if request.param == "s3"
        else None
    )
    async with make_blob_store(request.param, tmp_path, s3) as store:
        yield store


# --- S3: one real SeaweedFS per session (tests/support/seaweed.py) -------------
@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """SeaweedFS on free loopback ports, started once per session and stopped
    by its PID; the S3 tests skip, saying why, if it cannot start."""
    try:
        server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
        server.start()
    except SeaweedUnavailable as exc:
        SKIP_REASONS.append("SeaweedFS cannot start: " + str(exc).splitlines()[0].rstrip(":"))
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
    for reason in dict.fromkeys(SKIP_REASONS):
        terminalreporter.write_line(f"S3 tests SKIPPED: {reason}")


# --- end of S3
