"""Starts the suite's targets: every server on a free 127.0.0.1 port, under
one temporary directory on the disk the run measures, through
:class:`bench.procs.Registry` so each is stopped by its PID at the end.

A target that cannot run here (no nginx, no Node, no PostgreSQL binaries)
is skipped with the reason, which the report shows; the others still run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import procs
from bench.procs import Registry, free_port, listening, log_says
from bench.targets import (
    AesCeiling,
    Boto3Target,
    CopyCeiling,
    FilestoreTarget,
    NginxTarget,
    PlainTarget,
    TusTarget,
)

REPO = Path(__file__).resolve().parent.parent
TUS_DIR = REPO / "bench" / "peers" / "tus"
NGINX = Path("/usr/sbin/nginx")
TENANT = "bench"
#: PostgreSQL as a deployment runs it: the tests' throwaway settings turn
#: fsync off, which no filestore operator would.
PG_DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


class Skip(Exception):
    """A target cannot run on this machine; the message says why."""


def _unprivileged() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def workers_supported() -> bool:
    """Whether this ``filestore serve`` takes ``--workers`` (from its help)."""
    done = subprocess.run(
        [sys.executable, "-m", "filestore", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    return "--workers" in done.stdout


class Lab:
    """The run's servers and where they keep their files."""

    def __init__(self, root: Path, registry: Registry) -> None:
        self.root = root
        self.registry = registry
        self._seaweed: Any = None
        self._postgres: Any = None
        self._s3_error: str | None = None

    def path(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ------------------------------------------------------------ shared
    def seaweed(self) -> Any:
        """The run's SeaweedFS (started on first use, as the tests start it)."""
        if self._s3_error:
            raise Skip(self._s3_error)
        if self._seaweed is None:
            from tests.support.seaweed import SeaweedServer, SeaweedUnavailable

            try:
                server = SeaweedServer(self.path("seaweed"))
                self.registry.on_stop(server.stop)
                server.start()
            except SeaweedUnavailable as exc:
                self._s3_error = f"SeaweedFS unavailable: {str(exc).splitlines()[0]}"
                raise Skip(self._s3_error) from exc
            assert server.process is not None
            self.registry.pids.append(server.process.pid)
            self._seaweed = server
        return self._seaweed

    def postgres(self) -> Any:
        """A throwaway PostgreSQL cluster (as an unprivileged user when root)."""
        if self._postgres is None:
            from tests.support.postgres import PostgresServer, PostgresUnavailable

            try:
                server = PostgresServer.start(settings=PG_DURABLE)
            except PostgresUnavailable as exc:
                raise Skip(f"PostgreSQL unavailable: {str(exc).splitlines()[0]}") from exc
            self.registry.on_stop(server.stop)
            if server.pid is not None:
                self.registry.pids.append(server.pid)
            self._postgres = server
        return self._postgres

    # ------------------------------------------------------------ filestore
    def filestore(self, name: str, *, backend: str = "sqlite", workers: int = 0) -> FilestoreTarget:
        """``filestore serve --no-scheduler`` on local disk + SQLite, local
        disk + PostgreSQL or S3 + SQLite. The scheduler is off so that a
        pass runs only when the purge workload asks for one (a scheduled pass
        could take the seeded files first); keys are made before it starts."""
        data_dir = self.path(name)
        data_dir.chmod(0o700)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FILESTORE_", "AWS_"))}
        database_url = f"sqlite:///{data_dir / 'filestore.db'}"
        s3: tuple[Any, str, str] | None = None
        info: dict[str, Any] = {"backend": backend, "workers": workers or 1}
        if backend == "postgresql":
            from tests.support.postgres import find_bin_dir

            pg = self.postgres()
            database_url = pg.url(asyncio.run(pg.create_database()))
            info["postgresql"] = _first_line([str(find_bin_dir() / "pg_ctl"), "--version"])
        elif backend == "s3":
            seaweed = self.seaweed()
            bucket = seaweed.create_bucket()
            env.update(seaweed.aws_env())
            env.update(
                {f"FILESTORE_{k.upper()}": str(v) for k, v in seaweed.settings(bucket).items()}
            )
            s3 = (seaweed.client(timeout=60), bucket, "filestore/")
            info["seaweedfs"] = _first_line([str(seaweed.weed), "version"])
        client_key, operator_key = asyncio.run(_make_keys(database_url))
        port = free_port()
        env.update(
            FILESTORE_HOST="127.0.0.1",
            FILESTORE_PORT=str(port),
            FILESTORE_DATA_DIR=str(data_dir),
            FILESTORE_DATABASE_URL=database_url,
            FILESTORE_LOG_LEVEL="WARNING",
            FILESTORE_MAX_FILE_SIZE="20GiB",
            PYTHONPATH=str(REPO),
        )
        argv = [sys.executable, "-m", "filestore", "serve", "--no-scheduler"]
        if workers:
            argv += ["--workers", str(workers)]
        process = self.registry.start(
            name,
            argv,
            log_path=self.root / f"{name}.log",
            env=env,
            cwd=REPO,
            ready=lambda p: log_says("listening on")(p) and procs.port_open(port),
            timeout=120,
            grace=20,
        )
        what = {
            "sqlite": "local disk + SQLite",
            "postgresql": "local disk + PostgreSQL",
            "s3": "SeaweedFS S3 + SQLite",
        }[backend]
        suffix = f", --workers {workers}" if workers else ""
        return FilestoreTarget(
            name,
            f"filestore serve, {what}{suffix}",
            "filestore",
            pid=process.pid,
            abilities=frozenset({"transfer", "small", "purge"}),
            info=info,
            base=f"http://127.0.0.1:{port}",
            client_key=client_key,
            operator_key=operator_key,
            database_url=database_url,
            data_dir=data_dir,
            s3=s3,
        )

    # ------------------------------------------------------------ baselines
    def plain(self, name: str, *, durable: bool) -> PlainTarget:
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "bench.peers.plain_server",
            "--port",
            str(port),
            "--dir",
            str(self.path(name)),
        ]
        if durable:
            argv.append("--fsync")
        process = self.registry.start(
            name,
            argv,
            log_path=self.root / f"{name}.log",
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            ready=lambda p: log_says("listening")(p) and procs.port_open(port),
        )
        how = "plain writes + fsync of file and directory" if durable else "plain writes, no fsync"
        return PlainTarget(
            name,
            f"aiohttp, {how}; web.FileResponse",
            "baseline",
            pid=process.pid,
            base=f"http://127.0.0.1:{port}",
        )

    def nginx(self, name: str) -> NginxTarget:
        if not os.access(NGINX, os.X_OK):
            raise Skip(f"{NGINX} not installed (apt-get install nginx-light or nginx)")
        home = self.path(name)
        (home / "www" / "files").mkdir(parents=True, exist_ok=True)
        (home / "body").mkdir(exist_ok=True)
        port = free_port()
        user = _unprivileged()
        if user:
            # Workers drop to nobody: they must reach and write these.
            for path in [home, *home.rglob("*")]:
                os.chown(path, *user)
        conf = home / "nginx.conf"
        conf.write_text(nginx_config(home, port, user is not None))
        argv = [str(NGINX), "-p", str(home), "-c", str(conf), "-e", str(home / "error.log")]
        # A build without the WebDAV module (nginx-light) cannot be this target.
        checked = subprocess.run(
            [*argv, "-t", "-q"], capture_output=True, text=True, timeout=30, check=False
        )
        if checked.returncode != 0:
            raise Skip(f"nginx refuses the config: {checked.stderr.strip()[-200:]}")
        process = self.registry.start(
            name,
            argv,
            log_path=self.root / f"{name}.log",
            cwd=home,
            ready=listening(port),
        )
        return NginxTarget(
            name,
            "nginx (Debian package): WebDAV PUT, static GET with sendfile",
            "baseline",
            pid=process.pid,
            base=f"http://127.0.0.1:{port}",
            info={"version": nginx_version()},
        )

    def tus(self, name: str, cache: Path) -> TusTarget:
        node = shutil.which("node")
        if node is None:
            raise Skip("node not installed")
        modules = ensure_tus_modules(cache)
        port = free_port()
        process = self.registry.start(
            name,
            [node, str(TUS_DIR / "server.js"), str(port), str(self.path(name))],
            log_path=self.root / f"{name}.log",
            cwd=TUS_DIR,
            env={**os.environ, "NODE_PATH": str(modules)},
            ready=lambda p: log_says("listening")(p) and procs.port_open(port),
        )
        return TusTarget(
            name,
            "@tus/server 1.10 + @tus/file-store 1.5 on Node (no fsync)",
            "peer",
            pid=process.pid,
            base=f"http://127.0.0.1:{port}",
            info={"node": node_version(), "packages": tus_versions(modules)},
        )

    def boto3(self, name: str, mode: str) -> Boto3Target:
        seaweed = self.seaweed()
        assert seaweed.process is not None
        calls = "put_object / get_object" if mode == "object" else "upload_file / download_file"
        return Boto3Target(
            name,
            f"boto3 {calls} straight to the same SeaweedFS",
            "s3",
            pid=seaweed.process.pid,
            abilities=frozenset({"transfer"}),
            client=seaweed.client(timeout=120),
            bucket=seaweed.create_bucket(),
            mode=mode,
            scratch=self.path("boto3-scratch"),
        )

    def copy(self, name: str) -> CopyCeiling:
        return CopyCeiling(
            name,
            "ceiling: this process writes the bytes to the same disk, with fsync",
            "ceiling",
            abilities=frozenset({"transfer"}),
            directory=self.path(name),
        )

    def aes(self, name: str) -> AesCeiling:
        return AesCeiling(
            name,
            "ceiling: AES-256-GCM of the bytes on one core (16 KiB chunks, as the format)",
            "ceiling",
            abilities=frozenset({"transfer"}),
        )


async def _make_keys(database_url: str) -> tuple[str, str]:
    """A client and an operator key in the target's database (migrating it)."""
    from filestore.auth import create_key
    from filestore.metadata.base import Role
    from filestore.metadata.sql import SQLMetadataStore

    store = await SQLMetadataStore.open(database_url)
    try:
        now = time.time()
        client, _ = await create_key(store, Role.CLIENT, TENANT, now, label="bench")
        operator, _ = await create_key(store, Role.OPERATOR, TENANT, now, label="bench")
    finally:
        await store.close()
    return client, operator


def nginx_config(home: Path, port: int, as_root: bool) -> str:
    """A self-contained config: no daemon, pid and temp paths under ``home``,
    bodies of any size to a temp file on the same disk, then renamed."""
    user = "user nobody nogroup;\n" if as_root else ""
    temp = "\n".join(
        f"    {kind}_temp_path {home / kind};" for kind in ("proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""# Written by the filestore benchmark suite (bench/lab.py).
{user}daemon off;
worker_processes auto;
pid {home / "nginx.pid"};
error_log {home / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_max_body_size 0;
    client_body_temp_path {home / "body"};
{temp}
    server {{
        listen 127.0.0.1:{port};
        location /files/ {{
            root {home / "www"};
            dav_methods PUT DELETE;
            dav_access user:rw;
        }}
    }}
}}
"""


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return ""
    return (
        (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr) else ""
    )


def nginx_version() -> str:
    return _first_line([str(NGINX), "-v"]) if NGINX.exists() else ""


def node_version() -> str:
    return _first_line(["node", "--version"]) if shutil.which("node") else ""


def tus_versions(modules: Path) -> dict[str, str]:
    """Versions of the tus packages actually installed."""
    out = {}
    for name in ("server", "file-store"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            meta = json.loads((modules / "@tus" / name / "package.json").read_text())
            out[f"@tus/{name}"] = str(meta["version"])
    return out


def default_cache() -> Path:
    """Where ``npm ci`` puts the tus peer's modules: outside the repository."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "filestore-bench"


def ensure_tus_modules(cache: Path, run: Callable[..., Any] = subprocess.run) -> Path:
    """``node_modules`` of the tus peer, from its committed lock file:
    ``bench/peers/tus/node_modules`` if present, else ``npm ci`` into
    ``cache`` (again whenever the lock file changes)."""
    local = TUS_DIR / "node_modules"
    if (local / "@tus" / "server").is_dir():
        return local
    lock = (TUS_DIR / "package-lock.json").read_bytes()
    import hashlib

    home = cache / f"tus-{hashlib.sha256(lock).hexdigest()[:12]}"
    if not (home / "node_modules" / "@tus" / "server").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            raise Skip("npm not installed: cannot install the tus peer")
        home.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(TUS_DIR / name, home / name)
        done = run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=home,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise Skip(f"npm ci failed for the tus peer: {done.stderr.strip()[-300:]}")
    return home / "node_modules"
