"""Fixtures every suite shares.

The metadata database is a parameter: ``metadata_backend`` runs a test once
on SQLite and once on a real PostgreSQL (a throwaway cluster started once per
session by ``tests.support.postgres``; those runs skip, saying why, where the
binaries are missing). ``gateway`` is a running gateway on that backend.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from filestore import loops
from tests.support.db import MetadataBackend
from tests.support.gateway import Gateway, running_gateway

pytest_plugins = ["tests.support.postgres", "tests.support.s3_fixtures"]

METADATA_BACKENDS = ["sqlite", "postgresql"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The ``long`` variants run as long as they are asked to: no timeout."""
    for item in items:
        if item.get_closest_marker("long") is not None:
            item.add_marker(pytest.mark.timeout(0))


@pytest.fixture(params=METADATA_BACKENDS)
def metadata_backend(request: pytest.FixtureRequest, tmp_path: Path) -> MetadataBackend:
    if request.param == "sqlite":
        path = tmp_path / "data" / "filestore.db"
        return MetadataBackend(
            "sqlite",
            f"sqlite:///{path}",
            lambda: sorted(path.parent.glob(path.name + "*")),
        )
    server = request.getfixturevalue("postgres")
    url = request.getfixturevalue("pg_database_url")

    def pg_files() -> list[Path] | None:
        if server.data_dir is None:
            return None
        server.checkpoint()
        return sorted(p for p in server.data_dir.rglob("*") if p.is_file())

    return MetadataBackend("postgresql", url, pg_files)


@pytest.fixture
async def gateway(tmp_path: Path, metadata_backend: MetadataBackend) -> AsyncIterator[Gateway]:
    async with running_gateway(tmp_path, database_url=metadata_backend.url) as gw:
        yield gw


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs on the loop the server runs on
    (:mod:`filestore.loops`: uvloop where installed);
    ``FILESTORE_TEST_EVENT_LOOP=asyncio`` runs them on the standard one (CI
    runs the HTTP suites that way too)."""
    choice = os.environ.get("FILESTORE_TEST_EVENT_LOOP", "auto")
    return {loops.resolve(choice): loops.factory(choice) or asyncio.new_event_loop}
