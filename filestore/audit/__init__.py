"""The deletion audit log: records, Merkle tree, signed checkpoints, exports.

A pure library — standard library and ``cryptography`` only, no I/O beyond
what a caller hands in. The metadata store keeps the records and checkpoint
notes; the API and CLI call what is re-exported here. The formats are in
``docs/audit-log.md``.

* :mod:`.records` — :class:`AuditRecord`, canonical JSON, the hash chain;
* :mod:`.merkle` — RFC 6962/9162 roots, inclusion and consistency proofs;
* :mod:`.frontier` — the tree's root at every size, streaming;
* :mod:`.keys`, :mod:`.note`, :mod:`.checkpoint` — C2SP vkeys, signed
  notes, tlog-style checkpoints;
* :mod:`.cosignature`, :mod:`.witness` — witness cosignatures (C2SP
  tlog-cosignature) and a witness's add-checkpoint decisions;
* :mod:`.export`, :mod:`.csv_export` — JSONL (verifiable) and CSV exports;
* :mod:`.verify` — offline verification of a JSONL export;
* :mod:`.tiles` — the tree as C2SP tlog-tiles, proofs from O(log n) tiles;
* :mod:`.receipts` — per-file deletion receipts (C2SP tlog-proof).

Every failed check raises :class:`AuditVerificationError` (a
:class:`~filestore.errors.FilestoreError`); verification never returns a bool.
"""

from __future__ import annotations

from filestore.audit.checkpoint import (
    Checkpoint,
    checkpoint_of,
    parse_and_verify,
    peek_checkpoint,
    sign_checkpoint,
)
from filestore.audit.csv_export import CSV_COLUMNS, export_csv
from filestore.audit.errors import AuditVerificationError
from filestore.audit.export import EXPORT_FORMAT, ExportHeader, export_lines
from filestore.audit.frontier import Frontier
from filestore.audit.keys import (
    key_id,
    load_public_key,
    load_verifier,
    parse_verifier_key,
    verifier_key_string,
)
from filestore.audit.receipts import (
    PROOF_HEADER,
    RECEIPT_FORMAT,
    RECEIPT_MEDIA_TYPE,
    make_json_receipt,
    make_receipt,
    peek_receipt,
    receipt_note,
    verify_receipt,
)
from filestore.audit.records import (
    GENESIS_HASH,
    AuditRecord,
    canonical_json,
    decode_record,
    encode_record,
    new_record,
)
from filestore.audit.verify import VerifyReport, verify_export

__all__ = [
    "CSV_COLUMNS",
    "EXPORT_FORMAT",
    "GENESIS_HASH",
    "PROOF_HEADER",
    "RECEIPT_FORMAT",
    "RECEIPT_MEDIA_TYPE",
    "AuditRecord",
    "AuditVerificationError",
    "Checkpoint",
    "ExportHeader",
    "Frontier",
    "VerifyReport",
    "canonical_json",
    "checkpoint_of",
    "decode_record",
    "encode_record",
    "export_csv",
    "export_lines",
    "key_id",
    "load_public_key",
    "load_verifier",
    "make_json_receipt",
    "make_receipt",
    "new_record",
    "parse_and_verify",
    "parse_verifier_key",
    "peek_checkpoint",
    "peek_receipt",
    "receipt_note",
    "sign_checkpoint",
    "verifier_key_string",
    "verify_export",
    "verify_receipt",
]
