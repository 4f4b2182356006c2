"""Server processes of the suite: started in a process group of their own,
watched through ``/proc``, and stopped by PID.

Every process the suite starts goes through :class:`Registry`, which stops
them all (SIGTERM to the group, SIGKILL after a grace) however the run ends:
normally, on an exception, on Ctrl-C or on SIGTERM. The direct child also
gets SIGKILL from the kernel if the suite itself is killed outright
(``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench._proc import CLK_TCK, descendants, thread_split, thread_stats

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A loopback port nothing listens on (the server binds it moments later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of ``root`` and of every process below it, plus what
    its exited, reaped children used (nginx workers, ``--workers`` children)."""
    total = 0.0
    for pid in descendants(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / CLK_TCK
    return total


def tree_rss_bytes(root: int, pids: list[int] | None = None) -> int:
    """Resident memory of ``root`` and every process below it (or of
    ``pids``, a list made earlier by :func:`descendants`)."""
    total = 0
    for pid in pids if pids is not None else descendants(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
                break
    return total


class Sampler:
    """Peak resident memory of a process tree, sampled every ``period`` s
    in a thread while the ``with`` block runs; CPU seconds spent in it.
    The tree is listed again every ``rescan`` samples only: a full walk of
    ``/proc`` costs the client more than reading a few status files."""

    def __init__(self, root: int, period: float = 0.05, rescan: int = 20) -> None:
        self.root = root
        self.period = period
        self.rescan = rescan
        self.peak_rss = 0
        self.cpu = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._cpu0 = 0.0
        self._pids: list[int] = []
        self._threads0: dict[tuple[int, int], tuple[float, int]] = {}
        #: CPU seconds of the tree's main threads (an asyncio server's loop),
        #: of its other threads, and the context switches of all of them.
        self.main_cpu = 0.0
        self.other_cpu = 0.0
        self.switches = 0

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.period):
            n += 1
            if n % self.rescan == 0:
                self._pids = descendants(self.root)
            self.peak_rss = max(self.peak_rss, tree_rss_bytes(self.root, self._pids))

    def __enter__(self) -> Sampler:
        self._pids = descendants(self.root)
        self._cpu0 = tree_cpu_seconds(self.root)
        self._threads0 = thread_stats(self._pids)
        self.peak_rss = tree_rss_bytes(self.root, self._pids)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak_rss = max(self.peak_rss, tree_rss_bytes(self.root))
        self.cpu = tree_cpu_seconds(self.root) - self._cpu0
        threads = thread_stats(descendants(self.root))
        self.main_cpu, self.other_cpu, self.switches = thread_split(self._threads0, threads)


@dataclass
class Process:
    """One started server: its Popen, the output it wrote, how to stop it."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    grace: float = 10.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL to it after the grace; waits.
        The group is the child's own (``start_new_session``), so nothing else
        is signalled."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(self.grace)
        # Leftovers of the group (workers) go too, whatever the leader did.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


@dataclass
class Registry:
    """Everything the suite started, so all of it is stopped at the end."""

    processes: list[Process] = field(default_factory=list)
    stoppers: list[Callable[[], None]] = field(default_factory=list)
    #: PIDs of every process ever started here (for the report and the test).
    pids: list[int] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        ready: Callable[[Process], bool],
        timeout: float = 60.0,
        grace: float = 10.0,
    ) -> Process:
        """Start ``argv`` in a new session and wait until ``ready`` says so
        (polled every 50 ms, at most ``timeout`` s). Raises RuntimeError with
        the end of its output if it exits or is not ready in time; it is
        stopped then."""
        log = log_path.open("ab")
        try:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        process = Process(name, proc, log_path, grace)
        self.processes.append(process)
        self.pids.append(proc.pid)
        deadline = time.monotonic() + timeout
        while not ready(process):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode} at start:\n{process.log_tail()}"
                )
            if time.monotonic() > deadline:
                process.stop()
                raise RuntimeError(f"{name} not ready after {timeout:g} s:\n{process.log_tail()}")
            time.sleep(0.05)
        return process

    def on_stop(self, stopper: Callable[[], None]) -> None:
        """Also run ``stopper`` at the end (servers started by other code:
        PostgreSQL's ``pg_ctl``, SeaweedFS)."""
        self.stoppers.append(stopper)

    def stop_all(self) -> None:
        """Stop every process, newest first; then the other stoppers."""
        while self.processes:
            self.processes.pop().stop()
        while self.stoppers:
            with contextlib.suppress(Exception):
                self.stoppers.pop()()

    def survivors(self) -> list[int]:
        """Started PIDs that still run (should be none after :meth:`stop_all`)."""
        return [pid for pid in self.pids if alive(pid)]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def log_says(text: str) -> Callable[[Process], bool]:
    """A ``ready`` check: the process has written ``text``."""

    def check(process: Process) -> bool:
        try:
            return text in process.log_path.read_text(errors="replace")
        except OSError:
            return False

    return check


def listening(port: int) -> Callable[[Process], bool]:
    """A ``ready`` check: something accepts connections on ``port``."""
    return lambda _process: port_open(port)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt while the block runs, so
    the ``finally`` that stops the servers runs for them as for Ctrl-C."""

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)
