"""Fixtures for the integration suites.

Blob stores: ``blob_store`` runs a test once per backend in
:data:`BLOB_BACKENDS`. To add a backend, add its name there and a branch to
:func:`make_blob_store`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from filestore.storage.base import BlobStore
from filestore.storage.local import LocalBlobStore

BLOB_BACKENDS = ["local"]


@contextlib.asynccontextmanager
async def make_blob_store(kind: str, tmp_path: Path) -> AsyncIterator[BlobStore]:
    """An opened, empty blob store of backend ``kind``; closed on exit."""
    store: BlobStore
    if kind == "local":
        store = await LocalBlobStore.open(tmp_path / "blobstore")
    else:
        raise ValueError(f"no blob store backend called {kind!r}")
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(params=BLOB_BACKENDS)
async def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    async with make_blob_store(request.param, tmp_path) as store:
        yield store
