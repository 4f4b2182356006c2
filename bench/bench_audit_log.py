"""The deletion log at a million records: receipts, tiles and exports, from
tiles against the all-leaves computation they replaced.

    PYTHONPATH=. .venv/bin/python bench/bench_audit_log.py                  # 1,000,000 on SQLite
    PYTHONPATH=. .venv/bin/python bench/bench_audit_log.py --quick          # 20,000, a minute
    PYTHONPATH=. .venv/bin/python bench/bench_audit_log.py --backends sqlite,postgresql

Why: before tiles, every receipt, partial export and ``consistency_from``
export read every leaf hash of the log (``hashes(size)``) and hashed the
tree on each request, O(n) in database time and CPU, and any client key can
ask for a receipt. With tiles the same proofs need O(log n) rows. Both
paths run here, alternately, on the same database in the same run; the
figures are reported as ratios old/new, so the machine's noise cancels out.

The log is filled quickly but honestly: records are built by the same
code as appends (``AuditEntry.chain_after``: canonical JSON, hash chain),
inserted in large batches, and the tree table is then grown by the store's
own append-path function (``_grow_tree``, called at every size where the
append path would call it), so ``audit_tree`` holds exactly what appending
one by one would have written. The root from tiles is checked against the
root of every leaf before anything is timed.

Measured (wall time; p50 and p99 where several samples are taken):

* **receipt**: ``auditlog.receipt`` (record, covering checkpoint, proof
  from tiles, tlog-proof) against the old path (``hashes(size)`` and the
  O(n) proof in a thread, then the same receipt), for random records;
* **tile fetch**: ``GET /v1/audit/tile/0/<N>`` and ``tile/1/<N>`` and an
  entry bundle through a real gateway on the same database, with an
  auditor's key;
* **export**: a full JSONL export (records/s; the same for both paths: a
  full export needs no proof) and a slice (a seq window in the middle, so
  the header needs the frontier) old and new;
* **consistency_from**: a small slice with ``consistency_from`` old and new.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench._report import command_line
from filestore import auditlog
from filestore.audit import (
    AuditRecord,
    ExportHeader,
    encode_record,
    entries,
    export_lines,
    make_receipt,
    merkle,
)
from filestore.audit.tiles import TILE_WIDTH, format_index, read_root, tiles_for
from filestore.metadata.base import MetadataStore, Role
from filestore.metadata.schema import audit_log
from filestore.metadata.sql import SQLMetadataStore, _grow_tree
from tests.support.gateway import running_gateway
from tests.support.postgres import PostgresServer

BATCH = 10_000
T0 = 1_800_000_000.0


def records(count: int) -> Iterator[AuditRecord]:
    """``count`` chained orphan-deletion records, one a millisecond."""
    prev: AuditRecord | None = None
    rng = random.Random(1)
    for i in range(count):
        prev = entries.orphan_deleted(
            file_id=rng.randbytes(16).hex()[:22],
            deleted_at=T0 + i / 1000,
            backend="local",
            actor="bench",
            software_version="0",
        ).chain_after(prev)
        yield prev


async def fill(store: SQLMetadataStore, count: int) -> tuple[list[str], float]:
    """Insert ``count`` records and grow the tree as the append path does.
    Returns a sample of file ids (for receipts) and the seconds it took."""
    started = time.perf_counter()
    sample: list[str] = []
    rng = random.Random(2)
    made = records(count)
    done = 0
    while batch := list(itertools.islice(made, BATCH)):
        rows = [
            {
                "seq": r.seq,
                "event": r.event,
                "file_id": r.file_id,
                "kek_id": r.kek_id,
                "tenant": r.tenant,
                "recorded_at": r.recorded_at,
                "hash": r.hash,
                "body": encode_record(r),
            }
            for r in batch
        ]
        first = batch[0].seq

        def insert(
            conn: sa.Connection, rows: list[dict[str, Any]] = rows, first: int = first
        ) -> None:
            conn.execute(audit_log.insert(), rows)
            # The append path's own tree step, at each size where it runs.
            for size in range(first, first + len(rows)):
                if size % TILE_WIDTH == 0:
                    _grow_tree(conn, size)

        await store.db.run(insert, write=True)
        sample += [r.file_id for r in batch if r.file_id and rng.random() < 0.01]
        done += len(batch)
        print(f"\r  filled {done:,} of {count:,}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return sample, time.perf_counter() - started


# ------------------------------------------------------------- the old path
async def old_receipt(metadata: MetadataStore, file_id: str) -> str | None:
    """The receipt as it was computed before tiles: every leaf, O(n) proof."""
    record = await metadata.audit.record_for_file(file_id)
    if record is None:
        return None
    covering = await metadata.audit.checkpoint_covering(record.seq)
    if covering is None:
        return None
    size, note = covering
    leaves = await metadata.audit.hashes(size)
    return await asyncio.to_thread(make_receipt, record, note, leaves=leaves)


async def old_export(
    metadata: MetadataStore, now: float, first: int, last: int, consistency_from: int | None
) -> AsyncIterator[str]:
    """A seq-range export as it was made before tiles: all leaves loaded."""
    latest = await metadata.audit.latest_checkpoint()
    assert latest is not None
    size, newest = latest
    notes = await metadata.audit.checkpoints_between(max(first - 1, 0), last)
    if newest not in notes:
        notes.append(newest)
    leaves = await metadata.audit.hashes(size)
    recs = await metadata.audit.records(first - 1, last - first + 1)
    header = ExportHeader(first_seq=first, exported_at=now, partial=True)
    lines = export_lines(header, recs, notes, leaves=leaves, consistency_from=consistency_from)
    text = await asyncio.to_thread(lambda: "".join(lines))
    yield text


async def new_export(
    metadata: MetadataStore, now: float, first: int, last: int, consistency_from: int | None
) -> AsyncIterator[str]:
    """The same export with the proofs from tiles (as ``auditlog.export``)."""
    latest = await metadata.audit.latest_checkpoint()
    assert latest is not None
    _size, newest = latest
    notes = await metadata.audit.checkpoints_between(max(first - 1, 0), last)
    if newest not in notes:
        notes.append(newest)
    recs = await metadata.audit.records(first - 1, last - first + 1)
    header = ExportHeader(first_seq=first, exported_at=now, partial=True)
    loop = asyncio.get_running_loop()
    proofs = auditlog.TileProofs(metadata, loop)
    lines = export_lines(header, recs, notes, proofs=proofs, consistency_from=consistency_from)
    text = await asyncio.to_thread(lambda: "".join(lines))
    yield text


async def drain(stream: AsyncIterator[str]) -> str:
    return "".join([chunk async for chunk in stream])


async def fetch(gw: Any, path: str, auditor: dict[str, str]) -> bytes:
    resp = await gw.client.get(f"/v1/audit/tile/{path}", headers=auditor)
    assert resp.status == 200, (path, resp.status)
    body: bytes = await resp.read()
    return body


# ---------------------------------------------------------------- timing
async def timed(work: Awaitable[Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = await work
    return time.perf_counter() - started, out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 10 else f"{seconds:,.1f} s"


async def run_backend(
    name: str, url: str, tmp: Path, count: int, receipts: int, old_samples: int
) -> list[str]:
    """Fill one database and measure; returns the report's lines."""
    store = await SQLMetadataStore.open(url)
    try:
        sample, fill_s = await fill(store, count)
        leaves = await store.audit.hashes(count)

        class Source:
            def __init__(self, tiles: dict[Any, bytes]) -> None:
                self.tiles = tiles

            def read_tiles(self, wanted: Any) -> list[bytes]:
                return [self.tiles[t] for t in wanted]

        needed = tiles_for([(0, count)], count)
        got = dict(zip(needed, await store.audit.read_tiles(needed), strict=True))
        assert read_root(count, Source(got)) == merkle.root(leaves), "tree table is wrong"
        del leaves
    finally:
        await store.close()

    lines = [f"### {name}, {count:,} records (filled in {fill_s:,.0f} s)", ""]
    async with running_gateway(tmp / name, database_url=url) as gw:
        svc = gw.services
        now = T0 + count / 1000 + 60
        gw.clock.set(now)
        await auditlog.write_checkpoint(
            svc.metadata, svc.signing_key, svc.settings.audit_origin, now
        )
        meta = svc.metadata
        rng = random.Random(3)
        picks = [rng.choice(sample) for _ in range(receipts)]
        # Receipts, alternating old and new on the same records.
        new_t: list[float] = []
        old_t: list[float] = []
        for i, fid in enumerate(picks):
            dt, new = await timed(auditlog.receipt(meta, fid))
            new_t.append(dt)
            if i < old_samples:
                dt, old = await timed(old_receipt(meta, fid))
                old_t.append(dt)
                assert old == new, "the two paths disagree"
        lines += [
            "| measure | old (all leaves) | new (tiles) | old/new |",
            "|---|---|---|---|",
            f"| receipt p50 | {ms(pct(old_t, 50))} | {ms(pct(new_t, 50))} "
            f"| {pct(old_t, 50) / pct(new_t, 50):,.0f}x |",
            f"| receipt p99 | {ms(pct(old_t, 99))} | {ms(pct(new_t, 99))} "
            f"| {pct(old_t, 99) / pct(new_t, 99):,.0f}x |",
        ]
        # A slice in the middle (frontier in the header), and consistency_from.
        mid = count // 2 + 17
        cases = [
            ("slice export of 10,000 (mid-log)", mid, mid + 9_999, None),
            ("consistency_from export (1,000 records)", mid, mid + 999, count // 3),
        ]
        for label, first, last, cf in cases:
            olds, news = [], []
            for _ in range(3):
                dt, new_text = await timed(drain(new_export(meta, now, first, last, cf)))
                news.append(dt)
                dt, old_text = await timed(drain(old_export(meta, now, first, last, cf)))
                olds.append(dt)
                assert old_text == new_text, "the two paths disagree"
            o, n = statistics.median(olds), statistics.median(news)
            span = last - first + 1
            lines.append(
                f"| {label} | {ms(o)} ({span / o:,.0f} rec/s) | {ms(n)} ({span / n:,.0f} rec/s) "
                f"| {o / n:,.1f}x |"
            )
        # A full export: no proof needed on either path.
        key, origin = svc.signing_key, svc.settings.audit_origin
        dt, text = await timed(drain(auditlog.export(meta, key, origin, now)))
        assert text.count('"type":"record"') == count
        lines.append(f"| full export (records/s) | same code | {count / dt:,.0f} rec/s | — |")
        # Tiles through the gateway.
        auditor = await gw.auth("audit", Role.AUDITOR)
        index = count // 512
        level1 = "1/000" if count >= 65_536 else f"1/000.p/{count // 256 % 256}"
        for path in (f"0/{format_index(index)}", level1, f"entries/{format_index(index)}"):
            samples = []
            for _ in range(50):
                dt, body = await timed(fetch(gw, path, auditor))
                samples.append(dt)
            lines.append(
                f"| GET tile/{path} ({len(body):,} B) p50 / p99 | — "
                f"| {ms(pct(samples, 50))} / {ms(pct(samples, 99))} | — |"
            )
    lines += [
        "",
        f"Receipts: {len(new_t)} new, {len(old_t)} old samples; exports: median of 3.",
        "",
    ]
    return lines


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="20,000 records")
    parser.add_argument(
        "--backends", default="sqlite", help="comma-separated: sqlite, postgresql (default sqlite)"
    )
    parser.add_argument("--receipts", type=int, default=200)
    parser.add_argument("--old-samples", type=int, default=10)
    args = parser.parse_args()
    count = 20_000 if args.quick else args.records
    out = [f"`{command_line()}` on {os.cpu_count()} CPUs", ""]
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp_dir:
        tmp = Path(tmp_dir)
        backends = args.backends.split(",")
        if not set(backends) <= {"sqlite", "postgresql"}:
            parser.error("--backends takes sqlite and postgresql")
        if "sqlite" in backends:
            url = f"sqlite:///{tmp / 'sqlite' / 'filestore.db'}"
            (tmp / "sqlite").mkdir()
            out += await run_backend("SQLite", url, tmp, count, args.receipts, args.old_samples)
        if "postgresql" in backends:
            pg = PostgresServer.start()
            try:
                database = await pg.create_database()
                out += await run_backend(
                    "PostgreSQL", pg.url(database), tmp, count, args.receipts, args.old_samples
                )
            finally:
                pg.stop()
    print("\n".join(out))


if __name__ == "__main__":
    asyncio.run(main())
