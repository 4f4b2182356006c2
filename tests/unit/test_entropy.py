"""The request path's random bytes: the right length, never repeated, and
different in a forked child (``serve --workers`` forks after start-up draws)."""

from __future__ import annotations

import os

from filestore.crypto.entropy import random_bytes, random_hex


def test_lengths_and_no_repeats() -> None:
    draws = {random_bytes(16) for _ in range(10_000)}
    assert len(draws) == 10_000
    assert all(len(d) == 16 for d in draws)
    assert len(random_bytes(0)) == 0
    hexes = {random_hex(8) for _ in range(1000)}
    assert len(hexes) == 1000 and all(len(h) == 16 and int(h, 16) >= 0 for h in hexes)


def test_a_forked_child_draws_other_bytes() -> None:
    random_bytes(32)  # the generator is seeded and in use before the fork
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its draw, then leave at once
        try:
            os.write(write_end, random_bytes(32))
        finally:
            os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 64)
    os.close(read_end)
    os.waitpid(pid, 0)
    parent = random_bytes(32)
    assert len(child) == 32
    assert child != parent
