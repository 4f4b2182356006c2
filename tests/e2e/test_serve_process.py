"""``filestore serve`` as a real process, spoken to by a real HTTP client."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(
    tmp_path: Path, port: int, **settings: str
) -> tuple[subprocess.Popen[str], list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILESTORE_")}
    env.update(FILESTORE_PORT=str(port), FILESTORE_LOG_LEVEL="WARNING", **settings)
    proc = subprocess.Popen(
        [sys.executable, "-m", "filestore", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if "listening on" in line:
            return proc, lines
    proc.kill()
    proc.wait(10)
    proc.stdout.close()
    pytest.fail("filestore serve did not start:\n" + "\n".join(lines))


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, and the process must exit cleanly on its own."""
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def _request(method: str, url: str, key: str, data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_serve_first_start_upload_download_and_stop(tmp_path: Path) -> None:
    port = _free_port()
    proc, lines = _start(tmp_path, port)
    try:
        keys = [m.group(1) for line in lines if (m := re.match(r"^API key: (\S+)$", line))]
        assert len(keys) == 1, lines
        key = keys[0]
        data_dir = tmp_path / "filestore-data"
        assert (data_dir / "filestore.db").exists()
        keyring = data_dir / "keys" / "keyring.json"
        assert keyring.stat().st_mode & 0o777 == 0o600
        assert (data_dir / "keys" / "audit-signing.pem").stat().st_mode & 0o777 == 0o600
        assert key.encode() not in (data_dir / "filestore.db").read_bytes()

        base = f"http://127.0.0.1:{port}"
        status, body = _request(
            "POST", f"{base}/v1/files?filename=a.bin&ttl=5m", key, b"hello from a real client"
        )
        assert status == 201, body
        file_id = re.search(rb'"id": "([^"]+)"', body).group(1).decode()  # type: ignore[union-attr]
        assert _request("GET", f"{base}/v1/files/{file_id}", key) == (
            200,
            b"hello from a real client",
        )
        assert _request("GET", f"{base}/v1/files/{file_id}", "fs_bad")[0] == 401
        assert _request("DELETE", f"{base}/v1/files/{file_id}", key)[0] == 204
        assert _request("GET", f"{base}/v1/files/{file_id}", key)[0] == 410
    finally:
        _stop(proc)

    # A second start on the same data directory makes no new key.
    proc, lines = _start(tmp_path, port)
    try:
        assert not any(line.startswith("API key:") for line in lines)
    finally:
        _stop(proc)


def test_keys_cli(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILESTORE_")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "filestore", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    created = run("keys", "create", "--role", "auditor", "--tenant", "acme", "--label", "audit")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert re.match(r"^fs_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$", key)
    key_id = key.split("_")[1]
    listed = run("keys", "list")
    assert key_id in listed.stdout and "auditor" in listed.stdout
    assert key.split("_", 2)[2] not in listed.stdout  # the secret may hold "_" itself
    assert run("keys", "revoke", key_id).returncode == 0
    assert "revoked" in run("keys", "list").stdout
    assert run("keys", "revoke", key_id).returncode == 2
    bad = run("keys", "create", "--role", "client", "--tenant", "no/slash")
    assert bad.returncode == 1 and "tenant" in bad.stderr


def test_bad_setting_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILESTORE_")}
    env["FILESTORE_MAX_TTL"] = "24h"
    result = subprocess.run(
        [sys.executable, "-m", "filestore", "serve"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "FILESTORE_MAX_TTL" in result.stderr
    assert not (tmp_path / "filestore-data").exists()


@pytest.mark.parametrize("choice", ["auto", "asyncio"])
def test_serve_runs_on_the_event_loop_it_is_given(tmp_path: Path, choice: str) -> None:
    """uvloop by default where it is installed (a dependency on Linux), the
    standard library's loop when asked; the first line says which loop is
    running, read from the running loop itself, and both serve a request."""
    from filestore import loops

    port = _free_port()
    proc, lines = _start(tmp_path, port, FILESTORE_EVENT_LOOP=choice)
    try:
        expected = loops.resolve(choice)
        uvloop = choice == "auto" and loops.uvloop_available()
        assert expected == ("uvloop" if uvloop else "asyncio")
        [listening] = [line for line in lines if "listening on" in line]
        assert listening.endswith(f"({expected})"), listening
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as resp:
            assert resp.status == 200
    finally:
        _stop(proc)
