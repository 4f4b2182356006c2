"""The suite's arithmetic without servers: how workloads are named, how
targets alternate, how ratios become verdicts, what the report shows."""

from __future__ import annotations

import pytest

from bench import goals
from bench.report import markdown
from bench.suite import parse_workload
from bench.targets import AesCeiling, Payload, Target
from bench.workloads import Purge, Result, Results, Small, Transfer, rounds


def test_workload_names() -> None:
    assert parse_workload("64MiB") == Transfer("64MiB", 64 << 20)
    assert parse_workload("256KiB") == Transfer("256KiB", 256 << 10)
    assert parse_workload("small-20") == Small("small-20", 20, concurrency=20)
    assert parse_workload("purge-2k") == Purge("purge-2k", 2000)
    assert parse_workload("live-300").live
    quick = parse_workload("purge-10k", quick=True)
    assert isinstance(quick, Purge) and quick.s3_count == 2000
    small = parse_workload("4KiB", quick=True)
    assert isinstance(small, Small) and (small.count, small.max_repeat) == (1000, 2)
    with pytest.raises(KeyError):
        parse_workload("fast")


def test_rounds_alternate_and_rotate() -> None:
    a, b, c = (AesCeiling(n, "", "ceiling") for n in "abc")
    order = [t.name for _, t in rounds([a, b, c], 3)]
    assert order == list("abcbcacab")


def test_rounds_settle_the_disk_before_each_run() -> None:
    a, b = (AesCeiling(n, "", "ceiling") for n in "ab")
    seen: list[str] = []
    for _, t in rounds([a, b], 2, settle=lambda: seen.append("sync")):
        seen.append(t.name)
    assert seen == ["sync", "a", "sync", "b", "sync", "b", "sync", "a"]


def test_payload_pieces_cover_the_size_exactly() -> None:
    payload = Payload(10_000, bytes(range(256)) * 16)  # a 4 KiB block, repeated
    pieces = list(payload.pieces(3000))
    assert sum(len(p) for p in pieces) == 10_000
    assert max(len(p) for p in pieces) <= 3000
    assert b"".join(pieces) == (payload.block * 3)[:10_000]


def _results(fs_up: float, base_up: float, fs_p99: float, base_p99: float) -> Results:
    results = Results()
    rss = {"peak_rss_mib": 150.0, "idle_rss_mib": 80.0}
    results.add(Result("filestore-sqlite", "64MiB", "upload", "MB/s", [fs_up, fs_up * 2, 1.0], rss))
    results.add(Result("aiohttp-durable", "64MiB", "upload", "MB/s", [base_up]))
    for name, p99 in (("filestore-sqlite", fs_p99), ("aiohttp-durable", base_p99)):
        results.add(
            Result(
                name,
                "4KiB",
                "upload",
                "req/s",
                [100.0],
                {"p50_ms": 1.0, "p99_ms": p99, "cpu_us_per_request": 10.0},
            )
        )
    return results


def _verdict(results: Results, start: str) -> goals.Verdict:
    verdicts = goals.evaluate(results, workers_available=False)
    return next(v for v in verdicts if v.goal.startswith(start))


def test_a_ratio_is_of_medians_and_a_lower_bound() -> None:
    # median of [400, 800, 1] is 400; 400 / 500 = 0.8: just met.
    met = _verdict(_results(400.0, 500.0, 10.0, 10.0), "64 MiB upload ≥ 0.8")
    assert met.ratio == pytest.approx(0.8) and met.status == "met"
    unmet = _verdict(_results(390.0, 500.0, 10.0, 10.0), "64 MiB upload ≥ 0.8")
    assert unmet.status == "not met"


def test_latency_goals_are_upper_bounds() -> None:
    ok = _verdict(_results(1.0, 1.0, 20.0, 10.0), "4 KiB uploads (filestore-sqlite): p99")
    assert ok.ratio == pytest.approx(2.0) and ok.status == "met"
    bad = _verdict(_results(1.0, 1.0, 21.0, 10.0), "4 KiB uploads (filestore-sqlite): p99")
    assert bad.status == "not met"


def test_unmeasured_goals_say_so() -> None:
    verdicts = goals.evaluate(Results(), workers_available=False)
    assert all(v.status.startswith("n/a") and v.ratio is None for v in verdicts)
    workers = next(v for v in verdicts if "2 workers" in v.goal)
    assert workers.status == "n/a: --workers not available"


def test_the_report_has_a_row_per_target_and_the_goals() -> None:
    results = _results(400.0, 500.0, 10.0, 10.0)
    targets: list[Target] = [
        AesCeiling("filestore-sqlite", "fs", "filestore"),
        AesCeiling("aiohttp-durable", "a", "baseline"),
    ]
    verdicts = goals.evaluate(results, workers_available=False)
    meta = {
        "started_at": "now",
        "command": "python -m bench",
        "load_before": [0, 0, 0],
        "load_after": [0, 0, 0],
        "repeat": 3,
        "machine": {"git_commit": "abc", "cpu_model": "cpu", "cores": 2, "kernel": "k"},
    }
    text = markdown(results, targets, {"nginx": "not installed"}, verdicts, meta)
    assert "| filestore-sqlite | 400 | — |" in text
    assert "| aiohttp-durable | 500 | — |" in text
    assert (
        "idle 80 → peak 150 MiB (+70)" in text
        and "0.80\u00d7" in text
        and "**nginx**: skipped — not installed" in text
    )
    assert "C helper" not in text  # not said: the machine did not say either way
    meta["machine"] = {**meta["machine"], "filestore_native_write": False}
    text = markdown(results, targets, {"nginx": "not installed"}, verdicts, meta)
    assert "small blobs written by Python (the C helper was not built)" in text.splitlines()[2]
