"""The run's outputs: a Markdown report (printed and saved as
``results.md``), ``results.json`` and ``throughput.png``.

The JSON holds every run, not only medians, so a later reader can recompute
anything; its ``schema`` names the layout.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.goals import Verdict
from bench.targets import Target
from bench.workloads import ALL, Results, Transfer

SCHEMA = "filestore-bench/1"
MATPLOTLIB_MISSING = (
    "matplotlib is not installed, so no plot was drawn (the tables and JSON are complete). "
    "Install the bench extra: .venv/bin/pip install -e '.[bench]'"
)


def _num(x: float | None, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:,.{digits}f}"


def _table(head: list[str], rows: Iterable[list[str]], align: str = "") -> list[str]:
    rows = list(rows)
    if not rows:
        return []
    marks = [":---" if i == 0 else "---:" for i in range(len(head))]
    if align:
        marks = [":---" if a == "l" else "---:" for a in align]
    return ["| " + " | ".join(head) + " |", "| " + " | ".join(marks) + " |"] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def transfer_names(results: Results) -> list[str]:
    seen = {r.workload for r in results.items if r.unit == "MB/s"}
    known = [name for name in ALL if name in seen]
    return known + sorted(seen - set(known))


def markdown(
    results: Results,
    targets: list[Target],
    skipped: dict[str, str],
    verdicts: list[Verdict],
    meta: dict[str, Any],
) -> str:
    machine = meta["machine"]
    out = [
        f"# filestore benchmark — {meta['started_at']}",
        "",
        f"`{meta['command']}` · commit `{machine['git_commit'][:12]}` · "
        f"{machine['cpu_model']}, {machine['cores']} cores, kernel {machine['kernel']} · "
        f"load {meta['load_before']} → {meta['load_after']} · repeat {meta['repeat']} "
        f"(medians; targets alternated run by run)"
        + (
            " · small blobs written by Python (the C helper was not built)"
            if machine.get("filestore_native_write") is False
            else ""
        ),
        "",
    ]
    names = [t.name for t in targets]
    sizes = transfer_names(results)
    if sizes:
        head = ["target"] + [f"{s} {d}" for s in sizes for d in ("up", "down")]
        rows = []
        for name in names:
            cells = []
            for size in sizes:
                for direction in ("upload", "download"):
                    got = results.get(name, size, direction)
                    cells.append(_num(got.median) if got else "—")
            if any(c != "—" for c in cells):
                rows.append([name, *cells])
        out += ["## Throughput (MB/s, 10⁶ bytes/s)", "", *_table(head, rows), ""]
    small = [r for r in results.items if r.unit == "req/s"]
    if small:
        head = [
            "target",
            "workload",
            "direction",
            "req/s",
            "p50 ms",
            "p99 ms",
            "server CPU µs/req",
            "main thread µs/req",
            "switches/req",
        ]
        rows = [
            [
                r.target,
                r.workload,
                r.direction,
                _num(r.median),
                _num(r.extra["p50_ms"], 1),
                _num(r.extra["p99_ms"], 1),
                _num(r.extra["cpu_us_per_request"]),
                _num(r.extra.get("main_thread_cpu_us_per_request")),
                _num(r.extra.get("switches_per_request"), 1),
            ]
            for r in small
        ]
        count = int(small[0].extra.get("requests", 0))
        conc = int(small[0].extra.get("concurrency", 0))
        out += [
            f"## Small files ({count:,} requests, {conc} in flight)",
            "",
            *_table(head, rows, "lllrrrrrr"),
            "",
        ]
    res_rows = []
    for t in targets:
        if not t.pid:
            continue
        ups = [r for r in results.items if r.target == t.name and r.unit == "MB/s"]
        if not ups:
            continue
        peak = max(r.extra.get("peak_rss_mib", 0.0) for r in ups)
        by_dir = {}
        for direction in ("upload", "download"):
            big = [r for r in ups if r.direction == direction and "cpu_s_per_gib" in r.extra]
            if big:
                largest = max(
                    big, key=lambda r: sizes.index(r.workload) if r.workload in sizes else 0
                )
                by_dir[direction] = (largest.extra["cpu_s_per_gib"], largest.workload)
        res_rows.append(
            [
                t.name,
                _num(t.idle_rss / (1 << 20), 1),
                _num(peak, 1),
                (
                    f"{by_dir['upload'][0]:.2f} ({by_dir['upload'][1]})"
                    if "upload" in by_dir
                    else "—"
                ),
                (
                    f"{by_dir['download'][0]:.2f} ({by_dir['download'][1]})"
                    if "download" in by_dir
                    else "—"
                ),
            ]
        )
    if res_rows:
        head = ["server tree", "idle RSS MiB", "peak RSS MiB", "CPU s/GiB up", "CPU s/GiB down"]
        out += ["## Server process trees (from /proc)", "", *_table(head, res_rows), ""]
    purge = [r for r in results.items if r.direction == "pass"]
    if purge:
        head = ["target", "workload", "files", "result", "note"]
        rows = [
            [
                r.target,
                r.workload,
                _num(r.extra.get("files")),
                f"{_num(r.median)} files/s" if r.unit == "files/s" else f"{r.median:.2f} s",
                r.note,
            ]
            for r in purge
        ]
        out += [
            "## Purge (one pass through the running server)",
            "",
            *_table(head, rows, "lllrl"),
            "",
        ]
    if verdicts:
        head = ["goal", "measured", "ratio", "bound", "status"]
        rows = [
            [
                v.goal,
                v.measured,
                _num(v.ratio, 2) + ("×" if v.ratio is not None else ""),
                v.bound,
                v.status,
            ]
            for v in verdicts
        ]
        out += ["## Goals", "", *_table(head, rows, "llrrl"), ""]
    out += ["## Targets", ""]
    out += [f"- **{t.name}**: {t.description}" for t in targets]
    out += [f"- **{name}**: skipped — {why}" for name, why in skipped.items()]
    out.append("")
    return "\n".join(out)


def write_json(
    path: Path,
    results: Results,
    targets: list[Target],
    skipped: dict[str, str],
    verdicts: list[Verdict],
    meta: dict[str, Any],
) -> None:
    doc = {
        "schema": SCHEMA,
        **meta,
        "targets": {
            t.name: {
                "description": t.description,
                "group": t.group,
                "pid": t.pid,
                "idle_rss_mib": t.idle_rss / (1 << 20),
                "info": t.info,
            }
            for t in targets
        },
        "skipped": skipped,
        "results": [r.as_json() for r in results.items],
        "goals": [v.as_json() for v in verdicts],
    }
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def plot(path: Path, results: Results, targets: list[Target]) -> str | None:
    """Throughput by file size, one line per target, upload and download
    side by side. Returns why not, if it could not be drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return MATPLOTLIB_MISSING
    sizes = {name: w.size for name, w in ALL.items() if isinstance(w, Transfer)}
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    for r in results.items:
        if r.unit == "MB/s" and (m := re.fullmatch(r"(\d+)([KMG]iB)", r.workload)):
            sizes[r.workload] = int(m.group(1)) * units[m.group(2)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    for ax, direction in zip(axes, ("upload", "download"), strict=True):
        for i, t in enumerate(targets):
            points = sorted(
                (sizes[r.workload], r.median)
                for r in results.items
                if r.target == t.name
                and r.direction == direction
                and r.unit == "MB/s"
                and r.workload in sizes
            )
            if points:
                xs, ys = zip(*points, strict=True)
                # One colour and marker per target in both panels.
                ax.plot(
                    [x / (1 << 20) for x in xs],
                    ys,
                    color=f"C{i % 10}",
                    marker="osD^v<>"[i // 10 % 7],
                    label=t.name,
                )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("file size (MiB)")
        ax.set_title(direction)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("MB/s (median)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
