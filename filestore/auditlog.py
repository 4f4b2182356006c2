"""The deletion log as a service: checkpoints, exports and receipts over the
records the metadata store keeps.

:mod:`filestore.audit` is the pure format library; this module feeds it from
the database, for the HTTP API, the CLI and the scheduler alike.

Exports are streamed: the pure exporter is a plain generator, so it runs in a
worker thread that pulls pages of records from the (async) store through the
event loop, while the loop sends each batch of lines as it comes.

Proofs, frontiers and roots come from the tree's tiles
(:mod:`filestore.audit.tiles`): O(log n) rows in one read transaction,
never every leaf of the log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import itertools
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from filestore.audit import (
    GENESIS_HASH,
    AuditRecord,
    AuditVerificationError,
    Checkpoint,
    ExportHeader,
    Frontier,
    export_csv,
    export_lines,
    key_id,
    make_receipt,
    parse_and_verify,
    peek_checkpoint,
    sign_checkpoint,
)
from filestore.audit.checkpoint import ORIGIN_PREFIX
from filestore.audit.cosignature import Witness, cosignature_lines, note_text
from filestore.audit.keys import raw_public_key
from filestore.audit.tiles import (
    consistency_ranges,
    frontier_ranges,
    inclusion_ranges,
    range_hashes,
    tiles_for,
)
from filestore.errors import BadRequest, ConfigError, Conflict, Forbidden
from filestore.metadata.base import CosignatureRow, MetadataStore

log = logging.getLogger(__name__)

#: The identity every log had before origins were per deployment: checkpoints
#: of such a log keep it (a log's origin cannot change), and verifiers keep
#: accepting it.
LEGACY_ORIGIN = "filestore.audit/default"
LEGACY_KEY_NAME = "filestore-audit"
PAGE = 1000
LINES_PER_WRITE = 500
#: A cosignature dated more than this after the gateway's clock is refused.
COSIGNATURE_SKEW = 300.0


@dataclass(frozen=True)
class Identity:
    """The log's name (the checkpoints' origin line) and the key name its
    checkpoints are signed under: equal for every log started since origins
    became per deployment; a log begun earlier keeps what it was signed as."""

    origin: str
    key_name: str


def derived_origin(key: Ed25519PrivateKey) -> str:
    """The origin of a deployment that configures none:
    ``filestore.audit/`` and the first 16 hex digits of SHA-256 of the raw
    32-byte public key. Stable for as long as the signing key is, and the
    same on every instance sharing it."""
    digest = hashlib.sha256(raw_public_key(key.public_key())).hexdigest()
    return ORIGIN_PREFIX + digest[:16]


_noticed: set[str] = set()


def _signer_name(note: str, key: Ed25519PrivateKey) -> str | None:
    """The key name under which ``key`` signed ``note``, if it did."""
    public = key.public_key()
    for line in note_text(note)[1]:
        name, _, blob = line.removeprefix("\u2014 ").partition(" ")
        try:
            raw = base64.b64decode(blob, validate=True)
        except (ValueError, binascii.Error):
            continue
        if name and raw[:4] == key_id(name, public):
            return name
    return None


async def identity(metadata: MetadataStore, key: Ed25519PrivateKey, configured: str) -> Identity:
    """The log's identity: what its stored checkpoints were signed as, or —
    for a log without checkpoints — the ``configured`` origin (derived from
    the key when empty) with the key name equal to it.

    ConfigError if an origin is configured that differs from the one the log
    already has: a log's origin cannot change mid-log (witnesses and
    auditors track a log by it). A log whose origin differs from what would
    be derived now, with nothing configured, keeps its origin (logged once).
    """
    latest = await metadata.audit.latest_checkpoint()
    if latest is None:
        origin = configured or derived_origin(key)
        return Identity(origin, origin)
    note = latest[1]
    stored = peek_checkpoint(note).origin
    if configured and configured != stored:
        raise ConfigError(
            f"FILESTORE_AUDIT_ORIGIN is {configured!r} but the audit log's checkpoints are "
            f"signed as {stored!r}: a log's origin cannot change; unset it or set it to "
            f"{stored!r}"
        )
    if not configured and stored != derived_origin(key) and stored not in _noticed:
        _noticed.add(stored)
        log.warning(
            "the audit log keeps its origin %r (its checkpoints were signed under it); "
            "set FILESTORE_AUDIT_ORIGIN to it to say so",
            stored,
        )
    return Identity(stored, _signer_name(note, key) or stored)


async def write_checkpoint(
    metadata: MetadataStore,
    key: Ed25519PrivateKey,
    origin: str,
    now: float,
    frontier: Frontier | None = None,
) -> tuple[int, str]:
    """Sign the log as it stands and store the note; returns (size, note).

    ``origin`` is the configured origin (empty: the log's own or derived,
    see :func:`identity`). Written after every purge pass, also one that
    deleted nothing, so a
    verifier can tell a fresh log from a stale one. A long-lived caller
    passes its own ``frontier`` (the Merkle tree's right edge), which is
    extended by the new records only, so a checkpoint costs O(new records)
    instead of reading the whole log.
    """
    ident = await identity(metadata, key, origin)
    head = await metadata.audit.head()
    size = 0 if head is None else head.seq
    if frontier is None or frontier.size > size:
        frontier = await tree_frontier(metadata, size)
    for leaf in await metadata.audit.hashes(size, after=frontier.size):
        frontier.append(leaf)
    checkpoint = Checkpoint(
        origin=ident.origin,
        size=size,
        root=frontier.root(),
        chain_head=GENESIS_HASH if head is None else head.hash,
        time=now,
    )
    note = sign_checkpoint(checkpoint, key, ident.key_name)
    await metadata.audit.add_checkpoint(size, note, now)
    return size, note


async def tree_hashes(
    metadata: MetadataStore, ranges: Sequence[tuple[int, int]], size: int
) -> list[bytes]:
    """The Merkle tree hash of each leaf range of the tree of ``size``
    leaves, from the few tiles they need (one read transaction)."""
    needed = tiles_for(ranges, size)
    data = await metadata.audit.read_tiles(needed) if needed else []
    return range_hashes(ranges, size, dict(zip(needed, data, strict=True)))


async def tree_frontier(metadata: MetadataStore, size: int) -> Frontier:
    """The frontier of the first ``size`` leaves, from tiles."""
    return Frontier.from_hashes(size, await tree_hashes(metadata, frontier_ranges(size), size))


class TileProofs:
    """An export's :class:`~filestore.audit.export.ProofSource` over the
    store's tiles. The exporter runs in a worker thread; each value is one
    read on the event loop, and an export asks for a handful."""

    def __init__(self, metadata: MetadataStore, loop: asyncio.AbstractEventLoop) -> None:
        self._metadata = metadata
        self._loop = loop

    def _run(self, ranges: list[tuple[int, int]], size: int) -> list[bytes]:
        return asyncio.run_coroutine_threadsafe(
            tree_hashes(self._metadata, ranges, size), self._loop
        ).result()

    def leaf(self, index: int) -> bytes:
        (raw,) = asyncio.run_coroutine_threadsafe(
            self._metadata.audit.hashes(index + 1, after=index), self._loop
        ).result()
        return raw

    def frontier(self, size: int) -> list[bytes]:
        return self._run(frontier_ranges(size), size)

    def consistency(self, old_size: int, size: int) -> list[bytes]:
        return self._run(consistency_ranges(old_size, size), size)

    def inclusion(self, index: int, size: int) -> list[bytes]:
        return self._run(inclusion_ranges(index, size), size)


#: An export reuses the newest checkpoint if it covers the whole log and is
#: at most this old, instead of signing (and storing) one per request.
REUSE_CHECKPOINT = 60.0
#: ... or at most this old if witnesses have cosigned it: an export that ends
#: at a witnessed checkpoint verifies with ``--min-witnesses``. Below the
#: verifier's 300 s allowance for a full export's newest checkpoint.
REUSE_COSIGNED = 240.0


def body_hash(text: str) -> str:
    """What cosignatures are filed under: SHA-256 (hex) of the checkpoint
    text they sign. A note re-signed at the same size has a new time line,
    hence a new text, and starts without cosignatures."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def with_cosignatures(note: str, lines: Sequence[str]) -> str:
    """``note`` with the signature ``lines`` (no newline) appended, skipping
    any it already carries, in the given order."""
    have = set(note_text(note)[1])
    extra = "".join(line + "\n" for line in dict.fromkeys(lines) if line not in have)
    return note + extra


async def _cosigned(metadata: MetadataStore, notes: list[str]) -> list[str]:
    """``notes`` (of sizes in one range) with the cosignatures stored for them."""
    if not notes:
        return notes
    sizes = [peek_checkpoint(n).size for n in notes]
    found: dict[str, list[str]] = {}
    for digest, line in await metadata.audit.cosignatures(min(sizes), max(sizes)):
        found.setdefault(digest, []).append(line)
    return [with_cosignatures(n, found.get(body_hash(note_text(n)[0]), [])) for n in notes]


async def cosigned_note(metadata: MetadataStore, size: int | None = None) -> str | None:
    """The log's newest signed note at tree ``size`` (the newest checkpoint
    when None), with every witness cosignature stored for that very note:
    what ``/v1/audit/checkpoint``, exports and receipts hand out. None if
    there is no checkpoint at that size."""
    if size is None:
        latest = await metadata.audit.latest_checkpoint()
        notes = [] if latest is None else [latest[1]]
    else:
        notes = await metadata.audit.checkpoints_between(size, size)
    if not notes:
        return None
    return (await _cosigned(metadata, notes[-1:]))[0]


async def consistency_proof(metadata: MetadataStore, old_size: int, new_size: int) -> list[bytes]:
    """The RFC 9162 consistency proof from tree ``old_size`` to ``new_size``.

    The one place proofs for witnesses are made: from tiles, O(log n) reads.
    BadRequest unless ``0 <= old_size <= new_size <= `` the log's size.
    """
    head = await metadata.audit.head()
    size = 0 if head is None else head.seq
    if not 0 <= old_size <= new_size <= size:
        raise BadRequest(f"a consistency proof needs 0 <= from <= to <= {size}")
    return await tree_hashes(metadata, consistency_ranges(old_size, new_size), new_size)


async def add_cosignatures(
    metadata: MetadataStore,
    key: Ed25519PrivateKey,
    configured_origin: str,
    witnesses: Sequence[Witness],
    note: str,
    now: float,
) -> list[str]:
    """Store the cosignatures in ``note`` by ``witnesses``; return the names
    of the witnesses whose cosignatures were stored.

    ``note`` must be a checkpoint this log signed (its signature, under the
    log's identity) and the very note the log holds at that size (Conflict
    if it was re-signed since: fetch the newest and cosign that). Lines by
    unknown keys are ignored; BadRequest if none is by a configured witness,
    or one that claims to be does not verify or is dated in the future.
    """
    if not witnesses:
        raise Forbidden("this deployment accepts no cosignatures: no witness is configured")
    ident = await identity(metadata, key, configured_origin)
    try:
        cp = parse_and_verify(note, key.public_key(), ident.key_name)
        found = cosignature_lines(note, witnesses)
    except AuditVerificationError as exc:
        raise BadRequest(f"not a checkpoint of this log with valid cosignatures: {exc}") from None
    if cp.origin != ident.origin:
        raise BadRequest(f"the checkpoint is for another log than {ident.origin!r}")
    text = note_text(note)[0]
    held = await metadata.audit.checkpoints_between(cp.size, cp.size)
    if not held or note_text(held[-1])[0] != text:
        raise Conflict(
            f"the log holds another checkpoint at size {cp.size} (re-signed since): "
            "fetch /v1/audit/checkpoint again and cosign that"
        )
    if not found:
        raise BadRequest("the note carries no cosignature by a configured witness")
    late = [name for name, ts in found.items() if ts > now + COSIGNATURE_SKEW]
    if late:
        raise BadRequest(f"cosignature by witness {late[0]!r} is dated in the future")
    digest = body_hash(text)
    rows = [
        CosignatureRow(cp.size, digest, w.vkey(), line, found[w.name], now)
        for line in note_text(note)[1]
        for w in witnesses
        if cosignature_lines(text + "\n" + line + "\n", [w])
    ]
    await metadata.audit.add_cosignatures(rows)
    return sorted(found)


async def _fresh_checkpoint(
    metadata: MetadataStore, key: Ed25519PrivateKey, origin: str, now: float
) -> tuple[int, str]:
    note = await cosigned_note(metadata)
    head = await metadata.audit.head()
    if note is not None:
        cp = peek_checkpoint(note)
        reuse = REUSE_COSIGNED if len(note_text(note)[1]) > 1 else REUSE_CHECKPOINT
        if cp.size == (0 if head is None else head.seq) and 0 <= now - cp.time <= reuse:
            return cp.size, note
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
    held = await metadata.audit.checkpoints_between(max(first - 1, 0), last)
    notes = await _cosigned(metadata, [n for n in held if peek_checkpoint(n).size != size])
    notes.append(newest)
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
            header,
            records(),
            notes,
            proofs=TileProofs(metadata, loop),
            consistency_from=consistency_from,
        )

    def take() -> list[str]:
        return list(itertools.islice(lines, LINES_PER_WRITE))

    while batch := await loop.run_in_executor(None, take):
        yield "".join(batch)


async def receipt(metadata: MetadataStore, file_id: str) -> str | None:
    """The deletion receipt of one file as a C2SP tlog-proof (record,
    inclusion proof from tiles, the covering checkpoint's note as served,
    with its witnesses' cosignatures),
    or None if its deletion is not yet under a checkpoint."""
    record = await metadata.audit.record_for_file(file_id)
    if record is None:
        return None
    covering = await metadata.audit.checkpoint_covering(record.seq)
    if covering is None:
        return None
    size = covering[0]
    note = await cosigned_note(metadata, size) or covering[1]
    proof = await tree_hashes(metadata, inclusion_ranges(record.seq - 1, size), size)
    # make_receipt checks the proof against the note's root before handing it out.
    return make_receipt(record, note, proof=proof)
