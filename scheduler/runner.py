"""APScheduler wiring and the purge status it keeps.

Each process keeps its own in-memory interval job (APScheduler 3 job stores
must not be shared); coordination between instances lives in the database:
claims skip rows another instance holds, leases lapse after one interval, and
audit appends are serialised. Concurrent passes on several instances split the
work between them. Passes never overlap within a process: the job and manual
triggers share one lock, and APScheduler coalesces missed runs into one. The
first pass runs at once on start, which also covers passes missed while the
process was down. After every pass the instance reports it to the database,
so any instance can show the whole cluster's passes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from filestore.audit import Frontier
from filestore.auditlog import write_checkpoint
from filestore.errors import FilestoreError, SplitBrain
from filestore.metadata.base import InstanceStatus
from filestore.services import Services
from scheduler.keys import manage_keys
from scheduler.purge import PassReport, purge_pass
from scheduler.sweep import sweep_orphan_blobs, sweep_stuck_uploads

log = logging.getLogger(__name__)
DAY = 86400.0
#: Passes run back to back at most, when each takes longer than the interval.
MAX_BACK_TO_BACK = 10


@dataclass
class PurgeStatus:
    """What this process knows of its own passes (the database knows the
    backlog; see ``MetadataStore.purge_stats``)."""

    interval: float
    running: bool = False
    #: Only the key step runs here (``serve --no-scheduler``).
    keys_only: bool = False
    in_pass: bool = False
    last: PassReport | None = None
    next_run_at: float | None = None
    passes: int = 0
    purged_total: int = 0
    failed_total: int = 0
    orphans_total: int = 0
    failures_total: Counter[str] = field(default_factory=Counter)
    last_checkpoint_size: int | None = None
    sweep_failed_total: int = 0
    #: KEKs due for destruction but still wrapping a live key.
    kek_held_back: list[int] = field(default_factory=list)
    #: KEKs this process destroyed at their deadline while files they
    #: wrapped remained (those files outlived their expiry: investigate).
    kek_forced_total: int = 0
    #: Passes that took longer than the interval (the next ran at once).
    overrun_total: int = 0
    last_error: str | None = None
    #: Passes after which erased key bytes could not be dropped from the
    #: database's files, and what stopped the last one (``wal_busy``).
    reclaim_blocked_total: int = 0
    reclaim_blocked: str | None = None
    #: (pass end, max overdue) of recent passes, for the 24-hour maximum.
    overdue: deque[tuple[float, float]] = field(default_factory=deque)

    def max_overdue_24h(self, now: float) -> float:
        while self.overdue and self.overdue[0][0] < now - DAY:
            self.overdue.popleft()
        return max((o for _t, o in self.overdue), default=0.0)


class PurgeScheduler:
    """Runs the purge pass, sweeps, key epochs and checkpoint on a timer."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.status = PurgeStatus(interval=services.settings.purge_interval)
        self._lock = asyncio.Lock()
        self._scheduler: AsyncIOScheduler | None = None
        self._frontier = Frontier()
        self._last_orphan_sweep: float | None = None

    async def run_pass(self) -> PassReport:
        """One full pass now (waits for a pass already running to end)."""
        async with self._lock:
            self.status.in_pass = True
            try:
                return await self._run()
            finally:
                self.status.in_pass = False

    async def _run(self) -> PassReport:
        svc = self.services
        settings = svc.settings
        eraser = svc.lifecycle.eraser
        report = await purge_pass(svc.metadata.files, eraser, batch_size=settings.purge_batch_size)
        status = self.status
        errors: list[str] = [report.error] if report.error else []

        async def step(name: str, work: Callable[[], Awaitable[None]]) -> None:
            # Each step on its own: one failing never skips the others, and
            # the checkpoint is written after every pass whatever happened.
            try:
                await work()
            except SplitBrain as exc:
                # Keys wrapped here would be unreadable to the others: stop
                # taking uploads and fail readiness until an operator acts.
                svc.lifecycle.uploads.halted = "its KEKs are not the cluster's"
                errors.append(f"{name}: {type(exc).__name__}")
                log.critical("%s; uploads refused until this is fixed", exc)
            except FilestoreError as exc:
                errors.append(f"{name}: {type(exc).__name__}")
                log.error("purge %s failed: %s", name, type(exc).__name__)

        async def stuck() -> None:
            swept = await sweep_stuck_uploads(svc.metadata, eraser, settings.upload_grace)
            status.orphans_total += swept.stuck_uploads
            status.sweep_failed_total += swept.failed

        async def orphans() -> None:
            # Listing storage costs O(blobs): every sweep interval, not every
            # pass, so a pass stays O(expired files).
            now = svc.clock.now()
            last = self._last_orphan_sweep
            if last is None or now - last >= settings.sweep_interval:
                found = await sweep_orphan_blobs(
                    svc.metadata, svc.blobs, eraser, settings.upload_grace
                )
                status.orphans_total += found.orphan_blobs
                status.sweep_failed_total += found.failed
                self._last_orphan_sweep = now

        async def keys() -> None:
            found = await manage_keys(svc.keyring, svc.metadata, eraser, settings)
            status.kek_held_back = found.held_back
            status.kek_forced_total += len(found.forced)

        async def checkpoint() -> None:
            size, _note = await write_checkpoint(
                svc.metadata,
                svc.signing_key,
                settings.audit_origin,
                svc.clock.now(),
                self._frontier,
            )
            status.last_checkpoint_size = size

        async def reclaim() -> None:
            # A deletion (this pass, a DELETE, a sweep) whose erased bytes an
            # outside reader kept in the database's files: try again now.
            report.reclaim_blocked = await eraser.retry_reclaim()

        await step("stuck-upload sweep", stuck)
        await step("orphan sweep", orphans)
        await step("key epochs", keys)
        await step("checkpoint", checkpoint)
        await step("reclaim", reclaim)
        async def tell_cluster() -> None:
            await svc.metadata.cluster.report_pass(
                InstanceStatus(
                    instance=eraser.instance,
                    started_at=report.started_at,
                    finished_at=report.finished_at,
                    purged=report.purged,
                    failed=report.failed,
                    max_overdue=report.max_overdue,
                    error="; ".join(errors) or None,
                    reclaim_blocked=report.reclaim_blocked,
                )
            )

        await step("instance report", tell_cluster)
        # The figures change together, with no await between them: a reader
        # of the status never sees half a pass.
        status.last_error = "; ".join(errors) or None
        status.last = report
        status.passes += 1
        status.purged_total += report.purged
        status.failed_total += report.failed
        status.failures_total.update(report.failures)
        status.overdue.append((report.finished_at, report.max_overdue))
        status.reclaim_blocked = report.reclaim_blocked
        status.reclaim_blocked_total += report.reclaim_blocked is not None
        self._note_next_run()
        return report

    def start(self, *, keys_only: bool = False) -> None:
        """Start the interval job; the first pass runs at once. With
        ``keys_only`` (a gateway whose purge runs elsewhere) only the key
        step runs: rotation and destruction of the KEKs this process holds."""
        scheduler = AsyncIOScheduler(timezone=UTC)
        scheduler.add_job(
            self._keys_job if keys_only else self._job,
            "interval",
            seconds=self.services.settings.purge_interval,
            id="purge",
            next_run_time=datetime.now(UTC),
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )
        scheduler.start()
        self._scheduler = scheduler
        self.status.running = not keys_only
        self.status.keys_only = keys_only

    async def _keys_job(self) -> None:
        svc = self.services
        try:
            found = await manage_keys(
                svc.keyring, svc.metadata, svc.lifecycle.eraser, svc.settings
            )
            self.status.kek_held_back = found.held_back
            self.status.kek_forced_total += len(found.forced)
        except SplitBrain as exc:
            svc.lifecycle.uploads.halted = "its KEKs are not the cluster's"
            log.critical("%s; uploads refused until this is fixed", exc)
        except FilestoreError as exc:
            log.error("key step failed: %s", type(exc).__name__)
        except Exception:  # never let the job die; the next run tries again
            log.exception("key step crashed")

    async def _job(self) -> None:
        """One timer tick. A pass longer than the interval makes APScheduler
        skip the ticks it overlapped (one instance at a time), so files that
        fell due meanwhile would wait for the tick after: up to two intervals
        plus a pass. Instead a pass that overran is followed at once by
        another (a bounded run of them), so nothing waits longer than one
        pass after it is due."""
        clock = self.services.clock
        interval = self.services.settings.purge_interval
        for _ in range(MAX_BACK_TO_BACK):
            started = clock.now()
            try:
                await self.run_pass()
            except Exception:  # never let the job die; the next run tries again
                log.exception("purge pass crashed")
            if not self.status.running or clock.now() - started < interval:
                break
            self.status.overrun_total += 1
            log.warning("purge pass took longer than PURGE_INTERVAL; running the next one now")
        self._note_next_run()

    def _note_next_run(self) -> None:
        job = self._scheduler.get_job("purge") if self._scheduler else None
        when = getattr(job, "next_run_time", None)
        self.status.next_run_at = when.timestamp() if when else None

    async def stop(self) -> None:
        """Stop the timer and let a pass in flight finish, then shut down.

        APScheduler's asyncio executor cancels the jobs still running when it
        shuts down, so the timer is paused first (no new pass starts), the
        pass in flight is awaited through the lock, and only then is the
        scheduler shut down."""
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.pause()
        self.status.running = False
        async with self._lock:
            if scheduler is not None:
                scheduler.shutdown(wait=False)
