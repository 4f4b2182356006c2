"""Looking into the metadata database from a test, on either backend.

Tests never open the database file themselves: they run plain SQL through
the store's own connection (SQLite's thread, or PostgreSQL's pool), so the
same assertion holds on every backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import sqlalchemy.exc

from filestore.metadata.base import MetadataStore
from filestore.metadata.sql import SQLMetadataStore
from filestore.services import Services


@dataclass(frozen=True)
class MetadataBackend:
    """Which database a test runs on, and where its bytes live on disk."""

    name: str
    url: str
    #: The files holding the database's bytes (after a checkpoint), or None
    #: where the test cannot see them (an external server).
    files: Callable[[], list[Path] | None]


def _store(where: Services | MetadataStore) -> SQLMetadataStore:
    store = where.metadata if isinstance(where, Services) else where
    assert isinstance(store, SQLMetadataStore)
    return store


async def rows(where: Services | MetadataStore, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Every row of ``sql`` (bytes for binary columns on both backends)."""

    def fn(conn: sa.Connection) -> list[tuple[Any, ...]]:
        return [
            tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
            for row in conn.execute(sa.text(sql), params)
        ]

    return await _store(where).db.run(fn)


async def execute(where: Services | MetadataStore, sql: str, **params: Any) -> int:
    """Run a statement that returns no rows; its row count."""

    def fn(conn: sa.Connection) -> int:
        return int(conn.execute(sa.text(sql), params).rowcount)

    return await _store(where).db.run(fn)


async def scalar(where: Services | MetadataStore, sql: str, **params: Any) -> Any:
    (row,) = await rows(where, sql, **params)
    return row[0]


async def refused(where: Services | MetadataStore, sql: str, **params: Any) -> str:
    """Run a write the database must refuse; return the database's message.
    Fails the test if the write went through."""

    def fn(conn: sa.Connection) -> str | None:
        try:
            with conn.begin_nested():
                conn.execute(sa.text(sql), params)
        except sqlalchemy.exc.DBAPIError as exc:
            return str(exc.orig)
        return None

    message = await _store(where).db.run(fn)
    assert message is not None, f"the database accepted: {sql}"
    return message


async def file_states(where: Services | MetadataStore) -> dict[bytes, str]:
    """Raw file id → state."""
    return {
        bytes(fid): str(state) for fid, state in await rows(where, "SELECT id, state FROM files")
    }
