"""The throwaway PostgreSQL server of tests/support/postgres.py does what the
database tests rely on: a real, recent server, fresh databases that share
nothing, run unprivileged even when the suite runs as root, and data files a
test can read after a checkpoint."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.support.postgres import (
    NOT_FOUND,
    PostgresServer,
    PostgresUnavailable,
    find_bin_dir,
)


async def test_server_is_postgresql_13_or_newer(postgres: PostgresServer) -> None:
    conn = await postgres.connect()
    try:
        version = await conn.fetchval("SELECT version()")
        number = int(await conn.fetchval("SHOW server_version_num"))
    finally:
        await conn.close()
    assert version.startswith("PostgreSQL ")
    assert number >= 130000, version  # DROP DATABASE ... WITH (FORCE) needs 13


async def test_fresh_databases_are_distinct_and_empty(postgres: PostgresServer) -> None:
    async with postgres.database() as first, postgres.database() as second:
        assert first != second
        one = await asyncpg.connect(first)
        two = await asyncpg.connect(second)
        try:
            for conn in (one, two):
                tables = await conn.fetchval(
                    "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                )
                assert tables == 0
            await one.execute("CREATE TABLE only_here (n int); INSERT INTO only_here VALUES (1)")
            assert await one.fetchval("SELECT n FROM only_here") == 1
            assert await two.fetchval("SELECT to_regclass('public.only_here')") is None
            names = {await c.fetchval("SELECT current_database()") for c in (one, two)}
            assert len(names) == 2
        finally:
            await one.close()
            await two.close()


async def test_database_is_dropped_even_with_a_connection_open(postgres: PostgresServer) -> None:
    async with postgres.database() as url:
        name = urlsplit(url).path.lstrip("/")
        left_open = await asyncpg.connect(url)  # DROP ... WITH (FORCE) ends it
    admin = await postgres.connect()
    try:
        left = await admin.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name)
        assert left == 0
    finally:
        await admin.close()
        await left_open.close()


async def test_pg_database_url_works_with_asyncpg(pg_database_url: str) -> None:
    assert pg_database_url.startswith("postgresql://")
    conn = await asyncpg.connect(pg_database_url)
    try:
        await conn.execute("CREATE TABLE t (id serial PRIMARY KEY, body bytea NOT NULL)")
        await conn.execute("INSERT INTO t (body) VALUES ($1)", b"\x00bytes\xff")
        assert await conn.fetchval("SELECT body FROM t") == b"\x00bytes\xff"
        database = await conn.fetchval("SELECT current_database()")
        assert database == urlsplit(pg_database_url).path.lstrip("/")
    finally:
        await conn.close()


def _local(server: PostgresServer) -> Path:
    if server.data_dir is None:
        pytest.skip("an external server (FILESTORE_TEST_DATABASE_URL) has no local data directory")
    return server.data_dir


async def test_server_runs_as_an_unprivileged_user(postgres: PostgresServer) -> None:
    data_dir = _local(postgres)
    assert postgres.pid is not None
    status = Path(f"/proc/{postgres.pid}/status").read_text()
    real, effective = (int(n) for n in status.split("\nUid:")[1].split()[:2])
    assert real != 0 and effective != 0
    if os.geteuid() != 0:
        assert effective == os.geteuid()
    assert data_dir.stat().st_uid == effective
    conn = await postgres.connect()
    try:
        assert await conn.fetchval("SELECT current_setting('data_directory')") == str(data_dir)
    finally:
        await conn.close()


async def test_checkpoint_puts_rows_in_readable_data_files(
    postgres: PostgresServer, pg_database_url: str
) -> None:
    data_dir = _local(postgres)
    marker = f"filestore-marker-{secrets.token_hex(8)}".encode()
    conn = await asyncpg.connect(pg_database_url)
    try:
        await conn.execute("CREATE TABLE t (body bytea)")
        await conn.execute("INSERT INTO t VALUES ($1)", marker)
        oid = await conn.fetchval("SELECT oid FROM pg_database WHERE datname = current_database()")
    finally:
        await conn.close()
    postgres.checkpoint()
    files = [p for p in (data_dir / "base" / str(oid)).iterdir() if p.is_file()]
    assert any(marker in p.read_bytes() for p in files)


def test_missing_binaries_give_the_skip_reason(tmp_path: Path) -> None:
    with pytest.raises(PostgresUnavailable) as caught:
        find_bin_dir(search_path=str(tmp_path), package_root=tmp_path)
    assert str(caught.value) == NOT_FOUND


def test_newest_packaged_version_is_chosen(tmp_path: Path) -> None:
    for version in ("9.6", "13", "15", "notaversion"):
        bin_dir = tmp_path / version / "bin"
        bin_dir.mkdir(parents=True)
        for tool in ("initdb", "pg_ctl"):
            (bin_dir / tool).touch(mode=0o755)
    assert find_bin_dir(search_path=str(tmp_path / "empty"), package_root=tmp_path) == (
        tmp_path / "15" / "bin"
    )


def test_external_url_keeps_credentials_and_names_the_database() -> None:
    server = PostgresServer.external("postgresql+asyncpg://app:s3cret@db.example:6543/admin")
    assert server.admin_database == "admin"
    assert server.url("fs_test_1") == "postgresql://app:s3cret@db.example:6543/fs_test_1"
    assert server.data_dir is None
    server.stop()  # nothing was started: a no-op
