"""Lanes: ordered calls on a shared pool, none at once, a failure stops the
rest, and no pool thread is held while a lane has nothing to run."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

import pytest

from filestore.lanes import Lane


def test_calls_run_in_order_one_at_a_time() -> None:
    rng = random.Random(3)
    ran: list[int] = []
    running = 0
    most = 0
    guard = threading.Lock()

    def call(k: int, pause: float) -> int:
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        time.sleep(pause)  # calls of unequal length, to tempt a reordering
        ran.append(k)
        with guard:
            running -= 1
        return k * k

    with ThreadPoolExecutor(max_workers=4) as pool:
        lane = Lane(pool)
        futures = [
            lane.submit(lambda k=k: call(k, rng.choice([0, 0.0005, 0.002]))) for k in range(60)
        ]
        assert [f.result(timeout=30) for f in futures] == [k * k for k in range(60)]
    assert ran == list(range(60))
    assert most == 1


def test_a_failure_fails_every_call_after_it_without_running_them() -> None:
    ran: list[str] = []

    def fail() -> None:
        ran.append("fail")
        raise OSError(28, "No space left on device")

    with ThreadPoolExecutor(max_workers=2) as pool:
        lane = Lane(pool)
        gate = threading.Event()
        first = lane.submit(lambda: (gate.wait(30), ran.append("first")))
        failing = lane.submit(fail)
        later = [lane.submit(lambda: ran.append("later")) for _ in range(3)]
        gate.set()
        first.result(timeout=30)
        with pytest.raises(OSError):
            failing.result(timeout=30)
        for future in later:
            with pytest.raises(OSError) as info:
                future.result(timeout=30)
            assert info.value is failing.exception()
        # A lane that failed stays failed.
        with pytest.raises(OSError):
            lane.submit(lambda: ran.append("afterwards")).result(timeout=30)
    assert ran == ["first", "fail"]


def test_an_idle_lane_holds_no_thread() -> None:
    """Two lanes on a one-thread pool: the second runs once the first has
    nothing left, and the first runs again after it."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        a, b = Lane(pool), Lane(pool)
        order: list[str] = []
        assert a.submit(lambda: order.append("a1")).result(timeout=30) is None
        assert b.submit(lambda: order.append("b1")).result(timeout=30) is None
        done = [a.submit(lambda: order.append("a2")), b.submit(lambda: order.append("b2"))]
        wait(done, timeout=30)
    assert order == ["a1", "b1", "a2", "b2"]


def test_calls_submitted_while_it_runs_join_the_same_turn() -> None:
    """A call queued while the lane is running is taken by the run in
    progress (one pool job for the lot), in order."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        lane = Lane(pool)
        gate = threading.Event()
        threads: list[int] = []
        first = lane.submit(lambda: (gate.wait(30), threads.append(threading.get_ident())))
        rest = [lane.submit(lambda: threads.append(threading.get_ident())) for _ in range(5)]
        # Another job on the pool would wait behind the lane's: it is one job.
        other = pool.submit(lambda: len(threads))
        gate.set()
        first.result(timeout=30)
        wait(rest, timeout=30)
        assert other.result(timeout=30) == 6
    assert len(set(threads)) == 1


def test_a_pool_that_is_shut_down_refuses_and_the_lane_is_not_left_running() -> None:
    pool = ThreadPoolExecutor(max_workers=1)
    lane = Lane(pool)
    assert lane.submit(lambda: 1).result(timeout=30) == 1
    pool.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        lane.submit(lambda: 2)
    with ThreadPoolExecutor(max_workers=1) as other:
        lane._executor = other  # the lane took no stale "running" state with it
        assert lane.submit(lambda: 3).result(timeout=30) == 3


def test_a_cancelled_call_is_skipped() -> None:
    with ThreadPoolExecutor(max_workers=1) as pool:
        lane = Lane(pool)
        gate = threading.Event()
        ran: list[int] = []
        first = lane.submit(lambda: (gate.wait(30), ran.append(1)))
        second = lane.submit(lambda: ran.append(2))
        third = lane.submit(lambda: ran.append(3))
        assert second.cancel()
        gate.set()
        first.result(timeout=30)
        third.result(timeout=30)
    assert ran == [1, 3]
