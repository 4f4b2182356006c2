"""Ordering of thread-pool jobs shared by the blob stores."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from typing import Any, TypeVar

T = TypeVar("T")


def after(previous: Future[Any] | None, fn: Callable[[], T]) -> Callable[[], T]:
    """``fn`` to run once ``previous`` (a job using the same resource — a
    descriptor, an upload) is done, so the resource is never closed or
    aborted under a job still using it."""

    def run() -> T:
        if previous is not None:
            wait_futures([previous])
        return fn()

    return run
