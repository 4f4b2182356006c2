"""Which event loop the server runs on: uvloop where it is installed, else
asyncio's own.

uvloop (libuv under Cython) runs the same asyncio code with its socket I/O,
timers and thread wake-ups in C. Under 32 concurrent requests it took about
6 % off the gateway's CPU per 4 KiB upload and 20 % per 4 KiB download: the
loop is the busiest thread,
and the store's and database's threads queue for the GIL behind it, so every
microsecond of Python the loop sheds is also a shorter wait for them. It is a
dependency on Linux and macOS; ``FILESTORE_EVENT_LOOP=asyncio`` turns it off
(to compare, or to rule it out), and ``uvloop`` makes its absence an error
rather than a silent fallback.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from filestore.errors import ConfigError

T = TypeVar("T")

CHOICES = ("auto", "uvloop", "asyncio")


def uvloop_available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: str) -> str:
    """The loop ``choice`` ("auto", "uvloop" or "asyncio") stands for here."""
    if choice not in CHOICES:
        raise ConfigError(f"event_loop must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "auto":
        return "uvloop" if uvloop_available() else "asyncio"
    if choice == "uvloop" and not uvloop_available():
        raise ConfigError("event_loop = uvloop, but uvloop is not installed")
    return choice


def factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A new-loop function for :class:`asyncio.Runner` (None: asyncio's)."""
    if resolve(choice) == "asyncio":
        return None
    import uvloop

    new_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return new_loop


def running() -> str:
    """The running loop's kind: "uvloop" or "asyncio"."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"


def run(choice: str, main: Coroutine[Any, Any, T]) -> T:
    """:func:`asyncio.run` on the loop ``choice`` resolves to."""
    try:
        loop_factory = factory(choice)
    except BaseException:
        main.close()  # never awaited: no "coroutine was never awaited" warning
        raise
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main)
