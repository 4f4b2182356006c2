"""Deletion receipts: verifiable offline, tamper-evident, and revealing
nothing of other tenants' records."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from filestore.audit import (
    AuditRecord,
    AuditVerificationError,
    checkpoint_of,
    make_json_receipt,
    new_record,
    sign_checkpoint,
    verify_receipt,
)
from filestore.audit.merkle import inclusion_proof

KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"receipt test key").digest())
PUB = KEY.public_key()
ORIGIN = "filestore.audit/receipts"
T0 = 1_800_000_000.0


def _file_id(i: int) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(b"%d" % i).digest()[:16]).rstrip(b"=").decode()


def _log(n: int) -> list[AuditRecord]:
    records: list[AuditRecord] = []
    prev = None
    for i in range(1, n + 1):
        prev = new_record(
            prev,
            event="file_deleted",
            recorded_at=T0 + i,
            file_id=_file_id(i),
            tenant=f"tenant-{i}",
            size=i,
            reason="client_request",
            backend="s3",
            method="crypto_erase+delete",
            verification={"key_erased": True, "blob_absent": True, "versions_removed": True},
            kek_id=1,
            actor="node-2",
            software_version="0.1.0",
        )
        records.append(prev)
    return records


RECORDS = _log(13)
LEAVES = [bytes.fromhex(r.hash) for r in RECORDS]
NOTE = sign_checkpoint(checkpoint_of(ORIGIN, LEAVES, T0 + 100), KEY, ORIGIN)


@pytest.mark.parametrize("seq", range(1, 14))
def test_every_record_gets_a_verifiable_receipt(seq: int) -> None:
    record = RECORDS[seq - 1]
    receipt = make_json_receipt(record, NOTE, leaves=LEAVES)
    # It survives a trip through JSON, as it travels to the tenant.
    again = json.loads(json.dumps(receipt))
    assert verify_receipt(again, PUB) == record
    assert verify_receipt(again, PUB, ORIGIN) == record
    assert make_json_receipt(record, NOTE, proof=inclusion_proof(seq - 1, LEAVES)) == receipt


def test_receipt_under_a_later_checkpoint() -> None:
    note = sign_checkpoint(checkpoint_of(ORIGIN, LEAVES[:5], T0 + 5), KEY, ORIGIN)
    receipt = make_json_receipt(RECORDS[4], note, leaves=LEAVES)  # extra leaves are ignored
    assert receipt["tree_size"] == 5
    assert verify_receipt(receipt, PUB) == RECORDS[4]
    with pytest.raises(ValueError, match="not under a checkpoint of size 5"):
        make_json_receipt(RECORDS[5], note, leaves=LEAVES)


def test_receipt_reveals_nothing_of_other_records() -> None:
    receipt = make_json_receipt(RECORDS[6], NOTE, leaves=LEAVES)
    text = json.dumps(receipt)
    for other in RECORDS:
        if other.seq == 7:
            continue
        assert other.file_id is not None and other.file_id not in text
        assert f'"{other.tenant}"' not in text
        # Besides subtree hashes, only two record hashes appear: seq 6's as
        # this record's prev_hash and seq 13's as the checkpoint's chain head.
        assert (other.hash in text) == (other.seq in (6, 13))
    assert set(receipt) == {"format", "record", "tree_size", "proof", "checkpoint"}
    assert all(len(p) == 64 for p in receipt["proof"])


def _tampered(receipt: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(receipt)
    target = out
    *parents, last = path.split(".")
    for p in parents:
        target = target[p]
    target[last] = value
    return out


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        ("record.size", 999, "record hash does not match"),
        ("record.tenant", "tenant-1", "record hash does not match"),
        ("proof", ["00" * 32], "inclusion proof"),
        ("proof", [], "inclusion proof"),
        ("tree_size", 12, "tree_size"),
        ("format", "other/1", "receipt"),
    ],
)
def test_tampered_receipts_fail(path: str, value: Any, fragment: str) -> None:
    receipt = make_json_receipt(RECORDS[2], NOTE, leaves=LEAVES)
    with pytest.raises(AuditVerificationError, match=fragment):
        verify_receipt(_tampered(receipt, path, value), PUB)


def test_receipt_for_another_record_with_this_proof_fails() -> None:
    receipt = make_json_receipt(RECORDS[2], NOTE, leaves=LEAVES)
    receipt["record"] = RECORDS[3].to_json()
    with pytest.raises(AuditVerificationError, match="inclusion proof"):
        verify_receipt(receipt, PUB)


def test_receipt_checkpoint_must_be_signed_by_the_key() -> None:
    receipt = make_json_receipt(RECORDS[2], NOTE, leaves=LEAVES)
    with pytest.raises(AuditVerificationError, match="no signature"):
        verify_receipt(receipt, Ed25519PrivateKey.generate().public_key())
    forged = sign_checkpoint(checkpoint_of(ORIGIN, LEAVES, T0 + 100), KEY, ORIGIN).replace(
        "\n13\n", "\n14\n"
    )
    with pytest.raises(AuditVerificationError, match="does not verify"):
        verify_receipt({**receipt, "checkpoint": forged}, PUB)
    with pytest.raises(AuditVerificationError, match="unexpected or missing keys"):
        verify_receipt({**receipt, "tenant_list": []}, PUB)


def test_receipt_is_not_made_against_a_checkpoint_of_another_history() -> None:
    other = [hashlib.sha256(x).digest() for x in LEAVES]
    note = sign_checkpoint(checkpoint_of(ORIGIN, other, T0), KEY, ORIGIN)
    with pytest.raises(AuditVerificationError):
        make_json_receipt(RECORDS[0], note, leaves=LEAVES)
    with pytest.raises(ValueError, match="exactly one"):
        make_json_receipt(RECORDS[0], NOTE)
