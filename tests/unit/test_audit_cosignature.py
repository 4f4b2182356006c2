"""Cosignatures (C2SP tlog-cosignature v1, Ed25519) against values worked out
by hand from the spec's definitions, and the witness's decisions."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from filestore.audit import AuditVerificationError, checkpoint_of, sign_checkpoint
from filestore.audit.cosignature import (
    Witness,
    cosign,
    cosignature_lines,
    count_cosignatures,
    parse_witness_key,
    signed_message,
    witness_vkey,
)
from filestore.audit.keys import parse_verifier_key, verifier_key_string
from filestore.audit.merkle import consistency_proof
from filestore.audit.witness import (
    LogKey,
    LogState,
    WitnessCore,
    WitnessRefusal,
    dump_state,
    format_request,
    load_state,
    parse_request,
)

LOG_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"log key").digest())
W1 = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"witness one").digest())
W2 = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"witness two").digest())
ORIGIN = "filestore.audit/0123456789abcdef"
T = 1_800_000_000


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def leaves(n: int, salt: bytes = b"") -> list[bytes]:
    return [hashlib.sha256(salt + i.to_bytes(4, "big")).digest() for i in range(n)]


def note(n: int, salt: bytes = b"", t: float = T) -> str:
    return sign_checkpoint(checkpoint_of(ORIGIN, leaves(n, salt), t), LOG_KEY, ORIGIN)


def text_of(signed: str) -> str:
    return signed[: signed.index("\n\n") + 1]


# ------------------------------------------------------------- the format
def test_key_id_is_sha256_of_name_newline_0x04_key() -> None:
    expected = hashlib.sha256(b"example.org/w1\n\x04" + raw(W1)).digest()[:4]
    witness = Witness("example.org/w1", W1.public_key())
    assert witness.key_id == expected
    # The same key as a plain note signer (type 0x01) has another id.
    assert hashlib.sha256(b"example.org/w1\n\x01" + raw(W1)).digest()[:4] != expected


def test_signed_message_is_header_time_line_and_checkpoint_text() -> None:
    body = "example.com/log\n5\nAAAA\n"
    assert signed_message(body, 1679315147) == (
        b"cosignature/v1\ntime 1679315147\nexample.com/log\n5\nAAAA\n"
    )
    with pytest.raises(ValueError):
        signed_message(body, 1 << 63)


def test_cosignature_line_is_key_id_big_endian_timestamp_and_signature() -> None:
    text = text_of(note(5))
    line = cosign(text, W1, "example.org/w1", T + 7)
    assert line.startswith("\u2014 example.org/w1 ") and line.endswith("\n")
    blob = base64.b64decode(line.split(" ")[2])
    assert len(blob) == 4 + 8 + 64
    assert blob[:4] == hashlib.sha256(b"example.org/w1\n\x04" + raw(W1)).digest()[:4]
    assert blob[4:12] == struct.pack(">Q", T + 7) == (T + 7).to_bytes(8, "big")
    message = b"cosignature/v1\ntime " + str(T + 7).encode() + b"\n" + text.encode()
    # Ed25519 is deterministic: the signature is exactly the one over that message.
    assert blob[12:] == W1.sign(message)
    W1.public_key().verify(blob[12:], message)


def test_witness_vkey_has_type_0x04_and_round_trips() -> None:
    vkey = witness_vkey("example.org/w1", W1.public_key())
    name, kid, material = vkey.split("+")
    assert name == "example.org/w1"
    assert base64.b64decode(material) == b"\x04" + raw(W1)
    assert kid == hashlib.sha256(b"example.org/w1\n\x04" + raw(W1)).digest()[:4].hex()
    assert parse_witness_key(vkey).key_id.hex() == kid
    with pytest.raises(AuditVerificationError, match="type 0x04, not 0x01"):
        parse_verifier_key(vkey)
    log_vkey = verifier_key_string(ORIGIN, LOG_KEY.public_key())
    with pytest.raises(AuditVerificationError, match="type 0x01, not 0x04"):
        parse_witness_key(log_vkey)


def test_cosigned_note_still_opens_with_the_log_key_only() -> None:
    from filestore.audit import parse_and_verify

    signed = note(5)
    cosigned = signed + cosign(text_of(signed), W1, "example.org/w1", T)
    assert parse_and_verify(cosigned, LOG_KEY.public_key(), ORIGIN).size == 5


# -------------------------------------------------------------- checking
WIT1 = Witness("example.org/w1", W1.public_key())
WIT2 = Witness("example.org/w2", W2.public_key())


def cosigned(n: int = 5, t: int = T + 10) -> str:
    signed = note(n)
    text = text_of(signed)
    return signed + cosign(text, W1, WIT1.name, t) + cosign(text, W2, WIT2.name, t)


def test_valid_cosignatures_are_found_and_unknown_ones_ignored() -> None:
    assert cosignature_lines(cosigned(), [WIT1, WIT2]) == {WIT1.name: T + 10, WIT2.name: T + 10}
    assert cosignature_lines(cosigned(), [WIT2]) == {WIT2.name: T + 10}
    stranger = Witness("example.org/w3", Ed25519PrivateKey.generate().public_key())
    assert cosignature_lines(cosigned(), [stranger]) == {}
    # Same name, other key: another key id, ignored.
    impostor = Witness(WIT1.name, W2.public_key())
    assert cosignature_lines(cosigned(), [impostor]) == {}


def _replace_blob(signed: str, name: str, change: object) -> str:
    out = []
    for line in signed.split("\n"):
        if line.startswith(f"\u2014 {name} "):
            blob = bytearray(base64.b64decode(line.split(" ")[2]))
            change(blob)  # type: ignore[operator]
            line = f"\u2014 {name} {base64.b64encode(bytes(blob)).decode()}"
        out.append(line)
    return "\n".join(out)


def test_a_flipped_signature_byte_is_a_distinct_fault() -> None:
    def flip(b: bytearray) -> None:
        b[-1] ^= 1

    bad = _replace_blob(cosigned(), WIT2.name, flip)
    with pytest.raises(
        AuditVerificationError, match=r"cosignature by witness 'example\.org/w2' does not verify"
    ):
        cosignature_lines(bad, [WIT1, WIT2])


def test_a_changed_timestamp_breaks_the_signature() -> None:
    def later(b: bytearray) -> None:
        b[4:12] = struct.pack(">Q", T + 11)

    with pytest.raises(AuditVerificationError, match="does not verify"):
        cosignature_lines(_replace_blob(cosigned(), WIT1.name, later), [WIT1])


def test_zero_timestamp_and_wrong_length_are_malformed() -> None:
    def zero(b: bytearray) -> None:
        b[4:12] = bytes(8)

    def short(b: bytearray) -> None:
        del b[-1]

    with pytest.raises(AuditVerificationError, match="has no valid timestamp"):
        cosignature_lines(_replace_blob(cosigned(), WIT1.name, zero), [WIT1])
    with pytest.raises(AuditVerificationError, match="is malformed"):
        cosignature_lines(_replace_blob(cosigned(), WIT1.name, short), [WIT1])


def test_a_cosignature_of_another_checkpoint_does_not_verify() -> None:
    other = text_of(note(6))
    moved = note(5) + cosign(other, W1, WIT1.name, T)
    with pytest.raises(AuditVerificationError, match="does not verify"):
        cosignature_lines(moved, [WIT1])


def test_cosignature_times_are_bounded() -> None:
    early = cosigned(t=T - 400)
    with pytest.raises(AuditVerificationError, match="dated before the checkpoint it signs"):
        count_cosignatures(early, [WIT1], not_before=T - 300, not_after=T + 300)
    with pytest.raises(AuditVerificationError, match="dated in the future"):
        count_cosignatures(cosigned(t=T + 1000), [WIT1], not_before=T - 300, not_after=T + 300)


# --------------------------------------------------------------- witness
def core(state: dict[str, LogState] | None = None) -> WitnessCore:
    return WitnessCore("example.org/w1", W1, [LogKey(ORIGIN, ORIGIN, LOG_KEY.public_key())], state)


def accept(w: WitnessCore, old: int, proof: list[bytes], signed: str) -> str:
    origin, state, line = w.add_checkpoint(old, proof, signed, T + 5)
    w.commit(origin, state)
    return line


def refusal(w: WitnessCore, old: int, proof: list[bytes], signed: str) -> WitnessRefusal:
    before = dict(w.state)
    with pytest.raises(WitnessRefusal) as info:
        w.add_checkpoint(old, proof, signed, T + 5)
    assert w.state == before
    return info.value


def test_witness_cosigns_first_then_only_extensions() -> None:
    w = core()
    line = accept(w, 0, [], note(5))
    assert cosignature_lines(note(5) + line, [WIT1]) == {WIT1.name: T + 5}
    assert w.known_size(ORIGIN) == 5
    accept(w, 5, consistency_proof(5, leaves(9)), note(9))
    assert w.known_size(ORIGIN) == 9
    accept(w, 9, [], note(9, t=T + 60))  # re-signed at the same size, same root
    assert w.known_size(ORIGIN) == 9


def test_witness_refuses_a_fork_at_the_same_size() -> None:
    w = core()
    accept(w, 0, [], note(9))
    found = refusal(w, 9, [], note(9, salt=b"rewritten"))
    assert (found.status, found.kind) == (422, "fork")
    assert "FORK" in found.message


def test_witness_refuses_an_inconsistent_proof() -> None:
    w = core()
    accept(w, 0, [], note(5))
    forged = note(9, salt=b"rewritten")
    found = refusal(w, 5, consistency_proof(5, leaves(9, b"rewritten")), forged)
    assert (found.status, found.kind) == (422, "fork")
    assert "not an extension of size 5" in found.message


def test_witness_refuses_a_rollback() -> None:
    w = core()
    accept(w, 0, [], note(9))
    found = refusal(w, 9, [], note(5))
    assert (found.status, found.kind) == (400, "rollback")
    assert "ROLLBACK" in found.message


def test_witness_protocol_statuses() -> None:
    w = core()
    accept(w, 0, [], note(5))
    stale = refusal(w, 3, [], note(9))
    assert (stale.status, stale.known_size) == (409, 5)
    assert refusal(w, 7, [], note(5)).status == 400
    other = sign_checkpoint(checkpoint_of("other.log/x", leaves(3), T), LOG_KEY, "other.log/x")
    assert refusal(w, 0, [], other).status == 404
    forged_sig = sign_checkpoint(checkpoint_of(ORIGIN, leaves(9), T), W2, ORIGIN)
    assert refusal(w, 5, [], forged_sig).status == 403
    fresh = core()
    assert refusal(fresh, 0, [b"\x00" * 32], note(5)).status == 422


def test_add_checkpoint_body_and_state_round_trip() -> None:
    proof = consistency_proof(5, leaves(9))
    body = format_request(5, proof, note(9))
    assert body.startswith(b"old 5\n") and b"\n\n" + ORIGIN.encode() in body
    assert parse_request(body) == (5, proof, note(9))
    for bad in (b"old 05\n\n" + note(9).encode(), b"new 5\n\n", b"old 5\nxyz\n\n" + b"a"):
        with pytest.raises(WitnessRefusal):
            parse_request(bad)
    w = core()
    accept(w, 0, [], note(5))
    assert load_state(dump_state(w.state)) == w.state
    with pytest.raises(ValueError):
        load_state(b'{"format": "something else", "logs": {}}')
