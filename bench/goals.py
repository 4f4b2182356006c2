"""The issue's goals, each a ratio of two figures of the same run (or one
absolute bound), with whether it is met.

A ratio is ``filestore's median / the reference's median`` for the same
workload in the same run; for latency and CPU (lower is better) the goal is
an upper bound on that ratio. A goal whose figures were not measured in
this run (a skipped target or workload) says so instead of a verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.workloads import Result, Results

FS = "filestore-sqlite"
FS_PG = "filestore-pg"
FS_S3 = "filestore-s3"
FS_W2 = "filestore-sqlite-w2"
DURABLE = "aiohttp-durable"
TUS = "tus"
BOTO3 = "boto3-object"


@dataclass
class Verdict:
    goal: str
    measured: str
    ratio: float | None
    bound: str
    status: str  # "met", "not met", "n/a: ..."

    def as_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def _pick(results: Results, target: str, workload: str, direction: str) -> Result | None:
    found = results.get(target, workload, direction)
    return found if found is not None and found.runs else None


def _figure(result: Result, metric: str) -> float:
    return result.median if metric == "median" else result.extra[metric]


def ratio_goal(
    results: Results,
    goal: str,
    num: tuple[str, str, str],
    den: tuple[str, str, str],
    bound: float,
    *,
    metric: str = "median",
    upper: bool = False,
    unit: str = "",
    missing: str = "",
) -> Verdict:
    """``num / den`` of the same metric, checked against ``bound`` (a lower
    bound unless ``upper``)."""
    sign = "≤" if upper else "≥"
    bound_text = f"{sign} {bound:g}×"
    a, b = _pick(results, *num), _pick(results, *den)
    if a is None or b is None:
        absent = num[0] if a is None else den[0]
        return Verdict(
            goal, "", None, bound_text, missing or f"n/a: {absent} {num[1]} not measured"
        )
    x, y = _figure(a, metric), _figure(b, metric)
    ratio = x / y if y else float("inf")
    met = ratio <= bound if upper else ratio >= bound
    measured = f"{x:,.1f} vs {y:,.1f}{unit}"
    return Verdict(goal, measured, ratio, bound_text, "met" if met else "not met")


def _largest(results: Results, target: str) -> str | None:
    """The largest transfer workload measured for ``target``."""
    order = ["1GiB", "64MiB", "1MiB"]
    for name in order:
        if _pick(results, target, name, "upload"):
            return name
    return None


def rss_goal(results: Results) -> Verdict:
    goal = "1 GiB transfer: gateway peak RSS ≤ idle + 64 MiB"
    size = _largest(results, FS)
    if size is None:
        return Verdict(goal, "", None, "≤ +64 MiB", f"n/a: {FS} transfers not measured")
    up = _pick(results, FS, size, "upload")
    down = _pick(results, FS, size, "download")
    assert up is not None
    peak = max(up.extra["peak_rss_mib"], down.extra["peak_rss_mib"] if down else 0.0)
    idle = up.extra["idle_rss_mib"]
    label = "" if size == "1GiB" else f" (measured on {size}: 1 GiB not run)"
    return Verdict(
        goal + label,
        f"idle {idle:.0f} → peak {peak:.0f} MiB (+{peak - idle:.0f})",
        None,
        "≤ +64 MiB",
        "met" if peak - idle <= 64 else "not met",
    )


def purge_goal(results: Results) -> Verdict:
    goal = "purge of 10,000 expired files, local disk: ≥ 2,000 files/s"
    got = _pick(results, FS, "purge-10k", "pass")
    if got is None:
        return Verdict(goal, "", None, "≥ 2,000/s", "n/a: purge-10k not run")
    return Verdict(
        goal,
        f"{got.median:,.0f} files/s",
        None,
        "≥ 2,000/s",
        "met" if got.median >= 2000 and not got.note else "not met",
    )


def workers_goal(results: Results, workers_available: bool) -> Verdict:
    goal = "4 KiB uploads: 2 workers ≥ 1.6× one worker's req/s"
    if not workers_available:
        return Verdict(goal, "", None, "≥ 1.6×", "n/a: --workers not available")
    return ratio_goal(
        results, goal, (FS_W2, "4KiB", "upload"), (FS, "4KiB", "upload"), 1.6, unit=" req/s"
    )


def evaluate(results: Results, *, workers_available: bool) -> list[Verdict]:
    """Every goal of the issue, in its table's order."""
    out: list[Verdict] = []
    goal: Callable[..., Verdict] = ratio_goal
    for size, label in (("64MiB", "64 MiB"), ("1GiB", "1 GiB")):
        out.append(
            goal(
                results,
                f"{label} upload ≥ 0.8× durable aiohttp (plain writes + fsync)",
                (FS, size, "upload"),
                (DURABLE, size, "upload"),
                0.8,
                unit=" MB/s",
            )
        )
    out.append(
        goal(
            results,
            "64 MiB upload ≥ 1.0× @tus/server + file-store",
            (FS, "64MiB", "upload"),
            (TUS, "64MiB", "upload"),
            1.0,
            unit=" MB/s",
        )
    )
    for size, label in (("64MiB", "64 MiB"), ("1GiB", "1 GiB")):
        out.append(
            goal(
                results,
                f"{label} download ≥ 0.6× aiohttp web.FileResponse",
                (FS, size, "download"),
                (DURABLE, size, "download"),
                0.6,
                unit=" MB/s",
            )
        )
    for fs in (FS, FS_PG):
        out.append(
            goal(
                results,
                f"4 KiB uploads ×1,000 @32 ({fs}) ≥ 0.5× durable aiohttp req/s",
                (fs, "4KiB", "upload"),
                (DURABLE, "4KiB", "upload"),
                0.5,
                unit=" req/s",
            )
        )
        out.append(
            goal(
                results,
                f"4 KiB uploads ({fs}): p99 ≤ 2× durable aiohttp's",
                (fs, "4KiB", "upload"),
                (DURABLE, "4KiB", "upload"),
                2.0,
                metric="p99_ms",
                upper=True,
                unit=" ms",
            )
        )
    out.append(
        goal(
            results,
            "server CPU per 4 KiB upload ≤ 2× durable aiohttp's",
            (FS, "4KiB", "upload"),
            (DURABLE, "4KiB", "upload"),
            2.0,
            metric="cpu_us_per_request",
            upper=True,
            unit=" µs",
        )
    )
    out.append(
        goal(
            results,
            "64 MiB upload on S3 ≥ 0.8× boto3 put_object",
            (FS_S3, "64MiB", "upload"),
            (BOTO3, "64MiB", "upload"),
            0.8,
            unit=" MB/s",
        )
    )
    out.append(
        goal(
            results,
            "64 MiB download on S3 ≥ 0.8× boto3 get_object",
            (FS_S3, "64MiB", "download"),
            (BOTO3, "64MiB", "download"),
            0.8,
            unit=" MB/s",
        )
    )
    out.append(rss_goal(results))
    out.append(purge_goal(results))
    out.append(
        goal(
            results,
            "purge on S3 ≥ 0.4× boto3 delete_objects (batches of 1,000)",
            (FS_S3, "purge-10k", "pass"),
            ("boto3-delete_objects", "purge-10k", "pass"),
            0.4,
            unit=" files/s",
        )
    )
    out.append(workers_goal(results, workers_available))
    return out
