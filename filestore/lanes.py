"""Ordered work on a shared thread pool.

A stage of an upload (hashing it, writing it) must handle its batches in
order, but should not have to wait for batch N to be done before it hands
over batch N+1: every such wait is a trip through the event loop, and on a
virtual machine a wake-up of an idle core can take longer than the work. A
:class:`Lane` takes calls in order and runs them one after another on a pool
it shares with other lanes, holding no thread while it has nothing to do.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")


class Lane:
    """Calls run in the order they were submitted, never two at once.

    Once a call raises, every call after it fails with that error without
    running: a stage that lost a batch must not go on with the next one.
    """

    __slots__ = ("_executor", "_failure", "_lock", "_queue", "_running")

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self._lock = threading.Lock()
        self._queue: deque[tuple[Future[Any], Callable[[], Any]]] = deque()
        self._running = False
        self._failure: BaseException | None = None

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Queue ``fn``; its future is done once it ran (or was refused)."""
        future: Future[T] = Future()
        with self._lock:
            self._queue.append((future, fn))
            if self._running:
                return future
            self._running = True
        try:
            self._executor.submit(self._drain)
        except BaseException:
            with self._lock:
                self._running = False
                self._queue.clear()
            raise
        return future

    def _drain(self) -> None:
        """On a pool thread: run the queued calls until none is left."""
        while True:
            with self._lock:
                if not self._queue:
                    self._running = False
                    return
                future, fn = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            if self._failure is not None:
                future.set_exception(self._failure)
                continue
            try:
                result = fn()
            except BaseException as exc:  # handed to whoever waits for it
                self._failure = exc
                future.set_exception(exc)
            else:
                future.set_result(result)
