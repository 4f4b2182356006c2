"""The coalescer that batches PostgreSQL's new-file inserts and row reads:
what arrives while a batch is on its way goes in the next one, each caller
keeps its own result or error, and a cancelled caller never leaves a write
behind it unknown."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from filestore.metadata.batching import Coalescer


class Store:
    """A write that the test holds open until it lets it finish."""

    def __init__(self, bad: frozenset[int] = frozenset()) -> None:
        self.calls: list[list[int]] = []
        self.written: list[int] = []
        self.bad = bad
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def write(self, items: Sequence[int]) -> list[int]:
        self.calls.append(list(items))
        self.entered.set()
        await self.gate.wait()
        if self.bad & set(items):  # one statement: all or nothing
            raise LookupError(f"refused {sorted(self.bad & set(items))}")
        self.written.extend(items)
        return [n * 10 for n in items]


async def _held(store: Store, coalescer: Coalescer[int, int], first: int) -> asyncio.Task[None]:
    """Submit ``first`` and return once its write is on its way, held."""
    store.gate.clear()
    task = asyncio.ensure_future(coalescer.submit(first))
    await store.entered.wait()
    return task


async def test_a_lone_item_is_written_at_once() -> None:
    store = Store()
    assert await Coalescer(store.write).submit(7) == 70
    assert store.calls == [[7]]


async def test_items_arriving_meanwhile_go_in_one_write() -> None:
    store = Store()
    coalescer = Coalescer(store.write, concurrency=1)
    first = await _held(store, coalescer, 0)
    rest = [asyncio.ensure_future(coalescer.submit(n)) for n in range(1, 11)]
    await asyncio.sleep(0)
    store.gate.set()
    assert await asyncio.gather(first, *rest) == [n * 10 for n in range(11)]
    assert store.calls == [[0], list(range(1, 11))]
    assert sorted(store.written) == list(range(11))


async def test_limit_and_concurrency_bound_the_writes() -> None:
    store = Store()
    coalescer = Coalescer(store.write, limit=4, concurrency=2)
    first = await _held(store, coalescer, 0)
    rest = [asyncio.ensure_future(coalescer.submit(n)) for n in range(1, 11)]
    for _ in range(10):  # let the submits and the second drain run
        await asyncio.sleep(0)
    # Two writes on their way, the second took what had queued, ≤ 4 items.
    assert len(store.calls) == 2 and len(store.calls[1]) <= 4
    store.gate.set()
    await asyncio.gather(first, *rest)
    assert all(len(call) <= 4 for call in store.calls)
    assert sorted(store.written) == list(range(11))


async def test_a_failed_batch_is_rerun_one_by_one() -> None:
    store = Store(bad=frozenset({5}))
    coalescer = Coalescer(store.write, concurrency=1)
    first = await _held(store, coalescer, 0)
    rest = [asyncio.ensure_future(coalescer.submit(n)) for n in range(1, 9)]
    await asyncio.sleep(0)
    store.gate.set()
    outcomes = await asyncio.gather(first, *rest, return_exceptions=True)
    failed = [n for n, o in enumerate(outcomes) if isinstance(o, BaseException)]
    assert failed == [5] and isinstance(outcomes[5], LookupError)
    assert [o for n, o in enumerate(outcomes) if n != 5] == [n * 10 for n in range(9) if n != 5]
    assert sorted(store.written) == [0, 1, 2, 3, 4, 6, 7, 8]
    assert [len(c) for c in store.calls] == [1, 8, *[1] * 8]


async def test_cancelled_while_waiting_is_never_written() -> None:
    store = Store()
    coalescer = Coalescer(store.write, concurrency=1)
    first = await _held(store, coalescer, 0)
    waiting = asyncio.ensure_future(coalescer.submit(1))
    kept = asyncio.ensure_future(coalescer.submit(2))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    store.gate.set()
    await asyncio.gather(first, kept)
    assert store.written == [0, 2]


async def test_cancelled_on_its_way_waits_for_the_outcome() -> None:
    store = Store()
    coalescer = Coalescer(store.write)
    first = await _held(store, coalescer, 0)
    first.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not first.done()  # still waiting: the row may be committing
    store.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert store.written == [0]


async def test_a_write_with_the_wrong_number_of_results_fails_its_items() -> None:
    async def short(items: Sequence[int]) -> list[int]:
        return list(items)[1:]

    with pytest.raises(RuntimeError):
        await Coalescer(short).submit(1)


def test_bounds_are_checked() -> None:
    async def write(items: Sequence[int]) -> list[int]:
        return list(items)

    with pytest.raises(ValueError):
        Coalescer(write, limit=0)
    with pytest.raises(ValueError):
        Coalescer(write, concurrency=0)
