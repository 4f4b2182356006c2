"""The deletion log as a service: checkpoints, exports and receipts over the
records the metadata store keeps.

:mod:`filestore.audit` is the pure format library; this module feeds it from
the database, for the HTTP API, the CLI and the scheduler alike.

Exports are streamed: the pure exporter is a plain generator, so it runs in a
worker thread that pulls pages of records from the (async) store through the
event loop, while the loop sends each batch of lines as it comes.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from filestore.audit import (
    GENESIS_HASH,
    AuditRecord,
    Checkpoint,
    ExportHeader,
    Frontier,
    export_csv,
    export_lines,
    make_receipt,
    peek_checkpoint,
    sign_checkpoint,
)
from filestore.errors import BadRequest
from filestore.metadata.base import MetadataStore

#: The name checkpoints are signed under (the signed note's key name).
KEY_NAME = "filestore-audit"
PAGE = 1000
LINES_PER_WRITE = 500


async def write_checkpoint(
    metadata: MetadataStore,
    key: Ed25519PrivateKey,
    origin: str,
    now: float,
    frontier: Frontier | None = None,
) -> tuple[int, str]:
    """Sign the log as it stands and store the note; returns (size, note).

    Written after every purge pass, also one that deleted nothing, so a
    verifier can tell a fresh log from a stale one. A long-lived caller
    passes its own ``frontier`` (the Merkle tree's right edge), which is
    extended by the new records only, so a checkpoint costs O(new records)
    instead of reading the whole log.
    """
    head = await metadata.audit.head()
    size = 0 if head is None else head.seq
    if frontier is None or frontier.size > size:
        frontier = Frontier()
    for leaf in await metadata.audit.hashes(size, after=frontier.size):
        frontier.append(leaf)
    checkpoint = Checkpoint(
        origin=origin,
        size=size,
        root=frontier.root(),
        chain_head=GENESIS_HASH if head is None else head.hash,
        time=now,
    )
    note = sign_checkpoint(checkpoint, key, KEY_NAME)
    await metadata.audit.add_checkpoint(size, note, now)
    return size, note


#: An export reuses the newest checkpoint if it covers the whole log and is
#: at most this old, instead of signing (and storing) one per request.
REUSE_CHECKPOINT = 60.0


async def _fresh_checkpoint(
    metadata: MetadataStore, key: Ed25519PrivateKey, origin: str, now: float
) -> tuple[int, str]:
    latest = await metadata.audit.latest_checkpoint()
    head = await metadata.audit.head()
    if latest is not None:
        size, note = latest
        if size == (0 if head is None else head.seq) and (
            0 <= now - peek_checkpoint(note).time <= REUSE_CHECKPOINT
        ):
            return size, note
    return await write_checkpoint(metadata, key, origin, now)


async def export(
    metadata: MetadataStore,
    key: Ed25519PrivateKey,
    origin: str,
    now: float,
    *,
    fmt: str = "jsonl",
    since: float | None = None,
    until: float | None = None,
    consistency_from: int | None = None,
) -> AsyncIterator[str]:
    """Stream an export ending at a checkpoint signed now.

    JSONL carries the checkpoints inline and whatever a slice needs to be
    verified alone (see docs/audit-log.md); CSV is the same records for a
    spreadsheet and is not verifiable by itself.
    """
    if fmt not in ("jsonl", "csv"):
        raise BadRequest("format must be jsonl or csv")
    size, newest = await _fresh_checkpoint(metadata, key, origin, now)
    if consistency_from is not None and not 0 <= consistency_from <= size:
        raise BadRequest(f"consistency_from must be between 0 and {size}")
    span = await metadata.audit.seq_range(since, until, size)
    first, last = span if span is not None else (size + 1, size)
    notes = await metadata.audit.checkpoints_between(max(first - 1, 0), last)
    if newest not in notes:
        notes.append(newest)
    partial = since is not None or until is not None
    needs_leaves = first > 1 or consistency_from is not None or (partial and last < size)
    leaves = await metadata.audit.hashes(size) if needs_leaves else None
    loop = asyncio.get_running_loop()

    def records() -> Iterator[AuditRecord]:
        # Runs in the worker thread; each page is fetched on the loop.
        after = first - 1
        while after < last:
            page = asyncio.run_coroutine_threadsafe(
                metadata.audit.records(after, min(PAGE, last - after)), loop
            ).result()
            if not page:
                return
            yield from page
            after = page[-1].seq

    lines: Iterator[str]
    if fmt == "csv":
        lines = export_csv(records())
    else:
        header = ExportHeader(first_seq=first, exported_at=now, since=since, until=until)
        lines = export_lines(
            header, records(), notes, leaves=leaves, consistency_from=consistency_from
        )

    def take() -> list[str]:
        return list(itertools.islice(lines, LINES_PER_WRITE))

    while batch := await loop.run_in_executor(None, take):
        yield "".join(batch)


async def receipt(metadata: MetadataStore, file_id: str) -> dict[str, Any] | None:
    """The deletion receipt of one file (record, inclusion proof, signed
    checkpoint), or None if its deletion is not yet under a checkpoint."""
    record = await metadata.audit.record_for_file(file_id)
    if record is None:
        return None
    covering = await metadata.audit.checkpoint_covering(record.seq)
    if covering is None:
        return None
    size, note = covering
    leaves = await metadata.audit.hashes(size)
    # The proof is O(log size) to send but O(size) to compute: off the loop.
    return await asyncio.to_thread(make_receipt, record, note, leaves=leaves)
