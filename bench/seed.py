"""Files put straight into a running filestore's database and blob store,
so a purge pass has thousands of them to erase without thousands of
uploads first. What is timed afterwards (the pass) is entirely real.

Rows, wrapped keys and blobs are written as filestore lays them out (the
``files`` and ``file_keys`` tables, ``storage/blobs/ab/<hex>`` on local
disk, ``<prefix><hex>`` in the bucket), under the KEK of a file uploaded
through the API just before, with random bytes where filestore keeps
sealed metadata and wrapped keys: the pass erases those, it never opens
them.
"""

from __future__ import annotations

import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa

from bench.targets import FilestoreTarget
from filestore.ids import blob_name
from filestore.metadata import schema
from filestore.metadata.sql import SQLMetadataStore

#: Plaintext bytes of a seeded file (its blob is this plus the format's overhead).
SEEDED_SIZE = 1000
BLOB_BYTES = SEEDED_SIZE + 88 + 16
ROWS_PER_INSERT = 5000


def put_objects(client: Any, bucket: str, keys: list[str], threads: int = 16) -> None:
    """``put_object`` of a small body for each key, on ``threads`` threads."""
    body = os.urandom(BLOB_BYTES)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=body), keys))


async def seed(target: FilestoreTarget, count: int, expires_in: float) -> None:
    """``count`` active files of the target's tenant expiring ``expires_in``
    seconds from now (negative: already expired)."""
    store = await SQLMetadataStore.open(target.database_url)
    try:

        def kek_and_tenant(conn: sa.Connection) -> tuple[int, str]:
            row = conn.execute(
                sa.select(schema.files.c.kek_id, schema.files.c.tenant)
                .order_by(schema.files.c.created_at.desc())
                .limit(1)
            ).one()
            return int(row[0]), str(row[1])

        kek_id, tenant = await store.db.run(kek_and_tenant, write=False)
        now = time.time()
        ids = [secrets.token_bytes(16) for _ in range(count)]
        names = [blob_name(fid) for fid in ids]
        if target.s3 is not None:
            client, bucket, prefix = target.s3
            put_objects(client, bucket, [prefix + name for name in names])
        else:
            blobs = target.data_dir / "storage" / "blobs"
            body = os.urandom(BLOB_BYTES)
            for name in names:
                shard = blobs / name[0:2]
                shard.mkdir(parents=True, exist_ok=True)
                (shard / name).write_bytes(body)
            os.sync()  # on disk, as committed blobs are, before the pass is timed
        sealed = os.urandom(96)
        wrapped = os.urandom(60)
        for start in range(0, count, ROWS_PER_INSERT):
            part = ids[start : start + ROWS_PER_INSERT]
            files = [
                {
                    "id": fid,
                    "tenant": tenant,
                    "state": "active",
                    "kek_id": kek_id,
                    "created_at": now - 100,
                    "expires_at": now + expires_in,
                    "size": SEEDED_SIZE,
                    "sealed": sealed,
                }
                for fid in part
            ]
            keys = [{"file_id": fid, "kek_id": kek_id, "wrapped_dek": wrapped} for fid in part]

            def insert(conn: sa.Connection, files: Any = files, keys: Any = keys) -> None:
                conn.execute(schema.files.insert(), files)
                conn.execute(schema.file_keys.insert(), keys)

            await store.db.run(insert)
    finally:
        await store.close()
