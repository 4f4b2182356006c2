"""Deletion receipts: one record, its inclusion proof and a signed checkpoint.

A receipt lets the owning tenant prove, offline and to anyone holding the
log's public key, that the deletion of their file is in the signed log::

    {"format": "filestore-audit-receipt/1",
     "record": {...every field of the record...},
     "tree_size": n,
     "proof": ["<hex>", ...],          RFC 6962 audit path of leaf seq-1
     "checkpoint": "<signed note of size n>"}

It reveals nothing of other records beyond hashes: the proof holds only
sibling subtree hashes, the checkpoint only the root and the chain head (the
hash of record ``n``). Record hashes cover a random 128-bit file id, so they
cannot be guessed back to their contents.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from filestore.audit.checkpoint import parse_and_verify, peek_checkpoint
from filestore.audit.errors import AuditVerificationError
from filestore.audit.merkle import inclusion_proof, verify_inclusion
from filestore.audit.records import AuditRecord

__all__ = ["RECEIPT_FORMAT", "make_receipt", "verify_receipt"]

RECEIPT_FORMAT = "filestore-audit-receipt/1"
_KEYS = frozenset({"format", "record", "tree_size", "proof", "checkpoint"})


def make_receipt(
    record: AuditRecord,
    checkpoint_note: str,
    *,
    leaves: Sequence[bytes] | None = None,
    proof: Sequence[bytes] | None = None,
) -> dict[str, Any]:
    """The receipt for ``record`` under the checkpoint in ``checkpoint_note``.

    Give exactly one of ``leaves`` (the raw hashes of records ``1..n``, at
    least up to the checkpoint's size; the proof is computed, O(n)) or a
    ready ``proof``. ValueError if the record is not under the checkpoint;
    AuditVerificationError if the proof does not lead to the checkpoint's
    root (the log and the checkpoint disagree — never hand such a receipt out).
    """
    cp = peek_checkpoint(checkpoint_note)
    if not 1 <= record.seq <= cp.size:
        raise ValueError(f"record seq {record.seq} is not under a checkpoint of size {cp.size}")
    if leaves is not None and proof is None:
        if len(leaves) < cp.size:
            raise ValueError(f"the hashes of records 1..{cp.size} are needed")
        path = inclusion_proof(record.seq - 1, leaves[: cp.size])
    elif proof is not None and leaves is None:
        path = list(proof)
    else:
        raise ValueError("give exactly one of leaves and proof")
    verify_inclusion(bytes.fromhex(record.hash), record.seq - 1, cp.size, path, cp.root)
    return {
        "format": RECEIPT_FORMAT,
        "record": record.to_json(),
        "tree_size": cp.size,
        "proof": [p.hex() for p in path],
        "checkpoint": checkpoint_note,
    }


def verify_receipt(
    receipt: Mapping[str, Any],
    public_key: Ed25519PublicKey,
    key_name: str | None = None,
    *,
    file_id: str | None = None,
    tenant: str | None = None,
) -> AuditRecord:
    """The receipt's record, after checking the record's hash, the signature
    on the checkpoint and the inclusion proof, and — when given — that it is
    the deletion of ``file_id`` (of ``tenant``): a valid receipt for another
    file proves nothing about this one. Raises AuditVerificationError on any
    failure or an unexpected or missing key."""
    if not isinstance(receipt, Mapping) or set(receipt) != _KEYS:
        raise AuditVerificationError("not a deletion receipt (unexpected or missing keys)")
    if receipt["format"] != RECEIPT_FORMAT:
        raise AuditVerificationError(f"not a {RECEIPT_FORMAT} receipt")
    record = AuditRecord.from_json(receipt["record"])
    note = receipt["checkpoint"]
    if not isinstance(note, str):
        raise AuditVerificationError("the receipt's checkpoint is not a note")
    cp = parse_and_verify(note, public_key, key_name)
    if receipt["tree_size"] != cp.size or isinstance(receipt["tree_size"], bool):
        raise AuditVerificationError("the receipt's tree_size is not its checkpoint's size")
    raw = receipt["proof"]
    if not isinstance(raw, list) or not all(isinstance(p, str) and len(p) == 64 for p in raw):
        raise AuditVerificationError("the receipt's proof is not a list of hex hashes")
    try:
        proof = [bytes.fromhex(p) for p in raw]
    except ValueError:
        raise AuditVerificationError("the receipt's proof is not a list of hex hashes") from None
    if record.seq > cp.size:
        raise AuditVerificationError("the record is not under the receipt's checkpoint")
    if record.seq == cp.size and record.hash != cp.chain_head:
        raise AuditVerificationError("the checkpoint's chain head is not the record")
    verify_inclusion(bytes.fromhex(record.hash), record.seq - 1, cp.size, proof, cp.root)
    if file_id is not None and (record.event != "file_deleted" or record.file_id != file_id):
        raise AuditVerificationError("the receipt is valid but for another file")
    if tenant is not None and record.tenant != tenant:
        raise AuditVerificationError("the receipt is valid but for another tenant's file")
    return record
