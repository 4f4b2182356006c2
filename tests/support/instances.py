"""Real ``filestore serve`` processes that share nothing but what a
deployment shares: one database, one bucket, the cluster secret and the
audit and link keys (from a secret store). Each has its own port and data
directory, so its ratchet state is its own. Used by the multi-process test
and the cluster benchmark.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from filestore.crypto import load_or_create_signing_key
from filestore.crypto.links import load_or_create_link_key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Shared:
    """What every instance of one cluster is given."""

    database_url: str
    secrets_dir: Path
    #: FILESTORE_* and AWS_* variables for the blob store.
    storage_env: dict[str, str]
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls, root: Path, database_url: str, storage_env: dict[str, str], **extra: str
    ) -> Shared:
        secrets_dir = root / "secrets"
        secrets_dir.mkdir(mode=0o700, parents=True)
        (secrets_dir / "cluster-secret").write_bytes(os.urandom(32))
        (secrets_dir / "cluster-secret").chmod(0o600)
        load_or_create_signing_key(secrets_dir / "audit-signing.pem")
        load_or_create_link_key(secrets_dir / "link-signing.key")
        return cls(database_url, secrets_dir, storage_env, dict(extra))

    def env(self, data_dir: Path, port: int, peers: list[str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FILESTORE_")}
        env.update(self.storage_env)
        env.update(
            FILESTORE_HOST="127.0.0.1",
            FILESTORE_PORT=str(port),
            FILESTORE_DATA_DIR=str(data_dir),
            FILESTORE_DATABASE_URL=self.database_url,
            FILESTORE_KEY_SCHEDULE="ratchet",
            FILESTORE_CLUSTER_SECRET_FILE=str(self.secrets_dir / "cluster-secret"),
            FILESTORE_SIGNING_KEY_FILE=str(self.secrets_dir / "audit-signing.pem"),
            FILESTORE_LINK_KEY_FILE=str(self.secrets_dir / "link-signing.key"),
            FILESTORE_JOIN_PEERS=",".join(peers),
            FILESTORE_LOG_LEVEL="WARNING",
        )
        env.update(self.extra_env)
        return env


class Instance:
    """One ``filestore serve`` process; its output is collected in the
    background so a full pipe never stalls it."""

    def __init__(self, name: str, root: Path, shared: Shared, peers: list[str]) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = root / name
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "filestore", "serve"],
            env=shared.env(self.data_dir, self.port, peers),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "listening on" in line:
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 60.0) -> None:
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} did not start:\n" + "\n".join(self.lines[-30:]))

    @property
    def first_key(self) -> str | None:
        for line in self.lines:
            if m := re.match(r"^API key: (\S+)$", line):
                return m.group(1)
        return None

    def kill(self) -> None:
        """SIGKILL: the instance dies wherever it is."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after a grace; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return int(self.proc.returncode)


@contextlib.contextmanager
def cluster(root: Path, shared: Shared, count: int) -> Iterator[list[Instance]]:
    """``count`` instances: the first founds the key schedule, the others
    join from the ones already running. All are stopped on exit."""
    instances: list[Instance] = []
    try:
        for n in range(count):
            peers = [i.url for i in instances]
            instance = Instance(f"gw{n + 1}", root, shared, peers)
            instances.append(instance)
            instance.wait_ready()
        yield instances
    finally:
        for instance in instances:
            instance.stop()


def wait_for(predicate: object, timeout: float, step: float = 0.05) -> bool:
    """Poll a zero-argument callable until it is true, at most ``timeout`` s."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())
