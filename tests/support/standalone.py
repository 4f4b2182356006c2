"""One real ``filestore serve`` on its own: the embedded setup (local disk,
SQLite, the keyring) unless a database URL is given, with a client key and an
operator key made before it starts. Built on :mod:`tests.support.instances`;
used by the slow-client tests and the load generator (``bench/load.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from filestore.auth import create_key
from filestore.metadata.base import Role
from filestore.metadata.sql import SQLMetadataStore
from tests.support.instances import Instance, Shared

#: The tenant the keys belong to.
TENANT = "standalone"


@dataclass(frozen=True)
class Standalone:
    instance: Instance
    database_url: str
    client_key: str
    operator_key: str

    @property
    def url(self) -> str:
        return self.instance.url

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return self.instance.port

    @property
    def pid(self) -> int:
        return self.instance.proc.pid

    @property
    def data_dir(self) -> Path:
        return self.instance.data_dir

    def stored_files(self) -> list[str]:
        """Every regular file under the local blob store (``blobs/``, ``tmp/``)."""
        root = self.data_dir / "storage"
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    @contextlib.asynccontextmanager
    async def store(self) -> AsyncIterator[SQLMetadataStore]:
        """The server's database, opened through filestore's own store (for
        :mod:`tests.support.db`); closed on exit."""
        store = await SQLMetadataStore.open(self.database_url)
        try:
            yield store
        finally:
            await store.close()


@contextlib.asynccontextmanager
async def standalone_server(
    root: Path, *, database_url: str = "", **settings: object
) -> AsyncIterator[Standalone]:
    """Start ``filestore serve`` under ``root`` with ``settings`` (as
    FILESTORE_* variables, e.g. ``read_timeout=1``); stop it by its PID on
    exit (SIGTERM, then SIGKILL after a grace)."""
    data_dir = root / "gw1"
    data_dir.mkdir(mode=0o700, parents=True)
    url = database_url or f"sqlite:///{data_dir / 'filestore.db'}"
    store = await SQLMetadataStore.open(url)
    try:
        now = time.time()
        client_key, _ = await create_key(store, Role.CLIENT, TENANT, now, label="client")
        operator_key, _ = await create_key(store, Role.OPERATOR, TENANT, now, label="operator")
    finally:
        await store.close()
    env = {f"FILESTORE_{name.upper()}": str(value) for name, value in settings.items()}
    shared = Shared.create(root, url, {}, FILESTORE_KEY_SCHEDULE="keyring", **env)
    instance = Instance("gw1", root, shared, [])
    try:
        await asyncio.to_thread(instance.wait_ready)
        yield Standalone(instance, url, client_key, operator_key)
    finally:
        await asyncio.to_thread(instance.stop)
