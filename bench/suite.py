"""One run of the suite: start the targets, run the workloads on them
alternately, stop everything by PID, write the report.

Everything started is stopped in a ``finally`` — after an exception, on
Ctrl-C, and on SIGTERM or SIGHUP (:func:`bench.procs.signals_raise`) — and
the run checks that no PID it started is still alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import goals, machine, report
from bench.lab import REPO, Lab, Skip, default_cache, workers_supported
from bench.procs import Registry, alive, signals_raise, tree_rss_bytes
from bench.targets import MIB, Target
from bench.workloads import (
    ALL,
    QUICK,
    Purge,
    Results,
    Small,
    Transfer,
    Workload,
    workload,
)

#: Every target, in the order of the tables.
TARGETS = (
    "filestore-sqlite",
    "filestore-pg",
    "filestore-s3",
    "filestore-sqlite-w2",
    "aiohttp-durable",
    "aiohttp",
    "nginx",
    "tus",
    "boto3-object",
    "boto3-transfer",
    "copy-fsync",
    "aes-gcm",
)


@dataclass
class Options:
    out: Path
    targets: list[str] = field(default_factory=lambda: list(TARGETS))
    workloads: list[Workload] = field(default_factory=list)
    repeat: int = 5
    quick: bool = False
    #: (target, workload) to record with py-spy.
    profile: tuple[str, str] | None = None
    profile_format: str = "flamegraph"
    cache: Path = field(default_factory=default_cache)
    command: str = ""
    print_report: bool = True


_UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def parse_workload(name: str, *, quick: bool = False) -> Workload:
    """A named workload (:data:`bench.workloads.ALL`), or one of another
    size: ``256KiB`` (a transfer), ``small-N`` (N × 4 KiB), ``purge-N``,
    ``live-N`` (N may end in k)."""
    if name in ALL:
        return workload(name, quick=quick)
    if m := re.fullmatch(r"(\d+)(KiB|MiB|GiB)", name):
        return Transfer(name, int(m.group(1)) * _UNITS[m.group(2)])
    if m := re.fullmatch(r"(small|purge|live)-(\d+)(k?)", name):
        count = int(m.group(2)) * (1000 if m.group(3) else 1)
        if m.group(1) == "small":
            return Small(name, count, concurrency=min(32, count))
        return Purge(name, count, live=m.group(1) == "live")
    raise KeyError(f"no workload {name!r} (choose from {', '.join(ALL)}, or e.g. 256KiB, small-20)")


def _start(lab: Lab, name: str, cache: Path) -> Target:
    starters: dict[str, Callable[[], Target]] = {
        "filestore-sqlite": lambda: lab.filestore(name),
        "filestore-pg": lambda: lab.filestore(name, backend="postgresql"),
        "filestore-s3": lambda: lab.filestore(name, backend="s3"),
        "filestore-sqlite-w2": lambda: lab.filestore(name, workers=2),
        "aiohttp-durable": lambda: lab.plain(name, durable=True),
        "aiohttp": lambda: lab.plain(name, durable=False),
        "nginx": lambda: lab.nginx(name),
        "tus": lambda: lab.tus(name, cache),
        "boto3-object": lambda: lab.boto3(name, "object"),
        "boto3-transfer": lambda: lab.boto3(name, "transfer"),
        "copy-fsync": lambda: lab.copy(name),
        "aes-gcm": lambda: lab.aes(name),
    }
    if name == "filestore-sqlite-w2" and not workers_supported():
        raise Skip("n/a: filestore serve has no --workers option here")
    return starters[name]()


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def py_spy(target: Target, label: str, out: Path, fmt: str, registry: Registry) -> Iterator[None]:
    """``py-spy record`` on the target's server tree while the block runs;
    the profile lands in ``out`` (SVG flamegraph, speedscope JSON, or the
    folded stacks as text: one line per stack with its sample count)."""
    exe = find_py_spy()
    if exe is None or target.pid is None:
        print(
            f"profile: py-spy not found (pip install -e '.[bench]'); {label} not profiled",
            file=sys.stderr,
        )
        yield
        return
    suffix = {"flamegraph": "svg", "speedscope": "speedscope.json", "raw": "folded.txt"}[fmt]
    dest = out / f"profile-{target.name}-{label}.{suffix}"
    with (out / f"profile-{target.name}-{label}.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(target.pid),
                "--subprocesses",
                "--format",
                fmt,
                "--output",
                str(dest),
                "--rate",
                "200",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    registry.pids.append(proc.pid)
    time.sleep(1.0)  # attached before the workload starts
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        print(f"profile: {dest}", file=sys.stderr)


@dataclass
class Outcome:
    out: Path
    markdown: str
    json_path: Path
    plot_note: str | None
    survivors: list[int]


def run(options: Options) -> Outcome:
    """The whole run; the outputs go to ``options.out``."""
    options.out.mkdir(parents=True, exist_ok=True)
    registry = Registry()
    tmp = Path(tempfile.mkdtemp(prefix="filestore-bench-", dir=os.environ.get("BENCH_DIR")))
    tmp.chmod(0o711)  # nginx's workers (nobody, when run as root) reach their directory
    results = Results()
    targets: list[Target] = []
    skipped: dict[str, str] = {}
    started = datetime.now(UTC)
    load_before = machine.load_average()
    info = machine.describe(tmp)
    workers = False
    try:
        with signals_raise():
            lab = Lab(tmp, registry)
            for name in options.targets:
                try:
                    target = _start(lab, name, options.cache)
                except Skip as exc:
                    skipped[name] = str(exc)
                    print(f"skipping {name}: {exc}", file=sys.stderr)
                    continue
                if name == "filestore-sqlite-w2":
                    workers = True
                targets.append(target)
            time.sleep(0.5)
            for t in targets:
                t.idle_rss = tree_rss_bytes(t.pid) if t.pid else 0

            def hook(target: Target, label: str) -> contextlib.AbstractContextManager[None]:
                if options.profile == (target.name, label):
                    return py_spy(target, label, options.out, options.profile_format, registry)
                return contextlib.nullcontext()

            with asyncio.Runner() as loop:
                # Warm-up (not reported): code paths, connections, caches.
                print(f"warm-up on {len(targets)} targets", file=sys.stderr)
                Transfer("warm-up", MIB).run(loop, targets, 1, Results())
                for w in options.workloads:
                    print(f"workload {w.name} on {len(targets)} targets", file=sys.stderr)
                    w.run(loop, targets, options.repeat, results, hook)
    finally:
        registry.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    deadline = time.monotonic() + 10
    while registry.survivors() and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = registry.survivors()
    if "filestore-sqlite-w2" in options.targets and "filestore-sqlite-w2" not in skipped:
        workers = True
    verdicts = goals.evaluate(results, workers_available=workers)
    meta: dict[str, Any] = {
        "started_at": started.strftime("%Y-%m-%d %H:%M UTC"),
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": options.command,
        "quick": options.quick,
        "repeat": options.repeat,
        "workloads": [w.name for w in options.workloads],
        "machine": info,
        "load_before": load_before,
        "load_after": machine.load_average(),
        "pids": registry.pids,
        "survivors": survivors,
    }
    text = report.markdown(results, targets, skipped, verdicts, meta)
    plot_note = report.plot(options.out / "throughput.png", results, targets)
    if plot_note is None:
        text += "\n![throughput by file size](throughput.png)\n"
    else:
        text += f"\n_{plot_note}_\n"
    (options.out / "results.md").write_text(text)
    json_path = options.out / "results.json"
    report.write_json(json_path, results, targets, skipped, verdicts, meta)
    return Outcome(options.out, text, json_path, plot_note, [p for p in survivors if alive(p)])


def default_out() -> Path:
    return REPO / "bench" / "results" / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def quick_workloads() -> list[Workload]:
    return [workload(name, quick=True) for name in QUICK]


def all_workloads() -> list[Workload]:
    return list(ALL.values())
