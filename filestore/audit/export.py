"""The JSONL export: records with the signed checkpoints inline.

Layout (one JSON object per line, ``type`` first, other keys sorted)::

    {"type":"export","format":"filestore-audit-export/1","first_seq":N,
     "prev_hash":"<hash of record N-1, or 64 zeros>",
     "frontier":["<hex>",...],"partial":false,"since":null,"until":null,
     "exported_at":"<RFC 3339>"}
    {"type":"record", ...every field of the record...}
    {"type":"checkpoint","note":"<signed note>"}        right after record <size>
    ...
    {"type":"checkpoint","note":"...","consistency":[...],"head_proof":[...]}

How a slice (an export that does not start at seq 1 or stops before the
newest checkpoint) is tied to the signed roots without the records outside
it:

* ``frontier`` is the Merkle frontier (:class:`~.frontier.Frontier`) of
  records ``1 .. N-2``; the verifier appends ``prev_hash`` as leaf ``N-1``
  and then each exported record, so it knows the root at every size from
  ``N-1`` on and checks each inline checkpoint exactly;
* a checkpoint whose size lies beyond the last exported record comes at the
  end with ``consistency``, an RFC 9162 consistency proof from the previous
  size the verifier knows (the last record, or the previous such checkpoint)
  to its size, and ``head_proof``, the inclusion proof of its chain head (the
  hash of record ``size``) as leaf ``size - 1``.

``consistency_from`` (``{"size": t, "proof": [...]}``), on the last
checkpoint line, proves that the tree of size ``t`` is a prefix of that
checkpoint's tree; an exporter adds it on request so an auditor's trusted
checkpoint of size ``t`` can be checked against a slice that starts after it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from filestore.audit._time import format_time, round_ms
from filestore.audit.checkpoint import Checkpoint, peek_checkpoint
from filestore.audit.frontier import Frontier
from filestore.audit.merkle import consistency_proof, inclusion_proof
from filestore.audit.records import GENESIS_HASH, AuditRecord

__all__ = [
    "EXPORT_FORMAT",
    "ExportHeader",
    "LeafProofs",
    "ProofSource",
    "export_lines",
    "json_line",
]

EXPORT_FORMAT = "filestore-audit-export/1"


class ProofSource(Protocol):
    """What an export needs of the tree beyond the records it carries: a
    handful of values, however many records the log holds (the service
    computes them from tiles; :class:`LeafProofs` from every leaf)."""

    def leaf(self, index: int) -> bytes:
        """The leaf input (raw record hash) of leaf ``index``."""

    def frontier(self, size: int) -> list[bytes]:
        """The frontier hashes of the tree of ``size`` leaves."""

    def consistency(self, old_size: int, size: int) -> list[bytes]:
        """RFC 6962 ``PROOF(old_size, D[size])``."""

    def inclusion(self, index: int, size: int) -> list[bytes]:
        """RFC 6962 ``PATH(index, D[size])``."""


class LeafProofs:
    """:class:`ProofSource` over the raw hashes of records ``1..n`` (O(n)
    per proof: for tests and small logs)."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self.leaves = leaves

    def _need(self, n: int) -> Sequence[bytes]:
        if len(self.leaves) < n:
            raise ValueError(f"the hashes of records 1..{n} are needed")
        return self.leaves[:n]

    def leaf(self, index: int) -> bytes:
        return self._need(index + 1)[index]

    def frontier(self, size: int) -> list[bytes]:
        return Frontier.of_leaves(self._need(size)).hashes

    def consistency(self, old_size: int, size: int) -> list[bytes]:
        return consistency_proof(old_size, self._need(size))

    def inclusion(self, index: int, size: int) -> list[bytes]:
        return inclusion_proof(index, self._need(size))


@dataclass(frozen=True)
class ExportHeader:
    """What the caller knows before the first record is written.

    ``first_seq`` is the seq of the first exported record (or, for an export
    with no records, the seq the next record would have). ``partial`` says
    the export deliberately leaves records out (a time window, a seq range,
    a page); it is forced True when ``since`` or ``until`` is set. A
    non-partial export must start at seq 1 and contain every record up to its
    newest checkpoint, and the verifier holds it to that.
    """

    first_seq: int
    exported_at: float
    since: float | None = None
    until: float | None = None
    partial: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.first_seq, bool) or not isinstance(self.first_seq, int):
            raise ValueError("first_seq must be an integer")
        if self.first_seq < 1:
            raise ValueError("first_seq must be >= 1")
        object.__setattr__(self, "exported_at", round_ms(self.exported_at))
        for name in ("since", "until"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, round_ms(getattr(self, name)))
        if self.since is not None or self.until is not None:
            object.__setattr__(self, "partial", True)
        if not self.partial and self.first_seq != 1:
            raise ValueError("an export that starts after seq 1 is partial")


def json_line(kind: str, fields: dict[str, Any]) -> str:
    """One export line: ``type`` first, the other keys sorted, no spaces."""
    body = {"type": kind, **{k: fields[k] for k in sorted(fields)}}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n"


def _time_or_none(ts: float | None) -> str | None:
    return None if ts is None else format_time(ts)


def export_lines(
    header: ExportHeader,
    records: Iterable[AuditRecord],
    checkpoints: Iterable[str],
    *,
    leaves: Sequence[bytes] | None = None,
    proofs: ProofSource | None = None,
    consistency_from: int | None = None,
) -> Iterator[str]:
    """Stream the export, one ``\\n``-terminated line at a time.

    ``records`` must be consecutive from ``header.first_seq``.
    ``checkpoints`` are signed notes in any order; each is written right after
    the record at its size (notes for sizes before ``first_seq - 1`` cannot be
    checked by this export and are left out; notes beyond the last record
    are written at the end with their proofs). Pass the newest checkpoint so
    the export is signed to its end; for each size one (the newest) note is
    enough.

    ``proofs`` gives the tree's values an export needs beyond its records;
    or ``leaves``, the raw hashes of records ``1..n`` for at least the
    largest checkpoint size (each record is then also checked against its
    leaf). One of them is needed when ``first_seq > 1``, when a checkpoint
    lies beyond the last record, and for ``consistency_from``; ValueError if
    neither is given then, if records are out of order, or if a record's
    hash differs from its leaf.
    """
    if leaves is not None and proofs is not None:
        raise ValueError("give at most one of leaves and proofs")
    source = LeafProofs(leaves) if leaves is not None else proofs
    first = header.first_seq
    start = first - 1
    cps = sorted(
        ((peek_checkpoint(n), n) for n in checkpoints), key=lambda c: (c[0].size, c[0].time)
    )
    cps = [c for c in cps if c[0].size >= start]
    if consistency_from is not None and cps and not 0 <= consistency_from <= cps[-1][0].size:
        raise ValueError("consistency_from is beyond the newest checkpoint")

    def need(n: int, why: str) -> ProofSource:
        if source is None or (leaves is not None and len(leaves) < n):
            raise ValueError(f"the hashes of records 1..{n} are needed {why}")
        return source

    if start == 0:
        prev_hash, frontier = GENESIS_HASH, []
    else:
        tree = need(start, "for an export that starts after seq 1")
        prev_hash = tree.leaf(start - 1).hex()
        frontier = [h.hex() for h in tree.frontier(start - 1)]
    yield json_line(
        "export",
        {
            "format": EXPORT_FORMAT,
            "since": _time_or_none(header.since),
            "until": _time_or_none(header.until),
            "first_seq": first,
            "prev_hash": prev_hash,
            "frontier": frontier,
            "partial": header.partial,
            "exported_at": format_time(header.exported_at),
        },
    )

    last_index = len(cps) - 1
    i = 0

    def extra(index: int, cp: Checkpoint) -> dict[str, Any]:
        if consistency_from is None or index != last_index:
            return {}
        tree = need(cp.size, "for consistency_from")
        proof = tree.consistency(consistency_from, cp.size)
        return {"consistency_from": {"size": consistency_from, "proof": [p.hex() for p in proof]}}

    pos = start
    while i < len(cps) and cps[i][0].size == pos:
        yield json_line("checkpoint", {"note": cps[i][1], **extra(i, cps[i][0])})
        i += 1
    for record in records:
        if record.seq != pos + 1:
            raise ValueError(f"record seq {record.seq} where seq {pos + 1} was expected")
        if (
            leaves is not None
            and len(leaves) >= record.seq
            and (leaves[record.seq - 1].hex() != record.hash)
        ):
            raise ValueError(f"record seq {record.seq} differs from its Merkle leaf")
        yield json_line("record", record.to_json())
        pos += 1
        while i < len(cps) and cps[i][0].size == pos:
            yield json_line("checkpoint", {"note": cps[i][1], **extra(i, cps[i][0])})
            i += 1
    if i < len(cps) and not header.partial:
        raise ValueError("a checkpoint lies beyond the last record of a non-partial export")
    known = pos
    while i < len(cps):
        cp, note = cps[i]
        tree = need(cp.size, "for a checkpoint beyond the last record")
        fields = {
            "note": note,
            "consistency": [p.hex() for p in tree.consistency(known, cp.size)],
            "head_proof": [p.hex() for p in tree.inclusion(cp.size - 1, cp.size)],
            **extra(i, cp),
        }
        yield json_line("checkpoint", fields)
        known = cp.size
        i += 1
