"""The Prometheus exposition of the purge figures, on ``prometheus_client``.

Two steps, because the figures come from the database (awaited) and a
collector's ``collect()`` is synchronous:

1. the ``/metrics`` handler gathers every figure into a
   :class:`MetricsSnapshot` (database reads, probes, and a copy of this
   process's scheduler status taken at one instant);
2. :meth:`MetricsExposition.render` hands that snapshot to the app's
   :class:`FilestoreCollector` and renders the app's own
   :class:`~prometheus_client.CollectorRegistry` with ``generate_latest``.

Each app has its own registry (never the library's global one), holding the
filestore collector and the library's ``ProcessCollector`` (CPU, memory,
open file descriptors of this process). The library formats the numbers
(exact: ``repr`` of the float) and escapes label values and help text, so a
label read from the shared database (another instance's name) or an error
class cannot break a line or forge a sample.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from filestore import __version__

if TYPE_CHECKING:
    from filestore.metadata.base import InstanceStatus, PurgeStats
    from scheduler.runner import PurgeStatus

__all__ = ["FilestoreCollector", "MetricsExposition", "MetricsSnapshot"]


@dataclass(frozen=True)
class MetricsSnapshot:
    """Every figure ``/metrics`` shows, gathered before rendering.

    ``stats`` and ``instances`` are None when the database did not answer
    (their metrics are then left out, not shown as 0); ``health`` is
    :func:`filestore.api.health.check_dependencies`' answer. The rest is a
    copy of this process's :class:`~scheduler.runner.PurgeStatus`."""

    now: float
    instance: str
    database_backend: str
    storage_backend: str
    health: Mapping[str, str]
    stats: PurgeStats | None
    instances: tuple[InstanceStatus, ...] | None
    scheduler_running: bool
    interval: float
    passes: int
    purged_total: int
    failures_total: Mapping[str, int]
    reclaim_blocked: bool
    reclaim_blocked_passes_total: int
    last_pass_started_at: float | None
    last_pass_finished_at: float | None
    orphans_total: int
    sweep_failures_total: int
    keks_held_back: int
    keks_forced_total: int
    purge_overruns_total: int
    max_overdue_24h: float
    version: str = field(default=__version__)

    @classmethod
    def take(
        cls,
        status: PurgeStatus,
        now: float,
        *,
        instance: str,
        database_backend: str,
        storage_backend: str,
        health: Mapping[str, str],
        stats: PurgeStats | None,
        instances: list[InstanceStatus] | None,
    ) -> MetricsSnapshot:
        """Copy ``status`` now (no await in here: the scheduler changes a
        pass's figures together, so the copy never holds half a pass)."""
        last = status.last
        return cls(
            now=now,
            instance=instance,
            database_backend=database_backend,
            storage_backend=storage_backend,
            health=dict(health),
            stats=stats,
            instances=None if instances is None else tuple(instances),
            scheduler_running=status.running,
            interval=status.interval,
            passes=status.passes,
            purged_total=status.purged_total,
            failures_total=dict(status.failures_total),
            reclaim_blocked=status.reclaim_blocked is not None,
            reclaim_blocked_passes_total=status.reclaim_blocked_total,
            last_pass_started_at=None if last is None else last.started_at,
            last_pass_finished_at=None if last is None else last.finished_at,
            orphans_total=status.orphans_total,
            sweep_failures_total=status.sweep_failed_total,
            keks_held_back=len(status.kek_held_back),
            keks_forced_total=status.kek_forced_total,
            purge_overruns_total=status.overrun_total,
            max_overdue_24h=status.max_overdue_24h(now),
        )


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, value=value)


def _by_error(
    family: GaugeMetricFamily | CounterMetricFamily, counts: Mapping[str, int]
) -> GaugeMetricFamily | CounterMetricFamily:
    # One sample per error class seen; none at all when there is none (no
    # ``{error="none"} 0`` placeholder).
    for error, count in sorted(counts.items()):
        family.add_metric([error], count)
    return family


def families(snap: MetricsSnapshot) -> Iterator[Metric]:
    """The filestore metric families of one snapshot."""
    health = snap.health
    yield InfoMetricFamily(
        "filestore_instance",
        "This process: its instance name, backends and version.",
        value={
            "instance": snap.instance,
            "database": snap.database_backend,
            "storage": snap.storage_backend,
            "version": snap.version,
        },
    )
    yield _gauge(
        "filestore_database_up", "Whether the database answered.", float(snap.stats is not None)
    )
    yield _gauge(
        "filestore_storage_up",
        "Whether storage is writable.",
        float(health.get("storage") == "ok"),
    )
    yield _gauge(
        "filestore_keys_up",
        "0 while uploads are refused because this instance's KEKs are not the cluster's.",
        float(health.get("keys") == "ok"),
    )
    clock = GaugeMetricFamily(
        "filestore_clock_in_sync",
        "Whether this host's clock is within MAX_CLOCK_SKEW of the database server's "
        "(no sample while the database cannot be asked).",
    )
    if health.get("clock") in ("ok", "failing"):
        clock.add_metric([], float(health["clock"] == "ok"))
    yield clock
    yield _gauge(
        "filestore_purge_scheduler_running",
        "Whether this process runs the purge job.",
        float(snap.scheduler_running),
    )
    yield _gauge("filestore_purge_interval_seconds", "Purge pass interval.", snap.interval)
    yield _counter("filestore_purge_passes_total", "Purge passes run here.", snap.passes)
    yield _counter(
        "filestore_purged_files_total", "Files purged by this process.", snap.purged_total
    )
    yield _by_error(
        CounterMetricFamily(
            "filestore_purge_failures_total",
            "Failed purge attempts by this process, by error class.",
            labels=["error"],
        ),
        snap.failures_total,
    )
    yield _gauge(
        "filestore_reclaim_blocked",
        "1 while erased key bytes could not be dropped from the database's files.",
        float(snap.reclaim_blocked),
    )
    yield _counter(
        "filestore_reclaim_blocked_passes_total",
        "Passes after which erased key bytes stayed in the database's files.",
        snap.reclaim_blocked_passes_total,
    )
    if snap.instances is not None:
        passes = GaugeMetricFamily(
            "filestore_instance_last_pass_timestamp_seconds",
            "When each instance sharing the database last finished a purge pass.",
            labels=["instance"],
        )
        for item in snap.instances:
            passes.add_metric([item.instance], item.finished_at)
        yield passes
    if snap.last_pass_started_at is not None and snap.last_pass_finished_at is not None:
        yield _gauge(
            "filestore_purge_last_pass_timestamp_seconds",
            "When the last pass ended.",
            snap.last_pass_finished_at,
        )
        yield _gauge(
            "filestore_purge_last_pass_duration_seconds",
            "How long the last pass took.",
            snap.last_pass_finished_at - snap.last_pass_started_at,
        )
    stats = snap.stats
    if stats is not None:
        overdue = 0.0 if stats.oldest_expiry is None else max(0.0, snap.now - stats.oldest_expiry)
        age = 0.0 if stats.oldest_live_created is None else snap.now - stats.oldest_live_created
        yield _gauge(
            "filestore_purge_backlog_files", "Expired files not yet purged.", stats.backlog
        )
        yield _gauge(
            "filestore_purge_most_overdue_seconds",
            "Seconds the most overdue expired file is past its expiry.",
            overdue,
        )
        yield _gauge(
            "filestore_purge_failing_files",
            "Files whose last purge attempt failed.",
            stats.failing,
        )
        yield _by_error(
            GaugeMetricFamily(
                "filestore_purge_failing_files_by_error",
                "Files whose last purge attempt failed, by error class.",
                labels=["error"],
            ),
            stats.failures_by_error,
        )
        yield _gauge("filestore_live_files", "Files uploading or active.", stats.live)
        yield _gauge("filestore_oldest_live_file_age_seconds", "Age of the oldest live file.", age)
    yield _counter(
        "filestore_orphans_removed_total",
        "Orphan uploads and blobs removed by this process.",
        snap.orphans_total,
    )
    yield _counter(
        "filestore_sweep_failures_total",
        "Stuck uploads and orphan blobs this process failed to remove.",
        snap.sweep_failures_total,
    )
    yield _gauge(
        "filestore_kek_destruction_held_back",
        "KEKs destroyed at their deadline whose settlement (audit record, hand-over "
        "of files still wrapped under them) waits for the database.",
        snap.keks_held_back,
    )
    yield _counter(
        "filestore_purge_overruns_total",
        "Purge passes that took longer than PURGE_INTERVAL (the next one ran at once).",
        snap.purge_overruns_total,
    )
    yield _counter(
        "filestore_kek_forced_destructions_total",
        "KEKs this process destroyed at their deadline while files they wrapped "
        "remained (those files were kept past their expiry).",
        snap.keks_forced_total,
    )
    yield _gauge(
        "filestore_purge_max_overdue_seconds_24h",
        "Largest overdue time seen by this process in the last 24 hours.",
        snap.max_overdue_24h,
    )


class FilestoreCollector:
    """Yields the families of the snapshot it is given; nothing without one
    (a registry asked outside :meth:`MetricsExposition.render`)."""

    def __init__(self) -> None:
        self.snapshot: MetricsSnapshot | None = None

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        if snap is not None:
            yield from families(snap)


class MetricsExposition:
    """One app's registry: the filestore collector, and the process
    collector unless ``process=False``."""

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry()
        self._collector = FilestoreCollector()
        self.registry.register(self._collector)
        if process:
            ProcessCollector(registry=self.registry)
        # render() sets the snapshot and renders in one step; the lock keeps
        # two renders (from threads) from seeing each other's snapshot.
        self._lock = threading.Lock()

    def render(self, snapshot: MetricsSnapshot) -> bytes:
        """The text exposition of ``snapshot`` and the process metrics."""
        with self._lock:
            self._collector.snapshot = snapshot
            try:
                body: bytes = generate_latest(self.registry)
            finally:
                self._collector.snapshot = None
        return body
