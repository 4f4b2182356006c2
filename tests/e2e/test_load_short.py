"""The load test in CI: ``bench/load.py``'s own machinery (``bench.load``)
against a real ``filestore serve``, for 15 s at 64 clients with tiny files
and short TTLs, asserting the same invariants as the full run: no unexpected
answer, nothing readable past expiry, the most overdue file within one purge
interval plus the pass allowance, and a drain that leaves one deletion
record per upload and nothing stored. RSS is sampled but judged only by the
long variant (``-m long``) and the full run (docs/load-test.md): a quarter of
15 s is too short to tell growth from warm-up.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bench.load import KIB, SHORT, LoadConfig, LoadResult, run_load


def _exercised(result: LoadResult) -> None:
    """The run did what it claims: every operation succeeded at least once,
    and expired or deleted files were met and refused."""
    outcomes = result.tally.outcomes
    for op in ("upload", "download", "range", "delete", "reread"):
        assert outcomes[op]["ok"] > 0, (op, dict(outcomes[op]))
    refused = sum(outcomes[op]["410 as expected"] for op in ("download", "range", "reread"))
    assert refused > 0, {op: dict(c) for op, c in outcomes.items()}
    assert sum(result.reread.values()) > 0
    assert len(result.samples) >= 3


async def test_short_load_keeps_the_invariants(tmp_path: Path) -> None:
    result = await run_load(SHORT, tmp_path)
    assert not result.violations, result.markdown()
    _exercised(result)


@pytest.mark.long
async def test_long_load_keeps_the_invariants_and_flat_rss(tmp_path: Path) -> None:
    config = replace(
        LoadConfig(),
        duration=120.0,
        sizes=((0.7, 1, 16 * KIB), (0.3, 16 * KIB, 1024 * KIB)),
    )
    result = await run_load(config, tmp_path)
    assert not result.violations, result.markdown()
    _exercised(result)
