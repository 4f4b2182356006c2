"""The purge pass against real SQLite and local storage, on a manual clock."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from filestore import ids
from filestore.clock import ManualClock
from filestore.config import Settings
from filestore.errors import StorageUnavailable
from filestore.metadata.base import FileState
from filestore.services import Services, open_services
from scheduler.purge import PassReport, purge_pass
from scheduler.runner import PurgeScheduler
from tests.support import db
from tests.support.db import MetadataBackend
from tests.support.files import make_file
from tests.support.gateway import Gateway


class Boom(Exception):
    """An injected crash."""


async def _rows(services: Services) -> dict[str, str]:
    return {ids.to_text(fid): state for fid, state in (await db.file_states(services)).items()}


def _blob_names(services: Services) -> set[str]:
    root = services.settings.storage_dir
    return {p.name.split(".")[0] for p in root.rglob("*") if p.is_file()}


async def _records(services: Services) -> list[object]:
    return list(await services.metadata.audit.records(0, 10_000))


async def _pass(services: Services, **kw: int):  # type: ignore[no-untyped-def]
    return await purge_pass(services.metadata.files, services.lifecycle.eraser, **kw)


async def test_expired_files_are_gone_then_purged(gateway: Gateway) -> None:
    svc = gateway.services
    short = await gateway.upload(b"one minute", params={"ttl": "60"})
    medium = await gateway.upload(b"two minutes", params={"ttl": "120"})
    long = await gateway.upload(b"an hour", params={"ttl": "3600"})
    gateway.clock.advance(120)
    for meta in (short, medium):
        assert (await gateway.get(meta["id"])).status == 410
    assert (await gateway.get(long["id"])).status == 200
    report = await _pass(svc)
    assert (report.claimed, report.purged, report.failed) == (2, 2, 0)
    assert report.max_overdue == pytest.approx(60)
    rows = await _rows(svc)
    assert rows[short["id"]] == rows[medium["id"]] == "purged"
    assert rows[long["id"]] == "active"
    assert _blob_names(svc) == {ids.blob_name(ids.from_text(long["id"]))}
    records = await _records(svc)
    assert sorted(r.file_id for r in records) == sorted([short["id"], medium["id"]])  # type: ignore[attr-defined]
    assert {r.reason for r in records} == {"expired"}  # type: ignore[attr-defined]
    # Idempotent: nothing more to do, no second record.
    again = await _pass(svc)
    assert (again.claimed, again.purged) == (0, 0)
    assert len(await _records(svc)) == 2


async def test_pass_batches_and_is_bounded(gateway: Gateway) -> None:
    svc = gateway.services
    made = [await make_file(svc, ttl=10, size=10) for _ in range(23)]
    gateway.clock.advance(11)
    report = await _pass(svc, batch_size=5)
    assert report.purged == 23
    assert all(state == "purged" for state in (await _rows(svc)).values())
    assert {r.file_id for r in await _records(svc)} == {f.id_text for f in made}  # type: ignore[attr-defined]


@pytest.mark.parametrize("step", ["leased", "crypto_erased", "blobs_deleted", "finished"])
async def test_crash_at_each_step_is_finished_by_the_next_pass(gateway: Gateway, step: str) -> None:
    svc = gateway.services
    made = [await make_file(svc, ttl=30) for _ in range(6)]
    gateway.clock.advance(31)
    eraser = svc.lifecycle.eraser

    async def crash(name: str) -> None:
        if name == step:
            raise Boom(name)

    eraser.after_step = crash
    with pytest.raises(Boom):
        await _pass(svc)
    eraser.after_step = None
    # Unreadable from the moment it expired, whatever the crash left.
    for info in made:
        assert (await gateway.get(info.id_text)).status == 410
    gateway.clock.advance(svc.lifecycle.eraser.lease_seconds)  # the crashed pass's leases lapse
    await _pass(svc)
    assert all(state == "purged" for state in (await _rows(svc)).values())
    assert _blob_names(svc) == set()
    records = await _records(svc)
    assert sorted(r.file_id for r in records) == sorted(f.id_text for f in made)  # type: ignore[attr-defined]


async def test_one_failing_blob_does_not_stop_the_pass(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = gateway.services
    made = [await make_file(svc, ttl=30) for _ in range(5)]
    stuck = ids.blob_name(made[2].id)
    gateway.clock.advance(31)
    real_delete_many = svc.blobs.delete_many

    async def failing_delete_many(names: Sequence[str]) -> dict[str, StorageUnavailable | None]:
        # The real store removes the others; the stuck blob is never touched.
        outcome = await real_delete_many([n for n in names if n != stuck])
        return {**outcome, **{n: StorageUnavailable("injected") for n in names if n == stuck}}

    monkeypatch.setattr(svc.blobs, "delete_many", failing_delete_many)
    report = await _pass(svc)
    assert (report.purged, report.failed) == (4, 1)
    assert report.failures == {"StorageUnavailable": 1}
    stats = await svc.metadata.files.purge_stats(gateway.clock.now())
    assert stats.backlog == 1 and stats.failing == 1
    assert stats.failures_by_error == {"StorageUnavailable": 1}
    # Held back by the backoff: the next immediate pass leaves it alone.
    assert (await _pass(svc)).claimed == 0
    monkeypatch.undo()
    gateway.clock.advance(61)
    report = await _pass(svc)
    assert report.purged == 1
    assert _blob_names(svc) == set()
    assert len(await _records(svc)) == 5
    assert (await svc.metadata.files.purge_stats(gateway.clock.now())).backlog == 0


async def test_no_key_residue_after_purge(
    gateway: Gateway, metadata_backend: MetadataBackend
) -> None:
    """SQLite only: on PostgreSQL the WAL keeps erased rows until its segments
    are recycled, which only KEK destruction covers (see
    ``test_postgres_key_residue``)."""
    if metadata_backend.name != "sqlite":
        pytest.skip("measured separately for PostgreSQL")
    svc = gateway.services
    info = await make_file(svc, ttl=30)
    loaded = await svc.metadata.files.load(info.id)
    assert loaded is not None and loaded[1] is not None
    wrapped = loaded[1].wrapped
    sealed = loaded[0].sealed
    assert sealed is not None
    gateway.clock.advance(31)
    assert (await _pass(svc)).purged == 1
    files = metadata_backend.files()
    assert files
    for path in files:
        data = path.read_bytes()
        assert wrapped not in data, path.name
        assert sealed not in data, path.name
        assert b"secret-name" not in data, path.name


async def test_one_record_per_file_is_enforced_by_the_database(gateway: Gateway) -> None:
    svc = gateway.services
    info = await make_file(svc, ttl=30)
    gateway.clock.advance(31)
    await _pass(svc)
    duplicate = await db.refused(
        svc,
        "INSERT INTO audit_log (seq, event, file_id, recorded_at, hash, body) "
        "VALUES (99, 'file_deleted', :id, 0, 'x', '{}')",
        id=info.id_text,
    )
    assert "unique" in duplicate.lower()
    assert "append-only" in await db.refused(svc, "DELETE FROM audit_log")
    assert "append-only" in await db.refused(svc, "UPDATE audit_log SET tenant = 'x'")
    await make_file(svc, ttl=3600)  # a live key to try to change
    assert "insert-once" in await db.refused(svc, "UPDATE file_keys SET kek_id = 7")


async def test_stuck_upload_is_swept_as_orphan(gateway: Gateway) -> None:
    svc = gateway.services
    from filestore.metadata.base import FileKey, FileRecord

    file_id = ids.new_file_id()
    now = gateway.clock.now()
    await svc.metadata.files.create_upload(
        FileRecord(file_id, "acme", FileState.UPLOADING, 1, now, now + 20 * 3600),
        FileKey(file_id, 1, b"w" * 60),
    )
    writer = await svc.blobs.create(ids.blob_name(file_id))
    await writer.write(b"partial ciphertext")  # the crash: never committed or aborted
    scheduler = PurgeScheduler(svc)
    await scheduler.run_pass()
    assert (await _rows(svc))[ids.to_text(file_id)] == "uploading"  # within the grace
    gateway.clock.advance(svc.settings.upload_grace + 1)
    await scheduler.run_pass()
    assert (await _rows(svc))[ids.to_text(file_id)] == "purged"
    (record,) = await _records(svc)
    assert record.reason == "orphan"  # type: ignore[attr-defined]


async def test_orphan_blob_without_row_is_removed_and_audited(gateway: Gateway) -> None:
    svc = gateway.services
    file_id = ids.new_file_id()
    writer = await svc.blobs.create(ids.blob_name(file_id))
    await writer.write(b"ciphertext left by a crash")
    await writer.commit()
    scheduler = PurgeScheduler(svc)
    gateway.clock.advance(svc.settings.upload_grace + 1)
    # The blob's mtime is real time; move the manual clock well past it.
    gateway.clock.set(
        max(gateway.clock.now(), __import__("time").time()) + svc.settings.upload_grace + 1
    )
    await scheduler.run_pass()
    assert _blob_names(svc) == set()
    (record,) = await _records(svc)
    assert (record.file_id, record.reason) == (ids.to_text(file_id), "orphan")  # type: ignore[attr-defined]


async def test_scheduler_runs_at_once_and_stops_cleanly(tmp_path: Path) -> None:
    import asyncio

    settings = Settings.load(
        env={}, data_dir=tmp_path / "data", purge_interval=3600, max_ttl=20 * 3600
    )
    clock = ManualClock()
    async with open_services(settings, clock) as svc:
        info = await make_file(svc, ttl=5)
        clock.advance(6)
        scheduler = PurgeScheduler(svc)
        scheduler.start()
        try:
            for _ in range(200):  # bounded wait for the first, immediate pass
                if scheduler.status.passes:
                    break
                await asyncio.sleep(0.02)
            assert scheduler.status.passes == 1
            assert scheduler.status.running
            assert scheduler.status.next_run_at is not None
        finally:
            await scheduler.stop()
        assert not scheduler.status.running
        loaded = await svc.metadata.files.load(info.id)
        assert loaded is not None and loaded[0].state == FileState.PURGED


async def test_checkpoints_from_one_long_lived_scheduler_verify(gateway: Gateway) -> None:
    """The scheduler extends its cached Merkle frontier pass by pass; every
    checkpoint it signs must match the log recomputed from scratch."""
    from filestore.audit import verify_export
    from filestore.auditlog import export

    svc = gateway.services
    scheduler = PurgeScheduler(svc)
    for count in (3, 0, 1, 5, 2):
        for _ in range(count):
            await make_file(svc, ttl=10, size=10)
        gateway.clock.advance(11)
        await scheduler.run_pass()
    lines = [
        line
        async for chunk in export(
            svc.metadata, svc.signing_key, svc.settings.audit_origin, gateway.clock.now()
        )
        for line in chunk.splitlines()
    ]
    report = verify_export(lines, svc.signing_key.public_key(), now=gateway.clock.now())
    assert report.records == 11
    assert report.checkpoints >= 4


async def test_stop_lets_a_pass_in_flight_finish(gateway: Gateway) -> None:
    """SIGTERM's path: a pass already running is not cancelled by the stop."""
    import asyncio

    svc = gateway.services
    await make_file(svc, ttl=5)
    gateway.clock.advance(6)
    scheduler = PurgeScheduler(svc)
    entered = asyncio.Event()
    release = asyncio.Event()

    async def slow_step(name: str) -> None:
        if name == "crypto_erased":
            entered.set()
            await release.wait()

    svc.lifecycle.eraser.after_step = slow_step
    try:
        scheduler.start()
        await asyncio.wait_for(entered.wait(), 10)
        stopping = asyncio.ensure_future(scheduler.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done()  # waits for the pass
        release.set()
        await asyncio.wait_for(stopping, 10)
    finally:
        svc.lifecycle.eraser.after_step = None
    assert scheduler.status.passes == 1 and scheduler.status.last is not None
    assert scheduler.status.last.purged == 1


async def test_a_pass_longer_than_the_interval_is_followed_at_once(gateway: Gateway) -> None:
    """APScheduler skips the ticks a long pass overlaps; the job makes up for
    it by running the next pass straight away, until one fits the interval."""
    interval = gateway.settings.purge_interval
    durations = [interval * 1.5, interval + 0.001, interval / 10]
    starts: list[float] = []

    class Slow(PurgeScheduler):
        async def run_pass(self) -> PassReport:
            starts.append(gateway.clock.now())
            report = await super().run_pass()
            gateway.clock.advance(durations[len(starts) - 1])
            return report

    scheduler = Slow(gateway.services)
    scheduler.status.running = True  # as start() leaves it, without the timer
    meta = await gateway.upload(b"due during the long pass", params={"ttl": "1s"})
    await scheduler._job()
    assert len(starts) == 3 and scheduler.status.overrun_total == 2
    # The second pass started the moment the first ended, not a tick later.
    assert starts[1] == starts[0] + durations[0]
    assert (await gateway.get(meta["id"])).status in (404, 410)
    scheduler.status.running = False
    starts.clear()
    durations[:] = [interval * 2, interval * 2]
    await scheduler._job()  # stopping: no second pass
    assert len(starts) == 1
