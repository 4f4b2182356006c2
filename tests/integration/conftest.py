"""Fixtures for the integration suites.

Blob stores: ``blob_store`` runs a test once per backend in
:data:`BLOB_BACKENDS`. To add a backend, add its name there and a branch to
:func:`make_blob_store`. The ``s3`` backend runs on a real SeaweedFS started
once per session (``seaweed``, from ``tests.support.s3_fixtures``); each test
gets a bucket of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from filestore.config import Settings
from filestore.storage.base import BlobStore
from filestore.storage.local import LocalBlobStore
from tests.support.seaweed import SeaweedServer

#: ``local`` writes small blobs with the C helper where it was built;
#: ``local-python`` always with the store's Python path.
BLOB_BACKENDS = ["local", "local-python", "s3"]


@contextlib.asynccontextmanager
async def make_blob_store(
    kind: str, tmp_path: Path, s3: tuple[SeaweedServer, str] | None = None
) -> AsyncIterator[BlobStore]:
    """An opened, empty blob store of backend ``kind``; closed on exit.
    ``s3`` is the server and bucket for the ``s3`` backend."""
    store: BlobStore
    if kind in ("local", "local-python"):
        native = None if kind == "local" else False
        store = await LocalBlobStore.open(tmp_path / "blobstore", native=native)
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
