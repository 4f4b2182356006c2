"""``serve`` tunes the interpreter. It freezes its start-up heap: what start-up
made is no longer walked by full collections (each one stalled every request
in flight), and the garbage start-up left is collected first rather than kept
for good. And it shortens the GIL's switch interval.

Run in a child interpreter so the freeze never touches the test process."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import gc, weakref
from filestore import cli

class Node:
    pass

kept = [Node()]
dead = Node()
dead.self = dead  # a cycle: only the collector frees it
gone = weakref.ref(dead)
del dead
gc.disable()  # no automatic collection may do the helper's work for it
before = len(gc.get_objects())
cli._freeze_startup_heap()
assert gone() is None, "start-up garbage was frozen instead of collected"
assert gc.get_freeze_count() >= before // 2, (gc.get_freeze_count(), before)
assert not any(o is kept for o in gc.get_objects()), "a start-up object is still walked"
later = [Node()]
assert any(o is later for o in gc.get_objects()), "objects made later are still collected"
print("frozen", gc.get_freeze_count())
"""


def test_start_up_objects_leave_the_collectors_sight() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("frozen ")


SWITCH_CHILD = """
import sys
from filestore import cli
before = sys.getswitchinterval()
cli._shorten_gil_turns()
print(before, sys.getswitchinterval())
"""


def test_serve_shortens_the_gil_turns() -> None:
    """Threads coming back from a system call get the GIL back within half a
    millisecond rather than Python's 5 ms default."""
    done = subprocess.run(
        [sys.executable, "-c", SWITCH_CHILD],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    before, after = map(float, done.stdout.split())
    assert before == 0.005
    assert after <= 0.001
