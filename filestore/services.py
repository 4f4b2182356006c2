"""Assembling a running filestore from settings: stores, keys, lifecycle.

Used by the HTTP app, the CLI and (later) the scheduler alike, so each gets
the same backends, wired the same way. Blocking start-up work (key files) runs
in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from filestore.auth import KeyCache, create_key
from filestore.clock import Clock, SystemClock
from filestore.cluster import open_ratchet
from filestore.commitment import check_commitment
from filestore.config import Settings
from filestore.crypto import Keyring, load_or_create_signing_key
from filestore.crypto.join import load_cluster_secret
from filestore.crypto.links import LinkSigner, load_or_create_link_key
from filestore.crypto.schedule import KekSource
from filestore.errors import ConfigError
from filestore.lifecycle import Lifecycle
from filestore.metadata.base import MetadataStore, Role
from filestore.metadata.sql import SQLMetadataStore
from filestore.probe import CachedProbe
from filestore.storage.base import BlobStore
from filestore.storage.local import LocalBlobStore

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything a request handler or a job needs, opened and ready."""

    settings: Settings
    clock: Clock
    metadata: MetadataStore
    blobs: BlobStore
    #: The KEK source: the host's keyring file, or this machine's ratchet.
    keyring: KekSource
    signing_key: Ed25519PrivateKey
    links: LinkSigner
    lifecycle: Lifecycle
    #: The secret that authenticates ratchet hand-overs (ratchet only).
    cluster_secret: bytes | None = field(default=None, repr=False)
    #: The storage check the health endpoints reuse for a few seconds.
    storage_probe: CachedProbe | None = field(default=None, repr=False)
    #: Verified API keys, remembered for ``key_cache_ttl``.
    key_cache: KeyCache | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.storage_probe is None:
            self.storage_probe = CachedProbe(self.blobs.check)
        if self.key_cache is None:
            self.key_cache = KeyCache(self.clock, self.settings.key_cache_ttl)


async def open_metadata(settings: Settings) -> MetadataStore:
    """The metadata database the settings name, migrated to this version."""
    sqlite_path = settings.database_path if settings.database_dialect == "sqlite" else None
    return await SQLMetadataStore.open(
        settings.database_url, sqlite_path, pool_size=settings.database_pool_size
    )


async def open_blobs(settings: Settings) -> BlobStore:
    if settings.storage == "local":
        store = await LocalBlobStore.open(settings.storage_dir)
        log.debug(
            "local blob store: small blobs written by %s",
            "the C helper" if store.native else "Python (the C helper was not built)",
        )
        return store
    if settings.storage == "s3":
        # Imported here so boto3 (slow to import) loads only when it is used.
        from filestore.storage.s3 import S3BlobStore

        return await S3BlobStore.open(settings)
    raise ConfigError(f"FILESTORE_STORAGE={settings.storage!r} is not supported")


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings, clock: Clock | None = None, instance: str | None = None
) -> AsyncIterator[Services]:
    """Open every backend and key; close them in reverse order on exit.

    Creates the data directory, keyring (or joins the cluster's ratchet)
    and signing key on first use. ``instance`` names this process in leases
    and pass reports (a worker's slot name); None draws a random one.
    """
    clock = clock or SystemClock()
    await asyncio.to_thread(settings.data_dir.mkdir, parents=True, exist_ok=True, mode=0o700)
    signing_key = await asyncio.to_thread(load_or_create_signing_key, settings.signing_key_path)
    links = await asyncio.to_thread(load_or_create_link_key, settings.link_key_path)
    async with contextlib.AsyncExitStack() as stack:
        metadata = await open_metadata(settings)
        stack.push_async_callback(metadata.close)
        keyring: KekSource
        secret: bytes | None = None
        if settings.key_schedule == "ratchet":
            secret = await asyncio.to_thread(
                load_cluster_secret, Path(settings.cluster_secret_file)
            )
            keyring = await open_ratchet(settings, metadata.cluster, clock, secret)
        else:
            ring = await asyncio.to_thread(
                Keyring.load_or_create, settings.keyring_path, clock.now()
            )
            ring.enforce_deadlines(clock, settings.kek_destroy_after)
            await check_commitment(ring, metadata.cluster, clock.now())
            keyring = ring
        blobs = await open_blobs(settings)
        stack.push_async_callback(blobs.close)
        lifecycle = Lifecycle(settings, metadata, blobs, keyring, clock, instance)
        yield Services(
            settings, clock, metadata, blobs, keyring, signing_key, links, lifecycle, secret
        )


async def ensure_first_key(services: Services) -> str | None:
    """On an empty key table, make a client key for tenant ``default``.

    Returns the key (to be printed once) or None if keys already exist.
    """
    if await services.metadata.api_keys.all():
        return None
    key, _record = await create_key(
        services.metadata, Role.CLIENT, "default", services.clock.now(), label="first key"
    )
    return key
