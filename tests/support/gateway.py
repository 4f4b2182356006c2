"""A real gateway on a loopback port, with a manual clock, for API tests."""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from filestore.api.app import create_app
from filestore.auth import create_key
from filestore.clock import ManualClock
from filestore.config import Settings
from filestore.metadata.base import Role
from filestore.services import Services, open_services


@dataclass
class Gateway:
    client: TestClient[Any, Any]
    clock: ManualClock
    services: Services
    settings: Settings
    keys: dict[str, str] = field(default_factory=dict)

    async def key(self, tenant: str = "acme", role: Role = Role.CLIENT) -> str:
        name = f"{tenant}/{role}"
        if name not in self.keys:
            self.keys[name], _ = await create_key(
                self.services.metadata, role, tenant, self.clock.now()
            )
        return self.keys[name]

    async def auth(self, tenant: str = "acme", role: Role = Role.CLIENT) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.key(tenant, role)}"}

    async def upload(
        self,
        data: bytes,
        *,
        tenant: str = "acme",
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        resp = await self.client.post(
            "/v1/files",
            data=io.BytesIO(data),
            params=params or {},
            headers={**(await self.auth(tenant)), **(headers or {})},
        )
        assert resp.status == 201, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body

    async def get(
        self, file_id: str, *, tenant: str = "acme", headers: dict[str, str] | None = None
    ) -> ClientResponse:
        return await self.client.get(
            f"/v1/files/{file_id}", headers={**(await self.auth(tenant)), **(headers or {})}
        )

    def blob_files(self) -> list[Path]:
        root = self.settings.storage_dir
        return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@contextlib.asynccontextmanager
async def running_gateway(
    tmp_path: Path, *, clock: ManualClock | None = None, **overrides: Any
) -> AsyncIterator[Gateway]:
    settings = Settings.load(env={}, data_dir=tmp_path / "data", **overrides)
    clock = clock or ManualClock()
    async with open_services(settings, clock) as services:
        app = create_app(settings, services=services)
        async with TestClient(TestServer(app)) as client:
            yield Gateway(client, clock, services, settings)
