"""The reused probe: one check per ttl however often it is asked, callers at
the same moment share one check, failures are kept too, forget() probes again."""

from __future__ import annotations

import asyncio

import pytest

from filestore.errors import StorageUnavailable
from filestore.probe import CachedProbe


async def test_reuse_share_failures_and_forget() -> None:
    now = [100.0]
    calls: list[int] = []
    gate = asyncio.Event()
    failing = [False]

    async def check() -> None:
        calls.append(1)
        await gate.wait()
        if failing[0]:
            raise StorageUnavailable("down")

    probe = CachedProbe(check, ttl=5.0, now=lambda: now[0])
    together = [asyncio.ensure_future(probe()) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*together)
    assert len(calls) == 1  # five callers, one write to storage
    now[0] += 4.9
    await probe()
    assert len(calls) == 1
    now[0] += 0.2
    failing[0] = True
    with pytest.raises(StorageUnavailable):
        await probe()
    with pytest.raises(StorageUnavailable):
        await probe()  # the failure is kept as well
    assert len(calls) == 2
    failing[0] = False
    probe.forget()
    await probe()
    assert len(calls) == 3
