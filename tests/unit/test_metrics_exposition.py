"""The /metrics exposition (filestore.metrics), read back with
prometheus_client's own parser: exact values, escaped labels that cannot
forge a line, no placeholder samples, figures left out when the database
did not answer, and a registry of the app's own."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from filestore.metadata.base import InstanceStatus, PurgeStats
from filestore.metrics import FilestoreCollector, MetricsExposition, MetricsSnapshot
from scheduler.purge import PassReport
from scheduler.runner import PurgeStatus
from tests.support.metrics import parse

NOW = 1_780_000_123.25
HEALTHY = {"database": "ok", "storage": "ok", "keys": "ok", "clock": "ok"}
#: A label value with every character the text format must escape, shaped
#: to end the label set and start a sample line of its own.
HOSTILE = 'x"} 1\nfilestore_database_up 0\n# TYPE forged counter\\'


def _instance(name: str, finished_at: float) -> InstanceStatus:
    return InstanceStatus(
        instance=name,
        started_at=finished_at - 2,
        finished_at=finished_at,
        purged=1,
        failed=0,
        max_overdue=0.0,
        error=None,
        reclaim_blocked=None,
    )


def _status() -> PurgeStatus:
    status = PurgeStatus(interval=300.0, running=True)
    status.passes = 42
    status.purged_total = 1_234_567
    status.failures_total = Counter({"StorageUnavailable": 3})
    status.last = PassReport(started_at=NOW - 1.5, finished_at=NOW, purged=7)
    status.overdue.append((NOW, 61.125))
    status.orphans_total = 9_876_543
    status.sweep_failed_total = 2
    status.kek_held_back = [4, 5]
    status.kek_forced_total = 3
    status.overrun_total = 4
    status.reclaim_blocked = "wal_busy"
    status.reclaim_blocked_total = 11
    return status


def _snapshot(status: PurgeStatus | None = None, **overrides: Any) -> MetricsSnapshot:
    args: dict[str, Any] = {
        "instance": "gw-1",
        "database_backend": "sqlite",
        "storage_backend": "local",
        "health": HEALTHY,
        "stats": PurgeStats(
            backlog=5,
            oldest_expiry=NOW - 90.5,
            failing=2,
            failures_by_error={"StorageUnavailable": 2},
            live=123_456_789,
            oldest_live_created=NOW - 3600.75,
        ),
        "instances": [_instance("gw-1", NOW), _instance("gw-2", NOW - 600.5)],
    }
    args.update(overrides)
    return MetricsSnapshot.take(status or _status(), NOW, **args)


def _render(snapshot: MetricsSnapshot) -> str:
    return MetricsExposition(process=False).render(snapshot).decode()


def test_every_figure_reads_back_exactly() -> None:
    text = _render(_snapshot())
    exp = parse(text)
    assert exp.samples == {
        (
            "filestore_instance_info",
            frozenset(
                {
                    ("instance", "gw-1"),
                    ("database", "sqlite"),
                    ("storage", "local"),
                    ("version", _snapshot().version),
                }
            ),
        ): 1,
        ("filestore_database_up", frozenset()): 1,
        ("filestore_storage_up", frozenset()): 1,
        ("filestore_keys_up", frozenset()): 1,
        ("filestore_clock_in_sync", frozenset()): 1,
        ("filestore_purge_scheduler_running", frozenset()): 1,
        ("filestore_purge_interval_seconds", frozenset()): 300,
        ("filestore_purge_passes_total", frozenset()): 42,
        ("filestore_purged_files_total", frozenset()): 1_234_567,
        ("filestore_purge_failures_total", frozenset({("error", "StorageUnavailable")})): 3,
        ("filestore_reclaim_blocked", frozenset()): 1,
        ("filestore_reclaim_blocked_passes_total", frozenset()): 11,
        ("filestore_instance_last_pass_timestamp_seconds", frozenset({("instance", "gw-1")})): NOW,
        (
            "filestore_instance_last_pass_timestamp_seconds",
            frozenset({("instance", "gw-2")}),
        ): NOW - 600.5,
        ("filestore_purge_last_pass_timestamp_seconds", frozenset()): NOW,
        ("filestore_purge_last_pass_duration_seconds", frozenset()): 1.5,
        ("filestore_purge_backlog_files", frozenset()): 5,
        ("filestore_purge_most_overdue_seconds", frozenset()): 90.5,
        ("filestore_purge_failing_files", frozenset()): 2,
        (
            "filestore_purge_failing_files_by_error",
            frozenset({("error", "StorageUnavailable")}),
        ): 2,
        ("filestore_live_files", frozenset()): 123_456_789,
        ("filestore_oldest_live_file_age_seconds", frozenset()): 3600.75,
        ("filestore_orphans_removed_total", frozenset()): 9_876_543,
        ("filestore_sweep_failures_total", frozenset()): 2,
        ("filestore_kek_destruction_held_back", frozenset()): 2,
        ("filestore_kek_forced_destructions_total", frozenset()): 3,
        ("filestore_purge_overruns_total", frozenset()): 4,
        ("filestore_purge_max_overdue_seconds_24h", frozenset()): 61.125,
    }
    # Counters are typed as such (the parser names a counter's family
    # without its ``_total``); the rest are gauges.
    counters = {n for n, t in exp.types.items() if t == "counter"}
    assert counters == {
        "filestore_purge_passes",
        "filestore_purged_files",
        "filestore_purge_failures",
        "filestore_reclaim_blocked_passes",
        "filestore_orphans_removed",
        "filestore_sweep_failures",
        "filestore_kek_forced_destructions",
        "filestore_purge_overruns",
    }
    assert all(t == "gauge" for n, t in exp.types.items() if n not in counters)
    # The old hand-written exposition's names, HELP and TYPE lines stay.
    assert "# TYPE filestore_purge_passes_total counter\n" in text
    assert "# TYPE filestore_purge_backlog_files gauge\n" in text


def test_a_timestamp_and_a_large_counter_keep_every_digit() -> None:
    """Not six significant digits (1234570, 1.78e+09): the value itself."""
    status = _status()
    status.purged_total = 2**53 - 1
    exp = parse(_render(_snapshot(status)))
    assert exp.value("filestore_purged_files_total") == 2**53 - 1
    assert exp.value("filestore_purge_last_pass_timestamp_seconds") == 1_780_000_123.25
    assert exp.value("filestore_orphans_removed_total") == 9_876_543


def test_hostile_label_values_are_escaped_and_forge_nothing() -> None:
    status = _status()
    status.failures_total = Counter({HOSTILE: 3, 'Odd"Name\\x': 1})
    snapshot = _snapshot(
        status,
        instance=HOSTILE,
        instances=[_instance(HOSTILE, NOW), _instance("gw-2", NOW - 1)],
        stats=PurgeStats(backlog=0, oldest_expiry=None, failing=1, failures_by_error={HOSTILE: 1}),
    )
    text = _render(snapshot)
    exp = parse(text)
    assert exp.series("filestore_purge_failures_total") == {
        frozenset({("error", HOSTILE)}): 3,
        frozenset({("error", 'Odd"Name\\x')}): 1,
    }
    assert exp.series("filestore_purge_failing_files_by_error") == {
        frozenset({("error", HOSTILE)}): 1
    }
    assert exp.series("filestore_instance_last_pass_timestamp_seconds") == {
        frozenset({("instance", HOSTILE)}): NOW,
        frozenset({("instance", "gw-2")}): NOW - 1,
    }
    (info,) = exp.series("filestore_instance_info")
    assert dict(info)["instance"] == HOSTILE
    # The forged sample and TYPE line are not there: one database_up, 1.
    assert exp.series("filestore_database_up") == {frozenset(): 1}
    assert "forged" not in exp.types
    assert not [line for line in text.splitlines() if line.startswith("# TYPE forged")]
    assert 'error="Odd\\"Name\\\\x"' in text


def test_no_placeholder_samples_without_failures() -> None:
    status = _status()
    status.failures_total = Counter()
    stats = PurgeStats(backlog=0, oldest_expiry=None, failing=0, live=0)
    text = _render(_snapshot(status, stats=stats, instances=[]))
    exp = parse(text)
    # The families are described, with no sample at all.
    assert exp.types["filestore_purge_failures"] == "counter"
    assert exp.series("filestore_purge_failures_total") == {}
    assert exp.series("filestore_purge_failing_files_by_error") == {}
    assert exp.series("filestore_instance_last_pass_timestamp_seconds") == {}
    assert 'error="none"' not in text and "{}" not in text
    assert exp.value("filestore_purge_most_overdue_seconds") == 0
    assert exp.value("filestore_oldest_live_file_age_seconds") == 0


def test_what_the_database_did_not_answer_is_left_out() -> None:
    """A database that did not answer gives database_up 0 and no backlog,
    live-file or instance figures (not zeros that would look healthy)."""
    status = PurgeStatus(interval=60.0)
    health = {"database": "failing", "storage": "failing", "keys": "failing", "clock": "unknown"}
    exp = parse(_render(_snapshot(status, stats=None, instances=None, health=health)))
    for name in ("database_up", "storage_up", "keys_up", "reclaim_blocked"):
        assert exp.value(f"filestore_{name}") == 0
    assert exp.series("filestore_clock_in_sync") == {}
    gone = {
        "filestore_purge_backlog_files",
        "filestore_purge_most_overdue_seconds",
        "filestore_purge_failing_files",
        "filestore_live_files",
        "filestore_oldest_live_file_age_seconds",
        "filestore_instance_last_pass_timestamp_seconds",
        # and no pass has run here yet
        "filestore_purge_last_pass_timestamp_seconds",
        "filestore_purge_last_pass_duration_seconds",
    }
    assert not gone & set(exp.types)
    assert exp.value("filestore_purge_passes_total") == 0
    assert exp.value("filestore_purge_max_overdue_seconds_24h") == 0


def test_a_failing_clock_reads_zero() -> None:
    health = {**HEALTHY, "clock": "failing"}
    assert parse(_render(_snapshot(health=health))).value("filestore_clock_in_sync") == 0


def test_the_snapshot_is_a_copy() -> None:
    """Taken at one instant: a pass ending after it does not change it."""
    status = _status()
    snapshot = _snapshot(status)
    status.purged_total += 1
    status.failures_total["NotFound"] += 1
    status.last = PassReport(started_at=NOW + 10, finished_at=NOW + 11)
    exp = parse(_render(snapshot))
    assert exp.value("filestore_purged_files_total") == 1_234_567
    assert set(exp.series("filestore_purge_failures_total")) == {
        frozenset({("error", "StorageUnavailable")})
    }
    assert exp.value("filestore_purge_last_pass_timestamp_seconds") == NOW


def test_each_app_has_its_own_registry_with_process_metrics() -> None:
    one, two = MetricsExposition(), MetricsExposition()
    assert one.registry is not two.registry and one.registry is not REGISTRY
    first = parse(one.render(_snapshot()).decode())
    status = _status()
    status.purged_total = 5
    second = parse(two.render(_snapshot(status)).decode())
    assert first.value("filestore_purged_files_total") == 1_234_567
    assert second.value("filestore_purged_files_total") == 5
    # The process collector is in the app's registry, and only there (it
    # reads /proc: Linux).
    if Path("/proc/self/stat").exists():
        assert first.value("process_open_fds") > 0
        assert first.value("process_resident_memory_bytes") > 0
    assert not any(family.name.startswith("filestore_") for family in REGISTRY.collect())
    without = parse(MetricsExposition(process=False).render(_snapshot()).decode())
    assert not any(name.startswith("process_") for name in without.names())


def test_outside_a_render_the_registry_shows_no_filestore_figures() -> None:
    """The snapshot is handed over for one render only, then dropped."""
    exposition = MetricsExposition(process=False)
    assert list(exposition.registry.collect()) == []
    exposition.render(_snapshot())
    assert list(exposition.registry.collect()) == []
    assert list(FilestoreCollector().collect()) == []
