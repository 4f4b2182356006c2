"""Deletion receipts: one record, its inclusion proof and a signed checkpoint.

A receipt lets the owning tenant prove, offline and to anyone holding the
log's public key, that the deletion of their file is in the signed log. It is
a C2SP tlog-proof, so any tlog-proof verifier can check the inclusion::

    c2sp.org/tlog-proof@v1
    extra <base64 of the record's canonical JSON, hash included>
    index <seq - 1>
    <base64 hash>                  RFC 6962 audit path, leaf's sibling first
    ...
                                   (an empty line)
    <the checkpoint note, verbatim, as stored and served>

The leaf is the 32 raw bytes of the record's ``hash`` (the log's leaf
input), so a generic verifier computes the leaf hash as
``SHA-256(0x00 ‖ bytes.fromhex(record["hash"]))`` from the extra data;
:func:`verify_receipt` also checks that the record hashes to that ``hash``
and names the leaf's index.

Receipts made before tlog-proof were JSON (``filestore-audit-receipt/1``:
record, tree size, hex proof, checkpoint note); :func:`verify_receipt` still
accepts those, with the same checks.

A receipt reveals nothing of other records beyond hashes: the proof holds
only sibling subtree hashes, the checkpoint only the root and the chain head
(the hash of record ``n``). Record hashes cover a random 128-bit file id, so
they cannot be guessed back to their contents.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from filestore.audit.checkpoint import parse_and_verify, peek_checkpoint
from filestore.audit.errors import AuditVerificationError
from filestore.audit.merkle import inclusion_proof, verify_inclusion
from filestore.audit.records import AuditRecord, decode_record, encode_record

__all__ = [
    "PROOF_HEADER",
    "RECEIPT_FORMAT",
    "RECEIPT_MEDIA_TYPE",
    "make_json_receipt",
    "make_receipt",
    "peek_receipt",
    "receipt_note",
    "verify_receipt",
]

#: The first line of a C2SP tlog-proof.
PROOF_HEADER = "c2sp.org/tlog-proof@v1"
#: How the gateway serves a receipt (tlog-proof is a text format).
RECEIPT_MEDIA_TYPE = "text/plain"
#: The JSON receipts served before tlog-proof; still verified.
RECEIPT_FORMAT = "filestore-audit-receipt/1"
_KEYS = frozenset({"format", "record", "tree_size", "proof", "checkpoint"})
_INDEX = re.compile(r"^index (0|[1-9][0-9]{0,18})$")
#: A proof in a tree of fewer than 2^64 leaves has at most 64 hashes.
_MAX_PROOF = 64


def _checked_path(
    record: AuditRecord,
    checkpoint_note: str,
    leaves: Sequence[bytes] | None,
    proof: Sequence[bytes] | None,
) -> tuple[int, list[bytes]]:
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
    return cp.size, path


def make_receipt(
    record: AuditRecord,
    checkpoint_note: str,
    *,
    leaves: Sequence[bytes] | None = None,
    proof: Sequence[bytes] | None = None,
) -> str:
    """The tlog-proof receipt for ``record`` under the checkpoint in
    ``checkpoint_note`` (embedded verbatim, with whatever cosignatures it
    carries).

    Give exactly one of ``leaves`` (the raw hashes of records ``1..n``, at
    least up to the checkpoint's size; the proof is computed, O(n)) or a
    ready ``proof``. ValueError if the record is not under the checkpoint;
    AuditVerificationError if the proof does not lead to the checkpoint's
    root (the log and the checkpoint disagree — never hand such a receipt out).
    """
    _, path = _checked_path(record, checkpoint_note, leaves, proof)
    extra = base64.b64encode(encode_record(record).encode("utf-8")).decode("ascii")
    lines = [PROOF_HEADER, f"extra {extra}", f"index {record.seq - 1}"]
    lines += [base64.b64encode(p).decode("ascii") for p in path]
    return "\n".join(lines) + "\n\n" + checkpoint_note


def make_json_receipt(
    record: AuditRecord,
    checkpoint_note: str,
    *,
    leaves: Sequence[bytes] | None = None,
    proof: Sequence[bytes] | None = None,
) -> dict[str, Any]:
    """The same receipt in the JSON format served before tlog-proof
    (``filestore-audit-receipt/1``), for tests and tools that still hold
    such receipts; the gateway no longer serves it."""
    size, path = _checked_path(record, checkpoint_note, leaves, proof)
    return {
        "format": RECEIPT_FORMAT,
        "record": record.to_json(),
        "tree_size": size,
        "proof": [p.hex() for p in path],
        "checkpoint": checkpoint_note,
    }


def _b64_hash(line: str) -> bytes:
    try:
        raw = base64.b64decode(line, validate=True)
    except (ValueError, binascii.Error):
        raw = b""
    if len(raw) != 32 or base64.b64encode(raw).decode("ascii") != line:
        raise AuditVerificationError("a receipt's proof line is not a 32-byte hash in base64")
    return raw


def _parse_proof(text: str) -> tuple[AuditRecord, int, list[bytes], str]:
    """(record, index, proof, note) of a tlog-proof receipt, strictly."""
    lines = text.split("\n")
    if lines[0] != PROOF_HEADER:
        raise AuditVerificationError(f"not a tlog-proof (the first line is not {PROOF_HEADER})")
    at = 1
    if len(lines) < 3 or not lines[at].startswith("extra "):
        raise AuditVerificationError("the receipt has no extra line carrying its record")
    raw = lines[at][len("extra ") :]
    try:
        extra = base64.b64decode(raw, validate=True)
    except (ValueError, binascii.Error):
        raise AuditVerificationError("the receipt's extra data is not base64") from None
    if base64.b64encode(extra).decode("ascii") != raw:
        raise AuditVerificationError("the receipt's extra data is not canonical base64")
    record = decode_record(extra)
    if encode_record(record).encode("utf-8") != extra:
        raise AuditVerificationError("the receipt's record is not in canonical JSON")
    at += 1
    found = _INDEX.match(lines[at])
    if found is None:
        raise AuditVerificationError("the receipt has no index line (decimal, no leading zeros)")
    index = int(found.group(1))
    at += 1
    proof: list[bytes] = []
    while at < len(lines) and lines[at] != "":
        if len(proof) == _MAX_PROOF:
            raise AuditVerificationError("the receipt's proof is too long")
        proof.append(_b64_hash(lines[at]))
        at += 1
    if at >= len(lines):
        raise AuditVerificationError("the receipt has no checkpoint after its proof")
    return record, index, proof, "\n".join(lines[at + 1 :])


def _parse_json(receipt: Mapping[str, Any]) -> tuple[AuditRecord, int, list[bytes], str, int]:
    if set(receipt) != _KEYS:
        raise AuditVerificationError("not a deletion receipt (unexpected or missing keys)")
    if receipt["format"] != RECEIPT_FORMAT:
        raise AuditVerificationError(f"not a {RECEIPT_FORMAT} receipt")
    record = AuditRecord.from_json(receipt["record"])
    note = receipt["checkpoint"]
    if not isinstance(note, str):
        raise AuditVerificationError("the receipt's checkpoint is not a note")
    size = receipt["tree_size"]
    if isinstance(size, bool) or not isinstance(size, int):
        raise AuditVerificationError("the receipt's tree_size is not its checkpoint's size")
    raw = receipt["proof"]
    if not isinstance(raw, list) or not all(isinstance(p, str) and len(p) == 64 for p in raw):
        raise AuditVerificationError("the receipt's proof is not a list of hex hashes")
    try:
        proof = [bytes.fromhex(p) for p in raw]
    except ValueError:
        raise AuditVerificationError("the receipt's proof is not a list of hex hashes") from None
    return record, record.seq - 1, proof, note, size


def _parse(
    receipt: str | bytes | Mapping[str, Any],
) -> tuple[AuditRecord, int, list[bytes], str, int | None]:
    """(record, index, proof, note, tree size if the receipt states one)."""
    if isinstance(receipt, bytes):
        try:
            receipt = receipt.decode("utf-8")
        except UnicodeDecodeError:
            raise AuditVerificationError("a receipt is UTF-8 text") from None
    if isinstance(receipt, str) and not receipt.startswith(PROOF_HEADER + "\n"):
        try:
            receipt = json.loads(receipt)
        except ValueError:
            raise AuditVerificationError("not a tlog-proof nor a JSON receipt") from None
    if isinstance(receipt, str):
        return (*_parse_proof(receipt), None)
    if isinstance(receipt, Mapping):
        return _parse_json(receipt)
    raise AuditVerificationError("not a deletion receipt")


def peek_receipt(receipt: str | bytes | Mapping[str, Any]) -> tuple[AuditRecord, int]:
    """The record (its hash checked) and the checkpoint's tree size of a
    receipt, **without checking its signature or proof**: for showing a
    receipt, never for trusting it. AuditVerificationError if malformed."""
    record, index, _proof, note, _size = _parse(receipt)
    if index != record.seq - 1:
        raise AuditVerificationError("the receipt's index is not its record's leaf")
    return record, peek_checkpoint(note).size


def receipt_note(receipt: str | bytes | Mapping[str, Any]) -> str:
    """The checkpoint note a receipt carries, as embedded (with any
    cosignature lines), **unchecked**: for checking witnesses' cosignatures
    on it after :func:`verify_receipt`. AuditVerificationError if malformed."""
    return _parse(receipt)[3]


def verify_receipt(
    receipt: str | bytes | Mapping[str, Any],
    public_key: Ed25519PublicKey,
    key_name: str | None = None,
    *,
    file_id: str | None = None,
    tenant: str | None = None,
) -> AuditRecord:
    """The receipt's record, after checking the record's hash, that the
    receipt's leaf is that record (index ``seq - 1``, leaf input its
    ``hash``), the signature on the checkpoint and the inclusion proof, and
    — when given — that it is the deletion of ``file_id`` (of ``tenant``): a
    valid receipt for another file proves nothing about this one.

    ``receipt`` is a tlog-proof (text or bytes) or an old JSON receipt (its
    text, or the parsed object). Raises AuditVerificationError on any
    failure or malformed receipt."""
    record, index, proof, note, tree_size = _parse(receipt)
    if index != record.seq - 1:
        raise AuditVerificationError(
            f"the receipt's index {index} is not its record's leaf (seq {record.seq})"
        )
    cp = parse_and_verify(note, public_key, key_name)
    if tree_size is not None and tree_size != cp.size:
        raise AuditVerificationError("the receipt's tree_size is not its checkpoint's size")
    if record.seq > cp.size:
        raise AuditVerificationError("the record is not under the receipt's checkpoint")
    if record.seq == cp.size and record.hash != cp.chain_head:
        raise AuditVerificationError("the checkpoint's chain head is not the record")
    verify_inclusion(bytes.fromhex(record.hash), index, cp.size, proof, cp.root)
    if file_id is not None and (record.event != "file_deleted" or record.file_id != file_id):
        raise AuditVerificationError("the receipt is valid but for another file")
    if tenant is not None and record.tenant != tenant:
        raise AuditVerificationError("the receipt is valid but for another tenant's file")
    return record
