"""What the benchmarks read about processes from ``/proc`` (Linux): CPU
seconds of a process and of its children, and the processes below one."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int, reaped: bool = False) -> tuple[int, float] | None:
    """(parent pid, user+system CPU seconds) of ``pid``, or None if gone;
    with ``reaped``, plus that of its children that have exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return int(fields[1]), ticks / CLK_TCK


def tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds of ``root`` and of each of its children (PostgreSQL: the
    postmaster, its backends and background workers). The root's figure
    includes its exited children, so a backend that ends between two
    snapshots (a pool closing an overflow connection) is still counted."""
    out: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (got := proc_cpu(int(entry), reaped=int(entry) == root)):
            ppid, cpu = got
            if int(entry) == root or ppid == root:
                out[int(entry)] = cpu
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU spent between two snapshots of :func:`tree_cpu` (a child that
    exited in between moves from its own entry into the root's)."""
    return sum(after.values()) - sum(before.values())


def descendants(root: int, limit: int = 10_000) -> list[int]:
    """``root`` and every process below it, at most ``limit``."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (got := proc_cpu(int(entry))):
            children[got[0]].append(int(entry))
    found: list[int] = []
    todo = [root]
    while todo and len(found) < limit:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def rss_mib(pid: int) -> float:
    """Resident memory of one process (``VmRSS``), MiB; NaN if not shown."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def thread_stats(pids: Iterable[int]) -> dict[tuple[int, int], tuple[float, int]]:
    """(pid, thread id) → (CPU seconds, context switches, voluntary and not)
    of every thread of ``pids`` still there. A thread whose id is its
    process's is that process's main thread: an asyncio server's loop."""
    out: dict[tuple[int, int], tuple[float, int]] = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rpartition(")")[2]
                status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            except OSError:  # the thread ended meanwhile
                continue
            stat = fields.split()
            switches = sum(
                int(line.split()[1]) for line in status.splitlines() if "ctxt_switches:" in line
            )
            out[(pid, int(tid))] = ((int(stat[11]) + int(stat[12])) / CLK_TCK, switches)
    return out


def thread_split(
    before: dict[tuple[int, int], tuple[float, int]],
    after: dict[tuple[int, int], tuple[float, int]],
) -> tuple[float, float, int]:
    """Between two :func:`thread_stats` snapshots: CPU seconds of the main
    threads, of all other threads, and context switches of all. A thread
    that ended in between is left out; one that started counts from zero."""
    main = other = 0.0
    switches = 0
    for (pid, tid), (cpu, count) in after.items():
        cpu0, count0 = before.get((pid, tid), (0.0, 0))
        if tid == pid:
            main += cpu - cpu0
        else:
            other += cpu - cpu0
        switches += count - count0
    return main, other, switches
