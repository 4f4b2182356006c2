"""The README's quickstart, run as written against a real ``filestore serve``.

The blocks marked ```sh quickstart and ```python quickstart are taken from
README.md and run in a fresh directory that has the test's own virtualenv as
``.venv`` (what the README's install commands make). The server is started
as "Run it" says, and its first key is the one the blocks use: the test
replaces only the placeholder key (``fs_...``) and the default address (the
server here listens on a free port instead of 8080).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.instances import free_port

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```(sh|python) quickstart\n(.*?)^```$", re.MULTILINE | re.DOTALL)
DEFAULT_URL = "http://127.0.0.1:8080"
PLACEHOLDER = "fs_..."


def quickstart_blocks() -> dict[str, str]:
    found: dict[str, list[str]] = {}
    for language, body in BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8")):
        found.setdefault(language, []).append(body)
    assert sorted(found) == ["python", "sh"], "README.md needs one sh and one python quickstart"
    assert all(len(bodies) == 1 for bodies in found.values()), found
    return {language: bodies[0] for language, bodies in found.items()}


@dataclass
class Served:
    url: str
    key: str
    lines: list[str]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    if sys.prefix == sys.base_prefix:
        pytest.skip("the quickstart uses .venv: run the suite from a virtualenv")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    return tmp_path


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FILESTORE_")}


@pytest.fixture
def served(workdir: Path) -> Iterator[Served]:
    """``.venv/bin/filestore serve`` on a fresh data directory."""
    port = free_port()
    proc = subprocess.Popen(
        [str(workdir / ".venv" / "bin" / "filestore"), "serve"],
        cwd=workdir,
        env={**_env(), "FILESTORE_PORT": str(port), "FILESTORE_LOG_LEVEL": "WARNING"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if "listening on" in line:
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(60) and proc.poll() is None, "\n".join(lines)
        keys = [m.group(1) for line in lines if (m := re.match(r"^API key: (\S+)$", line))]
        assert len(keys) == 1, lines
        yield Served(f"http://127.0.0.1:{port}", keys[0], lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        reader.join(5)
        assert proc.stdout is not None
        proc.stdout.close()


def _adapt(block: str, served: Served) -> str:
    assert DEFAULT_URL in block and (PLACEHOLDER in block or "FILESTORE_TOKEN" in block)
    return block.replace(DEFAULT_URL, served.url).replace(PLACEHOLDER, served.key)


def test_the_readme_quickstart_runs(workdir: Path, served: Served) -> None:
    blocks = quickstart_blocks()

    shell = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _adapt(blocks["sh"], served)],
        cwd=workdir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shell.returncode == 0, shell.stdout + shell.stderr
    assert "hello, filestore" in shell.stdout
    assert (workdir / "copy.txt").read_text() == "hello, filestore\n"
    assert re.search(r"/v1/files/[A-Za-z0-9_-]{22}\?expires=\d+&signature=", shell.stdout)
    assert "deleted " in shell.stdout
    assert served.key not in shell.stdout + shell.stderr

    script = workdir / "quickstart.py"
    script.write_text(_adapt(blocks["python"], served))
    python = subprocess.run(
        [str(workdir / ".venv" / "bin" / "python"), script.name],
        cwd=workdir,
        env={**_env(), "FILESTORE_TOKEN": served.key},  # as the shell block exported it
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert python.returncode == 0, python.stdout + python.stderr
    assert (workdir / "hello-copy.txt").read_bytes() == b"hello from Python"
    assert re.match(r"^[A-Za-z0-9_-]{22} expires ", python.stdout)
