"""Receipts as C2SP tlog-proofs: the layout the spec gives, checkable by an
independent tlog verifier (tlog-scales), strict about every line, bound to
its record and file, and old JSON receipts still accepted."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tlog_scales.tlog import InclusionProof, InclusionProofInvalid

from filestore.audit import (
    PROOF_HEADER,
    AuditRecord,
    AuditVerificationError,
    checkpoint_of,
    encode_record,
    make_json_receipt,
    make_receipt,
    new_record,
    peek_checkpoint,
    sign_checkpoint,
    verify_receipt,
)
from filestore.audit.merkle import inclusion_proof
from filestore.audit.note import signature_line

KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"tlog-proof test key").digest())
PUB = KEY.public_key()
ORIGIN = "filestore.audit/tlog-proof"
T0 = 1_800_000_000.0


def _fid(i: int) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(b"%d" % i).digest()[:16]).rstrip(b"=").decode()


def _log(n: int) -> list[AuditRecord]:
    out: list[AuditRecord] = []
    prev = None
    for i in range(1, n + 1):
        prev = new_record(
            prev,
            event="file_deleted",
            recorded_at=T0 + 3600 + i,
            file_id=_fid(i),
            tenant=f"tenant-{i % 3}",
            size=i,
            created_at=T0,
            expires_at=T0 + 3600,
            deleted_at=T0 + 3600 + i,
            reason="expired",
            backend="local",
            method="crypto_erase+delete",
            verification={"key_erased": True, "blob_absent": True},
            kek_id=1,
            actor="node-1",
            software_version="0.1.0",
        )
        out.append(prev)
    return out


RECORDS = _log(21)
LEAVES = [bytes.fromhex(r.hash) for r in RECORDS]
NOTE = sign_checkpoint(checkpoint_of(ORIGIN, LEAVES, T0 + 9000), KEY, ORIGIN)


@pytest.mark.parametrize("seq", [1, 2, 8, 13, 21])
def test_layout_and_an_independent_verifier(seq: int) -> None:
    record = RECORDS[seq - 1]
    text = make_receipt(record, NOTE, leaves=LEAVES)
    lines = text.split("\n")
    assert lines[0] == PROOF_HEADER
    assert lines[1] == "extra " + base64.b64encode(encode_record(record).encode()).decode()
    assert lines[2] == f"index {seq - 1}"
    proof = [base64.b64decode(x) for x in lines[3 : lines.index("")]]
    assert proof == inclusion_proof(seq - 1, LEAVES)
    assert text.endswith("\n\n" + NOTE)
    assert verify_receipt(text, PUB) == record
    assert verify_receipt(text.encode(), PUB, ORIGIN, file_id=record.file_id) == record
    # What any tlog-proof verifier does: leaf hash from the extra data's
    # record hash, the proof against the checkpoint's root.
    carried = json.loads(base64.b64decode(lines[1][len("extra ") :]))
    leaf = hashlib.sha256(b"\x00" + bytes.fromhex(carried["hash"])).digest()
    cp = peek_checkpoint(text[text.index("\n\n") + 2 :])
    InclusionProof(seq - 1, cp.size, proof).check(leaf, cp.root)
    with pytest.raises(InclusionProofInvalid):
        InclusionProof(seq % 21, cp.size, proof).check(leaf, cp.root)


def test_a_cosigned_note_is_carried_verbatim() -> None:
    witness = Ed25519PrivateKey.generate()
    body = NOTE[: NOTE.index("\n\n") + 1]
    cosigned = NOTE + signature_line(body, witness, "witness.example")
    text = make_receipt(RECORDS[4], cosigned, leaves=LEAVES)
    assert text.endswith("\n\n" + cosigned)
    assert verify_receipt(text, PUB) == RECORDS[4]


def _swap(text: str, index: int, line: str) -> str:
    lines = text.split("\n")
    lines[index] = line
    return "\n".join(lines)


def _other_record_extra() -> str:
    return "extra " + base64.b64encode(encode_record(RECORDS[6]).encode()).decode()


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda t: "c2sp.org/tlog-proof@v2" + t[len(PROOF_HEADER) :], "tlog-proof nor"),
        (lambda t: _swap(t, 1, "extra !!"), "not base64"),
        (lambda t: _swap(t, 1, "extro x"), "no extra line"),
        (lambda t: _swap(t, 2, "index 05"), "no index line"),
        (lambda t: _swap(t, 2, "index 6"), "not its record's leaf"),
        (lambda t: _swap(t, 1, _other_record_extra()), "not its record's leaf"),
        (lambda t: _swap(t, 3, base64.b64encode(b"\x00" * 32).decode()), "does not lead"),
        (lambda t: _swap(t, 3, "AAAA"), "32-byte hash"),
        (lambda t: t.replace("\n\n", "\n", 1), "32-byte hash"),
        (lambda t: t[: t.index("\n\n")], "no checkpoint"),
        (lambda t: t.replace(f"\n{len(RECORDS)}\n", f"\n{len(RECORDS) - 1}\n", 1), "signature"),
    ],
)
def test_tampering_is_refused(tamper: object, message: str) -> None:
    text = make_receipt(RECORDS[4], NOTE, leaves=LEAVES)
    assert callable(tamper)
    with pytest.raises(AuditVerificationError, match=message):
        verify_receipt(tamper(text), PUB)


def test_a_record_whose_json_is_not_canonical_is_refused() -> None:
    text = make_receipt(RECORDS[4], NOTE, leaves=LEAVES)
    loose = json.dumps(RECORDS[4].to_json(), indent=1).encode()
    with pytest.raises(AuditVerificationError, match="canonical JSON"):
        verify_receipt(_swap(text, 1, "extra " + base64.b64encode(loose).decode()), PUB)


def test_binding_to_file_and_tenant() -> None:
    record = RECORDS[4]
    text = make_receipt(record, NOTE, leaves=LEAVES)
    assert verify_receipt(text, PUB, file_id=record.file_id, tenant=record.tenant) == record
    with pytest.raises(AuditVerificationError, match="another file"):
        verify_receipt(text, PUB, file_id=RECORDS[5].file_id)
    with pytest.raises(AuditVerificationError, match="another tenant"):
        verify_receipt(text, PUB, file_id=record.file_id, tenant="someone-else")
    with pytest.raises(AuditVerificationError):
        verify_receipt(text, Ed25519PrivateKey.generate().public_key())


def test_old_json_receipts_are_still_accepted() -> None:
    old = make_json_receipt(RECORDS[2], NOTE, leaves=LEAVES)
    assert verify_receipt(json.dumps(old), PUB, file_id=RECORDS[2].file_id) == RECORDS[2]
    assert verify_receipt(old, PUB) == RECORDS[2]
    # The same proof either way.
    new = make_receipt(RECORDS[2], NOTE, proof=[bytes.fromhex(p) for p in old["proof"]])
    assert new == make_receipt(RECORDS[2], NOTE, leaves=LEAVES)


def test_the_command_line_reads_both_formats(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    key.write_bytes(PUB.public_bytes(serialization.Encoding.PEM, spki))
    record = RECORDS[7]
    files = {
        "r.tlog-proof": make_receipt(record, NOTE, leaves=LEAVES),
        "r.json": json.dumps(make_json_receipt(record, NOTE, leaves=LEAVES)),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)

        def run(*extra: str, name: str = name) -> subprocess.CompletedProcess[str]:
            argv = [sys.executable, "-m", "filestore", "audit", "verify-receipt", name]
            return subprocess.run(
                [*argv, "--public-key", str(key), *extra],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )

        ok = run("--file-id", str(record.file_id), "--tenant", str(record.tenant))
        assert ok.returncode == 0, ok.stderr
        assert f"record seq {record.seq} is in the signed log" in ok.stdout
        wrong = run("--file-id", str(RECORDS[0].file_id))
        assert wrong.returncode == 1 and "for another file" in wrong.stderr
    (tmp_path / "bad.tlog-proof").write_text(files["r.tlog-proof"].replace("index 7", "index 8"))
    bad = run("--file-id", str(record.file_id), name="bad.tlog-proof")
    assert bad.returncode == 1 and "FAILED" in bad.stderr
