"""The pass history and the lifetime histogram the status page reads, as a
contract run on every metadata backend (SQLite and a real PostgreSQL), in
the style of test_metadata_contract.py: several instances report passes to
one database, the history is pruned in the same write, and files are
counted by remaining lifetime in one grouped query."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from filestore.metadata.base import (
    DeleteReason,
    FileKey,
    FileRecord,
    FileState,
    InstanceStatus,
    MetadataStore,
    PassRecord,
)
from filestore.metadata.sql import PASS_HISTORY, SQLMetadataStore
from tests.support import db
from tests.support.db import MetadataBackend

NOW = 1_800_000_000.0
HOUR = 3600.0


@pytest.fixture
async def store(metadata_backend: MetadataBackend) -> AsyncIterator[MetadataStore]:
    opened = await SQLMetadataStore.open(metadata_backend.url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def other(metadata_backend: MetadataBackend) -> AsyncIterator[MetadataStore]:
    """A second store on the same database: another instance."""
    opened = await SQLMetadataStore.open(metadata_backend.url)
    try:
        yield opened
    finally:
        await opened.close()


def _pass(
    instance: str,
    end: float,
    purged: int = 0,
    failed: int = 0,
    overdue: float = 0.0,
    error: str | None = None,
    reclaim: str | None = None,
) -> InstanceStatus:
    return InstanceStatus(instance, end - 2.5, end, purged, failed, overdue, error, reclaim)


async def test_every_report_is_kept_in_order_with_its_fields(
    store: MetadataStore, other: MetadataStore
) -> None:
    assert await store.cluster.pass_history(0.0, 100) == []
    await store.cluster.report_pass(_pass("gw-a", NOW + 10, purged=3, overdue=1.25))
    await other.cluster.report_pass(
        _pass("gw-b", NOW + 20, failed=2, error="storage: StorageUnavailable", reclaim="wal_busy")
    )
    await store.cluster.report_pass(_pass("gw-a", NOW + 30, purged=1))
    # A manual clock that did not move: two passes ending at the same time.
    await store.cluster.report_pass(_pass("gw-a", NOW + 30, purged=7))

    history = await other.cluster.pass_history(0.0, 100)
    assert history == [
        PassRecord("gw-a", NOW + 7.5, NOW + 10, 3, 0, 1.25, None),
        PassRecord("gw-b", NOW + 17.5, NOW + 20, 0, 2, 0.0, "storage: StorageUnavailable"),
        PassRecord("gw-a", NOW + 27.5, NOW + 30, 1, 0, 0.0, None),
        PassRecord("gw-a", NOW + 27.5, NOW + 30, 7, 0, 0.0, None),
    ]
    # The last pass of each instance is still one row per instance.
    last = await store.cluster.instance_passes()
    assert [(p.instance, p.purged) for p in last] == [("gw-a", 7), ("gw-b", 0)]


async def test_since_and_limit_keep_the_newest(store: MetadataStore) -> None:
    for n in range(10):
        await store.cluster.report_pass(_pass("gw", NOW + n * 60, purged=n))
    recent = await store.cluster.pass_history(NOW + 5 * 60, 100)
    assert [p.purged for p in recent] == [5, 6, 7, 8, 9]
    newest = await store.cluster.pass_history(0.0, 3)
    assert [p.purged for p in newest] == [7, 8, 9]


async def test_history_is_pruned_in_the_same_write(
    store: MetadataStore, other: MetadataStore
) -> None:
    await store.cluster.report_pass(_pass("gw-a", NOW))
    await other.cluster.report_pass(_pass("gw-b", NOW + HOUR))
    # Just inside the window of a report made PASS_HISTORY after the first.
    await store.cluster.report_pass(_pass("gw-a", NOW + PASS_HISTORY))
    assert [p.finished_at for p in await store.cluster.pass_history(0.0, 100)] == [
        NOW,
        NOW + HOUR,
        NOW + PASS_HISTORY,
    ]
    # One more second: the first pass has left the window, whoever reports.
    await other.cluster.report_pass(_pass("gw-b", NOW + PASS_HISTORY + 1))
    ends = [p.finished_at for p in await store.cluster.pass_history(0.0, 100)]
    assert ends == [NOW + HOUR, NOW + PASS_HISTORY, NOW + PASS_HISTORY + 1]
    (count,) = (await db.rows(store, "SELECT count(*) FROM purge_passes"))[0]
    assert count == 3
    assert 24 * HOUR <= PASS_HISTORY <= 48 * HOUR


async def test_a_day_of_passes_stays_bounded(store: MetadataStore) -> None:
    """Two days of passes every 20 minutes keep only the last 36 hours."""
    interval = 20 * 60.0
    for n in range(int(48 * HOUR / interval)):
        await store.cluster.report_pass(_pass("gw", NOW + n * interval))
    history = await store.cluster.pass_history(0.0, 10_000)
    assert len(history) == int(PASS_HISTORY / interval) + 1
    assert history[-1].finished_at - history[0].finished_at == PASS_HISTORY


# ------------------------------------------------------- lifetime histogram
async def _file(store: MetadataStore, expires_in: float, *, activate: bool = True) -> FileRecord:
    rec = FileRecord(
        id=secrets.token_bytes(16),
        tenant="t1",
        state=FileState.UPLOADING,
        kek_id=1,
        created_at=NOW - 60,
        expires_at=NOW + expires_in,
    )
    await store.files.create_upload(rec, FileKey(rec.id, 1, b"w" * 61))
    if activate:
        await store.files.activate(rec.id, 10, b"sealed")
    return rec


async def test_lifetime_histogram_counts_live_files_by_remaining_time(
    store: MetadataStore,
) -> None:
    assert await store.files.lifetime_histogram(NOW, HOUR, 24) == [0] * 24
    for expires_in in (1.0, 59 * 60, HOUR - 0.001):
        await _file(store, expires_in)  # first hour
    await _file(store, HOUR)  # exactly one hour left: the second bucket
    await _file(store, 5.5 * HOUR, activate=False)  # still uploading: live
    await _file(store, 23.9 * HOUR)
    await _file(store, 30 * HOUR)  # beyond the range: the last bucket
    # Not counted: expired (the backlog, not a remaining lifetime), being
    # deleted, purged.
    await _file(store, 0.0)
    await _file(store, -HOUR)
    doomed = await _file(store, 2 * HOUR)
    assert await store.files.begin_delete(
        doomed.id, DeleteReason.CLIENT_REQUEST, "o", NOW, NOW + 60
    )
    counts = await store.files.lifetime_histogram(NOW, HOUR, 24)
    expected = [0] * 24
    expected[0], expected[1], expected[5], expected[23] = 3, 1, 1, 2
    assert counts == expected
    # Other widths, and a single bucket holding everything live.
    assert await store.files.lifetime_histogram(NOW, 12 * HOUR, 2) == [5, 2]
    assert await store.files.lifetime_histogram(NOW, HOUR, 1) == [7]
    with pytest.raises(ValueError):
        await store.files.lifetime_histogram(NOW, HOUR, 0)
