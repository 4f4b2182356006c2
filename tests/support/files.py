"""Making files without HTTP, for purge and audit tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from filestore.lifecycle import FileInfo, UploadOptions
from filestore.services import Services


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def make_file(
    services: Services, *, ttl: float = 60, tenant: str = "acme", size: int = 1000
) -> FileInfo:
    return await services.lifecycle.upload(
        tenant, UploadOptions(ttl=ttl, filename="secret-name.txt"), _body(os.urandom(size))
    )
