"""Per-thread CPU and context switches from /proc (bench/_proc.py)."""

from __future__ import annotations

import os
import threading
import time

from bench._proc import thread_split, thread_stats


def test_split_separates_main_threads_and_counts_new_ones_from_zero() -> None:
    before = {(10, 10): (1.0, 5), (10, 11): (2.0, 7), (20, 20): (0.5, 1), (10, 12): (9.0, 9)}
    after = {(10, 10): (1.5, 8), (10, 11): (2.25, 17), (20, 20): (0.75, 2), (10, 13): (0.5, 4)}
    main, other, switches = thread_split(before, after)
    assert main == 0.75  # 0.5 + 0.25 from the two processes' main threads
    assert other == 0.75  # 0.25, and the new thread's 0.5; the ended one is left out
    assert switches == 3 + 10 + 1 + 4


def test_stats_see_this_process_and_a_thread_that_waits() -> None:
    pid = os.getpid()
    release = threading.Event()
    waiter = threading.Thread(target=release.wait)
    waiter.start()
    try:
        before = thread_stats([pid])
        assert (pid, pid) in before  # the main thread
        assert (pid, waiter.native_id) in before
        release.set()
        waiter.join()
    finally:
        release.set()
    # join() returns once the thread's Python state is gone; the kernel may
    # list its task for a moment longer, so look again, for at most 5 s.
    for _ in range(500):
        after = thread_stats([pid, 2**22 + 7])  # a pid that is not there is skipped
        if (pid, waiter.native_id) not in after:
            break
        time.sleep(0.01)
    assert (pid, waiter.native_id) not in after  # it ended
    assert after[(pid, pid)][1] >= before[(pid, pid)][1]
