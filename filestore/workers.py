"""``filestore serve --workers N``: N gateway processes on one port.

One Python process runs one event loop on one core, so a single gateway
cannot use a second core however busy it is. With ``--workers N`` the
``serve`` process becomes a supervisor that serves nothing itself:

1. It prepares everything a worker would otherwise race its siblings for,
   once: the data directory, the schema migrations, the keyring (or the
   ratchet's join or founding), the audit and link keys and the first client
   key. N workers starting on a fresh data directory then all load the same
   keys instead of each generating its own.
2. It reserves the port: a socket bound with ``SO_REUSEPORT`` that never
   listens (so the kernel hands it no connection). That turns port 0 into a
   real port every worker can bind, and keeps the port this service's while
   a worker restarts.
3. It starts N workers: ``filestore serve`` again (a fresh interpreter, not a
   fork of one that already has threads and an event loop), each with its
   own loop, database connection and aiohttp app, listening on the same
   host and port with ``SO_REUSEPORT``; the kernel spreads new connections
   between them. Each is an instance of its own (``gw-<hex>-w1``, ``-w2``…):
   they coordinate through the database exactly as separate gateways do
   (leases, claims, the audit lock), and each shows in the status.
4. Worker 1 alone runs the purge scheduler; the others run only the key step
   (the KEKs each holds must still die on time). N passes on one host add no
   hardware: they share its cores and disk, and on SQLite they would only
   queue for its single write lock. If worker 1 dies, it is restarted and its
   leases lapse to the next pass, as for any instance.

It prints ``listening on`` once every worker is listening; SIGTERM or SIGINT
is passed to every worker, which drains as a single ``serve`` does, and the
supervisor exits 0 once all have. A worker that dies on its own is restarted
after a backoff; one that keeps dying (:class:`Backoff`) stops the service
with exit status 1, rather than serve with fewer cores than asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import secrets
import signal
import socket
import sys
from dataclasses import dataclass, field

from filestore import __version__, loops
from filestore.clock import SystemClock
from filestore.config import Settings
from filestore.errors import ConfigError
from filestore.services import ensure_first_key, open_services

log = logging.getLogger("filestore.workers")

#: How long the workers may take to drain after SIGTERM before they are
#: killed; a single ``serve`` gets the same from its service manager.
STOP_GRACE = 50.0
#: How long a worker may take from its start to listening.
START_TIMEOUT = 120.0
#: Linux's prctl(2) option: a signal the kernel sends when the parent dies.
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Backoff:
    """When to restart a worker that exited on its own, and when to stop.

    A worker that ran at least ``stable_after`` seconds had a fault, not a
    crash loop: its count starts again. Otherwise each exit doubles the wait,
    and exit number ``max_crashes + 1`` in a row ends the service."""

    first: float = 0.5
    cap: float = 30.0
    stable_after: float = 60.0
    max_crashes: int = 5

    def next(self, crashes: int, lived: float) -> tuple[int, float | None]:
        """The crash count after this exit and the wait before the restart
        (None: give up). ``crashes`` is the count before, ``lived`` how long
        the worker ran."""
        crashes = 1 if lived >= self.stable_after else crashes + 1
        if crashes > self.max_crashes:
            return crashes, None
        return crashes, min(self.cap, self.first * 2 ** (crashes - 1))


def worker_count(text: str) -> int:
    """``--workers``: a whole number of at least 1 (argparse's type)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1 (1: a single process)")
    return value


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with ``SO_REUSEPORT`` that never
    listens: it fixes the port (port 0 picks one) for every worker and keeps
    it while one restarts. ConfigError where the system has no
    ``SO_REUSEPORT`` (several workers cannot then share a port)."""
    option = getattr(socket, "SO_REUSEPORT", None)
    if option is None:
        raise ConfigError("--workers above 1 needs SO_REUSEPORT, which this system lacks")
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(f"FILESTORE_HOST={host!r} does not resolve") from exc
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, 1)
        except OSError as exc:
            raise ConfigError(
                "--workers above 1 needs SO_REUSEPORT, which this system refuses"
            ) from exc
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGTERM when the supervisor dies (even by SIGKILL),
    so no worker outlives it; exit at once if it is already gone. Linux only;
    elsewhere the supervisor's own stop is all there is."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        raise SystemExit(0)


def announce_ready(fd: int, name: str) -> None:
    """Tell the supervisor this worker listens: one line on the readiness
    pipe (a write this short is atomic, whoever else writes to it)."""
    os.write(fd, f"{name} {os.getpid()}\n".encode())
    os.close(fd)


@dataclass
class _Slot:
    """One worker position: its name stays, its process may be replaced."""

    index: int
    name: str
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    crashes: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor:
    """Starts, watches and stops the workers of one ``serve --workers N``."""

    def __init__(
        self,
        settings: Settings,
        count: int,
        *,
        run_scheduler: bool = True,
        config_file: str | None = None,
        backoff: Backoff | None = None,
        python: str = sys.executable,
    ) -> None:
        self.settings = settings
        self.count = count
        self.run_scheduler = run_scheduler
        self.config_file = config_file
        self.backoff = backoff or Backoff()
        self.python = python
        #: This host's name; the workers' instance names extend it.
        self.name = "gw-" + secrets.token_hex(4)
        self.slots = [_Slot(i, f"{self.name}-w{i}") for i in range(1, count + 1)]
        self._stop = asyncio.Event()
        #: The exit status once the service must end without a signal.
        self._failure: int | None = None
        #: Set once every worker listened: from then on an exit is a crash
        #: to restart, not a failed start.
        self._listening = False
        #: The readiness pipe every worker writes its line to.
        self._ready_r, self._ready_w = os.pipe()
        os.set_blocking(self._ready_r, False)
        self._buffer = b""
        #: The last pid each worker name announced, until its slot takes it.
        self._announced: dict[str, str] = {}

    # ------------------------------------------------------------ the run
    async def run(self) -> int:
        """Prepare, start every worker, wait for a stop; the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            # The port first: no preparation where workers cannot share it.
            with reserve_port(self.settings.host, self.settings.port) as placeholder:
                port = int(placeholder.getsockname()[1])
                await self._prepare()
                loop.add_reader(self._ready_r, self._read_ready)
                tasks = [asyncio.create_task(self._watch(s, port)) for s in self.slots]
                try:
                    if await self._all_ready():
                        self._listening = True
                        print(
                            f"filestore {__version__} listening on "
                            f"http://{self.settings.host}:{port} ({self.count} workers,"
                            f" {loops.resolve(self.settings.event_loop)})",
                            flush=True,
                        )
                        await self._stop.wait()
                finally:
                    self._stop.set()
                    log.info("stopping %d workers", self.count)
                    codes = await asyncio.gather(*tasks)
                    loop.remove_reader(self._ready_r)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            os.close(self._ready_r)
            os.close(self._ready_w)
        if self._failure is not None:
            return self._failure
        return 0 if all(code == 0 for code in codes) else 1

    async def _prepare(self) -> None:
        """Everything first use creates, done once before any worker runs:
        migrations, keys, the cluster's key schedule, the first client key."""
        async with open_services(self.settings, SystemClock(), self.name) as services:
            first_key = await ensure_first_key(services)
        if first_key is not None:
            print("Created a first client key for tenant 'default'; it is shown only once.")
            print(f"API key: {first_key}", flush=True)

    async def _all_ready(self) -> bool:
        """Every worker listening (True), or the service ending first."""

        async def every_slot() -> None:
            for slot in self.slots:
                await slot.ready.wait()

        stop = asyncio.create_task(self._stop.wait())
        ready = asyncio.create_task(every_slot())
        done, _ = await asyncio.wait(
            {stop, ready}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        stop.cancel()
        ready.cancel()
        if ready in done:
            return True
        if not done:
            log.error("the workers did not start within %gs", START_TIMEOUT)
            self._fail(1)
        return False

    def _fail(self, code: int) -> None:
        if self._failure is None:
            self._failure = code
        self._stop.set()

    def _read_ready(self) -> None:
        try:
            chunk = os.read(self._ready_r, 4096)
        except BlockingIOError:
            return
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            name, _, pid = line.decode(errors="replace").partition(" ")
            # A fast worker's line can arrive before its spawn has returned
            # the process: kept until _spawn knows the pid.
            self._announced[name] = pid
            for slot in self.slots:
                if slot.name == name:
                    self._check_ready(slot)

    def _check_ready(self, slot: _Slot) -> None:
        """Mark ``slot`` ready if its current process announced itself."""
        if slot.proc is not None and self._announced.get(slot.name) == str(slot.proc.pid):
            del self._announced[slot.name]
            slot.ready.set()
            log.info("worker %s (pid %d) is listening", slot.name, slot.proc.pid)

    # ------------------------------------------------------------ one slot
    def command(self, slot: _Slot, port: int) -> list[str]:
        """The worker's command line: ``serve`` again, told its name, the
        resolved port and the readiness pipe."""
        argv = [self.python, "-m", "filestore"]
        if self.config_file:
            argv += ["--config", self.config_file]
        argv += [
            "serve",
            "--host",
            self.settings.host,
            "--port",
            str(port),
            "--data-dir",
            str(self.settings.data_dir),
            "--worker",
            slot.name,
            "--ready-fd",
            str(self._ready_w),
            "--supervisor",
            str(os.getpid()),
        ]
        if not (self.run_scheduler and slot.index == 1):
            argv.append("--no-scheduler")
        return argv

    async def _spawn(self, slot: _Slot, port: int) -> None:
        loop = asyncio.get_running_loop()
        slot.ready.clear()
        slot.started_at = loop.time()
        slot.proc = await asyncio.create_subprocess_exec(
            *self.command(slot, port),
            stdin=asyncio.subprocess.DEVNULL,
            pass_fds=(self._ready_w,),
            # FILESTORE_WORKERS would mean nothing to a worker; the
            # command line says everything it needs.
            env={k: v for k, v in os.environ.items() if k != "FILESTORE_WORKERS"},
        )
        log.info("started worker %s (pid %d)", slot.name, slot.proc.pid)
        self._check_ready(slot)

    async def _watch(self, slot: _Slot, port: int) -> int:
        """Run one slot until the service stops; its last exit status. A
        worker that cannot even be started (no memory, no descriptors) ends
        the service: it would not start the next time either."""
        try:
            return await self._watch_slot(slot, port)
        except Exception:
            log.exception("could not run worker %s; stopping", slot.name)
            self._fail(1)
            if slot.proc is not None and slot.proc.returncode is None:
                return await self._terminate(slot, None)
            return 1

    async def _watch_slot(self, slot: _Slot, port: int) -> int:
        loop = asyncio.get_running_loop()
        while True:
            if self._stop.is_set():
                return 0
            await self._spawn(slot, port)
            assert slot.proc is not None
            code = await self._until_exit_or_stop(slot.proc)
            if code is None or self._stop.is_set():
                return await self._terminate(slot, code)
            lived = loop.time() - slot.started_at
            if not self._listening:
                # Failing before the service ever listened is a start-up
                # error (a database gone since the preparation): report it.
                log.error("worker %s exited with status %s during start-up", slot.name, code)
                self._fail(code if code and code > 0 else 1)
                return code
            slot.crashes, wait = self.backoff.next(slot.crashes, lived)
            if wait is None:
                log.error(
                    "worker %s exited with status %s, %d times in a row; stopping",
                    slot.name,
                    code,
                    slot.crashes,
                )
                self._fail(1)
                return code
            log.warning(
                "worker %s exited with status %s; restarting it in %gs", slot.name, code, wait
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)

    async def _until_exit_or_stop(self, proc: asyncio.subprocess.Process) -> int | None:
        exited = asyncio.create_task(proc.wait())
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if exited.done():
            return exited.result()
        exited.cancel()
        return None

    async def _terminate(self, slot: _Slot, code: int | None) -> int:
        """SIGTERM the slot's worker (if still running), wait for it to
        drain, SIGKILL it after :data:`STOP_GRACE`; its exit status."""
        proc = slot.proc
        assert proc is not None
        if code is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.wait_for(proc.wait(), STOP_GRACE)
            except TimeoutError:
                log.error("worker %s did not stop within %gs; killing it", slot.name, STOP_GRACE)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                code = await proc.wait()
        log.info("worker %s exited with status %s", slot.name, code)
        return code


def run(
    settings: Settings, count: int, *, run_scheduler: bool = True, config_file: str | None = None
) -> int:
    """``serve --workers N`` from the command line: the supervisor's exit status."""

    async def main() -> int:
        supervisor = Supervisor(
            settings, count, run_scheduler=run_scheduler, config_file=config_file
        )
        return await supervisor.run()

    return asyncio.run(main())
