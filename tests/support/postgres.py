"""A real, throwaway PostgreSQL server for tests: ``initdb`` + ``pg_ctl``.

:class:`PostgresServer` makes a cluster in a fresh temporary directory and
starts it on a free loopback TCP port, with trust authentication for the
superuser :data:`SUPERUSER`. Tests get a fresh, empty database each from
``pg_database_url``; the server itself is started once per session
(``postgres``). Register the fixtures with
``pytest_plugins = ["tests.support.postgres"]`` in the root conftest.

PostgreSQL refuses to run as root, and CI runs the suite as root: then the
cluster runs as ``nobody`` (else ``postgres``), in a directory under
``/tmp`` (pytest's own temporary tree is root-only) chowned to that user.
The test process, as root, can still read every file of it, which is what a
test that greps the data files for deleted bytes needs (:attr:`data_dir`,
:meth:`checkpoint`).

``FILESTORE_TEST_DATABASE_URL`` points the fixtures at an existing server
instead: the URL names the database to connect to for ``CREATE DATABASE``
and ``DROP DATABASE``; nothing is started and there is no data directory.

``pg_ctl`` detaches the server from this process, so it is stopped by its
PID at the end of the session and at exit; a server left behind by a session
that was killed outright is stopped by the next session that starts one.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import SplitResult, quote, unquote, urlsplit, urlunsplit

import asyncpg
import pytest

from tests.support.skips import skip_reasons

#: The superuser ``initdb`` makes; trusted on loopback, so no password.
SUPERUSER = "filestore"
#: The database admin work connects to on a server this module starts.
ADMIN_DATABASE = "postgres"
#: Names an existing server to use instead of starting one.
URL_ENV = "FILESTORE_TEST_DATABASE_URL"
#: Where Debian and Ubuntu install each major version (``15/bin``, ...).
PACKAGE_ROOT = Path("/usr/lib/postgresql")
NOT_FOUND = (
    "PostgreSQL binaries (initdb, pg_ctl) not found on PATH or under /usr/lib/postgresql/*/bin"
)
#: Prefix of the temporary directories; also how orphans are found.
DIR_PREFIX = "filestore-pg-"

#: A throwaway cluster needs no durability: a crash loses it anyway, and with
#: fsync, synchronous commit and full-page writes off, start-up, CREATE
#: DATABASE and commits are much faster. Note for tests about what survives
#: on disk: full_page_writes=off also means fewer page images in the WAL than
#: a production server writes; pass ``settings`` to override.
FAST_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}

T = TypeVar("T")

#: What a connection attempt raises while a server is not (yet) answering.
_NOT_ANSWERING = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class PostgresUnavailable(RuntimeError):
    """The binaries are missing or the cluster would not start; says why."""


def find_bin_dir(search_path: str | None = None, package_root: Path | None = None) -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``: that of the ``initdb``
    on ``search_path`` (default ``PATH``, symlinks followed, so the other
    tools come from the same version), else the newest ``package_root/*/bin``."""
    on_path = shutil.which("initdb", path=search_path)
    candidates = [Path(os.path.realpath(on_path)).parent] if on_path else []

    def version(bin_dir: Path) -> tuple[int, ...]:
        try:
            return tuple(int(part) for part in bin_dir.parent.name.split("."))
        except ValueError:
            return ()

    packaged = (package_root or PACKAGE_ROOT).glob("*/bin")
    candidates += sorted(packaged, key=version, reverse=True)
    for bin_dir in candidates:
        if all(os.access(bin_dir / tool, os.X_OK) for tool in ("initdb", "pg_ctl")):
            return bin_dir
    raise PostgresUnavailable(NOT_FOUND)


def _unprivileged_user() -> tuple[int, int] | None:
    """``(uid, gid)`` to run the server as, or None to run as ourselves.
    ``nobody`` comes first: a superuser of the test server can read any file
    its OS user can, and the ``postgres`` user may own a real cluster."""
    if os.geteuid() != 0:
        return None
    for name in ("nobody", "postgres"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            if entry.pw_uid != 0:
                return entry.pw_uid, entry.pw_gid
    raise PostgresUnavailable("running as root, and no 'nobody' or 'postgres' user to run as")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: a detached server's parent is
    init, which in a container may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _end_postmaster(pid: int, data_dir: Path, grace: float = 10.0) -> None:
    """Immediate shutdown (SIGQUIT: the server tells its backends to exit),
    then SIGKILL after ``grace`` seconds. Only if ``pid`` is the postmaster
    of ``data_dir``, so a reused PID is never signalled."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if os.fsencode(data_dir) not in cmdline:
        return
    for sig, wait in ((signal.SIGQUIT, grace), (signal.SIGKILL, grace)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _alive(pid):
            return


def _read_pid(data_dir: Path) -> int | None:
    """The postmaster's PID from ``postmaster.pid`` (first line)."""
    try:
        return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def reap_orphans(parent: Path) -> None:
    """Stop and remove clusters under ``parent`` whose session has died
    without stopping them (killed with SIGKILL, so no finalizer or atexit
    ran). A cluster whose owning process still runs is left alone."""
    for root in parent.glob(DIR_PREFIX + "*"):
        try:
            owner = int((root / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        data_dir = root / "data"
        if (pid := _read_pid(data_dir)) is not None:
            _end_postmaster(pid, data_dir)
        shutil.rmtree(root, ignore_errors=True)


def _blocking(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run ``coro`` to the end from synchronous code, even from an async test
    (whose loop is already running): in a thread with a loop of its own."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout)


class PostgresServer:
    """One PostgreSQL server: started here (:meth:`start`) or an existing one
    (:meth:`external`). Hands out fresh databases and their URLs."""

    def __init__(self, admin_url: str) -> None:
        parts = urlsplit(admin_url)
        scheme = parts.scheme.split("+", 1)[0]  # "postgresql+asyncpg" from SQLAlchemy
        self._base: SplitResult = parts._replace(
            scheme="postgresql" if scheme in ("postgres", "postgresql") else scheme
        )
        self.admin_database = unquote(parts.path.lstrip("/")) or ADMIN_DATABASE
        #: The cluster's files; None for an external server.
        self.data_dir: Path | None = None
        #: The temporary directory holding data, socket and log; None if external.
        self.root: Path | None = None
        #: The postmaster's PID; None if external.
        self.pid: int | None = None
        self._bin_dir: Path | None = None
        self._run_as: tuple[int, int] | None = None

    @property
    def admin_url(self) -> str:
        return self.url(self.admin_database)

    def url(self, database: str) -> str:
        """``postgresql://USER@HOST:PORT/DATABASE`` (with the password, if the
        external URL had one) for ``database`` on this server."""
        return urlunsplit(self._base._replace(path="/" + quote(database)))

    # ------------------------------------------------------------- lifecycle
    @classmethod
    def external(cls, url: str) -> PostgresServer:
        """An existing server; ``url`` names the database admin work uses."""
        return cls(url)

    @classmethod
    def start(
        cls,
        *,
        bin_dir: Path | None = None,
        settings: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> PostgresServer:
        """``initdb`` a cluster in a new temporary directory, start it with
        ``pg_ctl`` and wait (at most ``timeout`` s) until it accepts a
        connection over TCP. ``settings`` are added to (or override)
        :data:`FAST_SETTINGS`. Raises PostgresUnavailable, with the end of the
        server log, if it will not start; nothing is left running then."""
        bin_dir = bin_dir or find_bin_dir()
        run_as = _unprivileged_user()
        # Under /tmp when root: the unprivileged user must reach the directory.
        parent = Path("/tmp") if run_as else Path(tempfile.gettempdir())
        reap_orphans(parent)
        root = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=parent))
        (root / "owner.pid").write_text(str(os.getpid()))
        if run_as:
            os.chown(root, *run_as)
        server = cls(f"postgresql://{SUPERUSER}@127.0.0.1:0/{ADMIN_DATABASE}")
        server.root, server.data_dir = root, root / "data"
        server._bin_dir, server._run_as = bin_dir, run_as
        atexit.register(server.stop)
        try:
            server._initdb({**FAST_SETTINGS, **(settings or {})})
            server._launch(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def log_path(self) -> Path | None:
        return self.root / "server.log" if self.root else None

    def _run(self, *argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL tool as the server's user, without ``PG*``
        variables of the caller's environment (``PGDATA``, ``PGPORT``, ...)."""
        assert self.root is not None and self._bin_dir is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        user: dict[str, Any] = {}
        if self._run_as:
            uid, gid = self._run_as
            user = {"user": uid, "group": gid, "extra_groups": []}
        try:
            return subprocess.run(
                [str(self._bin_dir / argv[0]), *argv[1:]],
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                **user,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PostgresUnavailable(f"{argv[0]} failed: {exc}\n{self.log_tail()}") from exc

    def _initdb(self, settings: Mapping[str, str]) -> None:
        assert self.data_dir is not None and self.root is not None
        done = self._run(
            "initdb",
            f"--pgdata={self.data_dir}",
            f"--username={SUPERUSER}",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",  # throwaway: nothing needs to reach the disk
            timeout=120,
        )
        if done.returncode != 0:
            raise PostgresUnavailable(
                f"initdb exited with {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            **settings,
        }
        with (self.data_dir / "postgresql.conf").open("a") as out:
            out.write("\n# filestore tests (tests/support/postgres.py)\n")
            out.writelines(f"{name} = {value}\n" for name, value in conf.items())

    def _launch(self, timeout: float, attempts: int = 3) -> None:
        """``pg_ctl start`` on a free port; another port if that one was
        taken between choosing and binding it (a concurrent session)."""
        assert self.data_dir is not None and self.log_path is not None
        for attempt in range(attempts):
            port = _free_port()
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            done = self._run(
                "pg_ctl", "start", "--wait", f"--timeout={int(timeout)}",
                f"--pgdata={self.data_dir}", f"--log={self.log_path}", f"--options=-p {port}",
                timeout=timeout + 10,
            )  # fmt: skip
            if done.returncode == 0:
                break
            if (pid := _read_pid(self.data_dir)) is not None:
                _end_postmaster(pid, self.data_dir)
            in_use = "already in use" in self.log_tail(since=offset)
            if not in_use or attempt == attempts - 1:
                raise PostgresUnavailable(
                    f"pg_ctl start exited with {done.returncode}, server log:\n"
                    f"{done.stdout}{done.stderr}{self.log_tail()}"
                )
        self._base = self._base._replace(netloc=f"{SUPERUSER}@127.0.0.1:{port}")
        self.pid = _read_pid(self.data_dir)
        self._wait_until_ready(timeout)

    def _wait_until_ready(self, timeout: float) -> None:
        """``pg_ctl --wait`` watches the socket; confirm TCP and trust auth
        work too, which is how every test connects."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.execute("SELECT 1", timeout=5)
                return
            except _NOT_ANSWERING as exc:
                if time.monotonic() > deadline:
                    raise PostgresUnavailable(
                        f"PostgreSQL not answering on {self.admin_url} after {timeout:g}s "
                        f"({exc!r}), server log:\n{self.log_tail()}"
                    ) from exc
            time.sleep(0.1)

    def halt(self) -> None:
        """Take the server away as an outage does: an immediate shutdown
        (backends killed, no checkpoint), keeping its data directory and port
        for :meth:`resume`. Only for a server started here. Start it with
        ``settings={"synchronous_commit": "on"}``: under
        :data:`FAST_SETTINGS` an immediate shutdown loses the last commits."""
        if self.data_dir is None:
            raise PostgresUnavailable("an external server cannot be halted")
        done = self._run(
            "pg_ctl", "stop", "--mode=immediate", "--wait", "--timeout=30",
            f"--pgdata={self.data_dir}",
            timeout=40,
        )  # fmt: skip
        if done.returncode != 0:
            raise PostgresUnavailable(f"pg_ctl stop exited with {done.returncode}:\n{done.stderr}")
        self.pid = None

    def resume(self, timeout: float = 60.0) -> None:
        """Start a halted server again, on the same port and data, and wait
        (at most ``timeout`` s) until it answers."""
        if self.data_dir is None or self.log_path is None:
            raise PostgresUnavailable("an external server cannot be resumed")
        done = self._run(
            "pg_ctl", "start", "--wait", f"--timeout={int(timeout)}",
            f"--pgdata={self.data_dir}", f"--log={self.log_path}",
            f"--options=-p {self._base.port}",
            timeout=timeout + 10,
        )  # fmt: skip
        if done.returncode != 0:
            raise PostgresUnavailable(
                f"pg_ctl start exited with {done.returncode}:\n{done.stderr}{self.log_tail()}"
            )
        self.pid = _read_pid(self.data_dir)
        self._wait_until_ready(timeout)

    def stop(self) -> None:
        """``pg_ctl stop -m fast``, else end the postmaster by its PID; then
        remove the directory. Idempotent; a no-op for an external server."""
        root = self.root
        if root is None:
            return
        atexit.unregister(self.stop)
        data_dir = root / "data"
        try:
            if (pid := _read_pid(data_dir)) is not None and _alive(pid):
                with contextlib.suppress(PostgresUnavailable):
                    self._run(
                        "pg_ctl", "stop", "--mode=fast", "--wait", "--timeout=30",
                        f"--pgdata={data_dir}",
                        timeout=40,
                    )  # fmt: skip
                _end_postmaster(pid, data_dir)  # if it is still there
        finally:
            self.root = self.data_dir = self.pid = None
            shutil.rmtree(root, ignore_errors=True)

    def log_tail(self, lines: int = 20, since: int = 0) -> str:
        """The end of the server log (from byte ``since``)."""
        try:
            assert self.log_path is not None
            with self.log_path.open("rb") as log:
                log.seek(since)
                text = log.read().decode(errors="replace")
        except (OSError, AssertionError):
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------- databases
    async def connect(self, database: str | None = None) -> Any:
        """An asyncpg connection to ``database`` (default the admin one)."""
        return await asyncpg.connect(
            self.url(database or self.admin_database), timeout=10, command_timeout=60
        )

    def execute(self, sql: str, database: str | None = None, timeout: float = 60.0) -> str:
        """Run ``sql`` from synchronous code (also from inside an async test);
        returns the status, e.g. ``"CHECKPOINT"``."""

        async def run() -> str:
            conn = await self.connect(database)
            try:
                return str(await conn.execute(sql, timeout=timeout))
            finally:
                await conn.close()

        return _blocking(run(), timeout + 15)

    def checkpoint(self) -> None:
        """Write every dirty page to the data files now, so a test that greps
        :attr:`data_dir` sees what the server holds (needs superuser, or
        ``pg_checkpoint`` from PostgreSQL 15, on an external server)."""
        self.execute("CHECKPOINT")

    async def create_database(self) -> str:
        """A new, empty database with a unique name; returns the name.
        From ``template0``: it is never connected to, so CREATE DATABASE
        never fails as "being accessed by other users" (about 25 ms against
        14 ms from ``template1`` on PostgreSQL 15 here: not worth the risk)."""
        name = f"fs_test_{secrets.token_hex(6)}"
        conn = await self.connect()
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        finally:
            await conn.close()
        return name

    async def drop_database(self, name: str) -> None:
        """Drop ``name``, ending any connection a test left open (PG 13+)."""
        conn = await self.connect()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    @contextlib.asynccontextmanager
    async def database(self) -> AsyncIterator[str]:
        """The URL of a fresh, empty database, dropped on exit."""
        name = await self.create_database()
        try:
            yield self.url(name)
        finally:
            await self.drop_database(name)


# ------------------------------------------------------------------ fixtures
# Named with name=, so a module importing them does not shadow the fixture
# names with its test arguments (ruff F811).
@pytest.fixture(scope="session", name="postgres")
def postgres_fixture() -> Iterator[PostgresServer]:
    """The session's server: ``$FILESTORE_TEST_DATABASE_URL``'s, else one
    started here and stopped at the end. Tests skip, saying why, if there
    are no PostgreSQL binaries or the server will not start; an external
    URL that does not answer is an error (it was asked for)."""
    if url := os.environ.get(URL_ENV):
        server = PostgresServer.external(url)
        try:
            server.execute("SELECT 1", timeout=10)
        except _NOT_ANSWERING as exc:
            pytest.fail(f"{URL_ENV} does not answer: {exc!r}", pytrace=False)
        yield server
        return
    try:
        server = PostgresServer.start()
    except PostgresUnavailable as exc:
        first = str(exc).splitlines()[0].rstrip(":")
        reason = first if first == NOT_FOUND else f"PostgreSQL cannot start: {first}"
        pytest.skip(f"{reason}\n{exc}" if reason != str(exc) else reason)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="pg_database_url")
async def pg_database_url_fixture(postgres: PostgresServer) -> AsyncIterator[str]:
    """``postgresql://...`` of a fresh, empty database for one test, dropped
    after it (open connections are ended)."""
    async with postgres.database() as url:
        yield url


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Runs once this module is a plugin (``pytest_plugins``): a skip for a
    missing server is never silent."""
    for reason in skip_reasons(terminalreporter, NOT_FOUND, "PostgreSQL cannot start"):
        terminalreporter.write_line(f"PostgreSQL tests SKIPPED: {reason}")
