"""The verifier holds a correctly signed log to the promise it records: each
class of broken promise is found with its own message, sound logs pass, and
the command line tells a fault, a broken promise and an incomplete log apart
by exit code."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from filestore.audit import (
    AuditRecord,
    AuditVerificationError,
    ExportHeader,
    checkpoint_of,
    export_lines,
    make_json_receipt,
    new_record,
    sign_checkpoint,
    verify_export,
    verify_receipt,
)

KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"promise test key").digest())
PUB = KEY.public_key()
ORIGIN = "filestore.audit/promise-test"
T0 = 1_800_000_000.0
HOUR = 3600.0
#: Seconds between deletions (and their checkpoints).
STEP = 600.0


def fid(i: int) -> str:
    digest = hashlib.sha256(f"file-{i}".encode()).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def good(i: int) -> dict[str, Any]:
    """A deletion that keeps the promise: an hour's life, purged just after."""
    return {
        "event": "file_deleted",
        "recorded_at": T0 + STEP * i + 2,
        "file_id": fid(i),
        "tenant": "acme",
        "size": 100,
        "created_at": T0 + STEP * i - HOUR,
        "expires_at": T0 + STEP * i,
        "deleted_at": T0 + STEP * i + 1,
        "reason": "expired",
        "backend": "local",
        "method": "crypto_erase+delete",
        "verification": {"key_erased": True, "blob_absent": True},
        "kek_id": 1,
        "actor": "node-1",
        "software_version": "0.1.0",
    }


def build(fields: list[dict[str, Any]], *, cp_times: list[float] | None = None) -> list[str]:
    """A signed export of ``fields``: a checkpoint after each record (at the
    given times, or just after the record), then the full export's lines."""
    records: list[AuditRecord] = []
    notes: list[str] = []
    prev = None
    for n, f in enumerate(fields):
        prev = new_record(prev, **f)
        records.append(prev)
        leaves = [bytes.fromhex(r.hash) for r in records]
        when = cp_times[n] if cp_times else f["recorded_at"] + 1
        notes.append(sign_checkpoint(checkpoint_of(ORIGIN, leaves, when), KEY, ORIGIN))
    last = cp_times[-1] if cp_times else fields[-1]["recorded_at"] + 1
    header = ExportHeader(first_seq=1, exported_at=last, since=None, until=None)
    return list(export_lines(header, records, notes))


def now_for(fields: list[dict[str, Any]]) -> float:
    return max(f["recorded_at"] for f in fields) + 60


def violations(fields: list[dict[str, Any]]) -> list[str]:
    report = verify_export(build(fields), PUB, now=now_for(fields))
    return [v.reason for v in report.violations]


def test_a_log_that_keeps_the_promise_has_no_violations() -> None:
    fields = [good(i) for i in range(1, 6)]
    report = verify_export(build(fields), PUB, now=now_for(fields))
    assert report.complete and report.violations == () and report.violation_count == 0


def _with(i: int, **changes: Any) -> dict[str, Any]:
    return {**good(i), **changes}


BROKEN = {
    "deleted past 24 h": (
        _with(2, created_at=T0 - 29 * HOUR, expires_at=T0 - 6 * HOUR),
        "h after upload, past the 24-hour promise",
    ),
    "expiry set past 24 h": (
        _with(2, created_at=T0 - 2 * HOUR, expires_at=T0 + 25 * HOUR, deleted_at=T0 + 120),
        "expiry was set more than 24 h after upload",
    ),
    "expired before expiry": (
        _with(2, expires_at=T0 + 2 * HOUR),
        "reason 'expired' but deleted before its expiry",
    ),
    "blob not absent": (
        _with(2, verification={"key_erased": True, "blob_absent": False}),
        "verification blob_absent is false",
    ),
    "key not erased": (
        _with(2, verification={"key_erased": False, "blob_absent": True}),
        "verification key_erased is false",
    ),
    "expires before upload": (
        _with(2, expires_at=T0 - 2 * HOUR, reason="client_request"),
        "expires before it was uploaded",
    ),
    "deleted before upload": (
        _with(2, created_at=T0 + 2 * HOUR, expires_at=T0 + 3 * HOUR, reason="client_request"),
        "deleted before it was uploaded",
    ),
    "recorded before deletion": (
        _with(2, deleted_at=T0 + 60 * 2 + 3600),
        "recorded before the deletion it records",
    ),
    "missing times": (
        _with(2, created_at=None, expires_at=None),
        "without its upload, expiry or deletion time",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_broken_promise_is_found_with_its_own_message(case: str) -> None:
    record, message = BROKEN[case]
    found = violations([good(1), record, good(3)])
    assert len(found) >= 1 and any(message in v for v in found), found
    # Only the broken record is named.
    report = verify_export(build([good(1), record, good(3)]), PUB, now=T0 + 10 * STEP)
    assert {v.seq for v in report.violations} == {2}


def test_the_messages_are_distinct() -> None:
    messages = [message for _record, message in BROKEN.values()]
    assert len(set(messages)) == len(messages)


def test_a_second_record_for_one_file_is_found() -> None:
    again = _with(3, file_id=fid(1))
    report = verify_export(build([good(1), good(2), again]), PUB, now=T0 + 10 * STEP)
    assert [(v.seq, v.reason) for v in report.violations] == [
        (3, "a second deletion record for one file (the first is seq 1)")
    ]


def test_a_kek_destroyed_while_keys_remained_is_found() -> None:
    kek = {
        "event": "kek_destroyed",
        "recorded_at": T0 + 2 * STEP,
        "file_id": None,
        "tenant": None,
        "size": None,
        "created_at": T0 - 30 * HOUR,
        "expires_at": None,
        "deleted_at": T0 + 2 * STEP,
        "reason": "kek_epoch_end",
        "backend": "keyring",
        "method": "destroy",
        "verification": {"no_keys_remaining": False},
        "kek_id": 7,
        "actor": "node-1",
        "software_version": "0.1.0",
    }
    report = verify_export(build([good(1), kek]), PUB, now=T0 + 10 * STEP)
    assert [v.reason for v in report.violations] == ["verification no_keys_remaining is false"]
    kek["verification"] = {"no_keys_remaining": True}
    assert verify_export(build([good(1), kek]), PUB, now=T0 + 10 * STEP).violations == ()


def test_an_orphan_record_is_held_only_to_its_flags() -> None:
    orphan = _with(2, tenant=None, size=None, created_at=None, expires_at=None, reason="orphan")
    assert violations([good(1), orphan]) == []


def test_checkpoint_times_running_backwards_are_a_fault() -> None:
    fields = [good(i) for i in range(1, 4)]
    times = [T0 + STEP + 5, T0 + 2 * STEP + 5, T0 + 2 * STEP - 100]
    with pytest.raises(AuditVerificationError, match="checkpoint times run backwards"):
        verify_export(build(fields, cp_times=times), PUB, now=T0 + 10 * STEP)
    # Within the clock skew several signers may have: accepted.
    times = [T0 + STEP + 5, T0 + 2 * STEP + 5, T0 + 2 * STEP + 1]
    assert verify_export(build(fields, cp_times=times), PUB, now=T0 + 10 * STEP).complete


def test_a_receipt_is_bound_to_its_file_and_tenant() -> None:
    records: list[AuditRecord] = []
    prev = None
    for i in (1, 2):
        prev = new_record(prev, **good(i))
        records.append(prev)
    leaves = [bytes.fromhex(r.hash) for r in records]
    note = sign_checkpoint(checkpoint_of(ORIGIN, leaves, T0 + 3 * STEP), KEY, ORIGIN)
    receipt = make_json_receipt(records[0], note, leaves=leaves)
    assert verify_receipt(receipt, PUB, file_id=fid(1), tenant="acme").file_id == fid(1)
    with pytest.raises(AuditVerificationError, match="for another file"):
        verify_receipt(receipt, PUB, file_id=fid(2))
    with pytest.raises(AuditVerificationError, match="another tenant"):
        verify_receipt(receipt, PUB, file_id=fid(1), tenant="globex")


# ------------------------------------------------------------ command line
def _cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "filestore", "audit", *args],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key.pem"
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    path.write_bytes(PUB.public_bytes(serialization.Encoding.PEM, spki))
    return path


def test_exit_codes_tell_faults_promises_and_incomplete_logs_apart(
    tmp_path: Path, key_file: Path
) -> None:
    fields = [good(i) for i in range(1, 5)]
    now = str(now_for(fields))
    lines = build(fields)

    def run(name: str, text: list[str], *extra: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / name
        path.write_text("".join(text))
        key = ["--public-key", str(key_file), "--now", now]
        return _cli(tmp_path, "verify", str(path), *key, *extra)

    ok = run("ok.jsonl", lines)
    assert ok.returncode == 0, ok.stderr
    assert "complete from seq 1 to the newest checkpoint (size 4)" in ok.stdout

    # A cut tail relabelled as a partial export: sound, but it proves less.
    header = json.loads(lines[0])
    header["partial"] = True
    cut = [json.dumps(header, separators=(",", ":")) + "\n", *lines[1:5]]
    incomplete = run("cut.jsonl", cut)
    assert incomplete.returncode == 3, incomplete.stderr
    assert "INCOMPLETE" in incomplete.stderr
    assert run("cut.jsonl", cut, "--allow-partial").returncode == 0
    # The same cut left marked complete: its newest checkpoint predates the export.
    cut[0] = lines[0]
    hidden = run("hidden-cut.jsonl", cut)
    assert hidden.returncode == 1 and "were cut off" in hidden.stderr

    late = [good(1), _with(2, created_at=T0 - 29 * HOUR, expires_at=T0 - 6 * HOUR), good(3)]
    broken = run("late.jsonl", build(late))
    assert broken.returncode == 4, broken.stderr
    assert "PROMISE BROKEN: line" in broken.stderr and "seq 2" in broken.stderr

    tampered = [*lines]
    target = next(i for i, line in enumerate(lines) if '"seq":2' in line)
    tampered[target] = tampered[target].replace('"size":100', '"size":101')
    assert tampered[target] != lines[target]
    fault = run("tampered.jsonl", tampered)
    assert fault.returncode == 1 and "FAILED" in fault.stderr


def test_verify_receipt_binds_the_file_on_the_command_line(tmp_path: Path, key_file: Path) -> None:
    record = new_record(None, **good(1))
    note = sign_checkpoint(
        checkpoint_of(ORIGIN, [bytes.fromhex(record.hash)], T0 + 3 * STEP), KEY, ORIGIN
    )
    path = tmp_path / "receipt.json"
    path.write_text(
        json.dumps(make_json_receipt(record, note, leaves=[bytes.fromhex(record.hash)]))
    )
    base = ["verify-receipt", str(path), "--public-key", str(key_file)]
    assert _cli(tmp_path, *base, "--file-id", fid(1), "--tenant", "acme").returncode == 0
    other = _cli(tmp_path, *base, "--file-id", fid(2))
    assert other.returncode == 1 and "for another file" in other.stderr
