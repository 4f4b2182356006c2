"""The verifier's witness checks: the tamper cases each with its own message."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from filestore.audit import peek_checkpoint
from filestore.audit.cosignature import Witness, cosign
from filestore.audit.export import json_line
from tests.unit.test_audit_verify import LOG, NOW, export, fails, verify

W1 = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"verify witness 1").digest())
W2 = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"verify witness 2").digest())
WITNESSES = [Witness("w.example/1", W1.public_key()), Witness("w.example/2", W2.public_key())]
NEWEST = len(LOG.records)


def cosign_line(lines: list[str], size: int, key: Ed25519PrivateKey, name: str, when: int) -> None:
    """Append a cosignature to the checkpoint line of ``size`` in place."""
    for i, line in enumerate(lines):
        data = json.loads(line)
        if data["type"] == "checkpoint" and peek_checkpoint(data["note"]).size == size:
            note = data.pop("note")
            text = note[: note.index("\n\n") + 1]
            data["note"] = note + cosign(text, key, name, when)
            del data["type"]
            lines[i] = json_line("checkpoint", data)
            return
    raise AssertionError(f"no checkpoint of size {size}")


def witnessed(
    *, keys: tuple[int, ...] = (0, 1), size: int = NEWEST, when: int | None = None
) -> list[str]:
    lines = export()
    cp_time = int(peek_checkpoint(LOG.note_at(size)).time)
    for k in keys:
        cosign_line(lines, size, (W1, W2)[k], WITNESSES[k].name, when or cp_time + 5)
    return lines


def test_quorum_of_two_on_the_newest_checkpoint_verifies() -> None:
    report = verify(witnessed(), witnesses=WITNESSES, min_witnesses=2)
    assert report.witnessed_by == ("w.example/1", "w.example/2")
    assert report.complete


def test_a_missing_cosignature_breaks_the_quorum() -> None:
    lines = witnessed(keys=(0,))
    assert verify(lines, witnesses=WITNESSES, min_witnesses=1).witnessed_by == ("w.example/1",)
    fails(
        lines,
        "witness quorum not met",
        "carries 1 valid cosignature(s)",
        "2 required",
        witnesses=WITNESSES,
        min_witnesses=2,
    )


def test_cosignatures_on_an_older_checkpoint_only_do_not_count() -> None:
    fails(
        witnessed(size=28),
        "witness quorum not met",
        f"size {NEWEST}",
        witnesses=WITNESSES,
        min_witnesses=1,
    )


def flip(lines: list[str], name: str) -> int:
    """Corrupt ``name``'s cosignature (its last signature byte); return its line."""
    i = next(i for i, x in enumerate(lines) if name in x)
    data = json.loads(lines[i])
    sig_line = next(s for s in data["note"].split("\n") if name in s)
    blob = bytearray(base64.b64decode(sig_line.split(" ")[2]))
    blob[-1] ^= 1
    data["note"] = data["note"].replace(
        sig_line, f"\u2014 {name} {base64.b64encode(bytes(blob)).decode()}"
    )
    del data["type"]
    lines[i] = json_line("checkpoint", data)
    return i + 1


def test_a_flipped_cosignature_is_named() -> None:
    lines = witnessed()
    number = flip(lines, "w.example/1")
    message = fails(
        lines,
        "cosignature by witness 'w.example/1' does not verify",
        witnesses=WITNESSES,
        min_witnesses=1,
    )
    assert message.startswith(f"line {number}")


def test_a_bad_cosignature_on_an_older_checkpoint_is_a_fault_too() -> None:
    lines = witnessed(size=14, keys=(1,))
    flip(lines, "w.example/2")
    fails(lines, "'w.example/2' does not verify", witnesses=WITNESSES, min_witnesses=0)
    # Without the witnesses given, a cosignature is an unknown signature: ignored.
    assert verify(lines).checkpoints == len(LOG.notes)


def test_a_cosignature_under_another_witness_name_is_ignored() -> None:
    lines = witnessed(keys=(0,))
    cp_time = int(peek_checkpoint(LOG.note_at(NEWEST)).time)
    cosign_line(lines, NEWEST, W1, "w.example/2", cp_time + 5)  # W1's key, W2's name
    fails(lines, "witness quorum not met", witnesses=WITNESSES, min_witnesses=2)


def test_cosignature_dated_before_its_checkpoint_is_named() -> None:
    cp_time = int(peek_checkpoint(LOG.note_at(NEWEST)).time)
    fails(
        witnessed(when=cp_time - 3600),
        "dated before the checkpoint it signs",
        witnesses=WITNESSES,
        min_witnesses=2,
    )


def test_cosignature_from_the_future_is_named() -> None:
    fails(
        witnessed(when=int(NOW) + 3600),
        "cosignature by witness",
        "dated in the future",
        witnesses=WITNESSES,
        min_witnesses=2,
    )


def test_quorum_larger_than_the_witnesses_is_a_usage_error() -> None:
    with pytest.raises(ValueError):
        verify(witnessed(), witnesses=WITNESSES[:1], min_witnesses=2)
