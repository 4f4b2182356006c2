"""``python -m bench`` run for real on tiny sizes: it starts its servers,
writes the report, the JSON and the plot, and leaves no process behind —
after a normal run and after an interrupt. Nothing here is timed and no
figure is checked against a speed: only that the machinery works."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench._proc import descendants
from bench.procs import alive
from filestore.storage import local

REPO = Path(__file__).resolve().parents[2]
#: Targets that need nothing beyond the dev extras (nginx: when installed).
TARGETS = ["filestore-sqlite", "aiohttp-durable", "aiohttp", "nginx", "copy-fsync", "aes-gcm"]
HTTP = ["filestore-sqlite", "aiohttp-durable", "aiohttp", "nginx"]


def _bench(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_a_tiny_run_writes_every_output_and_stops_every_server(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        _bench(
            "--only",
            ",".join(TARGETS),
            "--workloads",
            "64KiB,small-20,purge-30",
            "--repeat",
            "2",
            "--out",
            str(out),
        ),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    assert doc["schema"] == "filestore-bench/1"
    for key in ("cpu_model", "cores", "kernel", "disk_free_gib", "python", "git_commit"):
        assert doc["machine"][key] not in (None, ""), key
    assert doc["machine"]["packages"]["aiohttp"]
    assert doc["machine"]["filestore_native_write"] is (local.NATIVE_WRITE is not None)
    assert len(doc["load_before"]) == len(doc["load_after"]) == 3
    ran = set(doc["targets"])
    # Every target either ran or says why not.
    assert ran | set(doc["skipped"]) == set(TARGETS)
    assert {"filestore-sqlite", "aiohttp-durable", "aiohttp"} <= ran
    if Path("/usr/sbin/nginx").exists():
        assert "nginx" in ran
    by_key = {(r["target"], r["workload"], r["direction"]): r for r in doc["results"]}
    for target in ran:
        up = by_key[(target, "64KiB", "upload")]
        assert up["unit"] == "MB/s" and len(up["runs"]) == 2 and up["median"] > 0
    for target in ran & set(HTTP):
        assert (target, "64KiB", "download") in by_key
        for direction in ("upload", "download"):
            small = by_key[(target, "small-20", direction)]
            assert len(small["runs"]) == 2
            assert small["extra"]["p50_ms"] <= small["extra"]["p99_ms"]
            extra = small["extra"]
            assert "cpu_us_per_request" in extra
            # The main thread's share is part of the tree's (both counted in
            # 10 ms ticks, read a moment apart: two ticks of slack over the
            # 20 requests), and a server that answered switched threads.
            slack = 2 * 10_000 / 20
            assert extra["main_thread_cpu_us_per_request"] >= 0
            assert extra["main_thread_cpu_us_per_request"] <= extra["cpu_us_per_request"] + slack
            assert extra["switches_per_request"] > 0
    purge = by_key[("filestore-sqlite", "purge-30", "pass")]
    assert purge["unit"] == "files/s" and purge["note"] == "", purge
    assert purge["extra"]["files"] == 30
    goals = {g["goal"]: g for g in doc["goals"]}
    assert any(g["status"].startswith("n/a") for g in goals.values())  # no 64MiB run
    assert all(
        g["status"] in ("met", "not met") or g["status"].startswith("n/a") for g in goals.values()
    )
    # The Markdown table has one row per target that moved bytes.
    md = (out / "results.md").read_text()
    assert md == done.stdout.strip("\n") + "\n" or md.strip() in done.stdout
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    for target in ran:
        assert any(row.startswith(f"| {target} |") for row in rows), target
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every process the run started is gone.
    assert doc["pids"], "the run records what it started"
    assert doc["survivors"] == []
    assert [pid for pid in doc["pids"] if alive(pid)] == []


def test_an_interrupted_run_stops_its_servers(tmp_path: Path) -> None:
    """SIGINT (a Ctrl-C) while the workloads run: the suite stops every server
    it had started, exits with 130 and leaves none running."""
    proc = subprocess.Popen(
        _bench(
            "--only",
            "filestore-sqlite,aiohttp-durable,nginx",
            "--workloads",
            "small-2000",
            "--repeat",
            "3",
            "--out",
            str(tmp_path / "out"),
        ),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith("workload small-2000"):
            break
    assert proc.poll() is None, "".join(seen)
    children = [pid for pid in descendants(proc.pid) if pid != proc.pid]
    assert len(children) >= 2, "the servers run below the suite"
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, "".join(seen) + rest
    assert [pid for pid in children if alive(pid)] == []
