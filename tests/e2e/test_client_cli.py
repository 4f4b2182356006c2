"""The client commands against a real ``filestore serve`` process.

A few runs are whole ``python -m filestore …`` processes (the command as
installed, its stdout parsed, stderr a pipe or a pseudo-terminal); the many
error cases run the same command code in this process
(``filestore.client.cli.main``), which keeps the suite quick. Every run's
output is checked for the API key, which must never appear.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import http.server
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from filestore.audit import load_verifier, verify_receipt
from filestore.client import cli as client_cli
from filestore.client.cli import PROGRESS_THRESHOLD, ExitCode
from filestore.crypto.signing import public_key_pem
from tests.support.instances import free_port
from tests.support.standalone import Standalone, standalone_server

MiB = 1 << 20
#: The server's size limit, so that "too large" is cheap to reach.
LIMIT = 12 * MiB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    # The scheduler's own passes are 10 h apart, so a deletion is under a
    # checkpoint only when a test runs a pass (POST /v1/purge/run).
    root = tmp_path_factory.mktemp("cli-server")
    loop = asyncio.new_event_loop()
    started = standalone_server(
        root, max_file_size=LIMIT, max_ttl="1h", purge_interval="10h", log_level="WARNING"
    )
    try:
        yield loop.run_until_complete(started.__aenter__())
    finally:
        loop.run_until_complete(started.__aexit__(None, None, None))
        loop.close()


@pytest.fixture
def env(server: Standalone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of a user of ``server``: URL and client key in the
    environment, no config file."""
    for name in list(os.environ):
        if name.startswith("FILESTORE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("FILESTORE_URL", server.url)
    monkeypatch.setenv("FILESTORE_TOKEN", server.client_key)
    return {k: v for k, v in os.environ.items()}


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> dict[str, object]:
        document = json.loads(self.out)
        assert isinstance(document, dict)
        return document


SECRETS: list[str] = []


def _clean(run: Run) -> Run:
    for secret in SECRETS:
        assert secret not in run.out and secret not in run.err
    return run


@pytest.fixture(autouse=True)
def _no_key_in_output(server: Standalone) -> None:
    SECRETS[:] = [server.client_key, server.operator_key]
    for key in list(SECRETS):
        SECRETS.append(key.split("_", 2)[2])  # fs_<id>_<secret>: the secret alone


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> Run:
    """The client command run in this process, as ``filestore`` would."""
    capsys.readouterr()
    try:
        code = client_cli.main(list(args))
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return _clean(Run(code, captured.out, captured.err))


def process(*args: str, env: dict[str, str], cwd: Path, stdin: bytes = b"") -> Run:
    """``python -m filestore …``: the installed command in a process of its own."""
    done = subprocess.run(
        [sys.executable, "-m", "filestore", *args],
        env=env,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        timeout=60,
    )
    return _clean(Run(done.returncode, done.stdout.decode(), done.stderr.decode()))


def operator_call(server: Standalone, method: str, path: str) -> bytes:
    request = urllib.request.Request(
        server.url + path,
        method=method,
        headers={"Authorization": f"Bearer {server.operator_key}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return bytes(response.read())


def upload_id(capsys: pytest.CaptureFixture[str], path: Path) -> str:
    run = cli(capsys, "upload", "-q", str(path))
    assert run.code == 0, run.err
    return run.out.strip()


@dataclass
class Answering:
    url: str
    seen: list[str]


@contextlib.contextmanager
def answering(status: int, retry_after: str | None = "0") -> Iterator[Answering]:
    """A real HTTP server on loopback that answers every request with
    ``status`` as problem+json, and notes each request line it saw."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(f"{self.command} {self.path}")
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            slug = "unavailable" if status == 503 else "internal"
            body = json.dumps(
                {
                    "type": f"urn:filestore:problem:{slug}",
                    "title": "Service unavailable" if status == 503 else "Internal server error",
                    "status": status,
                    "detail": "this test server says so",
                    "request_id": "answering",
                }
            ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/problem+json")
            self.send_header("Content-Length", str(len(body)))
            if retry_after is not None:
                self.send_header("Retry-After", retry_after)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_POST = do_DELETE = _answer

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Answering(f"http://127.0.0.1:{httpd.server_address[1]}", seen)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


# ------------------------------------------------------- real processes
def test_upload_download_info_as_a_real_process(
    server: Standalone, env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = os.urandom(PROGRESS_THRESHOLD + MiB)
    (tmp_path / "big.bin").write_bytes(data)

    up = process("upload", "big.bin", "--ttl", "10m", "--json", env=env, cwd=tmp_path)
    assert up.code == 0, up.err
    (stored,) = up.json()["files"]  # type: ignore[misc]
    assert stored["sha256"] == hashlib.sha256(data).hexdigest()
    assert stored["size"] == len(data) and stored["filename"] == "big.bin"
    # stderr is a pipe here: no progress bar, however large the file.
    assert up.err == ""

    down = process("download", stored["id"], "-o", "copy.bin", "--json", env=env, cwd=tmp_path)
    assert down.code == 0 and down.err == ""
    assert (tmp_path / "copy.bin").read_bytes() == data
    result = down.json()
    assert result["verified"] is True and result["length"] == len(data)

    info = cli(capsys, "info", stored["id"], "--json")
    assert info.code == 0 and info.json()["sha256"] == stored["sha256"]
    people = cli(capsys, "info", stored["id"])
    assert people.code == 0
    # 10 minutes less the seconds the calls took, however it rounds.
    assert "size     9.0 MiB (9437184 bytes)" in people.out
    assert re.search(r"\(in (9m|10m)", people.out), people.out


def test_a_progress_bar_only_for_large_transfers_to_a_terminal(
    server: Standalone, env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "big.bin").write_bytes(os.urandom(PROGRESS_THRESHOLD + MiB))
    (tmp_path / "small.bin").write_bytes(b"small")

    def on_a_terminal(name: str) -> tuple[int, str]:
        leader, follower = pty.openpty()
        # A terminal 100 columns wide (a fresh pty is 0 x 0: nothing to draw in).
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        try:
            # The client commands alone (quicker to start than `filestore`).
            proc = subprocess.Popen(
                [sys.executable, "-m", "filestore.client", "upload", "-q", name],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=follower,
            )
        finally:
            os.close(follower)
        written = bytearray()
        while True:
            ready, _, _ = select.select([leader], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(leader, 65536)
            except OSError as exc:  # the terminal's other end closed
                if exc.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            written += chunk
        os.close(leader)
        assert proc.stdout is not None
        proc.stdout.read()
        proc.stdout.close()
        code = proc.wait(60)
        return code, written.decode(errors="replace")

    code, terminal = on_a_terminal("big.bin")
    assert code == 0
    assert "%|" in terminal and "big.bin" in terminal, terminal
    code, terminal = on_a_terminal("small.bin")
    assert code == 0 and terminal == ""


# ------------------------------------------------------ the exit codes
def test_every_error_class_has_its_exit_code(
    server: Standalone,
    env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small = tmp_path / "small.txt"
    small.write_text("small\n")
    file_id = upload_id(capsys, small)

    def fails(code: ExitCode, *args: str, status: int | None = None) -> Run:
        run = cli(capsys, *args, "--json")
        assert run.code == code, (args, run)
        error = run.json()["error"]
        assert isinstance(error, dict) and error["exit_code"] == code
        if status is not None:
            assert error["status"] == status and error["type"] and error["request_id"]
        assert run.err.startswith("filestore: ")
        return run

    # 3: the key.
    monkeypatch.setenv("FILESTORE_TOKEN", "fs_000000000000_" + "A" * 43)
    fails(ExitCode.AUTH, "link", file_id, status=401)
    fails(ExitCode.AUTH, "info", file_id)  # HEAD: a status, no problem document
    monkeypatch.setenv("FILESTORE_TOKEN", server.client_key)
    fails(ExitCode.AUTH, "status", status=403)
    ok = cli(capsys, "status", "--token", server.operator_key)
    assert ok.code == 0 and "health      database ok" in ok.out

    # 4: no such file, or gone.
    fails(ExitCode.NOT_FOUND, "link", "A" * 22, status=404)
    fails(ExitCode.NOT_FOUND, "info", "A" * 22)
    # An id that begins with "-" (older servers issued them) parses after "--".
    dashed = cli(capsys, "link", "--json", "--", "-" + "A" * 21)
    assert dashed.code == ExitCode.NOT_FOUND, dashed
    deleted = upload_id(capsys, small)
    assert cli(capsys, "delete", deleted).code == 0
    fails(ExitCode.NOT_FOUND, "download", deleted, "-o", str(tmp_path / "x"), status=410)
    again = cli(capsys, "delete", deleted)
    assert again.code == 0 and "already gone" in again.out

    # 5: the request's shape.
    fails(ExitCode.BAD_REQUEST, "upload", str(small), "--ttl", "forever", status=400)
    fails(ExitCode.BAD_REQUEST, "upload", str(small), "--ttl", "2h", status=400)  # > max TTL
    fails(ExitCode.BAD_REQUEST, "download", file_id, "--range", "1000-", status=416)

    # 6: too large (refused before the body is sent).
    big = tmp_path / "big.bin"
    with big.open("wb") as fh:
        fh.truncate(LIMIT + 1)
    fails(ExitCode.TOO_LARGE, "upload", str(big), status=413)

    # 7: checksums — the server's refusal (a stream, 422) and our own check.
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"from stdin")))
    fails(ExitCode.INTEGRITY, "upload", "-", "--sha256", "0" * 64, status=422)
    fails(ExitCode.INTEGRITY, "upload", str(small), "--sha256", "0" * 64)

    # 8, 0, 7, 2: receipts before and after a checkpoint, with right and wrong keys.
    fails(ExitCode.NOT_READY, "receipt", deleted, status=409)
    operator_call(server, "POST", "/v1/purge/run")
    pinned = tmp_path / "audit.pem"
    pinned.write_bytes(operator_call(server, "GET", "/v1/audit/public-key"))
    saved = tmp_path / "receipt.tlog-proof"
    good = cli(
        capsys, "receipt", deleted, "--verify", "--public-key", str(pinned), "-o", str(saved)
    )
    assert good.code == 0 and "verified  signature and inclusion proof" in good.out
    assert verify_receipt(saved.read_text(), load_verifier(pinned.read_bytes())[0]).file_id == (
        deleted
    )
    as_json = cli(capsys, "receipt", deleted, "--verify", "--public-key", str(pinned), "--json")
    assert as_json.json()["verified"] is True
    wrong = tmp_path / "wrong.pem"
    wrong.write_bytes(public_key_pem(Ed25519PrivateKey.generate()))
    fails(ExitCode.INTEGRITY, "receipt", deleted, "--verify", "--public-key", str(wrong))
    fails(ExitCode.USAGE, "receipt", deleted, "--verify")
    unverified = cli(capsys, "receipt", deleted)
    assert unverified.code == 0 and "verified  no" in unverified.out

    # 75: unavailable, after the retries; 1: a server fault.
    closed = f"http://127.0.0.1:{free_port()}"
    fails(ExitCode.UNAVAILABLE, "info", file_id, "--url", closed, "--retries", "0")
    with answering(503) as busy:
        run = cli(capsys, "info", file_id, "--url", busy.url, "--retries", "2", "-v")
        assert run.code == ExitCode.UNAVAILABLE
        assert len(busy.seen) == 3 and "try 3 of 3" in run.err
        fails(ExitCode.UNAVAILABLE, "link", file_id, "--url", busy.url, status=503)
    with answering(500) as broken:
        fails(ExitCode.FAILED, "link", file_id, "--url", broken.url, status=500)

    # 2: usage.
    monkeypatch.delenv("FILESTORE_TOKEN")
    no_key = fails(ExitCode.USAGE, "info", file_id)
    assert "FILESTORE_TOKEN" in no_key.err
    assert cli(capsys, "download").code == ExitCode.USAGE  # argparse
    assert cli(capsys, "upload", str(tmp_path / "missing")).code == ExitCode.USAGE


def test_config_file_and_precedence(
    server: Standalone,
    env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small = tmp_path / "a.txt"
    small.write_text("a")
    file_id = upload_id(capsys, small)
    monkeypatch.delenv("FILESTORE_URL")
    monkeypatch.delenv("FILESTORE_TOKEN")
    config = tmp_path / "config" / "filestore" / "client.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'url = "{server.url}"\ntoken = "{server.client_key}"\n')
    config.chmod(0o600)

    from_file = cli(capsys, "info", file_id)
    assert from_file.code == 0 and from_file.err == ""

    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("FILESTORE_URL", closed)  # the environment beats the file
    assert cli(capsys, "info", file_id, "--retries", "0").code == ExitCode.UNAVAILABLE
    assert cli(capsys, "info", file_id, "--url", server.url).code == 0  # a flag beats both
    monkeypatch.delenv("FILESTORE_URL")
    monkeypatch.setenv("FILESTORE_TOKEN", "fs_000000000000_" + "B" * 43)
    assert cli(capsys, "info", file_id).code == ExitCode.AUTH
    assert cli(capsys, "info", file_id, "--token", server.client_key).code == 0
    monkeypatch.delenv("FILESTORE_TOKEN")

    config.chmod(0o644)
    warned = cli(capsys, "info", file_id)
    assert warned.code == 0 and "chmod 600" in warned.err

    other = tmp_path / "other.toml"
    monkeypatch.setenv("FILESTORE_CLIENT_CONFIG", str(other))
    assert cli(capsys, "info", file_id).code == ExitCode.USAGE  # named, but missing
    other.write_text(f'url = "{server.url}"\ntoken = "{server.client_key}"\nproxy = "x"\n')
    unknown = cli(capsys, "info", file_id)
    assert unknown.code == ExitCode.USAGE and "proxy" in unknown.err


def test_links_default_names_and_standard_output(
    server: Standalone,
    env: dict[str, str],
    tmp_path: Path,
    capsysbinary: pytest.CaptureFixture[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    data = os.urandom(300_000)
    (tmp_path / "orig.bin").write_bytes(data)

    def run(*args: str) -> tuple[int, bytes, str]:
        capsysbinary.readouterr()
        code = client_cli.main(list(args))
        captured = capsysbinary.readouterr()
        err = captured.err.decode()
        for secret in SECRETS:
            assert secret.encode() not in captured.out and secret not in err
        return code, captured.out, err

    code, out, _ = run("upload", "-q", "--name", "report.bin", "orig.bin")
    file_id = out.decode().strip()
    assert code == 0 and len(file_id) == 22

    code, out, _ = run("download", file_id, "-o", "-")
    assert code == 0 and out == data
    code, out, _ = run("download", file_id, "-o", "-", "--range", "-10")
    assert code == 0 and out == data[-10:]

    code, out, _ = run("download", file_id)  # the server's name, here
    assert code == 0 and (tmp_path / "report.bin").read_bytes() == data
    code, _, err = run("download", file_id)
    assert code == ExitCode.USAGE and "--force" in err
    assert run("download", file_id, "--force")[0] == 0
    (tmp_path / "into").mkdir()
    assert run("download", file_id, "-o", "into")[0] == 0
    assert (tmp_path / "into" / "report.bin").read_bytes() == data

    code, out, _ = run("link", file_id, "--ttl", "5m", "-q")
    link = out.decode().strip()
    assert code == 0 and link.startswith(server.url) and "signature=" in link
    monkeypatch.delenv("FILESTORE_TOKEN")  # a link needs no key
    code, _, _ = run("download", link, "-o", "via-link.bin")
    assert code == 0 and (tmp_path / "via-link.bin").read_bytes() == data
    code, out, _ = run("info", link, "--json")
    assert code == 0 and json.loads(out)["id"] == file_id
