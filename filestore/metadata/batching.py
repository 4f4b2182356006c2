"""Concurrent statements of one kind coalesced into one.

On PostgreSQL every small upload ends in one insert of its two rows, and
every download starts with one read of its row. Each is a round trip (an
insert also a commit: a WAL flush) and a pass through SQLAlchemy's asyncio
adapter and asyncpg on the event loop, and under 32 requests in flight that
path cost the loop about as much again as the rest of the request. A
:class:`Coalescer` lets the statements that arrive while one is on its way
go together in the next: one statement, one round trip (and one commit) for
the lot. A request that arrives alone goes at once, never waiting for
company.

Each caller keeps its own outcome. A batch is one statement, so it is
written whole or not at all; when it fails, its items run again one by one,
concurrently, so one bad row (a duplicate id) fails only its own caller, and
in an outage every caller gets the outage's error.

A caller cancelled while its item still waits takes it out: nothing of it is
written. One cancelled while its batch is on its way waits for that batch's
outcome before the cancellation goes on, so the caller's clean-up never runs
while its row may still be committing.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclasses.dataclass(eq=False)
class _Waiting(Generic[T, R]):
    item: T
    done: asyncio.Future[R]


class Coalescer(Generic[T, R]):
    """Runs ``write(items)`` for whatever has queued, at most ``limit``
    items a call and ``concurrency`` calls at once; ``write`` returns one
    result per item, in order."""

    def __init__(
        self,
        write: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        *,
        limit: int = 64,
        concurrency: int = 2,
    ) -> None:
        if limit < 1 or concurrency < 1:
            raise ValueError("limit and concurrency are at least 1")
        self._write = write
        self._limit = limit
        self._concurrency = concurrency
        self._queue: collections.deque[_Waiting[T, R]] = collections.deque()
        self._running = 0
        #: The drains under way, held so they are not collected mid-run.
        self._drains: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        """Run ``item`` with whatever else is waiting; its result once the
        batch is done (committed), or what running it alone raised."""
        waiting: _Waiting[T, R] = _Waiting(item, asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        if self._running < self._concurrency:
            self._running += 1
            task = asyncio.ensure_future(self._drain())
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)
        try:
            return await asyncio.shield(waiting.done)
        except asyncio.CancelledError:
            if waiting in self._queue:  # not taken yet: never written
                self._queue.remove(waiting)
                raise
            # On its way: the outcome first, then the cancellation.
            await asyncio.wait([waiting.done])
            if not waiting.done.cancelled():
                waiting.done.exception()  # seen: not logged as never retrieved
            raise

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(self._limit, len(self._queue)))]
                await self._run(batch)
        finally:
            self._running -= 1

    async def _run(self, batch: list[_Waiting[T, R]]) -> None:
        try:
            results = await self._write([w.item for w in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for {len(batch)} items")
        except asyncio.CancelledError:  # the drain itself, at shutdown
            _fail(batch, asyncio.CancelledError())
            raise
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            await asyncio.gather(*(self._run([w]) for w in batch))
        else:
            for w, result in zip(batch, results, strict=True):
                if not w.done.done():
                    w.done.set_result(result)


def _fail(batch: list[_Waiting[T, R]], exc: BaseException) -> None:
    for w in batch:
        if not w.done.done():
            w.done.set_exception(exc)
